"""Bad input at the public entry points: refused with the value named and what is allowed, never a silent other
result; and what sentence-transformers accepts, accepted (found by a review that called each entry point with
wrong types, out-of-range numbers and unknown names on both backends, beside sentence-transformers 6.2)."""

from collections import OrderedDict

import numpy as np
import pytest

from helpers import make_tiny_model
from st_onnx import SentenceTransformer
from st_onnx.errors import InvalidInputError


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_path_and_modules_together_load_the_path_and_warn_as_sentence_transformers(tiny_model_copy, tmp_path,
                                                                                     backend):
    """st-onnx ran the modules under the path's settings and card, saying nothing."""
    from st_onnx.modules import load_stack

    other = make_tiny_model(tmp_path / "other", seed=1)
    want = SentenceTransformer(str(tiny_model_copy), device="cpu", backend=backend).encode(["a cat"])
    with pytest.warns(UserWarning, match="modules is ignored"):
        model = SentenceTransformer(str(tiny_model_copy), modules=list(load_stack(other)), device="cpu",
                                    backend=backend)
    np.testing.assert_allclose(model.encode(["a cat"]), want, atol=1e-6)


def test_an_empty_path_with_modules_builds_the_model_from_the_modules(tiny_model_dir):
    """sentence-transformers reads '' as no path (`if model_name_or_path and modules is not None`)."""
    import warnings

    from st_onnx.modules import load_stack

    modules = list(load_stack(tiny_model_dir))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "both were given" either
        model = SentenceTransformer("", modules=modules, device="cpu")
    assert model.encode(["a cat"]).shape == (1, 32)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_modules_as_an_ordered_dict_are_taken_as_sentence_transformers_takes_them(tiny_model_dir, backend):
    """The dict's keys were iterated: 'modules must be torch.nn.Module instances; got str'."""
    from st_onnx.modules import load_stack

    modules = list(load_stack(tiny_model_dir))
    want = SentenceTransformer(modules=modules, device="cpu", backend=backend).encode(["a cat"])
    named = OrderedDict((str(i), m) for i, m in enumerate(modules))
    got = SentenceTransformer(modules=named, device="cpu", backend=backend).encode(["a cat"])
    np.testing.assert_allclose(got, want, atol=1e-6)
    with pytest.raises(InvalidInputError, match=r"modules\[1\] is str 'pooling'"):
        SentenceTransformer(modules=[modules[0], "pooling"], device="cpu")


@pytest.mark.parametrize("bad", [b"/tmp", ["/tmp"], 5])
def test_a_model_name_or_path_of_another_type_is_named(bad):
    """bytes read as a missing folder named "b'/tmp'", 5 was looked up on the Hub as sentence-transformers/5."""
    with pytest.raises(InvalidInputError, match=f"model_name_or_path must be .*; got {type(bad).__name__}"):
        SentenceTransformer(bad, device="cpu")


@pytest.mark.parametrize("columns, named", [
    (([], [], []), "at least 2 rows"),
    ((["a cat"], ["a dog"], [0.5]), "at least 2 rows"),  # a correlation of one pair is NaN
    ((["a cat", "a dog", "the bird"], ["a dog", "the cat", "a fish"], [0.1, None, 0.9]), r"scores\[1\] is None"),
    ((["a cat", "a dog"], ["a dog", "the cat"], [float("nan"), 1.0]), r"scores\[0\] is nan"),
])
def test_the_similarity_evaluator_refuses_what_it_cannot_score(columns, named):
    """It returned NaN (None became NaN in the gold scores), which fit logs and then cannot pick a best model by."""
    from st_onnx.evaluation import EmbeddingSimilarityEvaluator

    with pytest.raises(InvalidInputError, match=named):
        EmbeddingSimilarityEvaluator(*columns)


def test_the_triplet_evaluator_refuses_no_triplets():
    from st_onnx.evaluation import TripletEvaluator

    with pytest.raises(InvalidInputError, match="at least 1 row to score"):
        TripletEvaluator([], [], [])


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_max_seq_length_below_the_special_tokens_is_refused(tiny_model_copy, backend):
    """[CLS] and [SEP] did not fit in 1 token: the tokenizer then truncated nothing, silently. 2 keeps the two
    (the text truncated away), as sentence-transformers does, also from a saved folder's settings."""
    import json

    model = SentenceTransformer(str(tiny_model_copy), device="cpu", backend=backend)
    with pytest.raises(InvalidInputError, match="max_seq_length 1 leaves no room for texts: .* allowed: 2 or more"):
        model.max_seq_length = 1
    assert model.max_seq_length == 64  # unchanged by the refusal
    model.max_seq_length = 3
    assert model.tokenize(["a cat dog bird fish"])["input_ids"].shape[1] == 3
    config = json.loads((tiny_model_copy / "sentence_bert_config.json").read_text())
    (tiny_model_copy / "sentence_bert_config.json").write_text(json.dumps({**config, "max_seq_length": 2}))
    model = SentenceTransformer(str(tiny_model_copy), device="cpu", backend=backend)
    assert model.tokenize(["a cat dog bird fish"])["input_ids"].shape == (1, 2)


