"""``fit``: sentence-transformers 2.x training (round-robin over (DataLoader, loss) objectives) on the torch modules.

The facade is not an nn.Module: each objective's optimizer gets ``model.torch_modules``' parameters plus the
loss's own ones (e.g. SoftmaxLoss' classifier), deduplicated. Everything written to disk (the best model at
``output_path``, checkpoints) goes through ``model.save``, so a fused ONNX graph exported from older weights
is never carried along: the ONNX backend exports a fresh one from the new weights.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import trange

from . import layout
from .errors import InvalidInputError, non_negative_int
from .training.checkpoints import (TrainingState, capture_rng, find_resume_checkpoint, load_checkpoint,
                                   restore_rng, save_checkpoint)
from .training.schedulers import check_scheduler, get_scheduler

logger = logging.getLogger(__name__)

NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight")


def smart_batching_collate(model, batch: list) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """InputExamples -> (one tokenized features dict per text column, labels tensor)."""
    if not batch:
        raise InvalidInputError("smart_batching_collate got an empty batch")
    n_texts = None
    for i, example in enumerate(batch):
        if not isinstance(getattr(example, "texts", None), (list, tuple)):  # a DataLoader over plain texts
            raise InvalidInputError(f"smart_batching_collate takes InputExamples (texts=[...], label=...); "
                                    f"batch[{i}] is {type(example).__name__} {example!r:.80}")
        n_texts = len(example.texts) if n_texts is None else n_texts
        if len(example.texts) != n_texts:
            raise InvalidInputError(
                f"every InputExample of a batch needs the same number of texts; got {len(example.texts)} "
                f"and {n_texts} (guid {example.guid!r}): split them into separate DataLoaders"
            )
    columns = [list(col) for col in zip(*(example.texts for example in batch))]
    features = [model.tokenize(col) for col in columns]
    labels = [example.label for example in batch]
    if isinstance(labels[0], np.ndarray):
        return features, torch.from_numpy(np.stack(labels))
    if isinstance(labels[0], torch.Tensor):
        return features, torch.stack(labels)
    try:
        return features, torch.tensor(labels)
    except (TypeError, ValueError, RuntimeError) as error:
        raise InvalidInputError(f"InputExample labels must be numbers (or arrays of them); got {labels[:5]!r}: "
                                f"{error}") from error


def batch_to_device(features: dict[str, Any], device) -> dict[str, Any]:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in features.items()}


def objective_parameters(model, loss: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The model's named parameters, then the loss's own ones, each parameter once."""
    seen: set[int] = set()
    named = []
    for prefix, module in (("model", model.torch_modules), ("loss", loss)):
        for name, param in module.named_parameters():
            if id(param) not in seen:
                seen.add(id(param))
                named.append((f"{prefix}.{name}", param))
    return named


