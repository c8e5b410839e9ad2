"""Which kernels the model's ops use: one explicit, process-wide setting.

    from components.kernels import settings
    settings.configure(settings.KernelSettings(fused=False))   # stock torch ops from now on
    with settings.using(c_loops=False):                        # torch-op versions of the C loops, for a block
        ...
    with settings.using(bf16=settings.BF16_KERNELS - {"attention"}):  # bf16 attention by the stock ops
        ...

The kernels are for speed only: every choice computes the same function (to float rounding; dropout
draws other masks from the same distribution). `LAB_NO_C_KERNELS=1` in the environment makes
`c_loops` start off.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Iterator

BF16_KERNELS = frozenset({"attention", "cross_entropy", "dropout", "gelu"})


@dataclasses.dataclass(frozen=True)
class KernelSettings:
    fused: bool = True     # off: the stock torch ops everywhere (the bench's --without fused_kernels)
    c_loops: bool = True   # off: the fused kernels' algorithms as torch ops (--without c_kernels)
    bf16: frozenset[str] = BF16_KERNELS  # the fused kernels that serve bfloat16 too (--without bf16_<kernel>)
    heads_attention: bool = True  # off: its cases go to the other attention kernels (--without heads_attention)


_current = KernelSettings(c_loops=not os.environ.get("LAB_NO_C_KERNELS"))


def current() -> KernelSettings:
    return _current


def configure(new: KernelSettings) -> KernelSettings:
    """Make `new` the setting of this process; returns the one it replaces."""
    global _current
    previous, _current = _current, new
    return previous


@contextlib.contextmanager
def using(**changes: Any) -> Iterator[KernelSettings]:
    """The current setting with `changes` (fused=..., c_loops=..., bf16=..., heads_attention=...) inside the block,
    restored after it."""
    previous = configure(dataclasses.replace(_current, **changes))
    try:
        yield _current
    finally:
        configure(previous)
