"""What users see: each warning points at the user's line (whichever path led to it), a failure st-onnx raises is
not printed by ONNX Runtime as well, logs say true things, and `st-onnx -v` shows st-onnx's progress only."""
import json
import logging

import pytest

from st_onnx import SentenceTransformer

HERE = __file__


def _only(record, category):
    hits = [w for w in record if issubclass(w.category, category)]
    assert hits, [str(w.message) for w in record]
    return hits[0]


def test_encode_query_prompt_warning_points_at_user_line(tiny_model_dir):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    model.prompts = {**model.prompts, "query": "query: "}
    with pytest.warns(UserWarning, match="both prompt and prompt_name") as record:
        model.encode_query("a cat", prompt="p: ", prompt_name="query")
    assert record[0].filename == HERE  # was st_onnx/model.py (encode_query's line)


def test_thread_count_warning_points_at_user_line(tiny_model_copy):
    with pytest.warns(UserWarning, match="more than 4 threads") as record:
        SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu",
                            onnx_options={"intra_op_num_threads": 10_000})
    assert record[0].filename == HERE  # was st_onnx/backends/onnx_backend.py


def test_left_padding_warning_points_at_user_line(tiny_model_copy):
    SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")  # export
    manifest = tiny_model_copy / "onnx" / "st_onnx" / "fp32.json"
    data = json.loads(manifest.read_text())
    data["left_padding_shift"] = 0.05
    manifest.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="pads on the left") as record:
        SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    assert record[0].filename == HERE  # was st_onnx/backends/onnx_backend.py


def test_provider_fallback_warning_points_at_user_line(tiny_model_copy):
    from st_onnx.runtime.providers import cuda_usable
    if cuda_usable():
        pytest.skip("needs a machine where CUDA falls back")
    with pytest.warns(Warning, match="CUDAExecutionProvider was asked for") as record:
        SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cuda")
    assert record[0].filename == HERE  # was st_onnx/backends/onnx_backend.py


def test_contrastive_label_warning_points_at_user_line(tiny_model_dir):
    import torch
    from st_onnx import losses
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    for loss in (losses.ContrastiveLoss(model), losses.OnlineContrastiveLoss(model)):
        feats = [model.tokenize(["a cat", "a dog"]), model.tokenize(["the cat", "fire"])]
        with pytest.warns(UserWarning, match="takes labels 0") as record:
            loss(feats, torch.tensor([0.5, 1.0]))
        assert record[0].filename == HERE  # was torch/nn/modules/module.py


def test_failed_run_prints_no_ort_log_line_besides_the_exception(tiny_model_copy, capfd):
    from st_onnx.errors import StOnnxError
    model = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    model.max_seq_length = 300  # over the tiny model's 128 positions
    capfd.readouterr()
    with pytest.raises(StOnnxError, match="ONNX Runtime failed"):
        model.encode(["cat " * 250])
    assert "onnxruntime" not in capfd.readouterr().err  # was "[E:onnxruntime:, sequential_executor.cc ...]"


def test_plain_folder_load_does_not_warn_every_load(tmp_path, caplog):
    from helpers import make_tiny_transformer
    folder = make_tiny_transformer(tmp_path / "plain")
    with caplog.at_level(logging.WARNING, logger="st_onnx"):
        for _ in range(3):
            SentenceTransformer(str(folder), device="cpu")
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING and "plain transformers folder" in r.message]
    assert len(warned) <= 1  # was 3 (sentence-transformers 6.2 logs it at INFO)


def test_export_info_log_names_the_folder_it_wrote(tiny_model_dir, tmp_path, caplog):
    from st_onnx.export import export_model_folder

    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="st_onnx"):
        export_model_folder(tiny_model_dir, "fp32", out_dir=out)
    wrote = [r.getMessage() for r in caplog.records if r.getMessage().startswith("wrote ")]
    assert wrote == [f"wrote {out} (a copy of {tiny_model_dir} with its fp32 graph)"]  # named the removed work folder


def test_cli_verbose_logs_st_onnx_progress_not_dependency_internals(tiny_model_dir, tmp_path):
    import subprocess
    import sys
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-c", "import sys; from st_onnx.cli import main; sys.exit(main())", "-v",
                        "export", str(tiny_model_dir), str(out), "--precision", "int8"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    logged = [line for line in r.stderr.splitlines() if line.startswith(("INFO ", "WARNING "))]
    assert any("ORT fusions" in line for line in logged)
    others = [line for line in logged if not line.split(" ")[1].startswith("st_onnx")]
    assert not others, others[:5]  # were ~25 lines of ORT's fusion_utils, onnx_model, the quantizer


def test_the_cli_called_from_python_gives_the_log_level_back(tiny_model_dir, tmp_path):
    """`-v` set the st_onnx logger to INFO for good: encode's progress bars, shown at INFO, then came on."""
    from st_onnx.cli import main

    before = logging.getLogger("st_onnx").level
    assert main(["-v", "export", str(tiny_model_dir), str(tmp_path / "out")]) == 0
    assert logging.getLogger("st_onnx").level == before


def test_the_cli_called_from_python_leaves_the_root_logger_without_its_handler(tmp_path):
    """main() ran logging.basicConfig(): an application calling it before configuring its own logging found its
    logging.basicConfig(filename=...) afterwards doing nothing (the root logger had main()'s stderr handler)."""
    from st_onnx.cli import main

    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers = []  # an application that has not configured its logging yet (pytest adds handlers of its own)
    try:
        assert main(["export", str(tmp_path / "missing"), str(tmp_path / "out")]) == 1
        added, level_after = root.handlers[:], root.level
    finally:
        root.handlers, root.level = saved, level
    assert added == [] and level_after == level


def test_an_int8_export_leaves_the_root_logger_as_it_was(tiny_model_copy):
    """ONNX Runtime's quantizer logs through logging.info(), which calls logging.basicConfig() when the root
    logger has no handler: an int8 export (or a load exporting one) gave the application's root logger a stderr
    handler, and the application's own logging.basicConfig(...) afterwards did nothing."""
    from st_onnx.export import export_model_folder

    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers = []  # an application that has not configured its logging yet (pytest adds handlers of its own)
    try:
        export_model_folder(tiny_model_copy, "int8")
        added = root.handlers[:]
    finally:
        root.handlers, root.level = saved, level
    assert added == []


def test_an_int8_export_keeps_a_handler_the_application_adds_meanwhile(tiny_model_copy, monkeypatch):
    """The first fix removed every root handler added while the quantizer ran: a service configuring its logging
    in the main thread while a background thread loaded an int8 model lost its own handler (found by the review
    of that fix). The quantizer now logs to a named logger and never touches the root logger."""
    import threading

    import onnxruntime.quantization as quantization

    from st_onnx.export import export_model_folder

    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    started, added = threading.Event(), threading.Event()
    real = quantization.quantize_dynamic

    def quantize_dynamic(*args, **kwargs):  # the quantization is under way (seconds for a real model)
        started.set()
        added.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(quantization, "quantize_dynamic", quantize_dynamic)
    handler = logging.NullHandler()

    def application():
        started.wait(10)
        root.addHandler(handler)  # as logging.basicConfig(handlers=[...]) does
        added.set()

    root.handlers = []
    try:
        thread = threading.Thread(target=application)
        thread.start()
        export_model_folder(tiny_model_copy, "int8")
        thread.join()
        after = root.handlers[:]
    finally:
        root.handlers, root.level = saved, level
    assert after == [handler]
