"""The runtime owns the threads; a generated kernel is only a task body.

Every kernel module defines ``task(t, a0, ..., a5)``, a ``cfunc`` over raw float32
pointers that computes task ``t`` of ``TASKS``, and the two drivers here run it, given
its address: over
Numba's thread pool (``run_parallel``) or on the calling thread (``run_serial``). The
drivers compile once per machine, whatever the kernel, because they only see the task's
signature. Kernels then compile without Numba's parallel passes, which cost about a
second each, and whether a kernel runs on one thread or all is a choice made at run time.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import os

from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

def _preload_tbb() -> None:
    """Load the pip ``tbb`` package's libtbb so that Numba's TBB threading layer finds it.

    Measured here with another process holding one of the two cores: the TBB layer's
    work stealing slows a 1.5 ms conv to 3.0 ms (one core's worth), OpenMP's static split
    to 5-8 ms (it waits for the descheduled thread), and the workqueue layer costs about
    0.15 ms per launch even on an idle machine. Idle, TBB and OpenMP launch alike.
    """
    try:
        files = importlib.metadata.files("tbb") or []
    except importlib.metadata.PackageNotFoundError:
        return
    for f in files:
        if f.name.startswith("libtbb.so.") or f.name in ("tbb12.dll", "libtbb.12.dylib"):
            try:
                ctypes.CDLL(str(f.locate()), mode=getattr(ctypes, "RTLD_GLOBAL", 0))
            except OSError:
                pass
            return


# Numba picks TBB, then OpenMP, then workqueue; a user's NUMBA_THREADING_LAYER wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    _preload_tbb()

MAX_ARGS = 6
# The fast-math flags every kernel compiles with: contraction, reassociation, reciprocals,
# approximate functions and signless zeros make the kernels fast. ``nnan`` and ``ninf`` are
# left out, so NaN and Inf flow through a network as they do in the float64 reference
# (with them LLVM may assume no NaN exists: relu and max pools turned NaN into numbers).
FASTMATH = {"contract", "reassoc", "arcp", "afn", "nsz"}   # a set: Numba takes no frozenset
FLOAT_PTR = types.CPointer(types.float32)
TASK = types.void(types.int64, *([FLOAT_PTR] * MAX_ARGS))


@intrinsic
def _data(typingctx, arr):
    """The data pointer of a float32 array."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.float32):
        return None

    def codegen(context, builder, sig, args):
        return context.make_array(sig.args[0])(context, builder, args[0]).data
    return FLOAT_PTR(arr), codegen


@intrinsic
def _call_task(typingctx, address, task_id, p0, p1, p2, p3, p4, p5):
    """Call the task function at ``address`` (a cfunc's entry point) for task ``task_id``.

    Taking the address as a plain integer keeps the Python-side call of a driver cheap:
    typing a cfunc object argument costs about 11 us per launch, an integer 0.5 us.
    """
    sig = types.void(address, task_id, p0, p1, p2, p3, p4, p5)

    def codegen(context, builder, sig, args):
        arg_types = [ir.IntType(64)] + [context.get_value_type(a) for a in sig.args[2:]]
        fn = builder.inttoptr(args[0], ir.FunctionType(ir.VoidType(), arg_types).as_pointer())
        builder.call(fn, [context.cast(builder, args[1], sig.args[1], types.int64), *args[2:]])
        return context.get_dummy_value()
    return sig, codegen


@njit(parallel=True, cache=True)
def run_parallel(address, tasks, a0, a1, a2, a3, a4, a5):
    p0, p1, p2, p3, p4, p5 = _data(a0), _data(a1), _data(a2), _data(a3), _data(a4), _data(a5)
    for t in prange(tasks):
        _call_task(address, t, p0, p1, p2, p3, p4, p5)


@njit(cache=True)
def run_serial(address, tasks, a0, a1, a2, a3, a4, a5):
    p0, p1, p2, p3, p4, p5 = _data(a0), _data(a1), _data(a2), _data(a3), _data(a4), _data(a5)
    for t in range(tasks):
        _call_task(address, t, p0, p1, p2, p3, p4, p5)
