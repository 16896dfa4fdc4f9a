"""Fully connected layers and the shape-only ops around them.

dense:   out[n, u] = activation(bias[u] + sum_i w[u, i] * x[n, i])    w: (units, in)
flatten: (N, C, H, W) -> (N, C*H*W) in C-order, as PyTorch's flatten(1)
reshape: (N, *a) -> (N, *b) with prod(a) == prod(b); one entry of b may be -1
"""
from __future__ import annotations

import math

import numpy as np

from . import activation
from .base import Attr, Bool, Int, Invalid, Op, ShapeList, he_normal
from .conv import epilogue, epilogue_grad


class Dense(Op):
    name = "dense"
    arity = 1
    attrs = {"units": Attr(Int(1), doc="output features"), "bias": Attr(Bool(), True),
             "activation": activation.FUSED}

    def infer(self, a, ins, refs):
        x = ins[0]
        if len(x.shape) != 1:
            raise Invalid(f"expects a flat (N, features) input; received {x}. Add a "
                          f"'flatten' layer (or a global pool) before it.")
        return a, type(x)((a["units"],))

    def params(self, a, ins):
        w = (a["units"], ins[0].channels)
        return {"w": w, "b": (a["units"],)} if a["bias"] else {"w": w}

    def macs(self, a, ins, out):
        return a["units"] * ins[0].channels

    def init(self, node, rng):
        w_shape = node.params["w"]
        p = {"w": he_normal(w_shape, w_shape[1], rng)}
        if "b" in node.params:
            p["b"] = np.zeros(node.params["b"])
        return p

    def forward(self, node, p, xs, ctx):
        return epilogue(node, p, xs[0] @ p["w"].T)

    def backward(self, node, p, xs, z, dy, ctx):
        dz, grads = epilogue_grad(node, z, activation.forward(node.attrs["activation"], z), dy)
        grads["w"] = dz.T @ xs[0]
        return [dz @ p["w"]], grads


class Flatten(Op):
    name = "flatten"
    arity = 1

    def infer(self, a, ins, refs):
        return a, type(ins[0])((ins[0].size,))

    def forward(self, node, p, xs, ctx):
        return xs[0].reshape(xs[0].shape[0], -1), None

    def backward(self, node, p, xs, saved, dy, ctx):
        return [dy.reshape(xs[0].shape)], {}


class Reshape(Op):
    name = "reshape"
    arity = 1
    attrs = {"shape": Attr(ShapeList(), doc="the new shape without the batch dimension")}

    def infer(self, a, ins, refs):
        size = ins[0].size
        known = math.prod(d for d in a["shape"] if d != -1)
        if -1 in a["shape"]:
            if size % known:
                raise Invalid(f"cannot reshape {ins[0]} ({size} values per sample) to "
                              f"{list(a['shape'])}: {size} is not divisible by {known}.", "shape")
            shape = tuple(size // known if d == -1 else d for d in a["shape"])
        elif known != size:
            raise Invalid(f"cannot reshape {ins[0]} ({size} values per sample) to "
                          f"{list(a['shape'])} ({known} values).", "shape")
        else:
            shape = a["shape"]
        return dict(a, shape=shape), type(ins[0])(shape)

    def forward(self, node, p, xs, ctx):
        return xs[0].reshape(xs[0].shape[0], *node.out.shape), None

    def backward(self, node, p, xs, saved, dy, ctx):
        return [dy.reshape(xs[0].shape)], {}


OPS = [Dense(), Flatten(), Reshape()]
