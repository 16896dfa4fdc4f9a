"""Pooling: max and average (1-D, 2-D), global pools, and max-unpooling with switches.

    o_size = (i + pad_begin + pad_end - size) // stride + 1      (ceil_mode rounds up, but
                                                                  a window never starts in
                                                                  the end padding)
    max:  out = max over the input pixels of the window (padding never wins; it is -inf
          and ties go to input pixels); switches hold the flat index (into the unpadded
          H*W or L of each channel) of the first maximum in window order, as PyTorch does.
    avg:  out = sum over the window / count. With count_include_pad, count is the window
          clipped to the padded input, [-pad_begin, i + pad_end) per axis: it counts the
          explicit padding, never the extra rows ceil_mode adds (PyTorch's divisor). Without
          it, count is the number of input pixels in the window.
    max_unpool: out[switches] += x, zero elsewhere; out has the pool's input shape. Where
          overlapping windows share a switch the values add (PyTorch keeps one of them).

Padding may be anything up to ``size - 1`` on each side, as ONNX allows (its backend tests
pool size 3 with padding 2); PyTorch allows only ``size // 2``, and its results agree with
these wherever it accepts the padding. With padding below the window size every window
holds at least one input pixel, so max and the count without padding are defined; a
padding of ``size`` or more would make windows of padding only and is refused.
"""
from __future__ import annotations

import numpy as np

from .base import Attr, Bool, Ints, Invalid, LayerName, Op, Padding
from .window import (AXIS_NAMES, crop, out_size, pad, resolve_padding, scatter_windows,
                     windows)

RANK_TEXT = {1: "a (N, C, L) input", 2: "a (N, C, H, W) input"}


def pool_attrs(kind: str) -> dict[str, Attr]:
    attrs = {
        "size": Attr(Ints(1), doc="window size"),
        "stride": Attr(Ints(1), None, "defaults to size"),
        "padding": Attr(Padding(), 0),
        "ceil_mode": Attr(Bool(), False),
    }
    if kind == "max":
        attrs["return_switches"] = Attr(Bool(), False, "keep argmax positions for max_unpool")
    else:
        attrs["count_include_pad"] = Attr(Bool(), True)
    return attrs


def ceil_extra(spatial, size, stride, pads, out):
    """Extra end padding so that ceil_mode's last window lies inside the array."""
    return tuple(max(0, (o - 1) * s + k - (i + p0 + p1))
                 for i, k, s, (p0, p1), o in zip(spatial, size, stride, pads, out))


def full_pads(node):
    a = node.attrs
    extra = ceil_extra(node.in_types[0].spatial, a["size"], a["stride"], a["padding"],
                       node.out.spatial)
    return tuple((p0, p1 + e) for (p0, p1), e in zip(a["padding"], extra))


class Pool(Op):
    arity = 1

    def __init__(self, kind: str, ndim: int):
        self.kind, self.ndim = kind, ndim
        self.name = f"{kind}pool{ndim}d"
        self.attrs = pool_attrs(kind)

    def infer(self, a, ins, refs):
        expect = RANK_TEXT[self.ndim]
        if len(ins[0].shape) != self.ndim + 1:
            raise Invalid(f"expects {expect}; received {ins[0]}.")
        x = ins[0]
        stride = a["stride"] if a["stride"] is not None else a["size"]
        pads = resolve_padding(a["padding"], x.spatial, a["size"], stride, (1,) * self.ndim)
        for (p0, p1), k in zip(pads, a["size"]):
            if max(p0, p1) >= k:
                raise Invalid(f"padding must be smaller than the window size, so that every "
                              f"window holds an input pixel. Received: padding={max(p0, p1)}, "
                              f"size={k}. Use padding <= {k - 1}.", "padding")
        out = tuple(out_size(i, k, s, 1, p, axis, a["ceil_mode"]) for i, k, s, p, axis in zip(
            x.spatial, a["size"], stride, pads, AXIS_NAMES[self.ndim]))
        return dict(a, stride=stride, padding=pads), type(x)((x.channels, *out))

    def _windows(self, node, x, fill):
        a = node.attrs
        xw = windows(pad(x, full_pads(node), fill), a["size"], a["stride"], (1,) * self.ndim,
                     node.out.spatial)
        return xw.reshape(*xw.shape[:2 + self.ndim], -1)

    def forward(self, node, p, xs, ctx):
        x = xs[0]
        if self.kind == "max":
            xw = self._windows(node, x, -np.inf)
            y = xw.max(axis=-1)
            # the first input pixel (never padding) equal to the max, or NaN where it is NaN
            inside = self._windows(node, np.ones((1, 1, *x.shape[2:]), bool), False)
            hit = (xw == y[..., None]) | (np.isnan(xw) & np.isnan(y)[..., None])
            arg = (hit & inside).argmax(axis=-1)
            return y, self._switches(node, arg)
        count = self._count(node)
        return self._windows(node, x, 0.0).sum(axis=-1) / count, count

    def _switches(self, node, arg):
        """Flat positions in each unpadded channel, from window-local argmax ``arg``."""
        a = node.attrs
        offs = np.unravel_index(arg, a["size"])
        grids = np.meshgrid(*(np.arange(o) for o in node.out.spatial), indexing="ij")
        coords = [g * s + k - p0 for g, s, k, (p0, _) in zip(grids, a["stride"], offs,
                                                              a["padding"])]
        return np.ravel_multi_index(coords, node.in_types[0].spatial)

    def _count(self, node):
        a = node.attrs
        ones = np.ones((1, 1, *node.in_types[0].spatial))
        if a["count_include_pad"]:
            ones = pad(ones, a["padding"], 1.0)
            extra = ceil_extra(node.in_types[0].spatial, a["size"], a["stride"], a["padding"],
                               node.out.spatial)
            ones = pad(ones, tuple((0, e) for e in extra), 0.0)
            xw = windows(ones, a["size"], a["stride"], (1,) * self.ndim, node.out.spatial)
        else:
            xw = windows(pad(ones, full_pads(node), 0.0), a["size"], a["stride"],
                         (1,) * self.ndim, node.out.spatial)
        return xw.reshape(*xw.shape[:2 + self.ndim], -1).sum(axis=-1)

    def backward(self, node, p, xs, saved, dy, ctx):
        x = xs[0]
        if self.kind == "max":
            return [scatter_to_switches(dy, saved, x.shape)], {}
        a = node.attrs
        dwin = np.broadcast_to((dy / saved)[(...,) + (None,) * self.ndim],
                               dy.shape + tuple(a["size"]))
        pads = full_pads(node)
        padded = x.shape[:2] + tuple(i + p0 + p1 for i, (p0, p1) in zip(x.shape[2:], pads))
        dxp = scatter_windows(dwin, padded, a["stride"], (1,) * self.ndim)
        return [crop(dxp, pads, x.shape[2:])], {}


