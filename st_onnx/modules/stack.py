"""ModuleStack: the ordered torch modules of a model, loaded from and saved to a sentence-transformers folder."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from .. import layout
from ..errors import InvalidInputError, ModelFolderError
from .dense import Dense
from .normalize import Normalize
from .pooling import Pooling
from .routing import check_sentence_embedding_only
from .transformer import Transformer

logger = logging.getLogger(__name__)

_KINDS: dict[str, type[nn.Module]] = {
    "Transformer": Transformer,
    "Pooling": Pooling,
    "Dense": Dense,
    "Normalize": Normalize,
}


class ModuleStack(nn.Sequential):
    """Runs its modules in order over one features dict (``forward(features) -> features``)."""

    def __init__(self, modules: Iterable[nn.Module]) -> None:
        modules = [adopt(m) for m in modules]
        if not modules:
            raise ModelFolderError("a model needs at least one module")
        for i, m in enumerate(modules):
            if not isinstance(m, nn.Module):
                raise InvalidInputError(f"modules must be torch.nn.Module instances; modules[{i}] is "
                                        f"{type(m).__name__} {m!r:.80}")
        super().__init__(*modules)
        first = next(modules[0].parameters(), None)
        if first is not None:  # as sentence-transformers: a Transformer loaded in fp16/bf16 takes its Dense along
            for module in modules[1:]:
                module.to(first.dtype)

    def forward(self, features: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        for module in self:
            features = module(features)
        return features

    @property
    def includes_prompt(self) -> bool:
        """False when the Pooling pools without the prompt's tokens (sentence-transformers' include_prompt)."""
        return all(getattr(m, "include_prompt", True) is not False for m in self)

    @property
    def transformer(self) -> Transformer:
        first = self[0]
        if not isinstance(first, Transformer):
            raise ModelFolderError(f"the first module must be a Transformer; got {type(first).__name__}")
        return first

    def sentence_embedding_dimension(self) -> int | None:
        for module in reversed(list(self)):
            for attr in ("get_sentence_embedding_dimension",):
                if hasattr(module, attr):
                    return int(getattr(module, attr)())
        return None

    def content_digest(self, include_prompt: bool | None = None) -> str:
        """sha256 of what the modules compute: each module's kind and settings (a Transformer's model config as
        transformers reads it) and every tensor of its state dict, bytes and all.

        Unlike the folder fingerprint it does not change when the same modules are written again by another
        transformers release (config.json gains default keys, pytorch_model.bin becomes model.safetensors), so
        a save can tell that a fused graph exported from these modules still computes them. Left out, as the
        graph does not depend on them: max_seq_length, do_lower_case (tokenizer settings), private and version
        keys of the model config (``_name_or_path``, ``transformers_version``, the attention implementation), and
        its ``architectures``, which transformers' save rewrites to the class that saves (a checkpoint saved as
        T5ForConditionalGeneration or BertForMaskedLM is written as T5EncoderModel or BertModel by the same modules).
        ``include_prompt``, where given, stands for the Pooling modules' own (the onnx backend shares that setting
        with its graph, and compares the modules as they were at export).
        """
        import hashlib
        import json

        h = hashlib.sha256()
        for idx, module in enumerate(self):
            settings = _settings(module)
            if include_prompt is not None and "include_prompt" in settings:
                settings["include_prompt"] = include_prompt
            if isinstance(module, Transformer):
                config = module.auto_model.config.to_dict()
                settings["model_config"] = {k: v for k, v in config.items()
                                            if not k.startswith("_") and k not in ("transformers_version",
                                                                                   "architectures")}
            h.update(json.dumps([idx, type(module).__name__, settings], sort_keys=True, default=str).encode())
            for name, tensor in sorted(module.state_dict().items()):
                tensor = tensor.detach().cpu().contiguous()
                h.update(f"\0{name}:{tensor.dtype}:{tuple(tensor.shape)}\0".encode())
                h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        return f"{layout.MODULE_DIGEST_SCHEME}sha256:{h.hexdigest()}"

    def change_marks(self) -> dict[str, Any]:
        """Cheap marks of the modules' state: the optimizer steps taken in this process and, per module, its kind
        and settings (those ``content_digest`` reads, less the model config and ``include_prompt``) and, per tensor,
        its identity, storage, dtype, shape and torch's in-place version counter, which ``load_state_dict``, casts
        and most optimizer steps move (fused ones do not: hence the step count). Marks that differ from earlier
        ones mean the modules may have changed (``content_digest`` tells); equal marks mean they have not, short of
        writes through a tensor's ``.data`` and of tensors made under ``torch.inference_mode``, whose writes torch
        does not count."""
        return {"optimizer_steps": _OPTIMIZER_STEPS[0],
                "modules": [(type(module).__name__,
                             {k: v for k, v in _settings(module).items() if k != "include_prompt"},  # shared
                             [(name, id(t), -1 if t.is_inference() else t._version, t.data_ptr(), t.dtype,
                               tuple(t.shape)) for name, t in module.state_dict(keep_vars=True).items()])
                            for module in self]}

    def save(self, folder: str | os.PathLike) -> list[dict]:
        """Write every module into ``folder`` and return the modules.json entries."""
        folder = Path(folder)
        entries = []
        for idx, module in enumerate(self):
            kind = type(module).__name__
            if kind not in _KINDS:
                kind = next((k for k, c in _KINDS.items() if isinstance(module, c)), None)
                if kind is None:
                    raise ModelFolderError(
                        f"cannot save module {idx} of type {type(module).__name__}; st-onnx saves "
                        f"{', '.join(_KINDS)}"
                    )
            path = "" if idx == 0 and kind == "Transformer" else f"{idx}_{kind}"
            (folder / path).mkdir(parents=True, exist_ok=True)
            module.save(folder / path)
            entries.append({"idx": idx, "name": str(idx), "path": path, "type": layout.MODULE_TYPES[kind]})
        layout.write_json(folder / layout.MODULES_JSON, entries)
        return entries


# Optimizer steps taken in this process (any optimizer): a fused step (AdamW(fused=True), transformers' Trainer's
# default) writes the weights without moving their version counters, so change_marks counts steps too
_OPTIMIZER_STEPS = [0]


def _count_step(optimizer: Any, args: Any, kwargs: Any) -> None:
    _OPTIMIZER_STEPS[0] += 1


register_optimizer_step_post_hook(_count_step)


def _settings(module: nn.Module) -> dict[str, Any]:
    """A module's settings as its config file holds them, less the tokenizer's (``max_seq_length``,
    ``do_lower_case``), which the graph does not depend on."""
    settings: dict[str, Any] = dict(module.get_config_dict()) if hasattr(module, "get_config_dict") else {}
    if isinstance(module, Transformer):
        settings = {k: v for k, v in settings.items() if k not in ("max_seq_length", "do_lower_case")}
    return settings


def adopt(module: Any) -> Any:
    """st-onnx's module for a sentence-transformers one (``from sentence_transformers import models``), sharing
    its model, tokenizer and weights; anything else as it is. Other sentence-transformers modules are refused by
    name (st-onnx has no counterpart to run or export)."""
    cls = type(module)
    if not cls.__module__.startswith("sentence_transformers.") or isinstance(module, tuple(_KINDS.values())):
        return module
    kind = cls.__name__
    if kind == "Transformer":
        layout.check_text_transformer(module.get_config_dict(), f"the given {cls.__module__}.{kind}")
        return Transformer.from_loaded(module.auto_model, module.tokenizer, module.max_seq_length,
                                       getattr(module, "do_lower_case", False))
    if kind == "Pooling":
        config = module.get_config_dict()
        if "pooling_mode" not in config:  # before sentence-transformers 5: one flag per mode
            return Pooling(config.pop("word_embedding_dimension"), **config)
        return Pooling(embedding_dimension=config["embedding_dimension"], pooling_mode=config["pooling_mode"],
                       include_prompt=config.get("include_prompt", True))
    if kind in ("Dense", "Normalize"):
        check_sentence_embedding_only(kind, module.get_config_dict(), f"the given {cls.__module__}.{kind}")
    if kind == "Dense":
        dense = Dense(module.in_features, module.out_features, bias=module.linear.bias is not None,
                      activation_function=module.activation_function)
        dense.linear = module.linear
        return dense
    if kind == "Normalize":
        return Normalize()
    raise ModelFolderError(f"sentence-transformers module {cls.__module__}.{kind} has no st-onnx counterpart; "
                           f"allowed: {', '.join(_KINDS)} (from sentence_transformers.models or st_onnx.models)")


def _is_causal_lm(config: Any) -> bool:
    """Whether a transformers config is a causal language model's, whose last token has seen the whole text."""
    architectures = getattr(config, "architectures", None) or []
    causal = bool(getattr(config, "is_causal", True))  # is_causal: false marks a bidirectional one
    return causal and bool(architectures) and str(architectures[0]).endswith("ForCausalLM")


