"""Transformer: a Hugging Face AutoModel (for T5 and the other encoder-decoder families, the encoder class, as
sentence-transformers loads them) and its fast tokenizer, producing token embeddings."""

from __future__ import annotations

import logging
import os
import threading
from importlib import import_module
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import layout
from ..encode.tokenize import check_room_for_text, lowercase_first, text_columns
from ..encode.prompts import check_prompt, prepend
from ..layout import read_transformer_config
from ..errors import ModelFolderError, positive_int

logger = logging.getLogger(__name__)
# threads constructing models at once in a fresh process: 'cannot import name AutoConfig from transformers'
_FIRST_IMPORT = threading.Lock()


# encoder-decoder families whose sentence embeddings come from the encoder alone (sentence-t5, gtr-t5): loaded as
# sentence-transformers loads them; AutoModel builds the encoder-decoder, whose forward asks for decoder inputs
# (the text families of sentence-transformers 6's list; each class is in transformers.models.<type>.modeling_<type>)
_ENCODER_CLASSES = {
    "t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel", "longt5": "LongT5EncoderModel",
    "switch_transformers": "SwitchTransformersEncoderModel", "prophetnet": "ProphetNetEncoder",
    "marian": "MarianEncoder", "pegasus": "PegasusEncoder", "pegasus_x": "PegasusXEncoder", "m2m_100": "M2M100Encoder",
    "blenderbot": "BlenderbotEncoder", "blenderbot-small": "BlenderbotSmallEncoder",
}


_ENCODER_LOAD = threading.Lock()


def _load_encoder(model_class: Any, path: str, config: Any, hf_kwargs: dict, model_args: dict | None) -> Any:
    """The encoder of an encoder-decoder checkpoint; its decoder's weights are expected, not reported as unexpected
    (T5EncoderModel ignores them itself, MT5EncoderModel and UMT5EncoderModel list each: transformers' load report
    that sentence-transformers keeps quiet the same way). The class is the library's own, so models pickle."""
    with _ENCODER_LOAD:
        before = model_class.__dict__.get("_keys_to_ignore_on_load_unexpected", _ENCODER_LOAD)
        model_class._keys_to_ignore_on_load_unexpected = list(
            getattr(model_class, "_keys_to_ignore_on_load_unexpected", None) or []) + [r"^decoder\."]
        try:
            return model_class.from_pretrained(path, config=config, **hf_kwargs, **(model_args or {}))
        finally:
            if before is _ENCODER_LOAD:
                del model_class._keys_to_ignore_on_load_unexpected
            else:
                model_class._keys_to_ignore_on_load_unexpected = before


