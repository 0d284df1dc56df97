"""Prompts, similarity functions and truncate_dim, against sentence-transformers on the same folders.

A folder saved by sentence-transformers with a default prompt must embed as sentence-transformers embeds it (the
prompt prepended), on both backends; st-onnx must keep the prompts when it saves the folder again.
"""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from helpers import SENTENCES
from st_onnx import SentenceTransformer, layout
from st_onnx.errors import BackendError, InvalidInputError, ModelFolderError

st = pytest.importorskip("sentence_transformers")

PROMPTS = {"query": "query: ", "document": "passage: ", "fish": "the fish "}


@pytest.fixture(scope="module")
def prompted(tiny_model_dir, tmp_path_factory):
    """The tiny model saved by sentence-transformers with prompts and default prompt 'query'."""
    folder = tmp_path_factory.mktemp("prompted") / "model"
    reference = st.SentenceTransformer(str(tiny_model_dir), device="cpu", prompts=PROMPTS,
                                       default_prompt_name="query", similarity_fn_name="dot")
    reference.save(str(folder))
    return folder


@pytest.fixture(scope="module")
def reference(prompted):
    return st.SentenceTransformer(str(prompted), device="cpu")


@pytest.fixture(scope="module", params=["torch", "onnx"])
def ours(request, prompted):
    return SentenceTransformer(str(prompted), backend=request.param, device="cpu")


def test_saved_prompts_are_read(ours):
    assert ours.prompts["query"] == "query: " and ours.default_prompt_name == "query"
    assert ours.similarity_fn_name == "dot"


@pytest.mark.parametrize("kwargs", [{}, {"prompt_name": "fish"}, {"prompt": "hello "}, {"prompt": ""}])
def test_prompts_embed_as_sentence_transformers(ours, reference, kwargs):
    got = ours.encode(SENTENCES, **kwargs)
    want = reference.encode(SENTENCES, **kwargs)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_every_prompted_dict_reports_its_prompt_length_as_sentence_transformers(ours, reference):
    """output_value=None: with include_prompt=True too, every dict says how many tokens its prompt took."""
    for kwargs in ({"prompt_name": "query"}, {"prompt": "the red dog "}):
        got = ours.encode(SENTENCES[:3], output_value=None, **kwargs)
        want = reference.encode(SENTENCES[:3], output_value=None, **kwargs)
        assert [g["prompt_length"] for g in got] == [int(w["prompt_length"]) for w in want]
        assert all(type(g["prompt_length"]) is int for g in got)
    assert "prompt_length" not in ours.encode(SENTENCES[:1], output_value=None, prompt="")[0]


def test_output_dicts_carry_the_keys_sentence_transformers_gives(ours, reference):
    """sentence-transformers 6 labels every output_value=None dict with its modality ('text')."""
    got = ours.encode(SENTENCES[:2], output_value=None)
    want = reference.encode(SENTENCES[:2], output_value=None)
    assert [sorted(g) for g in got] == [sorted(w) for w in want]
    assert [g["modality"] for g in got] == [w["modality"] for w in want] == ["text", "text"]


def test_prompts_given_in_sentence_transformers_6s_positions_get_a_pointed_error(ours):
    with pytest.raises(InvalidInputError, match="2.x's order .*pass prompt_name=/prompt= by keyword"):
        ours.encode(SENTENCES, "query")  # 6: prompt_name second
    with pytest.raises(InvalidInputError, match="'the ' as show_progress_bar"):
        ours.encode(SENTENCES, None, "the ")  # 6: prompt third


def test_the_default_prompt_changes_the_embedding(ours):
    assert not np.allclose(ours.encode(SENTENCES), ours.encode(SENTENCES, prompt=""), atol=1e-3)


