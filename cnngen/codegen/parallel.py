"""The runtime owns the threads; a generated kernel is only a task body.

Every kernel module defines ``task(t, n_batch, a0, ..., a5)``, a ``cfunc`` over raw
float32 pointers that computes task ``t`` of a batch of ``n_batch`` images, and the two
drivers here run it, given its address: over
Numba's thread pool (``run_parallel``) or on the calling thread (``run_serial``). The
drivers compile once per machine, whatever the kernel, because they only see the task's
signature. Kernels then compile without Numba's parallel passes, which cost about a
second each, and whether a kernel runs on one thread or all is a choice made at run time.

The batch size is an argument, never part of a kernel's source: one compiled kernel serves
every batch. A module has ``TASKS`` tasks per image, or defines ``task_count(n_batch)``
when its tasks span images (dense: the batch is its GEMM's N).
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import os
import threading

import numba

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
TASK = types.void(types.int64, types.int64, *([FLOAT_PTR] * MAX_ARGS))


@intrinsic
def _data(typingctx, arr):
    """The data pointer of a float32 array."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.float32):
        return None

    def codegen(context, builder, sig, args):
        return context.make_array(sig.args[0])(context, builder, args[0]).data
    return FLOAT_PTR(arr), codegen


@intrinsic
def _call_task(typingctx, address, task_id, n_batch, p0, p1, p2, p3, p4, p5):
    """Call the task function at ``address`` (a cfunc's entry point) for task ``task_id``
    of a batch of ``n_batch``.

    Taking the address as a plain integer keeps the Python-side call of a driver cheap:
    typing a cfunc object argument costs about 11 us per launch, an integer 0.5 us.
    """
    sig = types.void(address, task_id, n_batch, p0, p1, p2, p3, p4, p5)

    def codegen(context, builder, sig, args):
        arg_types = [ir.IntType(64)] * 2 + [context.get_value_type(a) for a in sig.args[3:]]
        fn = builder.inttoptr(args[0], ir.FunctionType(ir.VoidType(), arg_types).as_pointer())
        builder.call(fn, [context.cast(builder, args[1], sig.args[1], types.int64),
                          context.cast(builder, args[2], sig.args[2], types.int64), *args[3:]])
        return context.get_dummy_value()
    return sig, codegen


def _driver(**options):
    """``njit`` kept in Numba's on-disk cache where it can keep one; without a cache where
    nothing is writable (a read-only install and home), rather than failing the import."""
    def wrap(fn):
        try:
            return njit(cache=True, **options)(fn)
        except RuntimeError:        # "cannot cache function ...: no locator available"
            return njit(**options)(fn)
    return wrap


@_driver(parallel=True)
def run_parallel(address, tasks, n_batch, a0, a1, a2, a3, a4, a5):
    p0, p1, p2, p3, p4, p5 = _data(a0), _data(a1), _data(a2), _data(a3), _data(a4), _data(a5)
    for t in prange(tasks):
        _call_task(address, t, n_batch, p0, p1, p2, p3, p4, p5)


@_driver()
def run_serial(address, tasks, n_batch, a0, a1, a2, a3, a4, a5):
    p0, p1, p2, p3, p4, p5 = _data(a0), _data(a1), _data(a2), _data(a3), _data(a4), _data(a5)
    for t in range(tasks):
        _call_task(address, t, n_batch, p0, p1, p2, p3, p4, p5)


# Numba's workqueue threading layer (its fallback when neither TBB nor OpenMP loads) must
# not be entered by two threads at once (it aborts the process); TBB and OpenMP may be.
_WORKQUEUE_LOCK = threading.Lock()
_threadsafe_layer: bool | None = None      # known after the first parallel launch


def launch_parallel(address, tasks, n_batch, *args) -> None:
    """``run_parallel``, serialised across threads where the threading layer needs it."""
    global _threadsafe_layer
    if _threadsafe_layer:
        run_parallel(address, tasks, n_batch, *args)
        return
    with _WORKQUEUE_LOCK:
        run_parallel(address, tasks, n_batch, *args)
        _threadsafe_layer = numba.threading_layer() != "workqueue"
