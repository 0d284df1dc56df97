"""fit: training falls the loss, schedulers, checkpoints and resume, evaluation during training, and the fused
ONNX graph follows the new weights."""

from __future__ import annotations

import csv
import errno
import math
import os
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from st_onnx import InputExample, SentenceTransformer, losses
from st_onnx.errors import DiskFullError, InvalidInputError
from st_onnx.evaluation import EmbeddingSimilarityEvaluator
from st_onnx.fit import NO_DECAY, objective_parameters
from st_onnx.training.checkpoints import STATE_FILE, list_checkpoints
from st_onnx.training.schedulers import SCHEDULERS, get_scheduler

PAIRS = [
    ("the cat sleeps", "a cat sleeps", 0.9), ("the dog runs", "a dog runs fast", 0.8),
    ("a man plays music", "the man sings", 0.6), ("the car is red", "a fish swims", 0.1),
    ("the bird flies", "the plane flies", 0.5), ("the child reads", "a woman drives a car", 0.0),
    ("the river is cold", "the water is cold", 0.7), ("a big house", "a small tree", 0.2),
]
EXAMPLES = [InputExample(texts=[a, b], label=s) for a, b, s in PAIRS]
FIT_QUIET = dict(show_progress_bar=False, warmup_steps=0, optimizer_params={"lr": 1e-3})


def model_from(folder) -> SentenceTransformer:
    return SentenceTransformer(str(folder), device="cpu")


def batch_loss(model, loss) -> float:
    features, labels = model.smart_batching_collate(EXAMPLES)
    with torch.no_grad():
        return loss(features, labels).item()


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.torch_modules.state_dict().items()}


def test_loss_falls_and_model_changes(tiny_model_dir):
    model = model_from(tiny_model_dir)
    loss = losses.CosineSimilarityLoss(model)
    before, w0 = batch_loss(model, loss), weights(model)
    torch.manual_seed(0)
    model.fit([(DataLoader(EXAMPLES, shuffle=True, batch_size=4), loss)], epochs=5, **FIT_QUIET)
    assert batch_loss(model, loss) < 0.5 * before
    assert any(not torch.equal(w0[k], v) for k, v in weights(model).items())
    assert not model.torch_modules.training  # left in eval mode


def test_smart_batching_collate(tiny_model_dir):
    model = model_from(tiny_model_dir)
    features, labels = model.smart_batching_collate(EXAMPLES[:3])
    assert len(features) == 2 and features[0]["input_ids"].shape[0] == 3 and labels.dtype == torch.float32
    _, labels = model.smart_batching_collate([InputExample(texts=["a"], label=np.ones(4, dtype=np.float32))] * 2)
    assert labels.shape == (2, 4)
    with pytest.raises(InvalidInputError, match="same number of texts"):
        model.smart_batching_collate([InputExample(texts=["a", "b"]), InputExample(texts=["a"])])


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_matches_transformers(name):
    import transformers

    expected = {
        "constantlr": lambda o: transformers.get_constant_schedule(o),
        "warmupconstant": lambda o: transformers.get_constant_schedule_with_warmup(o, 3),
        "warmuplinear": lambda o: transformers.get_linear_schedule_with_warmup(o, 3, 20),
        "warmupcosine": lambda o: transformers.get_cosine_schedule_with_warmup(o, 3, 20),
        "warmupcosinewithhardrestarts": lambda o: transformers.get_cosine_with_hard_restarts_schedule_with_warmup(
            o, 3, 20),
    }[name]
    ours_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ours, ref = get_scheduler(ours_opt, name.upper(), 3, 20), expected(ref_opt)
    for _ in range(24):
        assert ours.get_last_lr()[0] == pytest.approx(ref.get_last_lr()[0], abs=1e-9)
        ours_opt.step(), ref_opt.step(), ours.step(), ref.step()