class Transformer(nn.Module):
    """Token embeddings from a Hugging Face encoder, with sentence-transformers' arguments.

    ``forward`` reads ``input_ids``/``attention_mask``/``token_type_ids`` from the features dict and adds
    ``token_embeddings`` (the last hidden state); ``tokenize`` turns texts into those features.
    """

    config_keys = ["max_seq_length", "do_lower_case"]

    def __init__(
        self,
        model_name_or_path: str,
        max_seq_length: int | None = None,
        model_args: dict[str, Any] | None = None,
        tokenizer_args: dict[str, Any] | None = None,
        config_args: dict[str, Any] | None = None,
        cache_dir: str | None = None,
        do_lower_case: bool = False,
        tokenizer_name_or_path: str | None = None,
    ) -> None:
        super().__init__()
        with _FIRST_IMPORT:  # transformers 5's lazy __init__ hands a half-built module to a second importing thread
            from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.do_lower_case = do_lower_case
        local = os.path.isdir(model_name_or_path)
        if not local:
            from ..hub import resolve_model_path

            model_name_or_path = str(resolve_model_path(model_name_or_path, cache_folder=cache_dir))
        hf_kwargs: dict[str, Any] = {"cache_dir": cache_dir, "local_files_only": True}
        from safetensors import SafetensorError

        try:  # a broken folder: one error that names it (OSError, for missing files, passes as transformers raises it)
            config = AutoConfig.from_pretrained(model_name_or_path, **hf_kwargs, **(config_args or {}))
            model_type = getattr(config, "model_type", None)
            if model_type not in _ENCODER_CLASSES:
                self.auto_model = AutoModel.from_pretrained(
                    model_name_or_path, config=config, **hf_kwargs, **(model_args or {})
                )
            else:
                family = model_type.replace("-", "_")  # blenderbot-small's module is blenderbot_small
                module = import_module(f"transformers.models.{family}.modeling_{family}")
                self.auto_model = _load_encoder(getattr(module, _ENCODER_CLASSES[model_type]), model_name_or_path,
                                                config, hf_kwargs, model_args)
            self.tokenizer = AutoTokenizer.from_pretrained(
                tokenizer_name_or_path or model_name_or_path, **hf_kwargs, **(tokenizer_args or {})
            )
        except (ValueError, KeyError, SafetensorError) as e:
            raise ModelFolderError(f"transformers cannot load the model in {model_name_or_path}: "
                                   f"{type(e).__name__}: {e}") from e
        if not getattr(self.tokenizer, "is_fast", False):
            raise ModelFolderError(
                f"{model_name_or_path} has no fast tokenizer (tokenizer.json); st-onnx needs one to run without "
                "transformers. Convert it with transformers' AutoTokenizer(..., use_fast=True).save_pretrained()."
            )
        if do_lower_case:  # in the tokenizer, as sentence-transformers 6 does (special tokens stay special)
            backend = self.tokenizer.backend_tokenizer
            backend.normalizer = lowercase_first(backend.normalizer)
        if max_seq_length is None:
            limits = [getattr(config, "max_position_embeddings", None), self.tokenizer.model_max_length]
            limits = [x for x in limits if layout.is_length_limit(x)]
            max_seq_length = min(limits) if limits else 512
        self.max_seq_length = int(max_seq_length)

    @classmethod
    def from_loaded(cls, auto_model: Any, tokenizer: Any, max_seq_length: int, do_lower_case: bool = False
                    ) -> "Transformer":
        """A Transformer over an already loaded model and fast tokenizer (taken as they are, not copied): how a
        sentence-transformers Transformer module given in ``modules=[...]`` is adopted."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.do_lower_case = bool(do_lower_case)
        self.auto_model = auto_model
        self.tokenizer = tokenizer
        self.max_seq_length = int(max_seq_length)
        return self

    @property
    def max_seq_length(self) -> int:
        """Longest input in tokens: the tokenizer's ``model_max_length``, as in sentence-transformers 6 (setting
        either sets both)."""
        return self.tokenizer.model_max_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        check_room_for_text(value, self.tokenizer.num_special_tokens_to_add(pair=False))
        self.tokenizer.model_max_length = value

    def __repr__(self) -> str:
        return (
            f"Transformer({{'max_seq_length': {self.max_seq_length}, 'do_lower_case': {self.do_lower_case}, "
            f"'architecture': {type(self.auto_model).__name__!r}}})"
        )

    @property
    def uses_token_type_ids(self) -> bool:
        return "token_type_ids" in self.tokenizer.model_input_names

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs = {k: features[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in features}
        output = self.auto_model(**inputs, return_dict=True)
        features["token_embeddings"] = output.last_hidden_state
        if output.hidden_states is not None:
            features["all_layer_embeddings"] = output.hidden_states
        return features

    def get_word_embedding_dimension(self) -> int:
        return int(self.auto_model.config.hidden_size)

    get_embedding_dimension = get_word_embedding_dimension  # sentence-transformers 6's names from here on

    @property
    def model(self) -> Any:
        return self.auto_model

    @property
    def processor(self) -> Any:
        return self.tokenizer

    @processor.setter
    def processor(self, value: Any) -> None:
        self.tokenizer = value

    @property
    def modalities(self) -> list[str]:
        return ["text"]

    def preprocess(self, inputs: list, prompt: str | None = None) -> dict[str, Any]:
        """``tokenize`` with ``prompt`` prepended to each text, and its token count as ``prompt_length``."""
        if prompt is None:
            return self.tokenize(inputs)
        features = self.tokenize(prepend(check_prompt(prompt), list(inputs)))
        features["prompt_length"] = self.prompt_length(prompt)
        return features

    def prompt_length(self, prompt: str) -> int:
        """Tokens of ``prompt`` as it starts every input: its ids without a trailing special token ([SEP])."""
        ids = self.tokenize([prompt])["input_ids"][0].tolist()
        special = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        return len(ids) - 1 if ids and ids[-1] in special else len(ids)

    def tokenize(self, texts: list, padding: str | bool = True) -> dict[str, torch.Tensor]:
        """Tokenize strings, (text, text) pairs, or dicts of one text each, as sentence-transformers does."""
        columns = text_columns(texts)
        if len(columns) == 2:  # a pair takes more special tokens than a text: a limit they fill leaves it untruncated
            check_room_for_text(self.max_seq_length, self.tokenizer.num_special_tokens_to_add(pair=True), "pairs")
        # not stripped: sentence-transformers 6 feeds texts as given (a byte-level BPE tokenizer sees the spaces;
        # WordPiece ignores them), where releases before 6 stripped them; do_lower_case is the tokenizer's
        return self.tokenizer(
            *columns,
            padding=padding,
            truncation="longest_first",
            return_tensors="pt",
            max_length=self.max_seq_length,
        )

    def get_config_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.config_keys}

    def save(self, output_path: str | os.PathLike, safe_serialization: bool = True) -> None:
        self.auto_model.save_pretrained(output_path, safe_serialization=safe_serialization)
        self.tokenizer.save_pretrained(output_path)
        layout.write_json(Path(output_path) / layout.SBERT_CONFIG_JSON, self.get_config_dict())

    @classmethod
    def load(cls, input_path: str | os.PathLike, model_args: dict[str, Any] | None = None,
             tokenizer_args: dict[str, Any] | None = None, config_args: dict[str, Any] | None = None) -> "Transformer":
        """Load a saved Transformer; the given ``*_args`` update the saved ones key by key (for this load; what
        they change in the model config is saved with it, as sentence-transformers does)."""
        config = read_transformer_config(input_path)
        for key, given in (("model_args", model_args), ("tokenizer_args", tokenizer_args),
                           ("config_args", config_args)):
            if given:
                config[key] = {**config.get(key, {}), **given}
        if tokenizer_args and "model_max_length" in tokenizer_args:  # asked for explicitly: it is the limit, as in ST 6
            limit = tokenizer_args["model_max_length"]
            limit = int(limit) if isinstance(limit, str) and limit.strip().isdigit() else limit  # '256' from a CLI
            config["max_seq_length"] = positive_int(limit, "tokenizer_kwargs['model_max_length']")
        return cls(model_name_or_path=str(input_path), **config)

