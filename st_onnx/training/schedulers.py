"""The learning-rate schedules of sentence-transformers 2.x ``fit``, as LambdaLR multipliers of the base rate."""

from __future__ import annotations

import math
from typing import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from ..errors import InvalidInputError, allowed

SCHEDULERS = ("constantlr", "warmupconstant", "warmuplinear", "warmupcosine", "warmupcosinewithhardrestarts")


def _warmup(step: int, warmup_steps: int) -> float | None:
    return step / max(1, warmup_steps) if step < warmup_steps else None


def _progress(step: int, warmup_steps: int, t_total: int) -> float:
    return (step - warmup_steps) / max(1, t_total - warmup_steps)


def lr_multiplier(name: str, warmup_steps: int, t_total: int) -> Callable[[int], float]:
    """The factor applied to the base learning rate at each optimizer step, for a scheduler name."""
    key = check_scheduler(name)

    def constant(step: int) -> float:
        return 1.0

    def warmup_constant(step: int) -> float:
        w = _warmup(step, warmup_steps)
        return 1.0 if w is None else w

    def warmup_linear(step: int) -> float:
        w = _warmup(step, warmup_steps)
        return max(0.0, (t_total - step) / max(1, t_total - warmup_steps)) if w is None else w

    def warmup_cosine(step: int) -> float:  # half a cosine cycle from 1 down to 0
        w = _warmup(step, warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * _progress(step, warmup_steps, t_total)))) if w is None else w

    def warmup_cosine_hard_restarts(step: int) -> float:  # one cycle (transformers' default num_cycles=1)
        w = _warmup(step, warmup_steps)
        if w is not None:
            return w
        progress = _progress(step, warmup_steps, t_total)
        return 0.0 if progress >= 1.0 else max(0.0, 0.5 * (1.0 + math.cos(math.pi * (progress % 1.0))))

    return {"constantlr": constant, "warmupconstant": warmup_constant, "warmuplinear": warmup_linear,
            "warmupcosine": warmup_cosine, "warmupcosinewithhardrestarts": warmup_cosine_hard_restarts}[key]


def check_scheduler(name: str) -> str:
    """The lower-cased scheduler name, or InvalidInputError naming the allowed ones."""
    key = name.lower() if isinstance(name, str) else name
    if key not in SCHEDULERS:
        raise InvalidInputError(f"unknown scheduler: {allowed(name, SCHEDULERS)} (case does not matter)")
    return key


def get_scheduler(optimizer: Optimizer, scheduler: str, warmup_steps: int, t_total: int) -> LambdaLR:
    """sentence-transformers' ``_get_scheduler``: a LambdaLR for one of ``SCHEDULERS`` (any case)."""
    return LambdaLR(optimizer, lr_multiplier(scheduler, warmup_steps, t_total))
