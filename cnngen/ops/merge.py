"""Ops that join branches: residual add, channel concat, and elementwise multiply.

add:      out = activation(x_1 + ... + x_k)          all inputs the same shape
concat:   out = [x_1, ..., x_k] along the channel axis; other axes must match
multiply: out = x_1 * ... * x_k with broadcasting of size-1 axes (same rank), e.g. a
          squeeze-and-excitation gate (N, C, 1, 1) times a feature map (N, C, H, W)
"""
from __future__ import annotations

import numpy as np

from . import activation
from .base import Attr, Invalid, Op


def listing(ins) -> str:
    return ", ".join(str(t) for t in ins)


class Add(Op):
    name = "add"
    arity = 0
    attrs = {"activation": activation.FUSED}

    def infer(self, a, ins, refs):
        if any(t != ins[0] for t in ins):
            raise Invalid(f"inputs must all have the same shape; received {listing(ins)}. "
                          f"For a residual shortcut, project it with a 1x1 conv of matching "
                          f"filters and stride.")
        return a, ins[0]

    def forward(self, node, p, xs, ctx):
        z = sum(xs[1:], xs[0].copy())
        return activation.forward(node.attrs["activation"], z), z

    def backward(self, node, p, xs, z, dy, ctx):
        dz = activation.backward(node.attrs["activation"], z,
                                 activation.forward(node.attrs["activation"], z), dy)
        return [dz] * len(xs), {}


class Concat(Op):
    name = "concat"
    arity = 0

    def infer(self, a, ins, refs):
        if any(len(t.shape) != len(ins[0].shape) or t.spatial != ins[0].spatial for t in ins):
            raise Invalid(f"inputs must match in every axis but channels; received "
                          f"{listing(ins)}.")
        return a, type(ins[0])((sum(t.channels for t in ins), *ins[0].spatial))

    def forward(self, node, p, xs, ctx):
        return np.concatenate(xs, axis=1), None

    def backward(self, node, p, xs, saved, dy, ctx):
        ends = np.cumsum([x.shape[1] for x in xs])[:-1]
        return np.split(dy, ends, axis=1), {}


class Multiply(Op):
    name = "multiply"
    arity = 0

    def infer(self, a, ins, refs):
        shape = ins[0].shape
        for t in ins[1:]:
            if len(t.shape) != len(shape) or any(
                    d1 != d2 and 1 not in (d1, d2) for d1, d2 in zip(shape, t.shape)):
                raise Invalid(f"inputs must have the same rank and equal or size-1 axes; "
                              f"received {listing(ins)}.")
            shape = tuple(max(d1, d2) for d1, d2 in zip(shape, t.shape))
        return a, type(ins[0])(shape)

    def forward(self, node, p, xs, ctx):
        y = xs[0]
        for x in xs[1:]:
            y = y * x
        return y, None

    def backward(self, node, p, xs, saved, dy, ctx):
        grads = []
        for i, x in enumerate(xs):
            g = dy
            for j, other in enumerate(xs):
                if j != i:
                    g = g * other
            axes = tuple(k for k in range(1, x.ndim) if x.shape[k] == 1 and g.shape[k] != 1)
            grads.append(g.sum(axis=axes, keepdims=True) if axes else g)
        return grads, {}


OPS = [Add(), Concat(), Multiply()]
