"""Model folders st-onnx did not write (downloaded, shared, possibly hostile): what sentence-transformers 6.2
refuses, st-onnx refuses too, and no folder runs its own code (found by a review that loaded crafted folders in
both libraries)."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from st_onnx import InputExample, SentenceTransformer, losses
from st_onnx.errors import InvalidInputError, ModelFolderError


def _edit(path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("how", ["torch", "onnx", "export"])
def test_a_folder_cannot_turn_on_trust_remote_code_for_itself(tiny_model_copy, tmp_path, how):
    """sentence_bert_config.json's model/tokenizer/config args were passed to transformers as written, so
    ``trust_remote_code: true`` there imported the folder's evil.py, the caller's trust_remote_code left False
    (sentence-transformers drops the key from a saved config)."""
    marker = tmp_path / "MARKER"
    (tiny_model_copy / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import BertConfig, BertModel\n"
        "class EvilConfig(BertConfig):\n    model_type = 'bert'\n"
        "class EvilModel(BertModel):\n    config_class = EvilConfig\n")
    _edit(tiny_model_copy / "config.json",
          lambda c: c.update(auto_map={"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}))
    _edit(tiny_model_copy / "sentence_bert_config.json",
          lambda c: c.update(model_args={"trust_remote_code": True, "attn_implementation": "eager"},
                             config_args={"trust_remote_code": True}, tokenizer_args={"trust_remote_code": True}))
    if how == "export":
        from st_onnx.export import export_model_folder

        export_model_folder(tiny_model_copy, "fp32", out_dir=tmp_path / "out")
        model = SentenceTransformer(str(tmp_path / "out"), backend="onnx", device="cpu")
    else:
        model = SentenceTransformer(str(tiny_model_copy), device="cpu", backend=how)
    assert model.encode(["a cat"]).shape == (1, 32)
    assert not marker.exists(), "the folder's own config made transformers run its code"
    if how == "torch":  # the folder's other arguments still reach transformers
        assert model[0].auto_model.config._attn_implementation == "eager"


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_module_paths_out_of_the_folder_are_refused(tiny_model_dir, tmp_path, backend, kind):
    """A modules.json path of '../x' or '/abs/x' loaded that module from outside the folder (the onnx backend
    died on an absolute one with Path.relative_to's bare ValueError); sentence-transformers refuses both."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    shutil.move(str(model / "1_Pooling"), str(tmp_path / "outside"))
    path = "../outside" if kind == "dotdot" else str(tmp_path / "outside")
    _edit(model / "modules.json", lambda m: m[1].update(path=path))
    with pytest.raises(ModelFolderError, match=r"modules\.json names the module path '[^']*outside'.*without '\.\.'"):
        SentenceTransformer(str(model), device="cpu", backend=backend)


def test_a_repositorys_own_module_class_is_refused_not_replaced(tiny_model_copy):
    """'custom_st.Pooling' (a repository's own class, as jina-embeddings-v3's 'custom_st.Transformer') was read as
    st-onnx's Pooling, silently: other embeddings than the model's. sentence-transformers refuses it without
    trust_remote_code; st-onnx runs no repository code, so refuses it either way."""
    (tiny_model_copy / "custom_st.py").write_text("from sentence_transformers.models import Pooling as _P\n"
                                                  "class Pooling(_P):\n    pass\n")
    _edit(tiny_model_copy / "modules.json", lambda m: m[1].update(type="custom_st.Pooling"))
    for trust in (False, True):
        with pytest.raises(ModelFolderError, match=r"'custom_st\.Pooling'.*does not run.*sentence_transformers"):
            SentenceTransformer(str(tiny_model_copy), device="cpu", trust_remote_code=trust)


class _Payload:
    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


_EXAMPLES = [InputExample(texts=["a dog runs", "a cat sleeps"], label=0.3),
             InputExample(texts=["the man", "a woman"], label=0.5)]


def _fit(model, **kwargs) -> None:
    """Two epochs of one step each on two pairs."""
    model.fit([(DataLoader(_EXAMPLES, batch_size=2), losses.CosineSimilarityLoss(model))], epochs=2,
              show_progress_bar=False, **kwargs)


def _first_checkpoint(folder, tmp_path):
    """The step-1 checkpoint folder of a fit of the model in ``folder``."""
    _fit(SentenceTransformer(str(folder), device="cpu"), checkpoint_path=str(tmp_path / "ckpt"),
         checkpoint_save_steps=1)
    return tmp_path / "ckpt" / "1"


def test_resuming_from_a_checkpoint_unpickles_no_code(tiny_model_dir, tmp_path):
    """training_state.pt was loaded with weights_only=False: a shared checkpoint ran what it pickled."""
    from st_onnx.training.checkpoints import STATE_FILE

    step = _first_checkpoint(tiny_model_dir, tmp_path)
    assert torch.load(step / STATE_FILE, weights_only=True)["global_step"] == 1  # fit writes plain values only
    state = torch.load(step / STATE_FILE, weights_only=False)
    marker = tmp_path / "MARKER"
    state["rng"]["evil"] = _Payload(marker)
    torch.save(state, step / STATE_FILE)
    with pytest.raises(InvalidInputError, match=r"training_state\.pt holds objects other than tensors, numpy arrays"):
        _fit(SentenceTransformer(str(tiny_model_dir), device="cpu"), resume_from_checkpoint=str(step))
    assert not marker.exists(), "training_state.pt ran pickled code"


def test_a_checkpoint_from_before_the_numpy_state_became_a_list_still_resumes(tiny_model_dir, tmp_path):
    """Checkpoints written until the RNG state was stored as plain values hold numpy's state as an ndarray:
    loaded weights-only, they were refused (found by the review of the change)."""
    from st_onnx.training.checkpoints import STATE_FILE, load_checkpoint, restore_rng

    step = _first_checkpoint(tiny_model_dir, tmp_path)
    state = torch.load(step / STATE_FILE, weights_only=False)
    rng = np.random.RandomState(7)
    state["rng"]["numpy"] = rng.get_state()  # the earlier format: ('MT19937', ndarray, pos, has_gauss, cached)
    torch.save(state, step / STATE_FILE)
    resumed = SentenceTransformer(str(tiny_model_dir), device="cpu")
    loaded = load_checkpoint(resumed, step)
    assert loaded.global_step == 1
    restore_rng(loaded.rng)
    assert np.random.random() == rng.random()  # the same generator state, restored exactly
    _fit(resumed, checkpoint_path=str(tmp_path / "ckpt2"), resume_from_checkpoint=str(step))
