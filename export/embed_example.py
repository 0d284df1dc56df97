"""Embed texts with a bundle from export/make_bundle.py, using only onnxruntime, tokenizers and numpy.

    python export/embed_example.py BUNDLE_DIR "first text" "second text" [--prompt-name query] [--out emb.npy]

This is the whole contract of the graph (export/README.md) in code: prepend the prompt (the named one, else the
model's default_prompt_name, if any; texts are not stripped), tokenize with the bundle's tokenizer.json (pads to
the batch's longest text, truncates at max_seq_length, lower-cases when the model does), feed
int64 input_ids / attention_mask (/ token_type_ids when the graph lists it), plus prompt_length (the prompt's
token count) where the model pools without the prompt's tokens, read sentence_embedding, keep its first
truncate_dim dimensions when bundle.json names a truncate_dim.
"""

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


class BundleEncoder:
    def __init__(self, bundle_dir, providers=("CPUExecutionProvider",)):
        bundle_dir = Path(bundle_dir)
        if not (bundle_dir / "bundle.json").is_file():
            raise FileNotFoundError(f"{bundle_dir} is not a bundle (no bundle.json); make one with "
                                    "export/make_bundle.py MODEL_DIR BUNDLE_DIR")
        self.info = json.loads((bundle_dir / "bundle.json").read_text(encoding="utf-8"))
        self.tokenizer = Tokenizer.from_file(str(bundle_dir / self.info["tokenizer"]))
        # on the CPU, keep ORT from re-fusing what the graph leaves apart for speed (export/README.md)
        disabled = [] if "CUDAExecutionProvider" in providers else ["SkipLayerNormFusion", "BiasGeluFusion"]
        self.session = ort.InferenceSession(str(bundle_dir / self.info["graph"]), providers=list(providers),
                                            disabled_optimizers=disabled)
        # ONNX Runtime falls back to the CPU without a word when CUDA cannot load: say so, since its CPU kernels
        # run an fp16 graph about 100x slower than the fp32 one
        if self.info.get("precision") == "fp16" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            warnings.warn(f"this fp16 bundle runs on {self.session.get_providers()[0]}, about 100x slower than an "
                          "fp32 bundle there; make an fp32 or int8 bundle for the CPU, or pass "
                          "providers=('CUDAExecutionProvider',) with CUDA set up", stacklevel=2)

    def prompt(self, prompt_name=None):
        """The text to prepend: the named prompt, else the model's default one, else none."""
        prompts = self.info.get("prompts") or {}
        name = prompt_name or self.info.get("default_prompt_name")
        if name is None:
            return ""
        if name not in prompts:
            raise ValueError(f"prompt {name!r} is not in the bundle; allowed: {sorted(prompts)}")
        return prompts[name]

    def prompt_length(self, prompt):
        """The prompt's tokens at the start of every text ([CLS] included, no trailing [SEP])."""
        encoding = self.tokenizer.encode(prompt)
        return len(encoding.ids) - (1 if encoding.special_tokens_mask[-1] else 0)

    def encode(self, texts, batch_size=32, prompt_name=None):
        prompt = self.prompt(prompt_name)
        extra = {}
        if prompt and not self.info.get("pooling_include_prompt", True):
            # the model's pooling skips the prompt's tokens: the graph's prompt_length input says how many
            extra["prompt_length"] = np.array([self.prompt_length(prompt)], dtype=np.int64)
        texts = [prompt + t for t in texts]
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths together: less padding
        out = np.zeros((len(texts), self.info["embedding_dimension"]), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            encodings = self.tokenizer.encode_batch([texts[i] for i in idx])
            columns = {
                "input_ids": [e.ids for e in encodings],
                "attention_mask": [e.attention_mask for e in encodings],
                "token_type_ids": [e.type_ids for e in encodings],
            }
            feed = {name: np.asarray(columns[name], dtype=np.int64) for name in self.info["inputs"]}
            out[idx] = self.session.run(["sentence_embedding"], {**feed, **extra})[0]
        # a Matryoshka model saved with truncate_dim keeps its first dimensions (after the graph's normalization)
        return out[:, :self.info["truncate_dim"]] if self.info.get("truncate_dim") else out


def main(argv=None):
    parser = argparse.ArgumentParser(description="embed texts with an st-onnx bundle")
    parser.add_argument("bundle_dir")
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--prompt-name", help="a prompt of the model's (default: its default_prompt_name, if any)")
    parser.add_argument("--out", help="save the (n, dim) float32 embeddings to this .npy file")
    args = parser.parse_args(argv)
    try:
        embeddings = BundleEncoder(args.bundle_dir).encode(args.texts, prompt_name=args.prompt_name)
    except (OSError, ValueError) as e:  # no bundle, an unknown prompt name: one line, no traceback
        raise SystemExit(f"error: {e}") from None
    if args.out:
        np.save(args.out, embeddings)
    for text, vector in zip(args.texts, embeddings):
        print(f"{text[:40]!r:44} {vector[:4].round(4)} ... (dim {vector.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
