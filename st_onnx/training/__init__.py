"""Helpers of ``st_onnx.fit``: learning-rate schedules, checkpoints, the training state kept in them."""
