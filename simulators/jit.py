"""The decorators through which every simulator kernel is compiled, and a prefetch hint."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.cpython.unsafe.numbers import trailing_zeros as _trailing_zeros
from numba.extending import intrinsic

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


@intrinsic
def _prefetch(typingctx: Any, arr: Any, idx: Any) -> Any:
    """Ask the CPU to fetch the cache line of `arr[idx]` without waiting for it.

    A hint only (llvm.prefetch, read, keep in every cache level): it changes no result.
    """
    if not isinstance(arr, types.Array) or not isinstance(idx, types.Integer):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
            "llvm.prefetch.p0i8")
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), i8p)
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(arr, idx), codegen


#: `prefetch(arr, idx)` inside a kernel (typed here as what a kernel calls, not the intrinsic)
prefetch: Callable[..., None] = _prefetch

#: `trailing_zeros(x)` inside a kernel: the index of the lowest set bit of an integer x != 0
trailing_zeros = cast(Callable[[Any], int], _trailing_zeros)
