"""The ``torch.nn.Module`` methods that sentence-transformers' class inherits and scripts call on it.

``SentenceTransformer`` in sentence-transformers is an ``nn.Sequential``, so inference scripts often call
``model.eval()``, ``model.half()`` or ``model.cuda()`` on it. st-onnx's facade is not a module (it composes one
or a graph), so this mixin gives it those calls: on the torch backend they act on the torch modules; on the onnx
backend the graph already is in inference mode, and a cast is refused with the option that does it there.
"""

from __future__ import annotations

from typing import Any, Iterator

from .errors import BackendError


class ModuleMethods:
    """Mixed into ``SentenceTransformer``: ``eval``, ``train``, ``half``, ``float``, ``bfloat16``, ``cpu``,
    ``cuda``, ``parameters``, ``named_parameters``, ``state_dict``."""

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

    def cpu(self) -> Any:
        return self.to("cpu")

    def cuda(self, device: int | None = None) -> Any:
        return self.to("cuda" if device is None else f"cuda:{int(device)}")

    def parameters(self, recurse: bool = True) -> Iterator[Any]:
        return self.torch_modules.parameters(recurse)

    def named_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Any]]:
        return self.torch_modules.named_parameters(prefix, recurse)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.torch_modules.state_dict(*args, **kwargs)
