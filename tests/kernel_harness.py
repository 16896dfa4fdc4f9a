"""Run a list of lowered calls outside a plan, on NCHW numpy inputs, for kernel tests.

    out = run_calls(calls, layouts, {"x": x_nchw}, params, n_batch, target, cache_dir)
    out["c1:grad_in0"]           # any buffer, back as (N, C, H, W) float64
    out[ParamGrad("c1", "w")]    # a parameter gradient, in the parameter's shape

``layouts`` maps every Buffer name the calls read or write to its layout, ``Blocked`` or
``Flat`` (add the lowering's ``temps``). A buffer given in ``values`` starts with those
values (a blocked one in its interior); every other buffer starts at zero. ``flat`` names
plain float32 buffers that have no layout entry (optimizer state, parameters).
``params`` is ``{layer: {param: array}}``, the PyTorch layouts; ``Const``s pack from
``params[const.layer]`` and each ``ParamGrad`` is a zero array of its parameter's shape.
"""
from __future__ import annotations

import numpy as np

from cnngen.codegen.cache import KernelCache
from cnngen.codegen.kernel import Buffer, Const, ParamGrad
from cnngen.codegen.layout import Blocked, Flat
from cnngen.codegen.parallel import MAX_ARGS, launch_parallel, run_serial


def to_blocked(layout: Blocked | Flat, x: np.ndarray, n_batch: int) -> np.ndarray:
    """A flat float32 buffer of ``layout`` holding the (N, C, H, W) or (N, C, L) array ``x``
    (a ``Flat`` layout: ``x``'s values in order)."""
    if isinstance(layout, Flat):
        buffer = np.zeros(layout.size(n_batch), np.float32)
        buffer[...] = np.asarray(x, np.float32).ravel()
        return buffer
    buffer = np.zeros(layout.size(n_batch), np.float32)
    padded = np.zeros((n_batch, layout.blocks * layout.vector, layout.height, layout.width))
    padded[:, :layout.channels] = np.asarray(x).reshape(n_batch, layout.channels,
                                                        layout.height, layout.width)
    blocks = padded.reshape(n_batch, layout.blocks, layout.vector, layout.height, layout.width)
    layout.interior(buffer, n_batch)[...] = blocks.transpose(0, 1, 3, 4, 2)
    return buffer


def run_calls(calls, layouts: dict[str, Blocked], values: dict[str, np.ndarray],
              params: dict[str, dict[str, np.ndarray]], n_batch: int, target, cache_dir,
              flat: dict[str, np.ndarray] | None = None, parallel: bool = True) -> dict:
    flat = {name: np.ascontiguousarray(v, np.float32).ravel().copy()
            for name, v in (flat or {}).items()}
    buffers: dict = dict(flat)
    for call in calls:
        for arg in call.args:
            if isinstance(arg, Buffer) and arg.name not in buffers:
                layout = layouts[arg.name]
                buffers[arg.name] = (to_blocked(layout, values[arg.name], n_batch)
                                     if arg.name in values
                                     else np.zeros(layout.size(n_batch), np.float32))
            elif isinstance(arg, ParamGrad) and arg not in buffers:
                shape = params[arg.layer][arg.param].shape
                buffers[arg] = np.zeros(int(np.prod(shape)), np.float32)
            elif isinstance(arg, Const) and arg not in buffers:
                buffers[arg] = np.ascontiguousarray(arg.pack(params.get(arg.layer, {})),
                                                    np.float32).ravel()
    cache = KernelCache(cache_dir)
    kernels = cache.load_all([(c.kernel.name(target), c.kernel.source(target)) for c in calls],
                             target)
    unused = np.zeros(1, np.float32)
    for call, kernel in zip(calls, kernels):
        args = [buffers[a.name] if isinstance(a, Buffer) else buffers[a] for a in call.args]
        args += [unused] * (MAX_ARGS - len(args))
        run = launch_parallel if parallel else run_serial
        run(kernel.fn.address, kernel.task_count(n_batch), n_batch, *args)
    out: dict = {}
    for key, buffer in buffers.items():
        if isinstance(key, ParamGrad):
            out[key] = buffer.reshape(params[key.layer][key.param].shape).astype(np.float64)
        elif isinstance(key, str) and key in flat:
            out[key] = buffer.astype(np.float64)
        elif isinstance(key, str):
            out[key] = layouts[key].to_nchw(buffer, n_batch).astype(np.float64)
    return out