def test_every_scheduler_name_reaches_the_optimizer(tiny_model_dir):
    """One step with warmup_steps=1: the warm-up schedulers' first learning rate is 0 (the weights stay as they
    were, AdamW's decay included), ConstantLR's is the full rate."""
    for name in ("ConstantLR", "WarmupConstant", "WarmupLinear", "WarmupCosine", "WarmupCosineWithHardRestarts"):
        model = model_from(tiny_model_dir)
        before = weights(model)
        model.fit([(DataLoader(EXAMPLES, batch_size=4), losses.CoSENTLoss(model))], scheduler=name,
                  steps_per_epoch=1, show_progress_bar=False, warmup_steps=1)
        changed = any(not torch.equal(before[k], v) for k, v in weights(model).items())
        assert changed == (name == "ConstantLR"), name


def test_bad_scheduler_name_lists_the_allowed_ones(tiny_model_dir):
    model = model_from(tiny_model_dir)
    w0 = weights(model)
    with pytest.raises(InvalidInputError, match="warmuplinear") as info:
        model.fit([(DataLoader(EXAMPLES, batch_size=4), losses.CosineSimilarityLoss(model))], scheduler="linear",
                  show_progress_bar=False)
    assert "'linear'" in str(info.value) and isinstance(info.value, ValueError)
    assert all(torch.equal(w0[k], v) for k, v in weights(model).items())


def test_no_decay_groups_and_loss_parameters(tiny_model_dir):
    model = model_from(tiny_model_dir)
    loss = losses.SoftmaxLoss(model, model.get_sentence_embedding_dimension(), num_labels=3)
    named = objective_parameters(model, loss)
    assert len({id(p) for _, p in named}) == len(named)
    assert sum(p.numel() for _, p in named) == sum(p.numel() for p in model.torch_modules.parameters()) + \
        sum(p.numel() for p in loss.parameters())
    assert any("LayerNorm.weight" in n for n, _ in named) and any(n.endswith("bias") for n, _ in named)
    examples = [InputExample(texts=[a, b], label=i % 3) for i, (a, b, _) in enumerate(PAIRS)]
    classifier = loss.classifier.weight.detach().clone()
    model.fit([(DataLoader(examples, batch_size=4), loss)], epochs=1, **FIT_QUIET)
    assert not torch.equal(classifier, loss.classifier.weight)  # the loss's own parameters were trained too
    assert NO_DECAY == ("bias", "LayerNorm.bias", "LayerNorm.weight")


def test_round_robin_over_objectives(tiny_model_dir):
    model = model_from(tiny_model_dir)
    calls = []

    class Counting(losses.CosineSimilarityLoss):
        def forward(self, features, labels):
            calls.append(self.tag)
            return super().forward(features, labels)

    a, b = Counting(model), Counting(model)
    a.tag, b.tag = "a", "b"
    model.fit([(DataLoader(EXAMPLES, batch_size=2), a), (DataLoader(EXAMPLES[:4], batch_size=2), b)],
              epochs=1, **FIT_QUIET)
    assert calls == ["a", "b", "a", "b"]  # steps_per_epoch = the smallest DataLoader (2 batches)


def test_evaluator_callback_and_best_model(tiny_model_dir, tmp_path):
    model = model_from(tiny_model_dir)
    evaluator = EmbeddingSimilarityEvaluator.from_input_examples(EXAMPLES, name="dev")
    seen = []
    out = tmp_path / "out"
    model.fit([(DataLoader(EXAMPLES, batch_size=2), losses.CosineSimilarityLoss(model))], evaluator=evaluator,
              epochs=2, evaluation_steps=2, output_path=str(out), callback=lambda *a: seen.append(a), **FIT_QUIET)
    assert [(e, s) for _, e, s in seen] == [(0, 2), (0, 4), (0, -1), (1, 2), (1, 4), (1, -1)]
    assert model.best_score == max(score for score, _, _ in seen)
    rows = list(csv.reader(open(out / "eval" / "similarity_evaluation_dev_results.csv")))
    assert len(rows) == 7 and rows[0][:3] == ["epoch", "steps", "cosine_pearson"]
    saved = model_from(out)  # the best model was saved through model.save
    assert evaluator(saved) == pytest.approx(model.best_score, abs=1e-5)