def make_optimizer(named_params, optimizer_class, optimizer_params: dict, weight_decay: float):
    decay = [p for n, p in named_params if not any(nd in n for nd in NO_DECAY)]
    no_decay = [p for n, p in named_params if any(nd in n for nd in NO_DECAY)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return optimizer_class(groups, **optimizer_params)


@dataclass
class _Precision:
    """Autocast for use_amp: fp16 + GradScaler on CUDA, bf16 (no scaler needed) on CPU."""

    device_type: str
    dtype: torch.dtype | None = None
    scaler: Any = None

    @classmethod
    def choose(cls, use_amp: bool, device: torch.device) -> "_Precision":
        if not use_amp:
            return cls(device.type)
        if device.type == "cuda":
            return cls("cuda", torch.float16, torch.amp.GradScaler("cuda"))
        if device.type == "cpu":
            logger.info("use_amp on CPU: training under bfloat16 autocast")
            return cls("cpu", torch.bfloat16)
        logger.warning("use_amp is not supported on device %s: training in float32", device)
        return cls(device.type)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


@dataclass
class _Objective:
    """One (DataLoader, loss) pair with its optimizer, schedule and the current pass over its data."""

    dataloader: Any
    loss: torch.nn.Module
    params: list
    optimizer: Any
    scheduler: Any
    pass_rng: Any = None
    drawn: int = 0
    iterator: Any = field(default=None, repr=False)

    def begin_pass(self) -> None:
        """A new pass over the DataLoader. Its order is drawn at its first batch (where torch's sampler draws
        it): sentence-transformers makes every objective's iterator when training starts and draws each first
        batch at that objective's first step, and so does this, so that the same seed gives the same batches."""
        self.iterator = iter(self.dataloader)
        self.drawn, self.pass_rng = 0, None

    def replay(self, rng: Any, drawn: int, legacy: bool = False) -> None:
        """Resume a pass: the same order (drawn from ``rng``), ``drawn`` batches of it skipped. ``legacy``:
        a checkpoint of st-onnx before 0.1's lazy draw, whose ``rng`` was taken before the iterator was made."""
        if legacy:
            torch.set_rng_state(rng)
        self.iterator = iter(self.dataloader)
        if not legacy:
            torch.set_rng_state(rng)
        for _ in range(drawn):
            next(self.iterator)
        self.pass_rng, self.drawn = rng, drawn

    def _draw(self):
        if self.drawn == 0:  # the pass's order is drawn now: keep the RNG state it is drawn from
            self.pass_rng = torch.get_rng_state()
        return next(self.iterator, None)

    def next_batch(self):
        if self.iterator is None:
            self.begin_pass()
        batch = self._draw()
        if batch is None:  # the pass is used up: a new one, drawn at once (as sentence-transformers does)
            self.begin_pass()
            batch = self._draw()
            if batch is None:
                raise InvalidInputError(f"a train DataLoader yields no batches: {self.dataloader!r}")
        self.drawn += 1
        return batch


def _train_step(obj: _Objective, device, precision: _Precision, max_grad_norm: float) -> float:
    features, labels = obj.next_batch()
    labels = labels.to(device)
    features = [batch_to_device(f, device) for f in features]
    params = [p for p in obj.params if p.requires_grad]
    with precision.autocast():
        loss_value = obj.loss(features, labels)
    skip_scheduler = False
    if precision.scaler is not None:
        scale_before = precision.scaler.get_scale()
        precision.scaler.scale(loss_value).backward()
        precision.scaler.unscale_(obj.optimizer)
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        precision.scaler.step(obj.optimizer)
        precision.scaler.update()
        skip_scheduler = precision.scaler.get_scale() != scale_before
    else:
        loss_value.backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        obj.optimizer.step()
    obj.optimizer.zero_grad()
    if not skip_scheduler:
        obj.scheduler.step()
    return float(loss_value.detach())


def _set_train(model, objectives: list[_Objective], mode: bool) -> None:
    model.torch_modules.train(mode)
    for obj in objectives:
        obj.loss.train(mode)
    if mode:  # sentence-transformers: loss_model.zero_grad() at each epoch start and after each evaluation
        model.torch_modules.zero_grad()
        for obj in objectives:
            obj.loss.zero_grad()


def _evaluate(model, evaluator, output_path, save_best_model, epoch, steps, callback, state: TrainingState):
    """Run the evaluator; on a new best score, save the model to output_path (sentence-transformers 2.x)."""
    if evaluator is None:
        return
    eval_path = None
    if output_path is not None:
        eval_path = os.path.join(output_path, "eval")
        os.makedirs(eval_path, exist_ok=True)
    value = _primary_score(evaluator, evaluator(model, output_path=eval_path, epoch=epoch, steps=steps))
    if callback is not None:  # a number, as 2.x documented it and sentence-transformers 6 passes it
        callback(value, epoch, steps)
    if value > state.best_score:
        state.best_score = value
        model.best_score = value
        if save_best_model and output_path is not None:
            model.save(output_path)


def _primary_score(evaluator, score: Any) -> float:
    """The number that picks the best model: the score, or, from the dict newer evaluators (sentence-transformers
    3 and later) return, its ``primary_metric``."""
    import numbers

    if isinstance(score, dict):
        key = getattr(evaluator, "primary_metric", None)
        if key not in score:
            named = "has no primary_metric" if key is None else f"names primary_metric {key!r}, which is not among them"
            raise InvalidInputError(f"the evaluator returned metrics {sorted(score)} and {named}: fit cannot tell "
                                    "which to keep the best model by")
        score = score[key]
    if hasattr(score, "item") and getattr(score, "ndim", None) == 0:  # a 0-d tensor or array (a computed mean)
        score = score.item()
    if isinstance(score, bool) or not isinstance(score, numbers.Real):
        raise InvalidInputError(f"the evaluator {type(evaluator).__name__} returned {score!r}; fit keeps the best "
                                "model by a number (or a dict of them with a primary_metric)")
    if score != score:  # NaN: never better than the best, so the model would silently never be saved
        logger.warning("the evaluator %s returned NaN: this evaluation cannot pick a best model",
                       type(evaluator).__name__)
    return score


def _build_objectives(model, train_objectives, scheduler, warmup_steps, optimizer_class, optimizer_params,
                      weight_decay, t_total) -> list[_Objective]:
    objectives = []
    for dataloader, loss in train_objectives:
        dataloader.collate_fn = model.smart_batching_collate
        loss.to(model.device)
        params = objective_parameters(model, loss)
        optimizer = make_optimizer(params, optimizer_class, optimizer_params, weight_decay)
        objectives.append(_Objective(dataloader, loss, [p for _, p in params], optimizer,
                                     get_scheduler(optimizer, scheduler, warmup_steps, t_total)))
    return objectives


def _resume(model, objectives: list[_Objective], folder) -> TrainingState:
    state = load_checkpoint(model, folder)
    if len(state.optimizers) != len(objectives):
        raise InvalidInputError(
            f"checkpoint {folder} was written for {len(state.optimizers)} train objectives; fit got "
            f"{len(objectives)}: resume with the same train_objectives"
        )
    for obj, opt, sched, loss_sd, data in zip(objectives, state.optimizers, state.schedulers, state.losses,
                                              state.passes):
        obj.optimizer.load_state_dict(opt)
        obj.scheduler.load_state_dict(sched)
        obj.loss.load_state_dict(loss_sd)
        length = _length(obj.dataloader)
        if data["rng"] is not None and 0 < data["drawn"] and (length is None or data["drawn"] < length):
            obj.replay(data["rng"], data["drawn"], legacy=data.get("draw") != "lazy")
        else:  # used up: the next step begins a pass and draws from it at once, as after the last batch
            obj.iterator, obj.drawn, obj.pass_rng = None, 0, None
    restore_rng(state.rng)
    model.best_score = state.best_score
    return state


def _checkpoint(model, checkpoint_path, total_limit, objectives, state: TrainingState) -> None:
    state.optimizers = [o.optimizer.state_dict() for o in objectives]
    state.schedulers = [o.scheduler.state_dict() for o in objectives]
    state.losses = [o.loss.state_dict() for o in objectives]
    state.passes = [{"rng": o.pass_rng, "drawn": o.drawn, "draw": "lazy"} for o in objectives]
    state.rng = capture_rng()
    save_checkpoint(model, checkpoint_path, state, total_limit)


def _check_args(model, train_objectives, scheduler, **counts: Any) -> list:
    pair = (isinstance(train_objectives, (tuple, list)) and len(train_objectives) == 2
            and _is_data_loader(train_objectives[0]) and isinstance(train_objectives[1], torch.nn.Module))
    if pair:
        raise InvalidInputError("train_objectives is one (DataLoader, loss) pair; allowed: a list of pairs, "
                                "[(DataLoader, loss), ...]: wrap it in a list")
    try:
        objectives = list(train_objectives)
    except TypeError:
        raise InvalidInputError(f"train_objectives must be a list of (DataLoader, loss) pairs; got "
                                f"{type(train_objectives).__name__} {train_objectives!r:.80}") from None
    if not objectives:
        raise InvalidInputError("train_objectives is empty; give [(DataLoader, loss), ...]")
    for item in objectives:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], torch.nn.Module)
                and _is_data_loader(item[0])):
            raise InvalidInputError(f"each train objective must be a (DataLoader, loss) pair; got {item!r}")
        owner = getattr(item[1], "model", model)
        if owner is not model:
            raise InvalidInputError(f"the loss {type(item[1]).__name__} was built for another model; build it with "
                                    "the model being trained (loss = losses.X(model)), or it trains that one")
        if _length(item[0]) is None and not counts.get("steps_per_epoch"):
            raise InvalidInputError(f"the DataLoader {item[0]!r} has no length (an IterableDataset): give "
                                    "steps_per_epoch")
        if _length(item[0]) == 0:
            raise InvalidInputError(f"a train DataLoader yields no batches (len 0): {item[0]!r}; give it examples "
                                    "(with drop_last=True, at least batch_size of them)")
    check_scheduler(scheduler)
    for name, value in counts.items():  # steps_per_epoch and the checkpoint settings: None too (0 and None: off)
        non_negative_int(value, name,
                         or_none=name in ("steps_per_epoch", "checkpoint_save_steps", "checkpoint_save_total_limit"))
    return objectives


