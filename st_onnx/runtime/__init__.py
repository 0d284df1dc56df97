"""ONNX Runtime layer: providers, sessions and the encode loop. Never imports torch, transformers or onnx."""