def test_an_evaluator_returning_a_dict_picks_the_best_model_by_its_primary_metric(tiny_model_dir, tmp_path):
    """sentence-transformers 3+ evaluators return a dict of metrics and name the one that counts."""

    class DictEvaluator:
        primary_metric = "dev_spearman"

        def __init__(self):
            self.scores = iter([0.9, 0.5, 0.7])

        def __call__(self, model, output_path=None, epoch=-1, steps=-1):
            return {"dev_pearson": 0.0, "dev_spearman": next(self.scores)}

    model = model_from(tiny_model_dir)
    seen = []
    model.fit([(DataLoader(EXAMPLES, batch_size=4), losses.CosineSimilarityLoss(model))], evaluator=DictEvaluator(),
              epochs=3, output_path=str(tmp_path / "out"), callback=lambda *a: seen.append(a[0]), **FIT_QUIET)
    assert model.best_score == 0.9 and seen == [0.9, 0.5, 0.7]  # the callback gets the number, as in 6
    unnamed = DictEvaluator()
    unnamed.primary_metric = "dev_accuracy"
    with pytest.raises(InvalidInputError, match="primary_metric 'dev_accuracy', which is not among them"):
        model.fit([(DataLoader(EXAMPLES, batch_size=4), losses.CosineSimilarityLoss(model))], evaluator=unnamed,
                  **FIT_QUIET)
    unnamed.primary_metric = None
    with pytest.raises(InvalidInputError, match="has no primary_metric"):
        model.fit([(DataLoader(EXAMPLES, batch_size=4), losses.CosineSimilarityLoss(model))], evaluator=unnamed,
                  **FIT_QUIET)


def test_a_sequential_evaluator_of_dict_evaluators_picks_the_best_model(tiny_model_dir, tmp_path):
    """st_onnx's SequentialEvaluator over sentence-transformers 3+ evaluators merges their metrics and names
    'sequential_score' (the main score function of their primary metrics), as sentence-transformers' own does."""
    from st_onnx.evaluation import SequentialEvaluator

    class DictEvaluator:
        def __init__(self, name, scores):
            self.primary_metric = f"{name}_score"
            self.scores, self.name = iter(scores), name

        def __call__(self, model, output_path=None, epoch=-1, steps=-1):
            return {f"{self.name}_other": -1.0, f"{self.name}_score": next(self.scores)}

    sequential = SequentialEvaluator([DictEvaluator("a", [0.1, 0.9, 0.2, 0.0]),
                                      DictEvaluator("b", [0.3, 0.1, 0.5, 0.6])], main_score_function=sum)
    model = model_from(tiny_model_dir)
    seen = []
    model.fit([(DataLoader(EXAMPLES, batch_size=4), losses.CosineSimilarityLoss(model))], evaluator=sequential,
              epochs=3, output_path=str(tmp_path / "out"), callback=lambda *a: seen.append(a[0]), **FIT_QUIET)
    assert sequential.primary_metric == "sequential_score"
    assert [round(score, 6) for score in seen] == [0.4, 1.0, 0.7]
    assert model.best_score == pytest.approx(1.0)
    merged = sequential(model)
    assert sorted(merged) == ["a_other", "a_score", "b_other", "b_score", "sequential_score"]
    assert merged["sequential_score"] == pytest.approx(0.6)