def test_thread_counts_onnx_runtime_would_start_are_bounded(monkeypatch):
    """intra_op_num_threads=10**6 was passed on: ONNX Runtime started threads until 23 GB of memory were gone.
    More than 4 a core is lowered to that, with a warning (a setting tuned on a large machine still loads)."""
    import st_onnx.runtime.session as session
    from st_onnx.backends.onnx_backend import OnnxOptions, _session_options

    monkeypatch.setattr(session.os, "cpu_count", lambda: 2)
    assert OnnxOptions.from_dict({"intra_op_num_threads": 8}).intra_op_num_threads == 8
    with pytest.warns(UserWarning, match=r"intra_op_num_threads'\] is 1000000, more than 4 threads .* using 8"):
        assert OnnxOptions.from_dict({"intra_op_num_threads": 10**6}).intra_op_num_threads == 8
    assert _session_options({"intra_op_num_threads": 0}, None).intra_op_num_threads == 0  # ORT's own default
    with pytest.warns(UserWarning, match="using 8"):
        assert _session_options({"inter_op_num_threads": 64}, None).inter_op_num_threads == 8
    with pytest.raises(InvalidInputError, match=r"\['intra_op_num_threads'\] must be an int >= 0; got -5"):
        _session_options({"intra_op_num_threads": -5}, None)


def test_save_refuses_a_model_name_that_is_not_a_string(tiny_model_dir, tmp_path):
    """model_name=5 wrote '# 5' and 'SentenceTransformer(5)' into the card."""
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    with pytest.raises(InvalidInputError, match="model_name must be a string .* got int 5"):
        model.save(str(tmp_path / "out"), model_name=5)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs, named", [
    ({"opset": "x"}, "opset must be an int from 14 to"),
    ({"opset": 99}, "opset must be an int from 14 to"),
    ({"opset": 17.9}, "opset must be an int from 14 to"),  # was 17, silently
    ({"sentences": [None]}, "sentences .* must be a list of non-empty strings"),
    ({"sentences": "abc"}, "sentences .* must be a list of non-empty strings"),  # was checked on 'a', 'b', 'c'
])
def test_export_fused_graph_checks_its_arguments_before_the_trace(tiny_model_dir, tmp_path, kwargs, named):
    """They failed after the trace with torch's or numpy's errors (opset 99 after printing the TorchScript graph),
    leaving the output folder behind."""
    from st_onnx.export import export_fused_graph
    from st_onnx.modules import load_stack

    with pytest.raises(InvalidInputError, match=named):
        export_fused_graph(load_stack(tiny_model_dir), tmp_path / "out", fingerprint="x", **kwargs)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("devices", [5, {"cpu": 1}, [None], "cpu"])
def test_a_pool_of_other_than_a_list_of_devices_is_refused(tiny_model_dir, devices):
    """5 raised a bare TypeError from len(); a dict's keys were taken as the devices."""
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    with pytest.raises(InvalidInputError, match="target_devices must be a non-empty list"):
        model.start_multi_process_pool(devices)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_max_seq_length_past_the_position_embeddings_is_named_when_a_text_reaches_it(tiny_model_copy, backend):
    """The torch backend failed with torch's 'The size of tensor a (300) must match the size of tensor b (128)'."""
    from st_onnx.errors import StOnnxError

    model = SentenceTransformer(str(tiny_model_copy), device="cpu", backend=backend)
    model.max_seq_length = 300  # as sentence-transformers, a setting past the model's 128 positions is taken
    assert model.encode(["a cat"]).shape == (1, 32)  # short texts still fit
    with pytest.raises(StOnnxError, match="300 tokens are more than the model's 128 position embeddings"):
        model.encode(["cat dog " * 200])


@pytest.mark.parametrize("value, expected", [(32, 32), ("32", 32), ("x", None), (0, None)])
def test_a_tokenizer_model_max_length_is_read_as_a_token_count_or_named(tiny_model_dir, value, expected):
    """'x' failed with int()'s bare "invalid literal for int() with base 10: 'x'"."""
    if expected is None:
        with pytest.raises(InvalidInputError, match=r"tokenizer_kwargs\['model_max_length'\] must be a positive int"):
            SentenceTransformer(str(tiny_model_dir), device="cpu", tokenizer_kwargs={"model_max_length": value})
    else:
        model = SentenceTransformer(str(tiny_model_dir), device="cpu", tokenizer_kwargs={"model_max_length": value})
        assert model.max_seq_length == expected


def test_a_flag_given_a_string_by_keyword_is_named_alone(tiny_model_dir):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    with pytest.raises(InvalidInputError, match="got 'yes' as show_progress_bar, which takes no string") as caught:
        model.encode(["a cat"], show_progress_bar="yes")
    assert "batch_size" not in str(caught.value).split("Passed by position?")[0]  # 32 was named as if it were wrong