def test_encode_query_and_document_pick_their_prompts(ours, reference):
    np.testing.assert_allclose(ours.encode_query(SENTENCES), reference.encode_query(SENTENCES), atol=1e-5)
    np.testing.assert_allclose(ours.encode_document(SENTENCES), reference.encode_document(SENTENCES), atol=1e-5)
    np.testing.assert_allclose(ours.encode_document(SENTENCES), ours.encode(SENTENCES, prompt_name="document"),
                               atol=1e-6)


def test_every_model_has_empty_query_and_document_prompts_as_in_sentence_transformers_6(tiny_model_dir):
    passage = {"passage": "passage: "}
    for prompts in (None, passage):
        ours = SentenceTransformer(str(tiny_model_dir), device="cpu", prompts=prompts)
        theirs = st.SentenceTransformer(str(tiny_model_dir), device="cpu", prompts=prompts)
        assert ours.prompts == theirs.prompts == {"query": "", "document": "", **(prompts or {})}
        plain = ours.encode(SENTENCES)
        np.testing.assert_allclose(ours.encode(SENTENCES, prompt_name="query"), plain, atol=1e-6)
        # "document" (empty) comes before "passage": encode_document adds no prompt, as sentence-transformers 6
        np.testing.assert_allclose(ours.encode_document(SENTENCES), theirs.encode_document(SENTENCES), atol=1e-5)
        np.testing.assert_allclose(ours.encode_document(SENTENCES), plain, atol=1e-6)


def test_prompt_and_prompt_name_together_warn_and_use_the_prompt(ours):
    with pytest.warns(UserWarning, match="both prompt and prompt_name \\('fish'\\)"):
        got = ours.encode(SENTENCES[:2], prompt="x ", prompt_name="fish")
    np.testing.assert_allclose(got, ours.encode(SENTENCES[:2], prompt="x "), atol=1e-6)


def test_bad_prompt_arguments_are_refused(ours, prompted):
    with pytest.raises(InvalidInputError, match=r"prompt_name 'nope' is not one of this model's prompts; "
                                                r"allowed: \['document', 'fish', 'query'\]"):
        ours.encode(SENTENCES, prompt_name="nope")
    with pytest.raises(InvalidInputError, match="prompt must be a string; got int"):
        ours.encode(SENTENCES, prompt=3)
    with pytest.raises(InvalidInputError, match="default_prompt_name 'other'"):
        SentenceTransformer(str(prompted), device="cpu", default_prompt_name="other")
    with pytest.raises(InvalidInputError, match="prompts must be a dict"):
        SentenceTransformer(str(prompted), device="cpu", prompts={"q": 1})
    with pytest.raises(InvalidInputError, match="similarity_fn_name 'cos' is not supported; allowed: cosine, dot"):
        SentenceTransformer(str(prompted), device="cpu", similarity_fn_name="cos")
    with pytest.raises(InvalidInputError, match="default_prompt_name must be a string or None; got int"):
        ours.default_prompt_name = 3


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_default_prompt_name_and_prompts_change_in_any_order(prompted, backend):
    """As sentence-transformers: the default may be named before its prompt exists; a default whose prompt is
    gone encodes without a prompt (here with a warning, not silently)."""
    ours = SentenceTransformer(str(prompted), device="cpu", backend=backend)
    theirs = st.SentenceTransformer(str(prompted), device="cpu")
    for model in (ours, theirs):
        model.default_prompt_name = "retrieval"  # not a prompt yet
        model.prompts["retrieval"] = "the red "
    np.testing.assert_allclose(ours.encode(SENTENCES), theirs.encode(SENTENCES), atol=1e-5)
    np.testing.assert_allclose(ours.encode(SENTENCES), ours.encode(SENTENCES, prompt="the red "), atol=1e-6)
    for model in (ours, theirs):
        del model.prompts["retrieval"]
    with pytest.warns(UserWarning, match="default_prompt_name 'retrieval' is not one of this model's prompts"):
        got = ours.encode(SENTENCES)
    np.testing.assert_allclose(got, theirs.encode(SENTENCES), atol=1e-5)
    np.testing.assert_allclose(got, ours.encode(SENTENCES, prompt=""), atol=1e-6)