@pytest.mark.parametrize("kwargs, match", [
    ({"epochs": 1.5}, "epochs must be an int >= 0; got 1.5"),
    ({"steps_per_epoch": 2.5}, "steps_per_epoch must be an int >= 0 or None; got 2.5"),
    ({"evaluation_steps": None}, "evaluation_steps must be an int >= 0; got None"),
    ({"evaluation_steps": 1.5}, "evaluation_steps must be an int >= 0; got 1.5"),
    ({"warmup_steps": None}, "warmup_steps must be a finite number >= 0; got None"),
    ({"warmup_steps": -0.5}, "warmup_steps must be a finite number >= 0; got -0.5"),
    ({"checkpoint_save_steps": -1}, "checkpoint_save_steps must be an int >= 0 or None; got -1"),
    ({"checkpoint_save_total_limit": 1.5}, "checkpoint_save_total_limit must be an int >= 0 or None; got 1.5"),
    ({"weight_decay": None}, "weight_decay must be a finite number >= 0; got None"),
    ({"weight_decay": float("nan")}, "weight_decay must be a finite number >= 0; got nan"),
    ({"max_grad_norm": -1}, "max_grad_norm must be a number > 0"),
    ({"optimizer_params": {"lr": "2e-5"}}, r"optimizer_params\['lr'\] must be a finite number >= 0; got '2e-5'"),
    ({"optimizer_params": {"lr": float("inf")}}, r"optimizer_params\['lr'\] must be a finite number >= 0; got inf"),
    ({"optimizer_params": "lr"}, r"optimizer_params must be a dict such as \{'lr': 2e-5\}; got 'lr'"),
    ({"optimizer_class": "AdamW"}, "optimizer_class must be an optimizer class such as torch.optim.AdamW; got 'AdamW'"),
])
def test_bad_fit_arguments_name_the_value(tiny_model_dir, tmp_path, kwargs, match):
    model = model_from(tiny_model_dir)
    before = weights(model)
    args = {**FIT_QUIET, "checkpoint_path": str(tmp_path / "ckpt"), **kwargs}
    with pytest.raises(InvalidInputError, match=match):
        model.fit([(DataLoader(EXAMPLES, batch_size=4), losses.CosineSimilarityLoss(model))], **args)
    assert all(torch.equal(v, weights(model)[k]) for k, v in before.items()) and not (tmp_path / "ckpt").exists()


def test_an_empty_train_dataloader_is_refused(tiny_model_dir):
    model = model_from(tiny_model_dir)
    for loader in (DataLoader([]), DataLoader(EXAMPLES[:3], batch_size=4, drop_last=True)):
        with pytest.raises(InvalidInputError, match=r"yields no batches \(len 0\)"):
            model.fit([(loader, losses.CosineSimilarityLoss(model))], **FIT_QUIET)


def test_use_amp_on_cpu_trains_under_bfloat16(tiny_model_dir):
    model = model_from(tiny_model_dir)
    loss = losses.CosineSimilarityLoss(model)
    model.fit([(DataLoader(EXAMPLES, batch_size=4), loss)], epochs=1, use_amp=True, **FIT_QUIET)
    assert all(p.dtype == torch.float32 for p in model.torch_modules.parameters())


# -- checkpoints and resume --------------------------------------------------------------------------------
class Interrupted(Exception):
    pass


class StopAfter(losses.CosineSimilarityLoss):
    """Raises once it has been called ``limit`` times: a crash in the middle of training."""

    def __init__(self, model, limit):
        super().__init__(model)
        self.limit, self.calls = limit, 0

    def forward(self, features, labels):
        self.calls += 1
        if self.calls > self.limit:
            raise Interrupted
        return super().forward(features, labels)


def run(model, loss, **kw):
    torch.manual_seed(123)
    loader = DataLoader(EXAMPLES * 2, shuffle=True, batch_size=3)  # 6 batches, the last one short
    model.fit([(loader, loss)], epochs=2, steps_per_epoch=4, scheduler="WarmupLinear", warmup_steps=2,
              show_progress_bar=False, optimizer_params={"lr": 1e-3}, **kw)


def test_checkpoints_kept_to_the_limit(tiny_model_dir, tmp_path):
    model = model_from(tiny_model_dir)
    ckpt = tmp_path / "ckpt"
    run(model, losses.CosineSimilarityLoss(model), checkpoint_path=str(ckpt), checkpoint_save_steps=2,
        checkpoint_save_total_limit=2)
    assert [p.name for p in list_checkpoints(ckpt)] == ["6", "8"]
    assert not [p for p in ckpt.iterdir() if p.name.startswith(".")]  # no temporary folders left
    state = torch.load(ckpt / "8" / STATE_FILE, weights_only=False)
    assert state["global_step"] == 8 and state["schedulers"][0]["last_epoch"] == 8
    reloaded = model_from(ckpt / "8")
    for k, v in weights(model).items():
        assert torch.equal(reloaded.torch_modules.state_dict()[k], v)


