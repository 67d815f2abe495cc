"""The decorators through which every simulator kernel is compiled, and a prefetch hint."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
from numba.cpython.unsafe.numbers import trailing_zeros as _trailing_zeros

from trigger.jit import prefetch as _trigger_prefetch

F = TypeVar("F", bound=Callable[..., Any])

#: nogil so the front-end service can generate in a worker thread; cache so a start loads
#: machine code from disk; no fastmath so the kernels round like the NumPy reference.
OPTIONS: dict[str, Any] = {"nogil": True, "cache": True, "fastmath": False,
                           "boundscheck": False}


def kernel(fn: F) -> F:
    """Compile `fn` with the simulator's numba options."""
    return numba.njit(**OPTIONS)(fn)


def inline(fn: F) -> F:
    """`kernel`, inlined into its callers by numba (small helpers of hot loops)."""
    return numba.njit(inline="always", **OPTIONS)(fn)


#: `prefetch(arr, idx)` inside a kernel: the trigger's cache-line hint (one intrinsic)
prefetch = _trigger_prefetch

#: `trailing_zeros(x)` inside a kernel: the index of the lowest set bit of an integer x != 0
trailing_zeros = cast(Callable[[Any], int], _trailing_zeros)
