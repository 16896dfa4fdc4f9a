"""Training lowerings of batch norm and dropout (the ops of ``ops/norm.py``).

batchnorm, training forward: three calls.
  1. ``batchnorm_stats_train``, a task per (image, channel block): the image's per-channel
     mean and sum of squared deviations from it (two passes over the plane, in cache),
     into ``<layer>:partials``. When a direct conv writes the batch norm's input, the conv's
     epilogue writes these per row band instead, while the band is in cache, and this call
     goes (``statistics_in_conv``).
  2. ``batchnorm_finalize_train``, a task per channel block: Chan et al.'s combination of
     the bands' (count, mean, M2) in float64, two passes over the partials; writes the batch
     mean and biased variance (``<layer>:mean``, ``<layer>:var``) and the normalisation as
     ``<layer>:scale`` and ``<layer>:shift``.
  3. ``scale_shift``: y = act(scale*x + shift), the activation fused after the batch norm
     (``passes.training``) included; with a fused max pool, ``maxpool2d_switches`` pools
     act(scale*x + shift) as it reads x and writes the switches, so the normalised
     activation is never stored.
  No step subtracts two large sums (no one-pass sum of squares), so the variance keeps
  its digits when the mean is large against the spread.
batchnorm, backward: three calls (four with a fused max pool).
  0. with a fused max pool, ``pool2d_grad`` through the switches into the pre-pool
     gradient ``<layer>:grad_pre_pool``.
  1. ``batchnorm_stats_grad`` per (image, channel block): with a fused activation, first
     dy <- dy * act'(act(scale*x + shift)) in place (y recomputed from x); then the sums
     of dy and dy*(x - mean).
  2. ``batchnorm_finalize_grad`` per channel block: dgamma, dbeta (into the parameter
     gradients) and the coefficients of dx = A*dy + B*(x - mean) + C0.
  3. ``batchnorm_grad`` per (image, channel block, row): dx.
dropout, training forward and backward: ``dropout_train``, x (or dy) times a keep mask that
the kernel draws from a counter-based hash of (seed, layer salt, NCHW index); the backward
recomputes the forward's mask from the same seed instead of storing it, which saves an
activation-sized buffer write and read per step for a few integer operations per element
(``dropout_mask`` is the same mask in numpy).

Buffers a trainer provides or reads (all ``Flat`` float32):
  ``<layer>:seed`` (dropout, 2 floats): seed_lo, seed_hi, integers in [0, 2**24) (float32
      holds them exactly): the 48-bit seed seed_lo + seed_hi*2**24. Refill it before each
      training forward (``step_seed(run_seed, step)``, or ``encode_seed``) and leave it until
      that step's backward has run. Every dropout layer may get the same value: the kernel
      mixes in a salt of the layer's name.
  ``<layer>:mean``, ``<layer>:var`` (batchnorm, blocks*V floats; channel c at index c): the
      batch mean and biased variance the forward computed; ``update_running_stats`` folds
      them into running_mean and running_var.
"""
from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from ...passes import origin
from ...passes.training import block_parts
from ..kernel import Call, Const, spec
from ..layout import Blocked, Flat
from ..vecmath import OUTPUT_DERIVATIVES
from . import LEAKY_ALPHA, GradLowering, Lowering, activation_values
from .conv import retarget
from .elementwise import padded
from .pool import Normalise, geometry, switches_call
from .pool_grad import NO_PADS, pool_grad_call

SEED_FLOATS = 2
SEED_BITS = 24                  # per float: float32 holds every integer below 2**24


# ---- batch norm -----------------------------------------------------------------------------

def gamma_beta(c: int, vector: int):
    """Pack (gamma | beta), each padded to whole blocks with 0."""
    return lambda p: np.concatenate([padded(p["gamma"], c, vector), padded(p["beta"], c, vector)])


def stat_layouts(x: Blocked) -> dict[str, Flat]:
    """The batch norm's temps: per-image partials, then per-channel vectors (blocks*V)."""
    lanes = x.blocks * x.vector
    return {"partials": Flat(2 * lanes, per_sample=True), "mean": Flat(lanes),
            "var": Flat(lanes), "scale": Flat(lanes), "shift": Flat(lanes)}


