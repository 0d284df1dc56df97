"""SentenceTransformer: sentence-transformers' class of the same name, as a thin facade over a backend.

The facade validates arguments, picks the backend and formats results; the work lives elsewhere:
``backends.torch_backend`` (torch modules), ``backends.onnx_backend`` (fused graph on ONNX Runtime),
``saving`` (model folders), ``fit`` (training), ``pool`` (multi-device encode), ``hub`` (the Hub).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from . import folders
from .devices import check_device
from .encode.options import EncodeOptions, as_input_list, check_one_kind, check_truncate_dim
from .encode.prompts import ModelSettings, check_prompt, check_prompts, check_similarity_fn_name, prepend
from .encode.output import format_per_text, format_sentence_embeddings
from .errors import BackendError, InvalidInputError, ModelNotFoundError, allowed, positive_int, warn
from .module_api import ModuleMethods

logger = logging.getLogger(__name__)


BACKENDS = ("torch", "onnx")


class SentenceTransformer(ModuleMethods):
    """Load or build a sentence embedding model and ``encode`` texts with it.

    The positional arguments are sentence-transformers 2.x's (the API this class mirrors): model_name_or_path,
    modules, device, cache_folder, use_auth_token; everything after them is keyword-only. sentence-transformers
    2.4 to 5.x put ``prompts`` and ``default_prompt_name`` fourth and fifth (6 makes every argument after the path
    keyword-only): a dict in cache_folder's place is refused, naming the order.

    Args:
        model_name_or_path: a local sentence-transformers folder, a plain transformers folder (Transformer +
            mean pooling; last-token pooling for a ``*ForCausalLM``), or a Hugging Face Hub id (downloaded into
            ``cache_folder``; a bare name such as 'all-MiniLM-L6-v2' is sentence-transformers', as there).
        modules: torch modules to build the model from, instead of a path.
        device: 'cpu', 'cuda', 'cuda:N'; None picks CUDA when available.
        cache_folder: where Hub downloads (and exported graphs of hub models) are kept.
        use_auth_token: a Hugging Face token for private models (``token`` is accepted too).
        backend: 'torch' (default, the modules) or 'onnx' (the fused graph on ONNX Runtime).
        onnx_options: for backend='onnx': ``precision`` ('fp32' | 'fp16' | 'int8'), ``file_name``,
            ``providers``, ``provider_options``, ``session_options``, ``intra_op_num_threads``, ``token_budget``,
            ``export`` ('auto': export a missing or stale graph from the torch weights; 'never': raise instead),
            ``packing`` (CUDA fp16: ONNX Runtime's packing mode).
        prompts, default_prompt_name, similarity_fn_name: as in sentence-transformers; the model folder's saved
            ones (config_sentence_transformers.json) apply where these are not given.
        truncate_dim: keep the first N dimensions of every sentence embedding (Matryoshka models).
        revision, local_files_only: for Hub ids: a branch, tag or commit; never ask the Hub (the cache only).
        model_kwargs, tokenizer_kwargs, config_kwargs, trust_remote_code: passed to transformers'
            ``from_pretrained`` when the torch modules load (torch backend; the onnx backend takes ``onnx_options``).
            ``processor_kwargs`` is sentence-transformers 6's name for ``tokenizer_kwargs``.
        model_card_data: a ``ModelCardData`` (st_onnx.saving) or sentence-transformers'
            ``SentenceTransformerModelCardData``: language, license, model name, tags... for the saved card.
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike | None = None,
        modules: Iterable[Any] | None = None,
        device: str | None = None,
        cache_folder: str | os.PathLike | None = None,
        use_auth_token: bool | str | None = None,
        *,
        backend: str = "torch",
        onnx_options: dict[str, Any] | None = None,
        token: bool | str | None = None,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        similarity_fn_name: str | None = None,
        truncate_dim: int | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        tokenizer_kwargs: dict[str, Any] | None = None,
        config_kwargs: dict[str, Any] | None = None,
        trust_remote_code: bool = False,
        processor_kwargs: dict[str, Any] | None = None,
        model_card_data: Any = None,
    ) -> None:
        if backend not in BACKENDS:
            raise InvalidInputError(f"backend {allowed(backend, BACKENDS)}")
        if onnx_options is not None and backend != "onnx":
            raise InvalidInputError(f"onnx_options apply to backend='onnx' only; backend is {backend!r}: add "
                                    "backend='onnx' (or drop onnx_options)")
        if model_name_or_path is None and modules is None:
            raise InvalidInputError("give model_name_or_path (a folder or a Hub id) or modules=[...]")
        if model_name_or_path is not None and not isinstance(model_name_or_path, (str, os.PathLike)):
            raise InvalidInputError(f"model_name_or_path must be a folder path or a Hub id string; got "
                                    f"{type(model_name_or_path).__name__} {model_name_or_path!r:.80}")
        if model_name_or_path == "" and modules is not None:  # as sentence-transformers: '' is no path
            model_name_or_path = None
        if model_name_or_path is not None and modules is not None:  # as sentence-transformers: the path wins
            warn(f"both model_name_or_path ({str(model_name_or_path)!r}) and modules were given: the "
                 "model is loaded from the path and modules is ignored", UserWarning)
            modules = None
        if isinstance(modules, Mapping):  # sentence-transformers takes an OrderedDict of name -> module too
            modules = list(modules.values())
        if device is not None:
            device = check_device(device)
        tokenizer_kwargs = _one_of("tokenizer_kwargs", tokenizer_kwargs, "processor_kwargs", processor_kwargs)
        self._transformer_args = _transformer_args(backend, model_kwargs, tokenizer_kwargs, config_kwargs,
                                                   trust_remote_code)
        truncate_dim = check_truncate_dim(truncate_dim)
        if cache_folder is not None and not isinstance(cache_folder, (str, os.PathLike)):
            raise InvalidInputError(
                f"cache_folder must be a folder path; got {type(cache_folder).__name__} {cache_folder!r}. The "
                f"positional order is {_OLDER_ORDER}; pass prompts=..., default_prompt_name=... by name"
            )
        for name, value in (("use_auth_token", use_auth_token), ("token", token)):  # else the saved login is used
            if value is not None and not isinstance(value, (bool, str)):
                raise InvalidInputError(f"{name} must be a token string or True/False; got {type(value).__name__}")
        if revision is not None and not isinstance(revision, str):
            raise InvalidInputError(f"revision must be a branch, tag or commit id string; got "
                                    f"{type(revision).__name__} {revision!r}")
        self.backend = backend
        self.cache_folder = None if cache_folder is None else str(cache_folder)
        if token is not None and use_auth_token is not None:
            raise InvalidInputError("both token and use_auth_token were given; pass one of them (token, the newer "
                                    "name, or use_auth_token, the 2.x one)")
        self._token = token if token is not None else use_auth_token
        self.model_path: Path | None = None
        if model_name_or_path is not None:
            try:
                self.model_path = self._resolve_path(str(model_name_or_path), revision, bool(local_files_only))
            except ModelNotFoundError as e:  # a Hub id: a prompt name in 2.4-5's fifth place went as the token
                if isinstance(use_auth_token, str) and not use_auth_token.startswith("hf_") and "401" in str(e):
                    raise _prompt_name_as_token(use_auth_token, "which is no Hugging Face token (those start "
                                                                "'hf_') and which the Hub refused") from e
                raise
        def load() -> None:
            self._settings = ModelSettings.load(self.model_path, prompts, default_prompt_name, similarity_fn_name,
                                                truncate_dim)
            if isinstance(use_auth_token, str) and use_auth_token in self._settings.prompts:  # not kept as a token
                raise _prompt_name_as_token(use_auth_token, "the name of one of this model's prompts")
            from .saving import folder_card

            # card data evaluators record metrics in, and the folder's own card, which save() keeps until the
            # model is trained (as sentence-transformers)
            self.model_card_data, self._model_card_text = folder_card(self.model_path, model_card_data)
            self._stack = None
            if backend == "torch":
                from .backends.torch_backend import TorchBackend
                from .devices import default_torch_device

                self._backend = TorchBackend(self._load_stack(modules), device or default_torch_device())
            else:
                from .backends.onnx_backend import OnnxBackend

                self._backend = OnnxBackend.load(self, modules=modules, device=device, options=onnx_options)
                if self._stack is not None:  # modules=[...]: loaded before the backend existed
                    self._backend.link_modules(self._stack)

        if self.model_path is None:
            load()
        else:  # another process's save may swap a new folder in meanwhile: loaded again, a few times
            folders.read_whole(self.model_path, load)

    # -- construction helpers ---------------------------------------------------------------------------
    def _resolve_path(self, name: str, revision: str | None = None, local_files_only: bool = False) -> Path:
        path = Path(name).expanduser()
        if path.is_dir() or folders.wait_for_swap(path):  # (a save under way has it moved aside for a moment)
            return path.absolute()  # read again later (torch modules on first use, save, pools), from any cwd
        if path.exists():
            raise ModelNotFoundError(f"{name!r} is a file; model_name_or_path must be a model folder (or a Hub id)")
        hint = folders.interrupted_write_hint(path)
        if hint or name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1):
            raise ModelNotFoundError(f"model folder {name!r} does not exist{hint}")
        from .hub import hub_model_id, resolve_model_path

        return Path(resolve_model_path(hub_model_id(name), cache_folder=self.cache_folder, token=self._token,
                                       revision=revision, local_files_only=local_files_only))

    def _load_stack(self, modules: Iterable[Any] | None = None):
        """The torch modules: given, already loaded, or read from the model folder."""
        from .modules import ModuleStack, load_stack

        if self._stack is None:
            if modules is not None:
                self._stack = ModuleStack(modules)
            elif self.model_path is not None:
                self._stack = load_stack(self.model_path, transformer_args=self._transformer_args)
            else:
                raise BackendError("this model has no torch modules")
            if self.backend == "onnx" and getattr(self, "_backend", None) is not None:
                try:
                    self._backend.link_modules(self._stack)
                except BaseException:  # modules the graph does not compute are not kept
                    self._stack = None
                    raise
        return self._stack

    @property
    def torch_modules(self):
        """The authoritative torch modules (loaded on first use for the onnx backend)."""
        if self.backend == "torch":
            return self._backend.stack
        return self._load_stack()

    # -- sentence-transformers API --------------------------------------------------------------------
    @property
    def device(self):
        """Where the model runs: a ``torch.device`` on the torch backend, a string ('cpu', 'cuda:0') on onnx."""
        return self._backend.device

    def to(self, *args: Any, **kwargs: Any) -> "SentenceTransformer":
        """``to(device)``, ``to(dtype)`` or ``to(device, dtype)``, as ``nn.Module.to`` (a dtype casts the torch
        modules: ``half``/``bfloat16``/``float``)."""
        dtype = kwargs.pop("dtype", None)
        device = kwargs.pop("device", None)
        kwargs.pop("non_blocking", None)
        if kwargs:
            raise InvalidInputError(f"to() takes device, dtype and non_blocking; got {sorted(kwargs)}")
        for arg in args:
            if type(arg).__name__ == "dtype":  # torch.dtype, compared by name: no torch import for the onnx backend
                dtype = arg
            else:
                device = arg
        if device is not None:
            self._backend.to(check_device(device))
        if dtype is not None:
            self._cast_to(dtype)
        return self

    def encode(
        self,
        sentences: str | Sequence[Any] | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        output_value: str | None = "sentence_embedding",
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: str | list[str] | None = None,
        normalize_embeddings: bool = False,
        prompt_name: str | None = None,
        prompt: str | None = None,
        truncate_dim: int | None = None,
        precision: str = "float32",
        pool: Any = None,
        chunk_size: int | None = None,
        *,
        inputs: str | Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Embed one text or a list of texts; see the sentence-transformers documentation for the arguments.

        ``prompt`` (or the prompt named ``prompt_name``, else the model's default prompt) is prepended to every
        text; ``truncate_dim`` (default: the model's) keeps the first N dimensions, before normalizing;
        ``precision`` ('int8', 'uint8', 'binary', 'ubinary') quantizes the result (``st_onnx.quantization``);
        ``pool`` (from ``start_multi_process_pool``) spreads the work as ``encode_multi_process`` does, and so
        does a list of devices (``device=['cpu', 'cpu']``: a pool for this call). ``inputs`` is
        sentence-transformers 6's name for ``sentences``. Of the keyword arguments sentence-transformers 6 passes to
        modules, ``task`` is accepted and has no effect (only a Router module reads it, which st-onnx does not load).
        """
        _check_module_kwargs(kwargs)
        _check_positional_order("encode", "sentences",
                                {"batch_size": batch_size, "show_progress_bar": show_progress_bar}, "second and third")
        devices = None
        if isinstance(device, (list, tuple)):
            if pool is not None:
                raise InvalidInputError(f"give pool or a list of devices, not both; got device={device!r}")
            devices, device = list(device), None
        opts = EncodeOptions.from_args(
            batch_size, show_progress_bar, output_value, convert_to_numpy, convert_to_tensor,
            None if device is None else check_device(device), normalize_embeddings,
            truncate_dim if truncate_dim is not None else self.truncate_dim, precision,
        )
        texts, single = as_input_list(_one_of("sentences", sentences, "inputs", inputs, required=True))
        texts, opts = self._with_prompt(texts, opts, prompt, prompt_name)
        if devices is not None:
            with self.start_multi_process_pool(devices) as call_pool:
                raw = self._encode_on_pool(texts, call_pool, opts, chunk_size)
        elif pool is not None:
            raw = self._encode_on_pool(texts, pool, opts, chunk_size)
        else:
            raw = self._backend.encode(texts, opts)
        if opts.output_value == "sentence_embedding":
            return format_sentence_embeddings(raw, opts, single)
        return format_per_text(raw, opts, single)

    # encode_query/encode_document (sentence-transformers 5+) take prompt_name and prompt second and third, as there
    def encode_query(self, sentences: str | Sequence[Any] | None = None, prompt_name: str | None = None,
                     prompt: str | None = None, *args: Any, **kwargs: Any) -> Any:
        """``encode`` with the model's "query" prompt unless a prompt or prompt_name is given. Further positional
        arguments follow sentence-transformers 6's order (``batch_size``, ``show_progress_bar``, ``output_value``,
        ``precision``, ...), as this method has no 2.x order to keep."""
        kwargs = _newer_positional("encode_query", args, kwargs)
        if prompt is None and prompt_name is None and "query" in self.prompts:
            prompt_name = "query"
        return self.encode(sentences, prompt_name=prompt_name, prompt=prompt, **kwargs)

    def encode_document(self, sentences: str | Sequence[Any] | None = None, prompt_name: str | None = None,
                        prompt: str | None = None, *args: Any, **kwargs: Any) -> Any:
        """``encode`` with the model's "document" prompt unless a prompt or prompt_name is given. Every model has
        one, empty unless set (as in sentence-transformers 6), so a "passage" or "corpus" prompt is picked only where
        "document" was taken out of ``prompts``. Positional arguments as ``encode_query``'s."""
        kwargs = _newer_positional("encode_document", args, kwargs)
        if prompt is None and prompt_name is None:
            prompt_name = next((n for n in ("document", "passage", "corpus") if n in self.prompts), None)
        return self.encode(sentences, prompt_name=prompt_name, prompt=prompt, **kwargs)

    def _with_prompt(self, inputs: list, opts: EncodeOptions, prompt: Any, prompt_name: Any):
        """Inputs with the resolved prompt prepended, and the prompt's token count where pooling leaves it out
        (or, for output_value=None, where the per-text dicts report it, as sentence-transformers' features do).
        The prompt warning points at the user's line: encode (or encode_multi_process) -> here -> resolve -> warn."""
        text = self._settings.resolve(prompt, prompt_name)
        if not text:
            return inputs, opts
        if not self._backend.pooling_include_prompt():
            opts = dataclasses.replace(opts, prompt_length=self._backend.prompt_length(text))
        if opts.output_value is None:
            opts = dataclasses.replace(opts, prompt_tokens=opts.prompt_length or self._backend.prompt_length(text))
        return prepend(text, inputs), opts

    # -- prompts and similarity (sentence-transformers 2.4+) ------------------------------------------
    @property
    def prompts(self) -> dict[str, str]:
        return self._settings.prompts

    @prompts.setter
    def prompts(self, value: dict[str, str]) -> None:
        self._settings.prompts = check_prompts(value)

    @property
    def default_prompt_name(self) -> str | None:
        return self._settings.default_prompt_name

    @default_prompt_name.setter
    def default_prompt_name(self, value: str | None) -> None:
        """Any name, in any order with ``prompts`` (as sentence-transformers): one that is not among the prompts
        when encoding gives no prompt, with a warning."""
        if value is not None and not isinstance(value, str):
            raise InvalidInputError(f"default_prompt_name must be a string or None; got {type(value).__name__}")
        self._settings.default_prompt_name = value

    @property
    def truncate_dim(self) -> int | None:
        """Every sentence embedding keeps its first ``truncate_dim`` dimensions (None: all); saved with the model."""
        return self._settings.truncate_dim

    @truncate_dim.setter
    def truncate_dim(self, value: int | None) -> None:
        self._settings.truncate_dim = check_truncate_dim(value)

    @property
    def similarity_fn_name(self) -> str:
        """'cosine', 'dot', 'euclidean' or 'manhattan' (the model's; 'cosine' when it names none)."""
        if self._settings.similarity_fn_name is None:
            self._settings.similarity_fn_name = "cosine"
        return self._settings.similarity_fn_name

    @similarity_fn_name.setter
    def similarity_fn_name(self, value: str) -> None:
        self._settings.similarity_fn_name = check_similarity_fn_name(value)

    def similarity(self, embeddings1: Any, embeddings2: Any) -> Any:
        """Every embedding of ``embeddings1`` against every one of ``embeddings2`` (a torch tensor)."""
        from .util import similarity_functions

        return similarity_functions(self.similarity_fn_name)[0](embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> Any:
        """Row i of ``embeddings1`` against row i of ``embeddings2`` (a torch tensor)."""
        from .util import similarity_functions

        return similarity_functions(self.similarity_fn_name)[1](embeddings1, embeddings2)

    def tokenize(self, texts: list, prompt: str | None = None) -> dict[str, Any]:
        """The model's input features for ``texts`` (or pairs): torch tensors on the torch backend, numpy int64
        arrays on onnx; ``prompt`` as in ``preprocess``."""
        return self.preprocess(texts, prompt=prompt)

    def preprocess(self, inputs: list, prompt: str | None = None) -> dict[str, Any]:
        """The model's input features for ``inputs`` (sentence-transformers 6's name for ``tokenize``), with
        ``prompt`` prepended to each text and its token count as ``prompt_length``."""
        try:
            texts = list(inputs)  # a bare string is its characters, as in sentence-transformers
        except TypeError:
            raise InvalidInputError(f"inputs must be a list of texts, (text, text) pairs or one-text dicts; got "
                                    f"{type(inputs).__name__} {inputs!r:.80}") from None
        if not texts:
            return {}  # sentence-transformers' answer for no texts
        check_one_kind(texts, "inputs")  # a list of three is no pair; a text after a pair is no pair either
        if prompt is None:
            return self._backend.tokenize(texts)
        features = self._backend.tokenize(prepend(check_prompt(prompt), texts))
        features["prompt_length"] = self._backend.prompt_length(prompt)
        return features

    @property
    def tokenizer(self):
        """A transformers tokenizer on the torch backend; on onnx the ``tokenizers.Tokenizer`` read from
        ``tokenizer.json`` (no transformers import), set up to tokenize as the exported model does."""
        return self._backend.tokenizer

    @tokenizer.setter
    def tokenizer(self, value) -> None:
        self._backend.tokenizer = value

    @property
    def max_seq_length(self) -> int:
        """Tokens per text (longer texts are truncated); settable, a positive int."""
        return self._backend.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self._backend.max_seq_length = positive_int(value, "max_seq_length")

    def get_max_seq_length(self) -> int | None:
        return self.max_seq_length

    def get_sentence_embedding_dimension(self) -> int | None:
        """The width of ``encode``'s embeddings (``truncate_dim`` where set); None where no module says."""
        dim = self._backend.sentence_embedding_dimension()
        return min(dim, self.truncate_dim) if dim is not None and self.truncate_dim is not None else dim

    get_embedding_dimension = get_sentence_embedding_dimension  # sentence-transformers 6's name

    def get_backend(self) -> str:
        """'torch' or 'onnx'."""
        return self.backend

    @contextlib.contextmanager
    def truncate_embeddings(self, truncate_dim: int | None) -> Iterator[None]:
        """Within the ``with`` block, ``encode`` keeps the first ``truncate_dim`` dimensions (None: all)."""
        previous, self.truncate_dim = self.truncate_dim, check_truncate_dim(truncate_dim)
        try:
            yield
        finally:
            self.truncate_dim = previous

    truncate_sentence_embeddings = truncate_embeddings  # the name before sentence-transformers 6

    def set_pooling_include_prompt(self, include_prompt: bool) -> None:
        """Whether pooling counts the prompt's tokens (False for INSTRUCTOR-style models), as the Pooling config's
        ``include_prompt``; it applies to this model in memory, as in sentence-transformers."""
        if not isinstance(include_prompt, bool):
            raise InvalidInputError(f"include_prompt must be True or False; got {include_prompt!r}")
        self._backend.set_pooling_include_prompt(include_prompt)

    def __call__(self, features: dict[str, Any]) -> dict[str, Any]:
        """Run the torch modules over a features dict (what losses call during training), through ``forward``, as
        ``nn.Module.__call__`` does: losses that wrap ``model.forward`` (sentence-transformers' MatryoshkaLoss) see
        their wrapper run."""
        return self.forward(features)

    def __getitem__(self, idx: int):
        return self.torch_modules[idx]

    def __len__(self) -> int:
        return len(self.torch_modules)

    def __repr__(self) -> str:
        if self.backend == "torch" or self._stack is not None:
            inner = "\n".join(f"  ({i}): {m!r}" for i, m in enumerate(self.torch_modules))
            return f"SentenceTransformer(backend={self.backend!r}\n{inner}\n)"
        return f"SentenceTransformer(backend='onnx', graph={self._backend!r})"

    def smart_batching_collate(self, batch: list) -> tuple[list[dict[str, Any]], Any]:
        """A DataLoader's ``collate_fn`` for ``InputExample``s: one tokenized feature dict per text column, and
        the labels as a tensor (torch backend)."""
        from .fit import smart_batching_collate

        return smart_batching_collate(self, batch)

    def fit(
        self,
        train_objectives,
        evaluator=None,
        epochs: int = 1,
        steps_per_epoch: int | None = None,
        scheduler: str = "WarmupLinear",
        warmup_steps: int = 10000,
        optimizer_class=None,
        optimizer_params: dict[str, Any] | None = None,
        weight_decay: float = 0.01,
        evaluation_steps: int = 0,
        output_path: str | None = None,
        save_best_model: bool = True,
        max_grad_norm: float = 1,
        use_amp: bool = False,
        callback=None,
        show_progress_bar: bool = True,
        checkpoint_path: str | None = None,
        checkpoint_save_steps: int = 500,
        checkpoint_save_total_limit: int = 0,
        resume_from_checkpoint: bool = False,
    ) -> None:
        """Train the torch modules with sentence-transformers' ``fit`` arguments (see ``st_onnx.fit.fit``).

        ``optimizer_class`` defaults to ``torch.optim.AdamW`` and ``optimizer_params`` to ``{"lr": 2e-5}``.
        """
        if self.backend != "torch":
            raise BackendError(
                "fit needs the torch modules; load the model with SentenceTransformer(path, backend='torch'), "
                "train it, then save it: the fused ONNX graph is re-exported from the new weights"
            )
        from .fit import fit

        fit(self, train_objectives, evaluator=evaluator, epochs=epochs, steps_per_epoch=steps_per_epoch,
            scheduler=scheduler, warmup_steps=warmup_steps, optimizer_class=optimizer_class,
            optimizer_params=optimizer_params, weight_decay=weight_decay, evaluation_steps=evaluation_steps,
            output_path=output_path, save_best_model=save_best_model, max_grad_norm=max_grad_norm,
            use_amp=use_amp, callback=callback, show_progress_bar=show_progress_bar,
            checkpoint_path=checkpoint_path, checkpoint_save_steps=checkpoint_save_steps,
            checkpoint_save_total_limit=checkpoint_save_total_limit,
            resume_from_checkpoint=resume_from_checkpoint)

    def evaluate(self, evaluator, output_path: str | None = None):
        """Run ``evaluator`` on this model (st-onnx's evaluators or sentence-transformers'), creating
        ``output_path`` for its CSV files; returns what the evaluator returns (a float, or a dict of metrics)."""
        if output_path is not None:
            os.makedirs(output_path, exist_ok=True)
        return evaluator(self, output_path)

    def save(
        self,
        path: str | os.PathLike,
        model_name: str | None = None,
        create_model_card: bool = True,
        train_datasets: list[str] | None = None,
        safe_serialization: bool = True,
    ) -> None:
        """Write the model folder (sentence-transformers format) atomically: the new folder is written beside
        the old one, then the two are swapped by renames, so a crash leaves the old folder whole. The files of
        the user's found there (a trainer's state, ``eval/``, notes) are kept; a fused graph is carried along
        while the modules are the ones it was exported from, and left behind otherwise.

        Weights are always written as safetensors; ``safe_serialization=False`` (pickled ``.bin`` files) is
        refused rather than ignored. ``path=None`` writes nothing, as in sentence-transformers (with a warning).
        """
        from .saving import check_safe_serialization, save_model

        if path is None:
            warn("save(None) writes nothing (as sentence-transformers); pass a folder path to save")
            return
        check_safe_serialization(safe_serialization)
        save_model(self, path, model_name=model_name, create_model_card=create_model_card,
                   train_datasets=train_datasets)

    save_pretrained = save  # sentence-transformers 6's name

    def save_to_hub(
        self,
        repo_name: str | None = None,
        organization: str | None = None,
        private: bool | None = None,
        commit_message: str | None = "Add new SentenceTransformer model.",
        local_model_path: str | os.PathLike | None = None,
        exist_ok: bool = False,
        replace_model_card: bool = False,
        train_datasets: list[str] | None = None,
        *,
        repo_id: str | None = None,
        token: bool | str | None = None,
        safe_serialization: bool = True,
    ) -> str:
        """Upload the model to the Hub (sentence-transformers 2.x's arguments; ``repo_id``, ``token`` and
        ``safe_serialization`` by keyword, as later releases name them). Returns the commit's URL.

        sentence-transformers 3 and later put ``token`` third, where 2.x has ``private``: a token given there is
        refused, not sent as the repository's privacy flag (the push would run under the saved login)."""
        from .hub import save_to_hub
        from .saving import check_safe_serialization

        if private is not None and not isinstance(private, bool):
            raise InvalidInputError(
                f"save_to_hub got {type(private).__name__} as private: st-onnx keeps sentence-transformers 2.x's "
                "order (repo_name, organization, private, commit_message, ...), where 3 and later put token third; "
                "pass token= (and repo_id=) by keyword"
            )
        if not isinstance(commit_message, (str, type(None))) or not isinstance(local_model_path,
                                                                              (str, os.PathLike, type(None))):
            raise InvalidInputError(  # 3+'s (repo_id, organization, token, private, safe_serialization, ...)
                f"save_to_hub got commit_message={commit_message!r:.60} and local_model_path={local_model_path!r:.60}: "
                "st-onnx keeps sentence-transformers 2.x's order (repo_name, organization, private, commit_message, "
                "local_model_path, ...), where 3 and later put token, private and safe_serialization third to fifth; "
                "pass private=, token= and safe_serialization= by keyword"
            )
        check_safe_serialization(safe_serialization)
        return save_to_hub(
            self, _one_of("repo_name", repo_name, "repo_id", repo_id, required=True), organization=organization,
            private=private, commit_message=commit_message, local_model_path=local_model_path, exist_ok=exist_ok,
            replace_model_card=replace_model_card, train_datasets=train_datasets,
            token=token if token is not None else self._token,
        )

    def push_to_hub(
        self,
        repo_id: str,
        token: str | None = None,
        private: bool | None = None,
        safe_serialization: bool = True,
        commit_message: str | None = None,
        local_model_path: str | None = None,
        exist_ok: bool = False,
        replace_model_card: bool = False,
        train_datasets: list[str] | None = None,
        revision: str | None = None,
        create_pr: bool = False,
    ) -> str:
        """sentence-transformers 3+'s name for ``save_to_hub``, with the repo id whole ('owner/name')."""
        from .hub import push_to_hub

        return push_to_hub(
            self, repo_id, token=token if token is not None else self._token, private=private,
            safe_serialization=safe_serialization, commit_message=commit_message, local_model_path=local_model_path,
            exist_ok=exist_ok, replace_model_card=replace_model_card, train_datasets=train_datasets,
            revision=revision, create_pr=create_pr,
        )

    def start_multi_process_pool(self, target_devices: list[str] | None = None):
        """Start a pool for ``encode_multi_process``: one worker thread per entry of ``target_devices`` (such as
        ['cuda:0', 'cuda:1'] or ['cpu', 'cpu']), each with its own ONNX Runtime session (onnx backend) or copy
        of the modules (torch backend). None: every CUDA device where CUDA is usable, else one 'cpu' worker
        (ONNX Runtime already spreads one session's batches over the cores; sentence-transformers starts four
        CPU processes). Several 'cpu' entries split the cores between them.

        Returns a ``SessionPool``, not sentence-transformers' dict of processes; stop it with
        ``stop_multi_process_pool(pool)`` or use it as a ``with`` block.
        """
        from .pool import start_pool

        return start_pool(self, target_devices)

    @staticmethod
    def stop_multi_process_pool(pool) -> None:
        """Stop a pool from ``start_multi_process_pool`` (its sessions and threads); stopping twice is harmless."""
        from .pool import stop_pool

        stop_pool(pool)

    def encode_multi_process(
        self,
        sentences: list[str],
        pool,
        batch_size: int = 32,
        chunk_size: int | None = None,
        normalize_embeddings: bool = False,
        prompt_name: str | None = None,
        prompt: str | None = None,
        truncate_dim: int | None = None,
        precision: str = "float32",
        show_progress_bar: bool | None = None,
    ):
        """``encode`` over the pool's devices; prompts, truncate_dim and precision as in ``encode``."""
        _check_positional_order("encode_multi_process", "sentences, pool",
                                {"batch_size": batch_size, "chunk_size": chunk_size}, "third and fourth")
        opts = EncodeOptions.from_args(batch_size, show_progress_bar, "sentence_embedding", True, False, None,
                                       normalize_embeddings,
                                       truncate_dim if truncate_dim is not None else self.truncate_dim, precision)
        inputs, single = as_input_list(sentences)
        inputs, opts = self._with_prompt(inputs, opts, prompt, prompt_name)
        return format_sentence_embeddings(self._encode_on_pool(inputs, pool, opts, chunk_size), opts, single)

    def _encode_on_pool(self, inputs: list, pool: Any, opts: EncodeOptions, chunk_size: int | None) -> Any:
        """The pool's raw outputs for ``inputs`` (prompted already; as the backend's ``encode`` gives them; the
        caller formats)."""
        from .pool import encode_with_pool

        return encode_with_pool(self, inputs, pool, batch_size=opts.batch_size, chunk_size=chunk_size,
                                show_progress_bar=opts.show_progress_bar, prompt_length=opts.prompt_length,
                                output_value=opts.output_value)


def _check_positional_order(method: str, before: str, given: dict[str, Any], where_newer: str) -> None:
    """A string where sentence-transformers 2.x's order has these numbers or flags is a prompt passed in 5 and 6's
    order, which put ``prompt_name`` and ``prompt`` ``where_newer``: refused with the order named."""
    strings = [name for name, value in given.items() if isinstance(value, str)]
    if strings:
        got = " and ".join(f"{value!r} as {name}" for name, value in given.items() if name in strings)
        raise InvalidInputError(
            f"{method} got {got}, which takes no string. Passed by position? st-onnx keeps sentence-transformers "
            f"2.x's order ({before}, {', '.join(given)}, ...), where 5 and 6 put prompt_name and prompt "
            f"{where_newer}; pass prompt_name=/prompt= by keyword"
        )


def _check_module_kwargs(kwargs: dict[str, Any]) -> None:
    """sentence-transformers 6's ``encode(**kwargs)`` for modules: its ValueError for any this model does not use."""
    unused = sorted(set(kwargs) - {"task"})
    if unused:
        hint = (" (set model.max_seq_length for the token limit)" if "processing_kwargs" in unused else "")
        raise InvalidInputError(f"encode() got keyword arguments this model does not use: {unused}; st-onnx's modules "
                                f"take none (sentence-transformers passes them to modules such as Router){hint}")


_OLDER_ORDER = "sentence-transformers 2.x's (model_name_or_path, modules, device, cache_folder, use_auth_token)"


def _prompt_name_as_token(value: str, what: str) -> InvalidInputError:
    """sentence-transformers 2.4-5 put default_prompt_name fifth, where 2.x (and st-onnx) take use_auth_token."""
    return InvalidInputError(f"use_auth_token is {value!r}, {what}: the positional order is {_OLDER_ORDER}, where "
                             "2.4 to 5 put default_prompt_name fifth; pass default_prompt_name=... by name (and a "
                             "token as token=...)")


def _one_of(name: str, value: Any, alias: str, alias_value: Any, required: bool = False) -> Any:
    """An argument that newer sentence-transformers releases renamed: either spelling, not both."""
    if value is not None and alias_value is not None:
        raise InvalidInputError(f"{name} and {alias} are two names for one argument; give one of them")
    value = value if value is not None else alias_value
    if value is None and required:
        raise InvalidInputError(f"{name} is required (sentence-transformers 6 names it {alias}); got None")
    return value


def _transformer_args(backend: str, model_kwargs: Any, tokenizer_kwargs: Any, config_kwargs: Any,
                      trust_remote_code: Any = False) -> dict[str, Any]:
    """The Transformer's load-time ``model_args``/``tokenizer_args``/``config_args``, validated."""
    given = {"model_kwargs": model_kwargs, "tokenizer_kwargs": tokenizer_kwargs, "config_kwargs": config_kwargs}
    for name, value in given.items():
        if value is not None and not isinstance(value, dict):
            raise InvalidInputError(f"{name} must be a dict of keyword arguments; got {type(value).__name__}")
    if not isinstance(trust_remote_code, bool) and trust_remote_code is not None:  # None: False, as transformers
        raise InvalidInputError(f"trust_remote_code must be True, False or None; got {trust_remote_code!r}")
    if trust_remote_code:
        given["trust_remote_code"] = True
    if backend != "torch" and any(given.values()):
        named = ", ".join(name for name, value in given.items() if value)
        raise InvalidInputError(
            f"{named} configure the torch modules' loading; backend='onnx' runs the exported graph and takes "
            "onnx_options instead (sentence-transformers' ONNX model_kwargs map to it: 'file_name' -> "
            "onnx_options['file_name'], 'provider' -> onnx_options['providers']). Load with backend='torch'"
        )
    remote = {"trust_remote_code": True} if trust_remote_code else {}
    return {"model_args": {**remote, **(model_kwargs or {})} or None,
            "tokenizer_args": {**remote, **(tokenizer_kwargs or {})} or None,
            "config_args": {**remote, **(config_kwargs or {})} or None}


# sentence-transformers 6's encode_query/encode_document arguments after (inputs, prompt_name, prompt), in order
_NEWER_ENCODE_ORDER = ("batch_size", "show_progress_bar", "output_value", "precision", "convert_to_numpy",
                       "convert_to_tensor", "device", "normalize_embeddings", "truncate_dim", "pool", "chunk_size")


def _newer_positional(method: str, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    if len(args) > len(_NEWER_ENCODE_ORDER):
        raise TypeError(f"{method}() takes at most {3 + len(_NEWER_ENCODE_ORDER)} positional arguments after self "
                        f"(inputs, prompt_name, prompt, {', '.join(_NEWER_ENCODE_ORDER)}); got {3 + len(args)}")
    named = dict(zip(_NEWER_ENCODE_ORDER, args))
    if twice := sorted(named.keys() & kwargs.keys()):
        raise TypeError(f"{method}() got multiple values for argument {twice[0]!r}")
    return {**named, **kwargs}
