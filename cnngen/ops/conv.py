"""Convolution and transposed convolution (deconvolution), 1-D and 2-D.

conv (cross-correlation, PyTorch layout ``w: (c_out, c_in/groups, *kernel)``):
    out[n, oc, o] = bias[oc] + sum_{ic in group(oc), k} w[oc, ic, k] * x_pad[n, ic, o*stride + k*dilation]
    o_size = (i + pad_begin + pad_end - dilation*(k-1) - 1) // stride + 1

conv_transpose is the adjoint of conv with respect to its input (``w: (c_in, c_out/groups,
*kernel)``); it is the conv data-gradient, so both share one scatter:
    o_size = (i - 1)*stride - pad_begin - pad_end + dilation*(k-1) + output_padding + 1
"""
from __future__ import annotations

import math

import numpy as np

from . import activation
from .base import (Attr, Bool, Int, Ints, Invalid, Op, Padding, expect_rank, he_normal)
from .window import AXIS_NAMES, crop, out_size, pad, resolve_padding, scatter_windows, windows

RANK_TEXT = {1: "a (N, C, L) input", 2: "a (N, C, H, W) input"}


def _letters(nd):
    return "xy"[:nd], "ij"[:nd]


def conv(x, w, stride, pads, dilation, groups, out):
    """Grouped cross-correlation of x (N, C, *i) with w (K, C/g, *k) onto spatial ``out``."""
    n, c = x.shape[:2]
    k_out = w.shape[0]
    kernel = w.shape[2:]
    o, k = _letters(len(kernel))
    xw = windows(pad(x, pads), kernel, stride, dilation, out)
    xw = xw.reshape(n, groups, c // groups, *out, *kernel)
    wg = w.reshape(groups, k_out // groups, c // groups, *kernel)
    y = np.einsum(f"ngc{o}{k},gkc{k}->ngk{o}", xw, wg, optimize=True)
    return y.reshape(n, k_out, *out)


def conv_grad_input(dy, w, stride, pads, dilation, groups, in_spatial):
    """The data gradient of ``conv``: scatter dy (N, K, *o) through w back to (N, C, *i)."""
    n, k_out = dy.shape[:2]
    out = dy.shape[2:]
    c = w.shape[1] * groups
    kernel = w.shape[2:]
    o, k = _letters(len(kernel))
    dyg = dy.reshape(n, groups, k_out // groups, *out)
    wg = w.reshape(groups, k_out // groups, c // groups, *kernel)
    dwin = np.einsum(f"ngk{o},gkc{k}->ngc{o}{k}", dyg, wg, optimize=True)
    padded = (n, c, *(i + p0 + p1 for i, (p0, p1) in zip(in_spatial, pads)))
    dxp = scatter_windows(dwin.reshape(n, c, *out, *kernel), padded, stride, dilation)
    return crop(dxp, pads, in_spatial)


def conv_grad_weight(x, dy, kernel, stride, pads, dilation, groups):
    """The weight gradient of ``conv``: (K, C/g, *kernel)."""
    n, c = x.shape[:2]
    k_out = dy.shape[1]
    out = dy.shape[2:]
    o, k = _letters(len(kernel))
    xw = windows(pad(x, pads), kernel, stride, dilation, out)
    xw = xw.reshape(n, groups, c // groups, *out, *kernel)
    dyg = dy.reshape(n, groups, k_out // groups, *out)
    dw = np.einsum(f"ngc{o}{k},ngk{o}->gkc{k}", xw, dyg, optimize=True)
    return dw.reshape(k_out, c // groups, *kernel)


def check_groups(c_in: int, filters: int, groups: int, shape) -> None:
    if c_in % groups == 0 and filters % groups == 0:
        return
    common = math.gcd(c_in, filters)
    small = [g for g in range(1, math.isqrt(common) + 1) if common % g == 0]
    divisors = tuple(sorted(set(small) | {common // g for g in small}))
    if c_in % groups:
        raise Invalid(f"input channels must be divisible by groups. Received: c_in={c_in}, "
                      f"groups={groups} (input shape {shape}). Use groups in {divisors}.",
                      "groups")
    if filters % groups:
        raise Invalid(f"filters must be divisible by groups. Received: filters={filters}, "
                      f"groups={groups}. Use groups in {divisors}.", "groups")


def bias_shape(nd):
    return (1, -1) + (1,) * nd


def epilogue(node, p, z):
    """``activation(z + bias)`` and what its gradient needs."""
    if "b" in p:
        z = z + p["b"].reshape(bias_shape(z.ndim - 2))
    return activation.forward(node.attrs["activation"], z), z


def epilogue_grad(node, z, y, dy):
    """dL/dz and the bias gradient."""
    dz = activation.backward(node.attrs["activation"], z, y, dy)
    db = {"b": dz.sum(axis=tuple(i for i in range(dz.ndim) if i != 1))} if node.attrs["bias"] else {}
    return dz, db


def conv_attrs(transposed: bool) -> dict[str, Attr]:
    attrs = {
        "filters": Attr(Int(1), doc="output channels"),
        "kernel": Attr(Ints(1), doc="kernel size, one per spatial dimension or one for all"),
        "stride": Attr(Ints(1), 1),
        "padding": Attr(Padding(allow_same=not transposed), 0),
        "dilation": Attr(Ints(1), 1),
        "groups": Attr(Int(1), 1, "channel groups; groups = c_in is depthwise"),
        "bias": Attr(Bool(), True),
        "activation": activation.FUSED,
    }
    if transposed:
        attrs["output_padding"] = Attr(Ints(0), 0, "extra size on the end of each output axis")
    return attrs


class Conv(Op):
    arity = 1

    def __init__(self, ndim: int):
        self.ndim = ndim
        self.name = f"conv{ndim}d"
        self.attrs = conv_attrs(transposed=False)

    def infer(self, a, ins, refs):
        expect_rank(ins, self.ndim + 1, RANK_TEXT[self.ndim],
                    "Add a reshape layer before it." if len(ins[0].shape) < self.ndim + 1 else "")
        x = ins[0]
        check_groups(x.channels, a["filters"], a["groups"], x)
        a = dict(a, padding=resolve_padding(a["padding"], x.spatial, a["kernel"], a["stride"],
                                            a["dilation"]))
        out = tuple(out_size(i, k, s, d, p, axis) for i, k, s, d, p, axis in zip(
            x.spatial, a["kernel"], a["stride"], a["dilation"], a["padding"], AXIS_NAMES[self.ndim]))
        return a, type(x)((a["filters"], *out))

    def params(self, a, ins):
        w = (a["filters"], ins[0].channels // a["groups"], *a["kernel"])
        return {"w": w, "b": (a["filters"],)} if a["bias"] else {"w": w}

    def macs(self, a, ins, out):
        return out.size * (ins[0].channels // a["groups"]) * int(np.prod(a["kernel"]))

    def init(self, node, rng):
        w_shape = node.params["w"]
        p = {"w": he_normal(w_shape, int(np.prod(w_shape[1:])), rng)}
        if "b" in node.params:
            p["b"] = np.zeros(node.params["b"])
        return p

    def forward(self, node, p, xs, ctx):
        a = node.attrs
        z = conv(xs[0], p["w"], a["stride"], a["padding"], a["dilation"], a["groups"],
                 node.out.spatial)
        return epilogue(node, p, z)

    def backward(self, node, p, xs, z, dy, ctx):
        a = node.attrs
        dz, grads = epilogue_grad(node, z, activation.forward(a["activation"], z), dy)
        grads["w"] = conv_grad_weight(xs[0], dz, a["kernel"], a["stride"], a["padding"],
                                      a["dilation"], a["groups"])
        dx = conv_grad_input(dz, p["w"], a["stride"], a["padding"], a["dilation"], a["groups"],
                             node.in_types[0].spatial)
        return [dx], grads


class ConvTranspose(Conv):
    def __init__(self, ndim: int):
        self.ndim = ndim
        self.name = f"conv_transpose{ndim}d"
        self.attrs = conv_attrs(transposed=True)

    def infer(self, a, ins, refs):
        expect_rank(ins, self.ndim + 1, RANK_TEXT[self.ndim])
        x = ins[0]
        check_groups(x.channels, a["filters"], a["groups"], x)
        out = []
        for i, k, s, d, (p0, p1), op, axis in zip(
                x.spatial, a["kernel"], a["stride"], a["dilation"], a["padding"],
                a["output_padding"], AXIS_NAMES[self.ndim]):
            if op >= max(s, d):
                raise Invalid(f"output_padding must be smaller than stride or dilation. "
                              f"Received: output_padding={op}, stride={s}, dilation={d}.",
                              "output_padding")
            o = (i - 1) * s - p0 - p1 + d * (k - 1) + op + 1
            if o <= 0:
                raise Invalid(f"output {axis} would be {o}: O = (W - 1)*S - P_begin - P_end + "
                              f"D*(K - 1) + output_padding + 1 = ({i} - 1)*{s} - {p0} - {p1} + "
                              f"{d}*({k} - 1) + {op} + 1. Reduce the padding.", "padding")
            out.append(o)
        return a, type(x)((a["filters"], *out))

    def params(self, a, ins):
        w = (ins[0].channels, a["filters"] // a["groups"], *a["kernel"])
        return {"w": w, "b": (a["filters"],)} if a["bias"] else {"w": w}

    def macs(self, a, ins, out):
        return ins[0].size * (a["filters"] // a["groups"]) * int(np.prod(a["kernel"]))

    def init(self, node, rng):
        w_shape = node.params["w"]
        fan_in = int(np.prod(w_shape[2:])) * w_shape[0] // node.attrs["groups"]
        p = {"w": he_normal(w_shape, fan_in, rng)}
        if "b" in node.params:
            p["b"] = np.zeros(node.params["b"])
        return p

    def forward(self, node, p, xs, ctx):
        a = node.attrs
        z = conv_grad_input(xs[0], p["w"], a["stride"], a["padding"], a["dilation"],
                            a["groups"], node.out.spatial)
        return epilogue(node, p, z)

    def backward(self, node, p, xs, z, dy, ctx):
        a = node.attrs
        dz, grads = epilogue_grad(node, z, activation.forward(a["activation"], z), dy)
        # y = A(w)^T x, so dL/dx = A(w) dz and dL/dw is conv's weight gradient with the
        # roles of input and output swapped.
        grads["w"] = conv_grad_weight(dz, xs[0], a["kernel"], a["stride"], a["padding"],
                                      a["dilation"], a["groups"])
        dx = conv(dz, p["w"], a["stride"], a["padding"], a["dilation"], a["groups"],
                  node.in_types[0].spatial)
        return [dx], grads


OPS = [Conv(1), Conv(2), ConvTranspose(1), ConvTranspose(2)]