def activation_of(node) -> tuple[str, float]:
    """(name, alpha) of the activation fused after a batch norm ("identity" if none)."""
    act = block_parts(node)[1]
    if act is None:
        return "identity", 0.0
    return act.op, float(act.attrs.get("alpha", LEAKY_ALPHA))


def lower_batchnorm_train(low: Lowering) -> list[Call]:
    """Batch statistics, then one pass that normalises and applies the fused activation
    (and the fused max pool, with its switches)."""
    node, x, out, n = low.node, low.ins[0], low.out, low.n_batch
    bn, _, pool = block_parts(node)
    v, name, c = x.vector, node.name, x.channels
    temps = {what: low.temp(what, layout) for what, layout in stat_layouts(x).items()}
    pixels = n * x.blocks * v * x.height * x.width
    stats = spec("batchnorm_stats_train", ("batchnorm", "stats"), f"nchw{v}c", flops=3 * pixels,
                 bytes=8 * pixels, blocks=x.blocks, height=x.height, width=x.width,
                 **x.strides("x"))
    finalize = spec("batchnorm_finalize_train", ("batchnorm", "finalize"), f"nchw{v}c",
                    bytes=4 * 2 * n * x.blocks * v, blocks=x.blocks, height=x.height,
                    width=x.width, groups=1, rows=x.height, eps=float(bn.attrs["eps"]))
    calls = [
        Call(name, stats, (low.inputs[0], temps["partials"])),
        Call(name, finalize, (temps["partials"], Const(bn.name, "gamma_beta", gamma_beta(c, v)),
                              temps["mean"], temps["var"], temps["scale"], temps["shift"])),
    ]
    act, alpha = activation_of(node)
    ops = tuple(part.op for part in origin(node))
    if pool is not None:
        normalise = Normalise(temps["scale"], temps["shift"], act, alpha)
        return calls + [switches_call(low, ops, *geometry(pool), normalise)]
    normalise = spec("scale_shift", ops + ("train",), f"nchw{v}c", flops=2 * pixels,
                     bytes=8 * pixels, **activation_values(act, alpha), blocks=out.blocks,
                     height=out.height, width=out.width, **x.strides("x"), **out.strides("out"))
    return calls + [Call(name, normalise, (low.inputs[0], temps["scale"], temps["shift"],
                                           low.output))]