def load_stack(folder: str | os.PathLike, device: str | torch.device = "cpu",
               transformer_args: dict[str, Any] | None = None) -> ModuleStack:
    """Load a sentence-transformers folder's modules, or a plain transformers folder as Transformer + Pooling:
    last-token pooling for a causal language model (``*ForCausalLM`` whose config does not say ``is_causal:
    false``), mean pooling otherwise, as sentence-transformers 6 chooses.

    ``transformer_args``: ``model_args``/``tokenizer_args``/``config_args`` for the Transformer, as given at load.
    """
    folder = Path(folder)
    transformer_args = {k: v for k, v in (transformer_args or {}).items() if v}
    if layout.is_st_folder(folder):
        modules = []
        for entry in layout.read_modules_json(folder):
            kind = layout.module_kind(entry["type"])
            module_path = folder / entry["path"]
            if not module_path.is_dir() and kind != "Normalize":  # Normalize has no files; git drops its folder
                raise ModelFolderError(f"modules.json names {entry['path']!r}, which is not a folder in {folder}")
            extra = transformer_args if kind == "Transformer" else {}
            modules.append(_KINDS[kind].load(module_path, **extra))
    elif (folder / layout.HF_CONFIG_JSON).is_file():
        layout.check_no_chat_template(folder)
        transformer = Transformer(str(folder), **transformer_args)
        mode = "lasttoken" if _is_causal_lm(transformer.auto_model.config) else "mean"
        logger.info("%s is a plain transformers folder (no modules.json): creating Transformer + %s pooling",
                    folder, mode)
        modules = [transformer, Pooling(transformer.get_word_embedding_dimension(), mode)]
    elif not folder.is_dir():
        raise ModelFolderError(f"{folder} does not exist or is not a folder; give a model folder (modules.json or "
                               "config.json)")
    else:
        raise ModelFolderError(
            f"{folder} is neither a sentence-transformers folder (modules.json) nor a transformers folder (config.json)"
        )
    stack = ModuleStack(modules)
    stack.to(device)
    stack.eval()
    return stack
