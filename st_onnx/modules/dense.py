"""Dense: a linear layer plus activation on the sentence embedding."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import layout
from ..errors import InvalidInputError, ModelFolderError
from .routing import check_sentence_embedding_only

_WEIGHTS = "model.safetensors"
_LEGACY_WEIGHTS = "pytorch_model.bin"


def activation_name(activation: nn.Module) -> str:
    cls = type(activation)
    return f"{cls.__module__}.{cls.__qualname__}"


def activation_from_name(name: str) -> nn.Module:
    """Instantiate a ``torch.nn`` activation from its dotted name; anything outside torch is refused."""
    if not name.startswith("torch."):
        raise ModelFolderError(
            f"Dense activation_function {name!r} is not a torch.nn class; st-onnx loads only torch.* activations "
            "(importing arbitrary code from a config is unsafe)"
        )
    module_name, _, cls_name = name.rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ModelFolderError(f"Dense activation_function {name!r} is not a torch.nn.Module class")
    return cls()


class Dense(nn.Module):
    """``sentence_embedding = activation(linear(sentence_embedding))``, as sentence-transformers' Dense."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation_function: nn.Module | None = nn.Tanh(),
        init_weight: torch.Tensor | None = None,
        init_bias: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.bias = bias
        # only what the folder format can name and load back: a function (torch.tanh) or a module from outside
        # torch was saved under a name no load takes, so a trained model's folder could not be read
        if activation_function is not None and not (isinstance(activation_function, nn.Module)
                                                    and activation_name(activation_function).startswith("torch.")):
            raise InvalidInputError(
                f"activation_function must be a torch.nn activation module such as torch.nn.Tanh() (what a saved "
                f"model can name and load back); got {type(activation_function).__name__} {activation_function!r}"
            )
        self.activation_function = nn.Identity() if activation_function is None else activation_function
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        if init_weight is not None:
            self.linear.weight = nn.Parameter(init_weight)
        if init_bias is not None and bias:
            self.linear.bias = nn.Parameter(init_bias)

    def forward(self, features: dict[str, Any]) -> dict[str, Any]:
        features["sentence_embedding"] = self.activation_function(self.linear(features["sentence_embedding"]))
        return features

    def get_sentence_embedding_dimension(self) -> int:
        return self.out_features

    get_embedding_dimension = get_sentence_embedding_dimension  # sentence-transformers 6's name

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias,
            "activation_function": activation_name(self.activation_function),
        }

    def __repr__(self) -> str:
        return f"Dense({self.get_config_dict()})"

    def save(self, output_path: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        layout.write_json(Path(output_path) / "config.json", self.get_config_dict())
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(Path(output_path) / _WEIGHTS))

    @classmethod
    def load(cls, input_path: str | os.PathLike) -> "Dense":
        folder = Path(input_path)
        config = dict(layout.read_json(folder / "config.json", "Dense config.json"))
        check_sentence_embedding_only("Dense", config, str(folder))
        config["activation_function"] = activation_from_name(
            config.get("activation_function", "torch.nn.modules.activation.Tanh")
        )
        known = {"in_features", "out_features", "bias", "activation_function"}
        module = cls(**{k: v for k, v in config.items() if k in known})
        module.load_state_dict(load_weights(folder))
        return module


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    """safetensors, or a legacy pickle read with ``weights_only=True`` (never a full unpickle)."""
    if (folder / _WEIGHTS).is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / _WEIGHTS))
    if (folder / _LEGACY_WEIGHTS).is_file():
        return torch.load(folder / _LEGACY_WEIGHTS, map_location="cpu", weights_only=True)
    raise ModelFolderError(f"{folder} holds neither {_WEIGHTS} nor {_LEGACY_WEIGHTS}")