def statistics_in_conv(calls: list[Call], layouts: dict) -> list[Call]:
    """``calls`` (a training forward) with every batch norm whose input a direct conv writes
    (no pool in its epilogue) taking its statistics from that conv's epilogue: the conv
    gains STATS and writes the partials per row band, the batch norm's stats call goes,
    and its finalize combines the bands. ``layouts`` gets the partials' new size."""
    writers = {c.args[3].name: c for c in calls
               if c.kernel.template == "conv2d" and not dict(c.kernel.values)["pool"]}
    bands = {}
    out = []
    for call in calls:
        conv = writers.get(call.args[0].name) if call.kernel.template == "batchnorm_stats_train" \
            else None
        if conv is not None:
            partials = call.args[1]
            values = dict(conv.kernel.values)
            groups = -(-values["h_out"] // values["rows"])
            bands[partials] = (groups, values["rows"])
            x = layouts[call.args[0].name]
            layouts[partials.name] = Flat(2 * x.blocks * x.vector * groups, per_sample=True)
            res = conv.args[4] if values["residual"] else conv.args[3]   # unread placeholder
            writers[call.args[0].name] = None
            out[out.index(conv)] = retarget(conv, partials, conv.args[:4] + (res,), stats=True)
            continue
        if call.kernel.template == "batchnorm_finalize_train" and call.args[0] in bands:
            groups, rows = bands[call.args[0]]
            call = retarget(call, call.args[-1], call.args[:-1], groups=groups, rows=rows)
        out.append(call)
    return out


def batchnorm_backward(g: GradLowering) -> list[Call]:
    """Through the fused max pool (its switches) into a pre-pool gradient, then the batch
    norm's backward, whose first pass applies the fused activation's derivative in place."""
    if g.d_ins[0] is None and not g.weight_grads:
        return []
    node, x, n = g.node, g.ins[0], g.n_batch
    bn, _, pool = block_parts(node)
    v, name, c = x.vector, node.name, x.channels
    lanes = x.blocks * v
    calls, dy, dy_buffer = [], g.d_out, g.grad_output
    if pool is not None:
        dy = Blocked(x.channels, x.height, x.width, v)
        dy_buffer = g.temp("grad_pre_pool", dy)
        pool_grad = dataclasses.replace(g, node=pool, d_ins=(dy,))
        gather = pool_grad_call(pool_grad, *geometry(pool), True, NO_PADS)
        calls.append(dataclasses.replace(gather, layer=name,
                                         args=(g.grad_output, g.saved("switches"), dy_buffer)))
    partials = g.temp("grad_partials", Flat(2 * lanes, per_sample=True))
    coef = g.temp("grad_coef", Flat(3 * lanes))
    pixels = n * lanes * x.height * x.width
    act, alpha = activation_of(node)
    stats = spec("batchnorm_stats_grad", ("batchnorm", act, "stats", "grad"), f"nchw{v}c",
                 flops=4 * pixels, bytes=8 * pixels, blocks=x.blocks, height=x.height,
                 width=x.width, fused=act != "identity", derivative=OUTPUT_DERIVATIVES[act],
                 **activation_values(act, alpha), **x.strides("x"), **dy.strides("dy"))
    finalize = spec("batchnorm_finalize_grad", ("batchnorm", "finalize", "grad"),
                    f"nchw{v}c", bytes=4 * 2 * n * lanes, blocks=x.blocks, channels=c,
                    plane=x.height * x.width, eps=float(bn.attrs["eps"]),
                    weight_grads=g.weight_grads)
    calls.append(Call(name, stats, (g.inputs[0], dy_buffer, g.saved("mean"), partials,
                                    g.saved("scale"), g.saved("shift"))))
    gammas = Const(bn.name, "gamma_beta", gamma_beta(c, v))
    finalize_args = (partials, g.saved("var"), gammas, coef)
    if g.weight_grads:
        finalize_args += (g.param_grad("gamma"), g.param_grad("beta"))
    calls.append(Call(name, finalize, finalize_args))
    dx = g.d_ins[0]
    if dx is not None:
        kernel = spec("batchnorm_grad", ("batchnorm", "grad"), f"nchw{v}c", flops=4 * pixels,
                      bytes=12 * pixels, blocks=x.blocks, height=x.height, width=x.width,
                      **x.strides("x"), **dy.strides("dy"), **dx.strides("dx"))
        calls.append(Call(name, kernel, (g.inputs[0], dy_buffer, g.saved("mean"), coef,
                                         g.grad_input(0))))
    return calls


def update_running_stats(params: dict, mean, var, n: int, momentum: float) -> None:
    """Fold one training batch's statistics into ``params`` (running_mean, running_var),
    in place, PyTorch's way:

        running_mean <- (1 - momentum)*running_mean + momentum*mean
        running_var  <- (1 - momentum)*running_var  + momentum*var*n/(n - 1)

    ``mean`` and ``var`` are the ``<layer>:mean`` and ``<layer>:var`` buffers (biased
    variance; channel c at index c, extra pad entries ignored); ``n`` is the number of
    values per channel in the batch, N*H*W (``values_per_channel``)."""
    c = len(params["running_mean"])
    mean = np.asarray(mean, np.float64)[:c]
    unbiased = np.asarray(var, np.float64)[:c] * n / max(n - 1, 1)
    for key, batch in (("running_mean", mean), ("running_var", unbiased)):
        old = np.asarray(params[key])
        params[key][...] = ((1.0 - momentum) * old + momentum * batch).astype(old.dtype)


def values_per_channel(x: Blocked, n_batch: int) -> int:
    """The count a batch norm's statistics average over: N*H*W."""
    return n_batch * x.height * x.width


# ---- dropout --------------------------------------------------------------------------------

LOW32 = 0xFFFFFFFF


def salt(layer: str) -> int:
    """The layer's 32-bit salt in the mask hash: layers with one seed draw different masks."""
    return zlib.crc32(layer.encode())


def encode_seed(seed: int) -> np.ndarray:
    """A 48-bit seed as the ``<layer>:seed`` buffer's two float32 integers (lo, hi)."""
    seed = int(seed) % (1 << 2 * SEED_BITS)
    low = (1 << SEED_BITS) - 1
    return np.array([seed & low, seed >> SEED_BITS], np.float32)


def step_seed(run_seed: int, step: int) -> np.ndarray:
    """The ``<layer>:seed`` buffer for training step ``step`` of a run seeded ``run_seed``:
    (run_seed mod 2**24, step mod 2**24) as (hi, lo), so no two steps of a run (below 2**24
    steps) and no two runs with seeds below 2**24 share a mask, and a resumed run draws the
    masks it would have."""
    low = (1 << SEED_BITS) - 1
    return encode_seed(((int(run_seed) & low) << SEED_BITS) | (int(step) & low))


def mix32(v: np.ndarray) -> np.ndarray:
    """lowbias32 on uint64 arrays holding 32-bit values (the kernel's ``mix``)."""
    v = v ^ (v >> np.uint64(16))
    v = (v * np.uint64(0x7FEB352D)) & np.uint64(LOW32)
    v = v ^ (v >> np.uint64(15))
    v = (v * np.uint64(0x846CA68B)) & np.uint64(LOW32)
    return v ^ (v >> np.uint64(16))


def keep_threshold(rate: float) -> int:
    return int(round((1.0 - rate) * (1 << 24)))


def dropout_mask(seed: int, layer: str, shape, rate: float) -> np.ndarray:
    """The keep mask (bool, NCHW ``shape``) that ``dropout_train`` draws for ``seed``."""
    lo, hi = (int(s) for s in encode_seed(seed))
    key = mix32((mix32(np.uint64(hi) ^ np.uint64(salt(layer))) + np.uint64(lo))
                & np.uint64(LOW32))
    index = np.arange(int(np.prod(shape)), dtype=np.uint64) & np.uint64(LOW32)
    bits = mix32((mix32(index ^ key) + key) & np.uint64(LOW32))
    return ((bits >> np.uint64(8)) < np.uint64(keep_threshold(rate))).reshape(shape)


def dropout_call(node, x: Blocked, out: Blocked, source, seed, target, n_batch: int) -> Call:
    """x (or dy) times the mask and scale; the same kernel forward and backward."""
    rate, v = node.attrs["rate"], x.vector
    scale = 1.0 / (1.0 - rate) if node.attrs["mode"] == "inverted" else 1.0
    kernel = spec("dropout_train", ("dropout", "train"), f"nchw{v}c",
                  flops=n_batch * out.blocks * v * out.height * out.width,
                  bytes=4 * (x.size(n_batch) + out.size(n_batch)), blocks=out.blocks,
                  channels=out.channels, height=out.height, width=out.width,
                  salt=salt(node.name), keep=keep_threshold(rate), scale=float(scale),
                  **x.strides("x"), **out.strides("out"))
    return Call(node.name, kernel, (source, seed, target))


def lower_dropout_train(low: Lowering) -> list[Call]:
    seed = low.temp("seed", Flat(SEED_FLOATS))
    return [dropout_call(low.node, low.ins[0], low.out, low.inputs[0], seed, low.output,
                         low.n_batch)]


def dropout_backward(g: GradLowering) -> list[Call]:
    if g.d_ins[0] is None:
        return []
    return [dropout_call(g.node, g.d_out, g.d_ins[0], g.grad_output, g.saved("seed"),
                         g.grad_input(0), g.n_batch)]


TRAIN = {"batchnorm": lower_batchnorm_train, "dropout": lower_dropout_train}
BACKWARD = {"batchnorm": batchnorm_backward, "dropout": dropout_backward}