@pytest.mark.parametrize("every, written", [(2, [2, 4, 6, 8]), (3, [3, 6, 8])])
def test_each_checkpoint_is_written_once_and_the_last_step_always(tiny_model_dir, tmp_path, monkeypatch, every,
                                                                  written):
    """The last step was checkpointed at the end of its epoch, then once more after training: a second copy's
    room on the disk, and a failure after training had succeeded where it had none (found by a disk-full review)."""
    import st_onnx.fit as fit_mod

    steps, real = [], fit_mod.save_checkpoint
    monkeypatch.setattr(fit_mod, "save_checkpoint",
                        lambda model, path, state, limit: (steps.append(state.global_step),
                                                           real(model, path, state, limit)))
    model = model_from(tiny_model_dir)
    run(model, losses.CosineSimilarityLoss(model), checkpoint_path=str(tmp_path / "ckpt"),
        checkpoint_save_steps=every)
    assert steps == written


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, a file whose writes fail ENOSPC")
def test_a_checkpoint_onto_a_full_disk_says_so(tiny_model_dir, tmp_path, monkeypatch):
    """torch.save's own writer reports a full disk as RuntimeError "unexpected pos", naming neither the disk
    nor the folder (found by a disk-full review). The training state goes through a Python file, whose ENOSPC
    becomes a DiskFullError naming the checkpoint; nothing of the checkpoint stays."""
    import st_onnx.fit as fit_mod

    model = model_from(tiny_model_dir)
    real_save = type(model).save

    def save_then_fill(self, path, *args, **kwargs):  # the training state written next lands on a full disk
        real_save(self, path, *args, **kwargs)
        os.symlink("/dev/full", os.path.join(path, STATE_FILE))

    monkeypatch.setattr(type(model), "save", save_then_fill)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(DiskFullError, match=f"No space left on device writing into {ckpt / '2'} "):
        fit_mod.save_checkpoint(model, ckpt, fit_mod.TrainingState(global_step=2), 0)
    assert list(ckpt.iterdir()) == []


def test_disk_full_sees_through_an_error_raised_over_enospc(tmp_path):
    """torch.save into a Python file on a full tmpfs raises its RuntimeError while handling the file's ENOSPC;
    an interrupt raised over a full disk stays an interrupt."""
    from st_onnx import folders

    def raised_over(error, outer):
        try:
            try:
                raise error
            except OSError:
                raise outer
        except BaseException as e:
            return e

    full = folders.disk_full(raised_over(OSError(errno.ENOSPC, "No space left on device"),
                                        RuntimeError("unexpected pos 3456 vs 3350")), tmp_path)
    assert isinstance(full, DiskFullError) and str(tmp_path) in str(full)
    assert folders.disk_full(raised_over(OSError(errno.ENOSPC, "full"), KeyboardInterrupt()), tmp_path) is None
    assert folders.disk_full(raised_over(OSError(errno.EACCES, "denied"), RuntimeError("x")), tmp_path) is None


