"""The packed constants of a training plan, rebuilt from the parameters after every step.

Every packed layout of a trainable parameter (a conv's blocked weights, the flipped and
transposed copy its data gradient reads, a dense layer's tiles, batch norm's gamma|beta)
is a permutation of the parameters plus zeros. So each constant is packed once by its numpy
``pack`` to learn where each slot comes from, and from then on one generated kernel
(``gather``) rebuilds all of them from the flat parameter buffer in one parallel pass:
numpy repacking of ResNet-18 took 63 ms a step, longer than its kernels.

Where a slot comes from is learnt by packing the parameters' own positions (``offset + 1``,
split into two parts below 2**12 and 2**24 so that float32 packing keeps them exact); a
constant whose pack does arithmetic (the check fails) keeps the numpy repack.
"""
from __future__ import annotations

import numpy as np

from ..codegen.kernel import Buffer, Call, Const, spec
from .parameters import Parameters

LOW_BITS = 12
# Outputs per gather task: enough to amortise a task's start, few enough to balance cores.
GATHER_CHUNK = 16384


def positions(params: Parameters, layer: str, part: str) -> dict[str, np.ndarray]:
    """The layer's parameters replaced by (their flat position + 1) // 2**12 ("high") or
    % 2**12 ("low"); state and frozen arrays by 0 (no position)."""
    out = {}
    for name, value in params.layer(layer).items():
        offset = params.offset(layer, name)
        if offset is None:
            out[name] = np.zeros(value.shape, np.float32)
            continue
        where = np.arange(offset + 1, offset + 1 + value.size, dtype=np.int64).reshape(value.shape)
        out[name] = (where >> LOW_BITS if part == "high" else where & ((1 << LOW_BITS) - 1)
                     ).astype(np.float32)
    return out


def probe_values(params: Parameters, layer: str, probe: np.ndarray) -> dict[str, np.ndarray]:
    """The layer's parameters as slices of ``probe`` (a random stand-in for ``params.flat``)."""
    out = dict(params.layer(layer))
    for name, value in out.items():
        offset = params.offset(layer, name)
        if offset is not None:
            out[name] = probe[offset:offset + value.size].reshape(value.shape)
    return out


def source_index(const: Const, params: Parameters, packed: np.ndarray,
                 probe: np.ndarray) -> np.ndarray | None:
    """For each slot of ``const``, the position in ``params.flat`` it copies (padding slots:
    the trailing zero); None when the pack is not a pure copy: checked on random values
    ``probe``, so a pack that scales or adds is caught even where the weights are zero."""
    high = np.asarray(const.pack(positions(params, const.layer, "high")), np.float64).ravel()
    low = np.asarray(const.pack(positions(params, const.layer, "low")), np.float64).ravel()
    if high.shape != packed.shape or low.shape != packed.shape:
        return None
    where = high * (1 << LOW_BITS) + low
    if not (np.all(where == np.round(where)) and where.min() >= 0 and where.max() <= params.size):
        return None
    index = where.astype(np.int64) - 1
    index[index < 0] = params.size                   # the zero slot
    shuffled = np.asarray(const.pack(probe_values(params, const.layer, probe)), np.float32).ravel()
    if not (np.array_equal(params.flat[index], packed) and np.array_equal(probe[index], shuffled)):
        return None
    return index.astype(np.int32)


class PackedConstants:
    """``{Const: float32 array}`` for a plan's calls, and the gather that refreshes them."""

    def __init__(self, calls: list[Call], params: Parameters):
        self.params = params
        consts = list(dict.fromkeys(a for c in calls for a in c.args if isinstance(a, Const)))
        packed = {c: np.ascontiguousarray(c.pack(params.layer(c.layer)), np.float32).ravel()
                  for c in consts}
        trainable = params.trainable_layers
        probe = np.random.default_rng(0).uniform(1.0, 2.0, params.size + 1).astype(np.float32)
        probe[params.size] = 0.0
        index = {c: source_index(c, params, packed[c], probe) for c in consts
                 if c.layer in trainable}
        self.gathered = [c for c in consts if index.get(c) is not None]
        self.numpy = [c for c in consts if c.layer in trainable and c not in self.gathered]
        total = sum(packed[c].size for c in self.gathered)
        self.packed = np.zeros(max(total, 1), np.float32)
        self.index = np.zeros(max(total, 1), np.int32)
        self.arrays: dict[Const, np.ndarray] = {}
        start = 0
        for c in consts:
            if c in self.gathered:
                n = packed[c].size
                self.arrays[c] = self.packed[start:start + n]
                self.arrays[c][...] = packed[c]
                self.index[start:start + n] = index[c]
                start += n
            else:
                self.arrays[c] = packed[c]
        self.count = total

    def gather_call(self) -> Call | None:
        """The kernel call that rebuilds every gathered constant (None if there are none);
        its batch argument is the number of slots."""
        if not self.count:
            return None
        kernel = spec("gather", ("gather",), "flat", bytes=12 * self.count, chunk=GATHER_CHUNK)
        return Call("constants", kernel, (Buffer("params"), Buffer("constants:index"),
                                           Buffer("constants")))

    def buffers(self) -> dict[str, np.ndarray]:
        return {"params": self.params.flat, "constants:index": self.index.view(np.float32),
                "constants": self.packed}

    def repack_numpy(self) -> None:
        """Repack the constants the gather cannot (a pack that computes)."""
        for c in self.numpy:
            self.arrays[c][...] = np.asarray(c.pack(self.params.layer(c.layer)), np.float32).ravel()