def test_a_default_prompt_name_without_its_prompt_is_saved_as_null(prompted, tmp_path):
    """Saved as it is, the folder would load neither here nor in sentence-transformers."""
    ours = SentenceTransformer(str(prompted), device="cpu")
    del ours.prompts["query"]  # the default prompt
    with pytest.warns(UserWarning, match="default_prompt_name 'query' is not one of this model's prompts.*null"):
        ours.save(str(tmp_path / "saved"))
    saved = json.loads((tmp_path / "saved" / layout.ST_CONFIG_JSON).read_text())
    assert saved["default_prompt_name"] is None and "query" not in saved["prompts"]
    for cls in (SentenceTransformer, st.SentenceTransformer):
        assert cls(str(tmp_path / "saved"), device="cpu").default_prompt_name is None


def test_saved_settings_sentence_transformers_tolerates_load(tiny_model_copy, caplog):
    """A multi-vector similarity name ("maxsim") falls back to cosine; a prompt saved as null reads as ""."""
    path = tiny_model_copy / layout.ST_CONFIG_JSON
    path.write_text(json.dumps({"prompts": {"query": None, "doc": "a "}, "similarity_fn_name": "maxsim"}))
    theirs = st.SentenceTransformer(str(tiny_model_copy), device="cpu")
    with caplog.at_level("WARNING", logger="st_onnx"):
        ours = SentenceTransformer(str(tiny_model_copy), device="cpu")
    assert "'maxsim'" in caplog.text and "using 'cosine'" in caplog.text
    assert ours.similarity_fn_name == theirs.similarity_fn_name == "cosine"
    assert ours.prompts["query"] == theirs.prompts["query"] == ""
    np.testing.assert_allclose(ours.encode(SENTENCES, prompt_name="query"),
                               theirs.encode(SENTENCES, prompt_name="query"), atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_truncate_dim_is_saved_and_read_as_sentence_transformers(tiny_model_copy, tmp_path, backend):
    theirs = st.SentenceTransformer(str(tiny_model_copy), device="cpu", truncate_dim=8)
    theirs.save(str(tmp_path / "by_st"))
    ours = SentenceTransformer(str(tmp_path / "by_st"), device="cpu", backend=backend)
    assert ours.truncate_dim == 8 and ours.get_sentence_embedding_dimension() == 8
    np.testing.assert_allclose(ours.encode(SENTENCES), theirs.encode(SENTENCES), atol=1e-5)
    assert SentenceTransformer(str(tmp_path / "by_st"), device="cpu", truncate_dim=4).encode(SENTENCES).shape[1] == 4
    ours.truncate_dim = 12
    ours.save(str(tmp_path / "by_us"))
    assert json.loads((tmp_path / "by_us" / layout.ST_CONFIG_JSON).read_text())["truncate_dim"] == 12
    again = st.SentenceTransformer(str(tmp_path / "by_us"), device="cpu")
    assert again.truncate_dim == 12 and again.encode(SENTENCES).shape == (len(SENTENCES), 12)
    ours.truncate_dim = None
    ours.save(str(tmp_path / "full"))
    assert "truncate_dim" not in json.loads((tmp_path / "full" / layout.ST_CONFIG_JSON).read_text())
    with pytest.raises(InvalidInputError, match="truncate_dim"):
        ours.truncate_dim = "8"


def test_given_settings_win_over_saved_ones(prompted):
    model = SentenceTransformer(str(prompted), device="cpu", prompts={"query": "q: "}, default_prompt_name="fish",
                                similarity_fn_name="cosine")
    assert model.prompts == {**PROMPTS, "query": "q: "}
    assert model.default_prompt_name == "fish" and model.similarity_fn_name == "cosine"


def test_a_broken_saved_config_names_the_file(tiny_model_copy):
    path = tiny_model_copy / layout.ST_CONFIG_JSON
    path.write_text(json.dumps({"prompts": ["query: "]}))
    with pytest.raises(ModelFolderError, match="config_sentence_transformers.json.*prompts must be a dict"):
        SentenceTransformer(str(tiny_model_copy), device="cpu")


def test_saving_keeps_the_prompts_for_sentence_transformers(prompted, tmp_path):
    model = SentenceTransformer(str(prompted), device="cpu")
    model.prompts = {**model.prompts, "extra": "e: "}
    model.save(str(tmp_path / "again"))
    config = json.loads((tmp_path / "again" / layout.ST_CONFIG_JSON).read_text())
    assert config["prompts"]["extra"] == "e: " and config["default_prompt_name"] == "query"
    assert config["similarity_fn_name"] == "dot"
    reloaded = st.SentenceTransformer(str(tmp_path / "again"), device="cpu")
    assert reloaded.prompts["extra"] == "e: " and reloaded.default_prompt_name == "query"
    np.testing.assert_allclose(model.encode(SENTENCES), reloaded.encode(SENTENCES), atol=1e-5)


@pytest.fixture(scope="module")
def prompt_excluded(tiny_model_dir, tmp_path_factory):
    """The tiny model with include_prompt=False pooling (instructor-style), saved by sentence-transformers."""
    folder = tmp_path_factory.mktemp("exclude") / "model"
    reference = st.SentenceTransformer(str(tiny_model_dir), device="cpu", prompts=PROMPTS)
    reference.set_pooling_include_prompt(False)
    reference.save(str(folder))
    return folder


def test_pooling_without_the_prompt_tokens_matches_sentence_transformers(prompt_excluded):
    ours = SentenceTransformer(str(prompt_excluded), device="cpu")
    reference = st.SentenceTransformer(str(prompt_excluded), device="cpu")
    for kwargs in ({"prompt_name": "query"}, {"prompt": "the big red dog "}):
        np.testing.assert_allclose(ours.encode(SENTENCES, **kwargs), reference.encode(SENTENCES, **kwargs),
                                   atol=1e-5)
    # the prompt's tokens are attended to but not pooled: not the same as encoding without the prompt
    assert not np.allclose(ours.encode(SENTENCES, prompt_name="query"), ours.encode(SENTENCES), atol=1e-3)


def test_onnx_leaves_the_prompt_out_of_pooling_as_sentence_transformers(prompt_excluded):
    model = SentenceTransformer(str(prompt_excluded), backend="onnx", device="cpu")
    assert model._backend.manifest["inputs"][-1] == "prompt_length"
    reference = st.SentenceTransformer(str(prompt_excluded), device="cpu")
    for kwargs in ({"prompt_name": "query"}, {"prompt": "the big red dog "}, {}):
        want = reference.encode(SENTENCES, **kwargs)
        np.testing.assert_allclose(model.encode(SENTENCES, **kwargs), want, atol=1e-5)
        with model.start_multi_process_pool(["cpu", "cpu"]) as pool:
            np.testing.assert_allclose(model.encode_multi_process(SENTENCES, pool, **kwargs), want, atol=1e-5)
    for ours in (model, SentenceTransformer(str(prompt_excluded), device="cpu")):  # per-text outputs carry it too
        everything = ours.encode(SENTENCES[:2], prompt_name="query", output_value=None)
        assert [item["prompt_length"] for item in everything] == [
            item["prompt_length"] for item in reference.encode(SENTENCES[:2], prompt_name="query", output_value=None)]
    torch_pool = SentenceTransformer(str(prompt_excluded), device="cpu")
    with torch_pool.start_multi_process_pool(["cpu"]) as pool:
        np.testing.assert_allclose(torch_pool.encode_multi_process(SENTENCES, pool, prompt_name="query"),
                                   reference.encode(SENTENCES, prompt_name="query"), atol=1e-5)


def test_the_prompt_length_input_has_a_default_for_plain_onnx_runtime(prompt_excluded):
    """A caller that knows nothing of prompt_length (plain ONNX Runtime) gets sentence-transformers' embeddings
    without a prompt; feeding it leaves those leading tokens out, as the Pooling does."""
    import onnxruntime as ort

    model = SentenceTransformer(str(prompt_excluded), backend="onnx", device="cpu")
    session = ort.InferenceSession(str(model._backend.graph_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_overridable_initializers()] == ["prompt_length"]
    reference = st.SentenceTransformer(str(prompt_excluded), device="cpu")
    tokens = reference.tokenize(["the big red dog ate", "a cat"])
    features = {i.name: tokens[i.name].numpy() for i in session.get_inputs()}
    plain = session.run(["sentence_embedding"], features)[0]
    np.testing.assert_allclose(plain, reference.encode(["the big red dog ate", "a cat"]), atol=1e-5)
    with torch.no_grad():
        want = reference({**{k: torch.tensor(v) for k, v in features.items()}, "prompt_length": 3})
    fed = session.run(["sentence_embedding"], {**features, "prompt_length": np.array([3], dtype=np.int64)})[0]
    np.testing.assert_allclose(fed, want["sentence_embedding"].numpy(), atol=1e-5)
    assert not np.allclose(fed, plain, atol=1e-3)


@pytest.mark.parametrize("mode", ["max", "weightedmean", "cls", "lasttoken", "mean_sqrt_len_tokens"])
def test_every_pooling_mode_leaves_the_prompt_out_as_sentence_transformers(mode, tmp_path):
    from helpers import make_tiny_model

    folder = make_tiny_model(tmp_path / "model", pooling=mode)
    reference = st.SentenceTransformer(str(folder), device="cpu", prompts=PROMPTS)
    reference.set_pooling_include_prompt(False)
    reference.save(str(folder))
    want = reference.encode(SENTENCES, prompt_name="fish", batch_size=3)
    for backend in ("torch", "onnx"):
        model = SentenceTransformer(str(folder), backend=backend, device="cpu")
        np.testing.assert_allclose(model.encode(SENTENCES, prompt_name="fish", batch_size=3), want, atol=1e-5,
                                   err_msg=backend)


def test_the_prompt_is_counted_at_the_max_seq_length_in_use(prompt_excluded, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(prompt_excluded, folder)
    long_prompt = "the big red dog and the small cat " * 4
    reference = st.SentenceTransformer(str(folder), device="cpu")
    reference[0].max_seq_length = 16
    model = SentenceTransformer(str(folder), backend="onnx", device="cpu")
    model[0].max_seq_length = 16  # the first encode after it must see it, prompt included
    np.testing.assert_allclose(model.encode(SENTENCES, prompt=long_prompt),
                               reference.encode(SENTENCES, prompt=long_prompt), atol=1e-5)


def test_include_prompt_set_on_the_onnx_model_is_the_pooling_modules_and_is_saved(prompt_excluded, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(prompt_excluded, folder)
    model = SentenceTransformer(str(folder), backend="onnx", device="cpu")
    model.set_pooling_include_prompt(True)
    assert model[1].include_prompt is True
    model.save(str(tmp_path / "saved"))
    assert json.loads((tmp_path / "saved" / "1_Pooling" / "config.json").read_text())["include_prompt"] is True
    model[1].include_prompt = False  # sentence-transformers' way: the graph follows it
    reference = st.SentenceTransformer(str(folder), device="cpu")
    np.testing.assert_allclose(model.encode(SENTENCES, prompt_name="query"),
                               reference.encode(SENTENCES, prompt_name="query"), atol=1e-5)
    assert not np.allclose(model.encode(SENTENCES, prompt_name="query"),
                           SentenceTransformer(str(tmp_path / "saved"), device="cpu").encode(
                               SENTENCES, prompt_name="query"), atol=1e-3)


def test_a_graph_exported_without_prompt_length_is_re_exported(prompt_excluded, tmp_path):
    """A graph of an include_prompt=False model from an st-onnx that had no prompt_length input is replaced."""
    folder = tmp_path / "model"
    shutil.copytree(prompt_excluded, folder)
    graph = SentenceTransformer(str(folder), backend="onnx", device="cpu")._backend.graph_path
    manifest_path = graph.with_suffix(".json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["optional_inputs"] == {"prompt_length": 0}
    assert manifest["parity_prompt_length"]["passed"] is True
    manifest["inputs"].remove("prompt_length")  # what the older exporter wrote
    manifest_path.write_text(json.dumps(manifest))
    model = SentenceTransformer(str(folder), backend="onnx", device="cpu")
    assert "prompt_length" in json.loads(manifest_path.read_text())["inputs"]
    reference = st.SentenceTransformer(str(folder), device="cpu")
    np.testing.assert_allclose(model.encode(SENTENCES, prompt_name="query"),
                               reference.encode(SENTENCES, prompt_name="query"), atol=1e-5)


def test_set_pooling_include_prompt_on_both_backends(tiny_model_dir, tiny_model_copy, prompt_excluded):
    reference = st.SentenceTransformer(str(tiny_model_dir), device="cpu", prompts=PROMPTS)
    reference.set_pooling_include_prompt(False)
    ours = SentenceTransformer(str(tiny_model_dir), device="cpu", prompts=PROMPTS)
    ours.set_pooling_include_prompt(False)
    np.testing.assert_allclose(ours.encode(SENTENCES, prompt_name="query"),
                               reference.encode(SENTENCES, prompt_name="query"), atol=1e-5)
    # the onnx graph of a model that pools every token has no prompt_length input: refused, not ignored
    onnx_model = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", prompts=PROMPTS)
    onnx_model.set_pooling_include_prompt(False)
    with pytest.raises(BackendError, match="include_prompt=False.*no prompt_length input.*backend='torch'"):
        onnx_model.encode(SENTENCES, prompt_name="query")
    with pytest.raises(InvalidInputError, match="True or False; got 'no'"):
        onnx_model.set_pooling_include_prompt("no")
    # and the other way: a graph with the input pools the prompt too once told to
    excluded = SentenceTransformer(str(prompt_excluded), backend="onnx", device="cpu")
    excluded.set_pooling_include_prompt(True)
    included = st.SentenceTransformer(str(prompt_excluded), device="cpu")
    included.set_pooling_include_prompt(True)
    np.testing.assert_allclose(excluded.encode(SENTENCES, prompt_name="query"),
                               included.encode(SENTENCES, prompt_name="query"), atol=1e-5)


@pytest.mark.parametrize("name", ["cosine", "dot", "euclidean", "manhattan"])
def test_similarity_functions_match_sentence_transformers(tiny_model_dir, name):
    ours = SentenceTransformer(str(tiny_model_dir), device="cpu", similarity_fn_name=name)
    reference = st.SentenceTransformer(str(tiny_model_dir), device="cpu", similarity_fn_name=name)
    a, b = ours.encode(SENTENCES[:5]), ours.encode(SENTENCES[3:])
    got, want = ours.similarity(a, b), reference.similarity(a, b)
    assert isinstance(got, torch.Tensor) and got.shape == (5, len(SENTENCES) - 3)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.similarity_pairwise(a, a[::-1].copy()),
                               reference.similarity_pairwise(a, a[::-1].copy()), atol=1e-5, rtol=0)


def test_similarity_fn_name_defaults_to_cosine(tiny_model_dir):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    assert model.similarity_fn_name == "cosine"
    model.similarity_fn_name = "manhattan"
    assert model.similarity_fn_name == "manhattan"



def test_similarity_fn_name_takes_either_librarys_similarity_function_enum(tiny_model_dir):
    """st-onnx's SimilarityFunction (2.x's, values 0-3) was refused by st-onnx's own model ('3 is not supported')."""
    from sentence_transformers import SimilarityFunction as Theirs

    from st_onnx.evaluation import SimilarityFunction as Ours

    model = SentenceTransformer(str(tiny_model_dir), device="cpu", similarity_fn_name=Ours.DOT_PRODUCT)
    assert model.similarity_fn_name == "dot"
    for given, name in ((Ours.MANHATTAN, "manhattan"), (Ours.EUCLIDEAN, "euclidean"), (Ours.COSINE, "cosine"),
                        (Theirs.DOT_PRODUCT, "dot"), (Theirs.EUCLIDEAN, "euclidean")):
        model.similarity_fn_name = given
        assert model.similarity_fn_name == name

@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_truncate_dim_keeps_the_first_dimensions_then_normalizes(tiny_model_copy, backend):
    model = SentenceTransformer(str(tiny_model_copy), backend=backend, device="cpu")  # onnx exports into the folder
    reference = st.SentenceTransformer(str(tiny_model_copy), device="cpu")
    full = model.encode(SENTENCES)
    cut = model.encode(SENTENCES, truncate_dim=8, normalize_embeddings=True)
    assert cut.shape == (len(SENTENCES), 8)
    np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(cut, full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(cut, reference.encode(SENTENCES, truncate_dim=8, normalize_embeddings=True),
                               atol=1e-5)
    with pytest.raises(InvalidInputError, match="truncate_dim must be a positive int or None; got 0"):
        model.encode(SENTENCES, truncate_dim=0)
    everything = model.encode(SENTENCES[:2], output_value=None, truncate_dim=8)  # as sentence-transformers
    theirs = reference.encode(SENTENCES[:2], output_value=None, truncate_dim=8)
    for ours_row, their_row in zip(everything, theirs):
        assert ours_row["sentence_embedding"].shape == their_row["sentence_embedding"].shape == (8,)
        np.testing.assert_allclose(np.asarray(ours_row["sentence_embedding"]),
                                   their_row["sentence_embedding"].numpy(), atol=1e-5)


def test_model_level_truncate_dim(tiny_model_dir):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu", truncate_dim=12)
    assert model.get_sentence_embedding_dimension() == 12
    assert model.encode(SENTENCES).shape == (len(SENTENCES), 12)
    assert model.encode(SENTENCES, truncate_dim=4).shape == (len(SENTENCES), 4)
    with model.start_multi_process_pool(["cpu", "cpu"]) as pool:
        got = model.encode_multi_process(SENTENCES * 3, pool, chunk_size=5, normalize_embeddings=True)
    np.testing.assert_allclose(got, model.encode(SENTENCES * 3, normalize_embeddings=True), atol=1e-5)
    with pytest.raises(InvalidInputError, match="truncate_dim"):
        SentenceTransformer(str(tiny_model_dir), device="cpu", truncate_dim="8")


def test_pool_applies_the_default_prompt(prompted):
    model = SentenceTransformer(str(prompted), backend="onnx", device="cpu")
    with model.start_multi_process_pool(["cpu"]) as pool:
        got = model.encode_multi_process(SENTENCES, pool, chunk_size=3)
        named = model.encode_multi_process(SENTENCES, pool, chunk_size=3, prompt_name="fish")
    np.testing.assert_allclose(got, model.encode(SENTENCES), atol=1e-5)
    np.testing.assert_allclose(named, model.encode(SENTENCES, prompt_name="fish"), atol=1e-5)


def test_prompts_need_no_warning_when_used_alone(ours):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours.encode(SENTENCES[:1], prompt_name="fish")


def test_prompts_on_pairs_and_dicts_go_to_the_first_text(tiny_model_copy):
    model = SentenceTransformer(str(tiny_model_copy), device="cpu", prompts={"q": "the "})
    pairs = [("a cat", "a dog"), ("red car", "blue bus")]
    got = model.encode(pairs, prompt_name="q")
    want = model.encode([("the a cat", "a dog"), ("the red car", "blue bus")])
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(model.encode([{"t": "a cat"}], prompt_name="q"), model.encode(["the a cat"]),
                               atol=1e-6)
    shutil.rmtree(tiny_model_copy)