def test_a_write_failing_while_the_caller_handles_an_unrelated_full_disk_keeps_its_own_error(tmp_path):
    """A save inside the caller's own handler of another disk's ENOSPC (a log write, a fallback save elsewhere)
    that fails for another reason was reported as a full disk, naming a target with room (found by the review
    of the change): the error being handled when the write began is not looked through."""
    from st_onnx import folders

    try:
        with open("/dev/full" if os.path.exists("/dev/full") else tmp_path, "w") as log:
            log.write("step done\n")
            log.flush()
    except OSError:
        with pytest.raises(ValueError, match="^not a disk problem$"):
            with folders.atomic_folder(tmp_path / "out"):
                raise ValueError("not a disk problem")
        with pytest.raises(ValueError, match="^not a disk problem$"):
            with folders.work_folder(tmp_path / "graphs", "export"):
                raise ValueError("not a disk problem")
        with pytest.raises(DiskFullError, match=f"writing into {tmp_path / 'out'} "):  # its own full disk still is
            with folders.atomic_folder(tmp_path / "out"):
                raise OSError(errno.ENOSPC, "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_resume_continues_where_it_stopped(tiny_model_dir, tmp_path):
    straight = model_from(tiny_model_dir)
    run(straight, losses.CosineSimilarityLoss(straight))

    ckpt = tmp_path / "ckpt"
    crashed = model_from(tiny_model_dir)
    with pytest.raises(Interrupted):  # checkpoints at steps 3 and 6; dies in step 7
        run(crashed, StopAfter(crashed, 6), checkpoint_path=str(ckpt), checkpoint_save_steps=3)
    assert [p.name for p in list_checkpoints(ckpt)] == ["3", "6"]

    resumed = model_from(tiny_model_dir)
    loss = StopAfter(resumed, 10**6)
    torch.manual_seed(999)  # a different RNG state: the checkpoint's must win
    resumed.fit([(DataLoader(EXAMPLES * 2, shuffle=True, batch_size=3), loss)], epochs=2, steps_per_epoch=4,
                scheduler="WarmupLinear", warmup_steps=2, show_progress_bar=False, optimizer_params={"lr": 1e-3},
                checkpoint_path=str(ckpt), checkpoint_save_steps=3, resume_from_checkpoint=True)
    assert loss.calls == 2  # steps 7 and 8 only
    state = torch.load(ckpt / "8" / STATE_FILE, weights_only=False)
    assert state["global_step"] == 8 and state["schedulers"][0]["last_epoch"] == 8
    assert state["optimizers"][0]["state"][0]["step"].item() == 8
    for k, v in weights(straight).items():  # same data order, same optimizer moments, same schedule
        torch.testing.assert_close(resumed.torch_modules.state_dict()[k], v, rtol=1e-5, atol=1e-6)


def test_a_run_resumed_at_an_epoch_end_keeps_that_epochs_evaluation(tiny_model_dir, tmp_path):
    """The checkpoint of an epoch's last step is written after the epoch's evaluation: resumed from it, the
    best score (and model) of that evaluation stands."""

    class Scores:
        def __init__(self, values):
            self.values, self.calls = iter(values), 0

        def __call__(self, model, output_path=None, epoch=-1, steps=-1):
            self.calls += 1
            return next(self.values)

    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    crashed = model_from(tiny_model_dir)
    with pytest.raises(Interrupted):  # epoch 0 = steps 1-4, checkpoint at 4, evaluated 0.9; dies in step 5
        run(crashed, StopAfter(crashed, 4), evaluator=Scores([0.9]), output_path=str(out),
            checkpoint_path=str(ckpt), checkpoint_save_steps=4)
    assert torch.load(ckpt / "4" / STATE_FILE, weights_only=False)["best_score"] == 0.9
    best = SentenceTransformer(str(out), device="cpu").encode(["the cat sleeps"])
    resumed = model_from(tiny_model_dir)
    scores = Scores([0.5])
    resumed.fit([(DataLoader(EXAMPLES * 2, shuffle=True, batch_size=3), StopAfter(resumed, 10**6))], epochs=2,
                steps_per_epoch=4, evaluator=scores, output_path=str(out), show_progress_bar=False,
                checkpoint_path=str(ckpt), checkpoint_save_steps=4, resume_from_checkpoint=True)
    assert scores.calls == 1 and resumed.best_score == 0.9  # epoch 1's 0.5 is no better
    np.testing.assert_array_equal(SentenceTransformer(str(out), device="cpu").encode(["the cat sleeps"]), best)


def test_resume_without_checkpoint_path_is_an_error(tiny_model_dir):
    model = model_from(tiny_model_dir)
    with pytest.raises(InvalidInputError, match="checkpoint_path"):
        model.fit([(DataLoader(EXAMPLES), losses.CosineSimilarityLoss(model))], resume_from_checkpoint=True,
                  show_progress_bar=False)


# -- the fused ONNX graph follows the weights --------------------------------------------------------------
def test_saved_model_on_onnx_backend_gives_the_trained_embeddings(tiny_model_copy, tmp_path):
    pytest.importorskip("onnxruntime")
    texts = [a for a, _, _ in PAIRS] + [b for _, b, _ in PAIRS]
    graph = tiny_model_copy / "onnx" / "st_onnx" / "fp32.onnx"
    before = SentenceTransformer(str(tiny_model_copy), backend="onnx").encode(texts)
    assert graph.is_file()  # the folder now holds a graph of the untrained weights

    (tiny_model_copy / "README.md").write_text("---\nlicense: mit\n---\n# the untrained model's own card\n")
    model = model_from(tiny_model_copy)
    torch.manual_seed(0)
    model.fit([(DataLoader(EXAMPLES, shuffle=True, batch_size=4), losses.CosineSimilarityLoss(model))], epochs=3,
              output_path=str(tmp_path / "trained"), **FIT_QUIET)
    assert "untrained" not in (tmp_path / "trained" / "README.md").read_text()  # trained: a card of its own
    trained = model.encode(texts)
    assert np.abs(trained - before).max() > 1e-3
    model.save(str(tiny_model_copy))  # over the model's own folder: the old graph must not survive
    assert not graph.is_file()
    for folder in (tiny_model_copy, tmp_path / "trained"):
        onnx = SentenceTransformer(str(folder), backend="onnx").encode(texts)
        np.testing.assert_allclose(onnx, trained, atol=1e-5, rtol=0)
    shutil.rmtree(tmp_path / "trained")
    assert math.isfinite(float(trained.sum()))


# -- the same training as sentence-transformers -------------------------------------------------------------
def test_two_shuffled_objectives_train_as_sentence_transformers_old_fit(tiny_model_dir):
    """Same seed, same batches, same steps: each objective's order is drawn at its first batch, as there."""
    st = pytest.importorskip("sentence_transformers")
    from sentence_transformers.sentence_transformer import losses as st_losses

    nli = [InputExample(texts=[PAIRS[i % 8][0], PAIRS[(i + 3) % 8][1]], label=i % 3) for i in range(10)]

    def train(cls, loss_module):
        torch.manual_seed(0)
        model = cls(str(tiny_model_dir), device="cpu")
        softmax = loss_module.SoftmaxLoss(model, sentence_embedding_dimension=32, num_labels=3)
        objectives = [(DataLoader(EXAMPLES, batch_size=3, shuffle=True), loss_module.CosineSimilarityLoss(model)),
                      (DataLoader(nli, batch_size=4, shuffle=True), softmax)]
        torch.manual_seed(5)
        fit = model.old_fit if cls is st.SentenceTransformer else model.fit
        fit(objectives, epochs=2, steps_per_epoch=4, warmup_steps=2, optimizer_params={"lr": 5e-4},
            show_progress_bar=False)
        return model.encode([a for a, _, _ in PAIRS]), softmax.classifier.weight.detach()

    (ours, ours_head), (theirs, their_head) = train(SentenceTransformer, losses), train(st.SentenceTransformer,
                                                                                        st_losses)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    torch.testing.assert_close(ours_head, their_head, atol=1e-5, rtol=0)


def test_objectives_that_cannot_train_this_model_are_refused_before_a_step(tiny_model_dir, tmp_path):
    """A loss built for another model would train that one (this one's weights never change); a list is no
    DataLoader; an IterableDataset has no length to size an epoch by."""
    model, other = model_from(tiny_model_dir), model_from(tiny_model_dir)
    before = weights(model)
    with pytest.raises(InvalidInputError, match="the loss CosineSimilarityLoss was built for another model"):
        model.fit([(DataLoader(EXAMPLES, batch_size=4), losses.CosineSimilarityLoss(other))], **FIT_QUIET)
    with pytest.raises(InvalidInputError, match=r"must be a \(DataLoader, loss\) pair; got \(\["):
        model.fit([(list(EXAMPLES), losses.CosineSimilarityLoss(model))], **FIT_QUIET)

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(EXAMPLES)

    with pytest.raises(InvalidInputError, match="has no length .* give steps_per_epoch"):
        model.fit([(DataLoader(Stream(), batch_size=4), losses.CosineSimilarityLoss(model))], **FIT_QUIET)
    assert all(torch.equal(v, weights(model)[k]) for k, v in before.items())
    model.fit([(DataLoader(Stream(), batch_size=4), losses.CosineSimilarityLoss(model))], steps_per_epoch=2,
              **FIT_QUIET)
    assert not all(torch.equal(v, weights(model)[k]) for k, v in before.items())


def test_an_evaluator_score_that_is_no_number_is_named_and_nan_warns(tiny_model_dir, tmp_path, caplog):
    """A NaN score is never a new best, so output_path would silently never get the model: fit warns."""
    import logging

    model = model_from(tiny_model_dir)
    args = {**FIT_QUIET, "output_path": str(tmp_path / "out")}
    with pytest.raises(InvalidInputError, match="returned None; fit keeps the best model by a number"):
        model.fit([(DataLoader(EXAMPLES, batch_size=4), losses.CosineSimilarityLoss(model))],
                  evaluator=lambda *a, **k: None, **args)
    caplog.set_level(logging.WARNING, logger="st_onnx")
    model.fit([(DataLoader(EXAMPLES, batch_size=4), losses.CosineSimilarityLoss(model))],
              evaluator=lambda *a, **k: float("nan"), **args)
    assert "returned NaN: this evaluation cannot pick a best model" in caplog.text
    model.fit([(DataLoader(EXAMPLES, batch_size=4), losses.CosineSimilarityLoss(model))],
              evaluator=lambda *a, **k: torch.tensor(0.75), **args)  # a computed mean, as 2.x accepts
    assert model.best_score == 0.75 and (tmp_path / "out" / "modules.json").is_file()


# -- as sentence-transformers' fit, found by the training review ----------------------------------------------
def _weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.torch_modules.parameters()]


