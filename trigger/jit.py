"""The one decorator through which every trigger kernel is compiled (fixed numba options)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numba

F = TypeVar("F", bound=Callable[..., Any])

#: nopython (njit), nogil so a worker thread leaves the event loop free, cache so a service
#: start loads machine code from disk instead of compiling; no fastmath, so that the
#: kernels add in the same order and with the same rounding as the NumPy reference.
OPTIONS: dict[str, Any] = {
    "nogil": True,
    "cache": True,
    "fastmath": False,
    "error_model": "numpy",
    "boundscheck": False,
}


def kernel(fn: F) -> F:
    """Compile `fn` with the project's numba options (lazily; see `trigger.kernels.warm_up`)."""
    return numba.njit(**OPTIONS)(fn)