def scatter_to_switches(values, switches, shape):
    """Sum ``values`` (N, C, *o) into zeros of ``shape`` (N, C, *i) at the switches."""
    n_c = shape[0] * shape[1]
    size = int(np.prod(shape[2:]))
    flat = (np.arange(n_c)[:, None] * size + switches.reshape(n_c, -1)).ravel()
    return np.bincount(flat, weights=values.ravel(), minlength=n_c * size).reshape(shape)


def gather_at_switches(x, switches):
    """``x`` (N, C, *i) read at the switches: (N, C, *o)."""
    n_c = x.shape[0] * x.shape[1]
    picked = np.take_along_axis(x.reshape(n_c, -1), switches.reshape(n_c, -1), axis=1)
    return picked.reshape(x.shape[:2] + switches.shape[2:])


class GlobalPool(Op):
    arity = 1

    def __init__(self, kind: str):
        self.kind = kind
        self.name = f"global_{kind}pool"
        self.attrs = {"keepdims": Attr(Bool(), False, "keep size-1 spatial axes")}

    def infer(self, a, ins, refs):
        x = ins[0]
        if len(x.shape) < 2:
            raise Invalid(f"expects a (N, C, L) or (N, C, H, W) input; received {x}.")
        keep = (1,) * len(x.spatial) if a["keepdims"] else ()
        return a, type(x)((x.channels, *keep))

    def forward(self, node, p, xs, ctx):
        x = xs[0]
        flat = x.reshape(*x.shape[:2], -1)
        if self.kind == "avg":
            y = flat.mean(axis=-1)
            arg = None
        else:
            arg = flat.argmax(axis=-1)
            y = np.take_along_axis(flat, arg[..., None], axis=-1)[..., 0]
        return y.reshape((x.shape[0], *node.out.shape)), arg

    def backward(self, node, p, xs, arg, dy, ctx):
        x = xs[0]
        n, c = x.shape[:2]
        g = dy.reshape(n, c)
        if self.kind == "avg":
            size = int(np.prod(x.shape[2:]))
            return [np.broadcast_to((g / size)[(...,) + (None,) * (x.ndim - 2)], x.shape).copy()], {}
        return [scatter_to_switches(g, arg, x.shape)], {}


class MaxUnpool(Op):
    """Places each value at its max-pool switch; the output has the pool's input shape."""

    name = "max_unpool"
    arity = 1
    attrs = {"switches": Attr(LayerName(), doc="the max-pool layer whose switches to use")}
    refs = ("switches",)

    def infer(self, a, ins, refs):
        pool = refs["switches"]
        if not pool.op.startswith("maxpool"):
            raise Invalid(f"layer {pool.name!r} is a {pool.op}, not a max-pool; name a "
                          f"maxpool1d or maxpool2d layer.", "switches")
        if not pool.attrs["return_switches"]:
            raise Invalid(f"layer {pool.name!r} does not keep its switches. Add "
                          f"'return_switches: true' to layer {pool.name!r}.", "switches")
        if ins[0] != pool.out:
            raise Invalid(f"the input must have the shape of {pool.name!r}'s output "
                          f"{pool.out}; received {ins[0]}.")
        return a, pool.in_types[0]

    def forward(self, node, p, xs, ctx):
        shape = (xs[0].shape[0], *node.out.shape)
        return scatter_to_switches(xs[0], ctx.saved[node.attrs["switches"]], shape), None

    def backward(self, node, p, xs, saved, dy, ctx):
        return [gather_at_switches(dy, ctx.saved[node.attrs["switches"]])], {}


OPS = [Pool(k, d) for k in ("max", "avg") for d in (1, 2)]
OPS += [GlobalPool("avg"), GlobalPool("max"), MaxUnpool()]