def _is_data_loader(obj: Any) -> bool:
    """A torch DataLoader, or a loader like sentence-transformers' NoDuplicatesDataLoader: iterable, with a
    settable ``collate_fn`` (which fit sets to smart_batching_collate, as sentence-transformers does)."""
    if isinstance(obj, torch.utils.data.DataLoader):
        return True
    return hasattr(obj, "__iter__") and hasattr(obj, "collate_fn") and not isinstance(obj, (list, tuple, str, dict))


def _length(dataloader: Any) -> int | None:
    try:
        return len(dataloader)
    except TypeError:  # an IterableDataset without a length
        return None


def _check_numbers(weight_decay: Any, max_grad_norm: Any, optimizer_class: Any, optimizer_params: Any,
                   warmup_steps: Any) -> None:
    import math
    import numbers

    def finite(value: Any) -> bool:
        return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)

    if not (finite(weight_decay) and weight_decay >= 0):
        raise InvalidInputError(f"weight_decay must be a finite number >= 0; got {weight_decay!r}")
    if not (finite(warmup_steps) and warmup_steps >= 0):  # 2.x scripts compute it, e.g. 0.1 * len(loader) * epochs
        raise InvalidInputError(f"warmup_steps must be a finite number >= 0; got {warmup_steps!r}")
    if optimizer_class is not None and not callable(optimizer_class):
        raise InvalidInputError(f"optimizer_class must be an optimizer class such as torch.optim.AdamW; got "
                                f"{optimizer_class!r}")
    if optimizer_params is not None and not isinstance(optimizer_params, dict):
        raise InvalidInputError(f"optimizer_params must be a dict such as {{'lr': 2e-5}}; got {optimizer_params!r}")
    lr = (optimizer_params or {}).get("lr", 0.0)
    if not (finite(lr) and lr >= 0):  # a string from a config file, or inf: caught before any step
        raise InvalidInputError(f"optimizer_params['lr'] must be a finite number >= 0; got {lr!r}")
    if isinstance(max_grad_norm, bool) or not isinstance(max_grad_norm, numbers.Real) or not max_grad_norm > 0:
        raise InvalidInputError(f"max_grad_norm must be a number > 0 (gradients are clipped to that norm); got "
                                f"{max_grad_norm!r}")