def test_a_file_in_the_way_of_a_save_is_named_and_a_folder_given_as_the_graph_file_is_called_a_folder(
        tiny_model_copy, tmp_path):
    """'File exists: afile' for a save under a file, 'which does not exist' for a file_name naming a folder."""
    from st_onnx.errors import GraphFileError

    (tmp_path / "afile").write_text("x")
    model = SentenceTransformer(str(tiny_model_copy), device="cpu")
    with pytest.raises(NotADirectoryError, match="a file is in the way of the folder .*afile"):
        model.save(str(tmp_path / "afile" / "sub"))
    (tiny_model_copy / "onnx").mkdir()
    with pytest.raises(GraphFileError, match="onnx, which is a folder; allowed: a fused graph file"):
        SentenceTransformer(str(tiny_model_copy), backend="onnx", onnx_options={"file_name": "onnx"})


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("bad", [None, 5])
def test_tokenize_of_no_list_is_named(tiny_model_copy, backend, bad):
    """TypeError: 'NoneType' object is not iterable, from the facade's own list()."""
    model = SentenceTransformer(str(tiny_model_copy), device="cpu", backend=backend)
    with pytest.raises(InvalidInputError, match=f"inputs must be a list of texts.*; got {type(bad).__name__}"):
        model.tokenize(bad)


def test_fit_names_train_objectives_that_are_no_list_of_pairs(tiny_model_copy):
    """None failed with list()'s TypeError; one bare pair was read as two objectives, the DataLoader named as
    'not a (DataLoader, loss) pair'."""
    from torch.utils.data import DataLoader

    from st_onnx import InputExample, losses

    model = SentenceTransformer(str(tiny_model_copy), device="cpu")
    loader = DataLoader([InputExample(texts=["a cat", "a dog"], label=0.5)] * 2, batch_size=2)
    loss = losses.CosineSimilarityLoss(model)
    with pytest.raises(InvalidInputError, match="train_objectives must be a list of .* got NoneType"):
        model.fit(train_objectives=None)
    with pytest.raises(InvalidInputError, match="train_objectives is one .* pair; .* wrap it in a list"):
        model.fit(train_objectives=(loader, loss))


def test_smart_batching_collate_names_what_is_not_an_input_example(tiny_model_dir):
    """AttributeError: 'int' object has no attribute 'texts'."""
    from st_onnx import InputExample

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    with pytest.raises(InvalidInputError, match=r"takes InputExamples .*; batch\[1\] is str 'a dog'"):
        model.smart_batching_collate([InputExample(texts=["a cat"], label=1.0), "a dog"])


@pytest.mark.parametrize("width_text", ["cat dog " * 200, "cat dog " * 62 + "cat"], ids=["128-tokens", "127-tokens"])
def test_an_out_of_memory_at_a_valid_width_stays_an_out_of_memory(tiny_model_dir, width_text):
    """BERT takes 128 positions: a batch of 127-128 tokens is valid. A torch OOM (or any RuntimeError) in such a
    batch was relabeled InvalidInputError('texts of 128 tokens are more than the model's 128 position embeddings')."""
    import torch

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    model.max_seq_length = 128  # the model's own limit
    assert model.encode([width_text]).shape == (1, 32)  # the width is valid

    def oom(module, args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    handle = model[0].auto_model.encoder.register_forward_pre_hook(oom)
    try:
        with pytest.raises(torch.OutOfMemoryError):  # callers that halve the batch on OOM catch this
            model.encode([width_text])
    finally:
        handle.remove()


def test_an_error_past_max_position_embeddings_of_a_rotary_model_is_not_called_too_long(tmp_path):
    """ModernBERT (rotary positions) encodes 178 tokens past its max_position_embeddings 128 fine; an OOM in such
    a batch was relabeled 'texts of 178 tokens are more than the model's 128 position embeddings take'."""
    import torch

    from helpers import make_tiny_encoder

    model = SentenceTransformer(str(make_tiny_encoder(tmp_path / "mb", "modernbert")), device="cpu")
    model.max_seq_length = 178
    text = "cat " * 300
    assert model.encode([text]).shape == (1, 32)  # rotary: the width is fine

    def oom(module, args, kwargs=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    handle = model[0].auto_model.layers[0].register_forward_pre_hook(oom)
    try:
        with pytest.raises(torch.OutOfMemoryError):
            model.encode([text])
    finally:
        handle.remove()



@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_pairs_under_a_max_seq_length_their_special_tokens_fill_are_refused(tiny_model_copy, backend):
    """max_seq_length 2 holds a text's [CLS] [SEP] but not a pair's three: the pair came back untruncated (106
    tokens under a limit of 2), as in sentence-transformers, without a word."""
    model = SentenceTransformer(str(tiny_model_copy), device="cpu", backend=backend)
    model.max_seq_length = 2
    assert model.tokenize(["a cat dog bird fish"])["input_ids"].shape == (1, 2)
    with pytest.raises(InvalidInputError, match="max_seq_length 2 leaves no room for pairs: .* allowed: 3 or more"):
        model.tokenize([("cat dog " * 50, "a cat dog")])
    with pytest.raises(InvalidInputError, match="leaves no room for pairs"):
        model.encode([("cat dog " * 50, "a cat dog")])
    model.max_seq_length = 3
    assert model.tokenize([("cat dog " * 50, "a cat dog")])["input_ids"].shape == (1, 3)
