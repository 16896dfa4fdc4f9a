"""Batch normalisation and dropout.

batchnorm over the channel axis (statistics over N and every spatial position):
    train: y = gamma * (x - mean_B) / sqrt(var_B + eps) + beta     (var_B biased)
           running_mean <- (1 - momentum)*running_mean + momentum*mean_B
           running_var  <- (1 - momentum)*running_var  + momentum*var_B*M/(M-1)
    eval:  y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta
dropout with keep mask m ~ Bernoulli(1 - rate):
    inverted (default):  train y = x*m/(1 - rate);  eval y = x
    scale_at_test:       train y = x*m;             eval y = x*(1 - rate)
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from .base import Attr, Choice, Float, Op


def channel_view(v: np.ndarray, ndim: int) -> np.ndarray:
    return v.reshape((1, -1) + (1,) * (ndim - 2))


class BatchNorm(Op):
    name = "batchnorm"
    arity = 1
    attrs = {
        "eps": Attr(Float(1e-12, 1.0), 1e-5),
        "momentum": Attr(Float(0.0, 1.0, high_inclusive=True), 0.1,
                         "weight of the new batch in the running statistics (PyTorch convention)"),
    }

    def infer(self, a, ins, refs):
        return a, ins[0]

    def params(self, a, ins):
        return {"gamma": (ins[0].channels,), "beta": (ins[0].channels,)}

    def state(self, a, ins):
        return {"running_mean": (ins[0].channels,), "running_var": (ins[0].channels,)}

    def init(self, node, rng):
        c = node.in_types[0].channels
        return {"gamma": np.ones(c), "beta": np.zeros(c),
                "running_mean": np.zeros(c), "running_var": np.ones(c)}

    def forward(self, node, p, xs, ctx):
        x = xs[0]
        axes = tuple(i for i in range(x.ndim) if i != 1)
        eps, m = node.attrs["eps"], node.attrs["momentum"]
        if ctx.train:
            mean, var = x.mean(axis=axes), x.var(axis=axes)
            count = x.size // x.shape[1]
            unbiased = var * count / max(count - 1, 1)
            ctx.state_updates[node.name] = {
                "running_mean": (1 - m) * p["running_mean"] + m * mean,
                "running_var": (1 - m) * p["running_var"] + m * unbiased}
        else:
            mean, var = p["running_mean"], p["running_var"]
        inv_std = 1.0 / np.sqrt(var + eps)
        xhat = (x - channel_view(mean, x.ndim)) * channel_view(inv_std, x.ndim)
        y = channel_view(p["gamma"], x.ndim) * xhat + channel_view(p["beta"], x.ndim)
        return y, (xhat, inv_std)

    def backward(self, node, p, xs, saved, dy, ctx):
        xhat, inv_std = saved
        axes = tuple(i for i in range(dy.ndim) if i != 1)
        grads = {"gamma": (dy * xhat).sum(axis=axes), "beta": dy.sum(axis=axes)}
        dxhat = dy * channel_view(p["gamma"], dy.ndim)
        if not ctx.train:
            return [dxhat * channel_view(inv_std, dy.ndim)], grads
        count = dy.size // dy.shape[1]
        dx = (count * dxhat - dxhat.sum(axis=axes, keepdims=True)
              - xhat * (dxhat * xhat).sum(axis=axes, keepdims=True))
        return [dx * channel_view(inv_std, dy.ndim) / count], grads


class Dropout(Op):
    name = "dropout"
    arity = 1
    attrs = {
        "rate": Attr(Float(0.0, 1.0), doc="probability of dropping each activation"),
        "mode": Attr(Choice(("inverted", "scale_at_test")), "inverted"),
    }

    def infer(self, a, ins, refs):
        return a, ins[0]

    def forward(self, node, p, xs, ctx):
        x = xs[0]
        rate, inverted = node.attrs["rate"], node.attrs["mode"] == "inverted"
        if not ctx.train:
            return (x if inverted else x * (1.0 - rate)), None
        mask = ctx.masks.get(node.name)
        if mask is None:
            mask = ctx.rng.random(x.shape) >= rate
        elif np.shape(mask) != x.shape:
            raise InputError(f"layer {node.name!r} (dropout): the mask must have the "
                             f"activation's shape {x.shape}; received {np.shape(mask)}.")
        scale = np.asarray(mask, dtype=x.dtype) / ((1.0 - rate) if inverted else 1.0)
        ctx.masks[node.name] = mask
        return x * scale, scale

    def backward(self, node, p, xs, scale, dy, ctx):
        if scale is None:
            inverted = node.attrs["mode"] == "inverted"
            return [dy if inverted else dy * (1.0 - node.attrs["rate"])], {}
        return [dy * scale], {}


OPS = [BatchNorm(), Dropout()]
