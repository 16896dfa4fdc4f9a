"""Lowering of the optimizer steps: one generated kernel over the flat parameter buffer.

    sgd:   p -= lr * d,   d the (momentum, Nesterov) direction of g = grads + l2 * p
    adam:  p = keep * p - lr / c1 * m / (sqrt(v / c2) + eps)       (AdamW: keep = 1 - lr*wd)

Every kernel reads the buffers ``params`` and ``grads`` (all trainable parameters, the
decayed ones first), a small ``opt:hyper`` array that the runtime refills before each step
(learning rate, bias corrections, ...; ``runtime/optimizers.py``), its state buffers
(``opt:momentum``; ``opt:m`` and ``opt:v``), and writes ``opt:sumsq``: per task, the sum of
the squares of its decayed parameters before the update (the L2 term of the loss at the
step's weights, without another pass). Only the size, the number of decayed entries and
the variant (momentum, Nesterov) reach the source, so a kernel compiles once per
(optimizer kind, size).
"""
from __future__ import annotations

from ...target import Target
from ..kernel import Buffer, Call, spec
from ..layout import Flat

PARAMS, GRADS = "params", "grads"
HYPER, SUMSQ = "opt:hyper", "opt:sumsq"
LAYER = "optimizer"            # the layer name of the optimizer's calls
# hyper entries per kernel (runtime/optimizers.py fills them in this order)
SGD_HYPER = ("lr", "l2", "momentum")
ADAM_HYPER = ("lr_over_c1", "l2", "beta1", "beta2", "eps", "inv_sqrt_c2", "keep",
              "one_minus_beta1", "one_minus_beta2")
# A task updates at least MIN_CHUNK and at most MAX_CHUNK parameters; in between, enough
# tasks for TASKS_PER_CORE per core.
MIN_CHUNK, MAX_CHUNK, TASKS_PER_CORE = 1024, 16384, 2


def chunk_size(size: int, target: Target) -> int:
    """Parameters per task: a multiple of the vector width."""
    v = target.vector
    share = -(-size // (TASKS_PER_CORE * target.cores))
    return -(-min(MAX_CHUNK, max(MIN_CHUNK, share)) // v) * v


def tasks(size: int, target: Target) -> int:
    return -(-size // chunk_size(size, target))


def layouts(size: int, target: Target, state: tuple[str, ...], hyper: int) -> dict[str, Flat]:
    """The layouts of every buffer an optimizer kernel of ``size`` parameters reads."""
    flat = {PARAMS: Flat(size), GRADS: Flat(size), HYPER: Flat(hyper),
            SUMSQ: Flat(tasks(size, target))}
    flat.update({name: Flat(size) for name in state})
    return flat


def lower_sgd(size: int, decayed: int, target: Target, momentum: bool,
              nesterov: bool) -> list[Call]:
    """One SGD step; ``opt:momentum`` is its state when ``momentum``."""
    ops = ("sgd_nesterov",) if nesterov else ("sgd_momentum",) if momentum else ("sgd",)
    kernel = spec("optimizer_sgd", ops, "flat", flops=(6 if momentum else 4) * size,
                  bytes=4 * (3 + 2 * momentum) * size, size=size, decayed=decayed,
                  chunk=chunk_size(size, target), momentum=momentum, nesterov=nesterov)
    state = (Buffer("opt:momentum"),) if momentum else ()
    return [Call(LAYER, kernel, (Buffer(PARAMS), Buffer(GRADS), Buffer(HYPER), Buffer(SUMSQ),
                                 *state))]


def lower_adam(size: int, decayed: int, target: Target) -> list[Call]:
    """One Adam or AdamW step (they differ only in hyper); ``opt:m``, ``opt:v`` its state."""
    kernel = spec("optimizer_adam", ("adam",), "flat", flops=14 * size, bytes=4 * 7 * size,
                  size=size, decayed=decayed, chunk=chunk_size(size, target))
    return [Call(LAYER, kernel, (Buffer(PARAMS), Buffer(GRADS), Buffer(HYPER), Buffer(SUMSQ),
                                 Buffer("opt:m"), Buffer("opt:v")))]