def test_sentence_transformers_no_duplicates_dataloader_trains(tiny_model_dir):
    """The 2.x MultipleNegativesRankingLoss recipe: NoDuplicatesDataLoader is no torch DataLoader, and
    sentence-transformers' fit takes it; it was refused (a plain DataLoader loses the no-duplicates guarantee)."""
    import random

    st_datasets = pytest.importorskip("sentence_transformers.sentence_transformer.datasets")
    model = model_from(tiny_model_dir)
    before = _weights(model)
    random.seed(0)
    loader = st_datasets.NoDuplicatesDataLoader(list(EXAMPLES), batch_size=4)
    model.fit([(loader, losses.MultipleNegativesRankingLoss(model))], epochs=1, **FIT_QUIET)
    assert any(not torch.equal(a, b) for a, b in zip(before, _weights(model)))


def test_gradients_left_before_fit_do_not_leak_into_the_first_step(tiny_model_dir):
    """sentence-transformers zeroes the loss model's gradients when training starts; a backward before fit
    (a sanity check) was added to the first step (a whole step off at lr 1e-3)."""
    def one_step(stale: bool) -> list[torch.Tensor]:
        model = model_from(tiny_model_dir)
        loss = losses.CosineSimilarityLoss(model)
        if stale:
            other = [InputExample(texts=e.texts, label=1 - e.label) for e in EXAMPLES]
            loss(*model.smart_batching_collate(other)).backward()
        torch.manual_seed(0)
        model.fit([(DataLoader(EXAMPLES, batch_size=8), loss)], epochs=1, scheduler="ConstantLR", **FIT_QUIET)
        return _weights(model)

    for a, b in zip(one_step(False), one_step(True)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_resume_with_an_iterable_dataset_and_a_fractional_warmup(tiny_model_dir, tmp_path):
    """fit takes an unsized DataLoader with steps_per_epoch; resuming it called len() on it (TypeError). A
    computed warmup_steps (0.1 * steps, a float, as 2.x scripts write it) trains as there."""
    from torch.utils.data import IterableDataset

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(EXAMPLES)

    def run(model, **kwargs):
        model.fit([(DataLoader(Stream(), batch_size=2), losses.CosineSimilarityLoss(model))], steps_per_epoch=3,
                  epochs=2, checkpoint_path=str(tmp_path / "ckpt"), checkpoint_save_steps=1,
                  **{**FIT_QUIET, "warmup_steps": 0.6}, **kwargs)

    whole = model_from(tiny_model_dir)
    run(whole)
    shutil.rmtree(tmp_path / "ckpt" / "6")  # as if it had stopped after step 5
    resumed = model_from(tiny_model_dir)
    run(resumed, resume_from_checkpoint=True)
    for a, b in zip(_weights(whole), _weights(resumed)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
