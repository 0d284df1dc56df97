"""The two ways to run a model behind the facade: ``TorchBackend`` (modules) and ``OnnxBackend`` (fused graph).

Both offer ``encode(inputs, options)``, returning raw outputs in input order (a (n, dim) array or tensor for
sentence embeddings, a list for per-text outputs), plus ``tokenize``, ``tokenizer`` and ``max_seq_length``.
The facade formats what they return (``st_onnx.encode.output``).
"""
