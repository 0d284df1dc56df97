"""The ``torch.nn.Module`` methods that sentence-transformers' class inherits and scripts call on it.

``SentenceTransformer`` in sentence-transformers is an ``nn.Sequential``, so inference scripts often call
``model.eval()``, ``model.half()`` or ``model.cuda()`` on it. st-onnx's facade is not a module (it composes one
or a graph), so this mixin gives it those calls: on the torch backend they act on the torch modules; on the onnx
backend the graph already is in inference mode, and a cast is refused with the option that does it there.
"""

from __future__ import annotations

import numbers
from typing import Any, Iterator

from .errors import BackendError


class ModuleMethods:
    """Mixed into ``SentenceTransformer``: ``eval``, ``train``, ``training``, ``half``, ``float``, ``bfloat16``,
    ``dtype``, ``cpu``, ``cuda``, ``parameters``, ``named_parameters``, ``state_dict``, ``load_state_dict``,
    ``modules``, ``children``, ``named_children``, ``named_modules``, ``requires_grad_``, ``zero_grad``,
    ``forward``, ``_first_module``, ``_last_module``, and sentence-transformers 6's ``transformers_model``,
    ``processor``, ``modalities``, ``get_model_kwargs``."""

    backend: str

    def eval(self) -> Any:
        if self.backend == "torch":
            self._backend.stack.eval()
        return self  # the onnx backend's graph only infers

    def train(self, mode: bool = True) -> Any:
        if self.backend == "torch":
            self._backend.stack.train(mode)
        elif mode:
            raise BackendError("train mode needs the torch modules; load the model with backend='torch' to train it")
        return self

    def half(self) -> Any:
        return self._cast("half")

    def float(self) -> Any:
        return self._cast("float")

    def bfloat16(self) -> Any:
        return self._cast("bfloat16")

    def _cast(self, kind: str) -> Any:
        if self.backend != "torch":
            precision = self._backend.manifest.get("precision")
            if kind == "float" and precision == "fp32":
                return self  # the graph computes in fp32 already
            raise BackendError(
                f"{kind}() casts torch modules; the onnx backend runs a graph exported at one precision (this one: "
                f"{precision}): load the model with onnx_options={{'precision': ...}} instead: 'fp32' (CPU or CUDA), "
                "'fp16' (CUDA), 'int8' (CPU)"
            )
        getattr(self._backend.stack, kind)()
        return self

    def _cast_to(self, dtype: Any) -> Any:
        kinds = {"torch.float16": "half", "torch.bfloat16": "bfloat16", "torch.float32": "float"}
        if isinstance(dtype, str):  # torch takes dtypes, not their names
            raise BackendError(f"to({dtype!r}) gives a string; pass the torch dtype itself: torch.float32, "
                               "torch.float16 or torch.bfloat16")
        if str(dtype) not in kinds:
            raise BackendError(f"to({dtype}) is not a cast st-onnx makes; allowed: torch.float32, torch.float16, "
                               "torch.bfloat16")
        return self._cast(kinds[str(dtype)])

    @property
    def dtype(self) -> Any:
        """The torch modules' parameter dtype (torch backend); the embeddings' numpy dtype on the onnx backend."""
        if self.backend == "torch":
            return next(self._backend.stack.parameters()).dtype
        import numpy as np

        return np.dtype(np.float32)  # every graph's sentence_embedding output is float32

    @property
    def training(self) -> bool:
        return self.backend == "torch" and self._backend.stack.training

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Load weights into the torch modules (torch backend). Keys may name the Transformer's model
        ``auto_model`` (st-onnx, sentence-transformers before 6) or ``model`` (sentence-transformers 6)."""
        if self.backend != "torch":
            raise BackendError("load_state_dict changes the torch weights the onnx graph was exported from; load "
                               "them on backend='torch', save, and load the saved folder with backend='onnx'")
        ours = self._backend.stack.state_dict()
        renamed = {}
        for key, value in state_dict.items():
            index, _, rest = key.partition(".")
            alias = f"{index}.auto_model.{rest[len('model.'):]}" if rest.startswith("model.") else key
            renamed[alias if alias in ours and key not in ours else key] = value
        return self._backend.stack.load_state_dict(renamed, strict=strict, assign=assign)

    def _first_module(self) -> Any:
        return self.torch_modules[0]

    def _last_module(self) -> Any:
        return self.torch_modules[-1]

    def modules(self) -> Iterator[Any]:
        return self.torch_modules.modules()

    def children(self) -> Iterator[Any]:
        return self.torch_modules.children()

    def named_children(self) -> Iterator[tuple[str, Any]]:
        return self.torch_modules.named_children()

    def named_modules(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, Any]]:
        return self.torch_modules.named_modules(*args, **kwargs)

    def requires_grad_(self, requires_grad: bool = True) -> Any:
        self.torch_modules.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.torch_modules.zero_grad(set_to_none)

    def forward(self, features: dict[str, Any]) -> dict[str, Any]:
        """The torch modules over a features dict, as ``model(features)``."""
        return self.torch_modules(features)

    @property
    def transformers_model(self) -> Any:
        """The Hugging Face model inside the Transformer module (sentence-transformers 6's name)."""
        return self.torch_modules[0].auto_model

    @property
    def processor(self) -> Any:
        """sentence-transformers 6's name for the tokenizer of a text model."""
        return self.tokenizer

    @property
    def modalities(self) -> list[str]:
        return ["text"]

    def get_model_kwargs(self) -> list[str]:
        """Module keyword arguments ``encode`` passes on: none (no Router; ``task`` is accepted without effect)."""
        return []

    def cpu(self) -> Any:
        return self.to("cpu")

    def cuda(self, device: Any = None) -> Any:
        """As ``nn.Module.cuda``: no device (the current one), an index, or a ``torch.device`` / ``"cuda:N"``."""
        if device is None:
            return self.to("cuda")
        if isinstance(device, numbers.Integral) and not isinstance(device, bool):  # numpy integers too
            return self.to(f"cuda:{int(device)}")
        return self.to(str(device))

    def parameters(self, recurse: bool = True) -> Iterator[Any]:
        return self.torch_modules.parameters(recurse)

    def named_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Any]]:
        return self.torch_modules.named_parameters(prefix, recurse)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.torch_modules.state_dict(*args, **kwargs)
