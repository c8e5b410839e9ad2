"""The learning-rate schedule: linear warm-up to lr, then a decay that starts at lr and ends on min_lr at
the last step, for every schedule and for runs as short as a budget can make them."""
from __future__ import annotations

import math

import pytest

from experiments.optim import lr_at
from experiments.schema import TrainSettings


def schedule(steps: int, warmup: int, kind: str = "cosine") -> list[float]:
    train = TrainSettings(steps=steps, warmup=warmup, lr=1.0, min_lr=0.1, schedule=kind)
    return [lr_at(step, train) for step in range(steps)]


@pytest.mark.parametrize("kind", ["cosine", "linear"])
@pytest.mark.parametrize("steps, warmup", [(600, 50), (107, 11), (14, 1), (4, 0), (2, 1), (1, 0)])
def test_the_decay_starts_at_lr_and_the_last_step_trains_at_min_lr(kind, steps, warmup):
    lrs = schedule(steps, warmup, kind)
    assert lrs[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])   # linear, peak at warmup - 1
    if steps - 1 > warmup:
        assert lrs[warmup] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1 if steps - warmup >= 2 else 1.0)          # a decay needs two steps
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))                # never rises again


def test_cosine_and_linear_pass_halfway_at_the_middle_of_the_decay():
    middle = 50 + (200 - 1 - 50) // 2 + 1  # 149 decay steps after the peak: the 75th of them is halfway
    progress = (middle - 50) / (200 - 1 - 50)
    assert schedule(200, 50)[middle] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
    assert schedule(200, 50, "linear")[middle] == pytest.approx(0.1 + 0.9 * (1 - progress))


def test_constant_holds_lr_after_warm_up_and_a_run_without_two_steps_after_it_never_decays():
    assert schedule(10, 2, "constant") == pytest.approx([0.5] + [1.0] * 9)
    assert schedule(5, 5) == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert schedule(5, 4) == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert schedule(1, 0) == schedule(1, 0, "linear") == [1.0]