def fit(model, train_objectives, evaluator=None, epochs: int = 1, steps_per_epoch: int | None = None,
        scheduler: str = "WarmupLinear", warmup_steps: int = 10000, optimizer_class=None,
        optimizer_params: dict[str, Any] | None = None, weight_decay: float = 0.01, evaluation_steps: int = 0,
        output_path: str | None = None, save_best_model: bool = True, max_grad_norm: float = 1,
        use_amp: bool = False, callback: Callable[[float, int, int], None] | None = None,
        show_progress_bar: bool = True, checkpoint_path: str | None = None, checkpoint_save_steps: int = 500,
        checkpoint_save_total_limit: int = 0, resume_from_checkpoint: bool | str = False) -> None:
    """Train ``model``'s torch modules; the arguments are sentence-transformers 2.x ``fit``'s.

    ``resume_from_checkpoint``: True continues from the newest checkpoint under ``checkpoint_path`` (or
    a checkpoint folder given as a path): weights, global step, optimizers, schedulers, losses, RNG and the
    position in each DataLoader's current pass (replayed with the same shuffle when the DataLoader draws
    its order from torch's global RNG, the default).
    """
    pairs = _check_args(model, train_objectives, scheduler, epochs=epochs, steps_per_epoch=steps_per_epoch,
                        evaluation_steps=evaluation_steps, checkpoint_save_steps=checkpoint_save_steps,
                        checkpoint_save_total_limit=checkpoint_save_total_limit)
    _check_numbers(weight_decay, max_grad_norm, optimizer_class, optimizer_params, warmup_steps)
    optimizer_class = optimizer_class or torch.optim.AdamW
    optimizer_params = dict(optimizer_params if optimizer_params is not None else {"lr": 2e-5})
    device = torch.device(model.device)
    if not steps_per_epoch:
        steps_per_epoch = min(len(dataloader) for dataloader, _ in pairs)
    t_total = int(steps_per_epoch * epochs)
    objectives = _build_objectives(model, pairs, scheduler, warmup_steps, optimizer_class, optimizer_params,
                                   weight_decay, t_total)
    precision = _Precision.choose(use_amp, device)
    model.best_score = -9999999.0
    model._model_card_text = None  # trained here: save() writes a new card, not the one it was loaded with
    resume_folder = find_resume_checkpoint(checkpoint_path, resume_from_checkpoint)
    if resume_folder is not None:
        state = _resume(model, objectives, resume_folder)
    else:
        state = TrainingState()
        for obj in objectives:
            obj.begin_pass()

    def checkpoint_due(step: int) -> bool:
        return checkpoint_path is not None and bool(checkpoint_save_steps) and step % checkpoint_save_steps == 0

    first_epoch, first_step = divmod(state.global_step, steps_per_epoch) if steps_per_epoch else (epochs, 0)
    resumed_at = state.global_step
    for epoch in trange(first_epoch, epochs, desc="Epoch", disable=not show_progress_bar):
        _set_train(model, objectives, True)
        start = first_step if epoch == first_epoch else 0
        for training_steps in trange(start + 1, steps_per_epoch + 1, desc="Iteration", smoothing=0.05,
                                     disable=not show_progress_bar):
            for obj in objectives:
                loss_value = _train_step(obj, device, precision, max_grad_norm)
            state.global_step += 1
            logger.debug("step %d loss %.6f", state.global_step, loss_value)
            if evaluation_steps > 0 and training_steps % evaluation_steps == 0:
                _evaluate(model, evaluator, output_path, save_best_model, epoch, training_steps, callback, state)
                _set_train(model, objectives, True)
            # an epoch's last step is checkpointed after the epoch's evaluation (below), so that a run resumed
            # from it does not skip that evaluation (and its best model)
            if training_steps < steps_per_epoch and checkpoint_due(state.global_step):
                _checkpoint(model, checkpoint_path, checkpoint_save_total_limit, objectives, state)
        _evaluate(model, evaluator, output_path, save_best_model, epoch, -1, callback, state)
        if checkpoint_due(state.global_step):
            _checkpoint(model, checkpoint_path, checkpoint_save_total_limit, objectives, state)
    _set_train(model, objectives, False)
    if evaluator is None and output_path is not None:
        model.save(output_path)
    # the last step, unless the end of its epoch was checkpointed just now (again, it would take a second copy's
    # room on the disk, and fail there after the training had succeeded)
    if checkpoint_path is not None and not (state.global_step > resumed_at and checkpoint_due(state.global_step)):
        _checkpoint(model, checkpoint_path, checkpoint_save_total_limit, objectives, state)
    _note_old_graphs(model)


def _note_old_graphs(model) -> None:
    source = getattr(model, "model_path", None)
    if source is not None and (Path(source) / layout.FUSED_DIR).is_dir():
        logger.info("%s holds fused ONNX graphs of the weights before training; model.save(path) writes the "
                    "trained weights without them, and SentenceTransformer(path, backend='onnx') exports fresh ones",
                    source)
