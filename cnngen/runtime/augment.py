"""Data augmentation on whole batches: random flips, crops, translations, rotations,
brightness and contrast jitter and grayscale, as vectorised numpy.

    aug = Augment("flip_h,crop=4,rotate=10,brightness=0.2")    # the CLI's --augment
    aug = Augment(flip_h=True, crop=4, rotate=10, brightness=0.2)
    x_new = aug(x, rng)     # x: float32 (N, C, H, W) or (N, C, L); x itself is not changed

Every random draw comes from ``rng``, so the result is a function of (x, rng state); each op
draws one value per sample for the whole batch. Ops run in a fixed order (the order of
``OPS``), whatever order they were written in, so equal settings give equal results.

    op             value (bare name = default)         rank   what it does per sample
    flip_h         probability (0.5)                   1-D/2-D  reverse W (images) or L (signals)
    flip_v         probability (0.5)                   2-D    reverse H
    crop           pixels P, an integer (4)            1-D/2-D  zero-pad by P, crop back at a
                                                                random offset (shift in [-P, P])
    translate      fraction t of the size (0.1)        1-D/2-D  shift by up to round(t*size),
                                                                zero fill
    rotate         degrees D (10)                      2-D    rotate by U(-D, D) about the
                                                                centre, bilinear, zero fill
    brightness     b (0.2)                             any    x *= U(max(0, 1-b), 1+b)
    contrast       c (0.2)                             any    x = m + U(max(0, 1-c), 1+c)*(x-m),
                                                                m = the sample's mean
    grayscale      probability (0.1)                   2-D, C=3  ITU-R 601 luma in all three
                                                                channels

Nothing is clipped: data need not lie in [0, 1] (MNIST-1D is standardised).
Errors (unknown op, bad value, an op that does not fit the data) are InputError.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import InputError
from ..suggest import did_you_mean

# ITU-R BT.601 luma weights, as in PIL's and torchvision's grayscale.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class Op:
    """One augmentation: its default value, the value's kind and bounds, the data ranks it
    applies to (3: (N, C, L), 4: (N, C, H, W)), and ``apply(x, value, rng) -> x``, which
    may change ``x`` in place (it is the batch's own copy)."""
    default: float
    kind: type            # int or float
    low: float            # low < value <= high
    high: float
    ranks: tuple[int, ...]
    apply: Callable
    help: str


def _flip(axis: int):
    def apply(x, p, rng):
        flip = rng.random(len(x)) < p
        x[flip] = np.flip(x[flip], axis=axis)
        return x
    return apply


def _shift(x: np.ndarray, pads: tuple[int, ...], offsets: np.ndarray) -> np.ndarray:
    """Each sample shifted with zero fill: ``out[n, c, i] = x[n, c, i + pads - offsets[n]]``
    per spatial axis, offsets in [0, 2*pad]. Zero-pads once, then picks each sample's window
    of a strided view (no copy until the pick), so one gather moves N*C*H*W values."""
    spatial = x.shape[2:]
    padded = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in pads])
    # windows: (N, C, 2*pad_0+1, ..., size_0, ...); window o holds padded[o : o + size]
    windows = sliding_window_view(padded, spatial, axis=tuple(range(2, x.ndim)))
    n = np.arange(len(x))
    # The advanced indices (n, o_0, ...) are split by the channel slice, so numpy puts
    # their dimension first: the result is (N, C, *spatial).
    return np.ascontiguousarray(windows[(n, slice(None), *offsets.T)])


def _crop(x, pad, rng):
    pads = (pad,) * (x.ndim - 2)
    offsets = rng.integers(0, 2 * pad + 1, size=(len(x), len(pads)))
    return _shift(x, pads, offsets)


def _translate(x, fraction, rng):
    pads = tuple(round(fraction * size) for size in x.shape[2:])
    offsets = np.stack([rng.integers(0, 2 * p + 1, size=len(x)) for p in pads], axis=1)
    return _shift(x, pads, offsets)


def rotate(x: np.ndarray, degrees: np.ndarray) -> np.ndarray:
    """Images (N, C, H, W) each rotated counterclockwise by ``degrees[n]`` about the centre,
    sampled bilinearly, zero outside the image.

    With u = j - cx and v = cy - i (y up), output pixel (i, j) reads the input at
    R(-theta)(u, v) = (cos*u + sin*v, -sin*u + cos*v). The images sit in a zero border (one
    pixel before, two after), and source points are clamped into it, so every point outside
    reads zeros and no mask is needed; each of the four neighbours is then one ``take`` of
    N*H*W flat indices from every channel."""
    n_batch, c, h, w = x.shape
    theta = np.deg2rad(np.asarray(degrees, np.float64))[:, None, None]
    cos, sin = np.cos(theta), np.sin(theta)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    u, v = j - cx, cy - i
    x_src = np.clip(cx + cos * u + sin * v, -1, w)                   # (N, H, W)
    y_src = np.clip(cy + sin * u - cos * v, -1, h)
    x0, y0 = np.floor(x_src), np.floor(y_src)
    wx = (x_src - x0).astype(np.float32).ravel()
    wy = (y_src - y0).astype(np.float32).ravel()
    h_pad, w_pad = h + 3, w + 3
    padded = np.zeros((c, n_batch, h_pad, w_pad), np.float32)
    padded[:, :, 1:h + 1, 1:w + 1] = x.transpose(1, 0, 2, 3)
    flat = padded.reshape(c, -1)
    top_left = ((np.arange(n_batch)[:, None, None] * h_pad + y0.astype(np.intp) + 1) * w_pad
                + x0.astype(np.intp) + 1).ravel()
    top = flat.take(top_left, axis=1) * (1 - wx) + flat.take(top_left + 1, axis=1) * wx
    bottom = (flat.take(top_left + w_pad, axis=1) * (1 - wx)
              + flat.take(top_left + w_pad + 1, axis=1) * wx)
    out = top * (1 - wy) + bottom * wy                                 # (C, N*H*W)
    return np.ascontiguousarray(out.reshape(c, n_batch, h, w).transpose(1, 0, 2, 3))


def _rotate(x, max_degrees, rng):
    return rotate(x, rng.uniform(-max_degrees, max_degrees, size=len(x)))


def _factors(x, amount, rng):
    """Per-sample factors U(max(0, 1-amount), 1+amount), shaped to broadcast over x."""
    f = rng.uniform(max(0.0, 1 - amount), 1 + amount, size=len(x)).astype(np.float32)
    return f.reshape((len(x),) + (1,) * (x.ndim - 1))


def _brightness(x, amount, rng):
    x *= _factors(x, amount, rng)
    return x


def _contrast(x, amount, rng):
    f = _factors(x, amount, rng)
    mean = x.mean(axis=tuple(range(1, x.ndim)), keepdims=True, dtype=np.float32)
    return (mean + f * (x - mean)).astype(np.float32, copy=False)


def _grayscale(x, p, rng):
    gray = rng.random(len(x)) < p
    luma = np.tensordot(LUMA, x[gray], axes=([0], [1]))       # (n_gray, H, W)
    x[gray] = luma[:, None]
    return x


# The order here is the order ops run in.
OPS: dict[str, Op] = {
    "flip_h": Op(0.5, float, 0, 1, (3, 4), _flip(-1), "probability of a horizontal flip"),
    "flip_v": Op(0.5, float, 0, 1, (4,), _flip(-2), "probability of a vertical flip"),
    "crop": Op(4, int, 0, 1 << 16, (3, 4), _crop,
               "zero padding in pixels of a random crop back to the input size"),
    "translate": Op(0.1, float, 0, 1, (3, 4), _translate,
                    "largest shift as a fraction of each spatial size"),
    "rotate": Op(10, float, 0, 180, (4,), _rotate, "largest rotation in degrees"),
    "brightness": Op(0.2, float, 0, 1 << 16, (3, 4), _brightness,
                     "brightness factor range U(1-b, 1+b)"),
    "contrast": Op(0.2, float, 0, 1 << 16, (3, 4), _contrast, "contrast factor range U(1-c, 1+c)"),
    "grayscale": Op(0.1, float, 0, 1, (4,), _grayscale,
                    "probability of turning an RGB image gray"),
}
RANK_NAMES = {3: "1-D signals (N, C, L)", 4: "images (N, C, H, W)"}


class Augment:
    """A set of augmentation ops with their values, applied to whole batches.

    ``Augment("flip_h,crop=4,rotate=10")``, ``Augment(flip_h=True, crop=4)`` or both
    (keywords win). A bare name or ``True`` takes the op's default; ``False``, ``None`` or
    0 turns it off. ``str(aug)`` is the canonical text, and ``Augment(str(aug)) == aug``.
    """

    def __init__(self, text: str | Mapping | None = None, **keywords):
        settings = dict(parse_text(text) if isinstance(text, str) else (text or {}))
        settings.update(keywords)
        self.ops: dict[str, float] = {}
        for name, value in settings.items():
            value = _check_value(name, value)
            if value is not None:
                self.ops[name] = value
        self.ops = {name: self.ops[name] for name in OPS if name in self.ops}

    @classmethod
    def parse(cls, text: str) -> Augment:
        """The Augment that ``text`` (the CLI's --augment) describes."""
        return cls(text)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A new float32 batch: every op applied in turn, drawing from ``rng``."""
        x = np.asarray(x)
        self.check(x.shape)
        out = np.array(x, dtype=np.float32, order="C", copy=True)
        for name, value in self.ops.items():
            out = OPS[name].apply(out, value, rng)
        return out

    def check(self, shape: tuple[int, ...]) -> None:
        """InputError naming the op when one does not apply to data of ``shape`` (a batch
        or a whole data set: (N, C, H, W) or (N, C, L))."""
        rank = len(shape)
        if rank not in RANK_NAMES:
            raise InputError(f"augment: expected {RANK_NAMES[4]} or {RANK_NAMES[3]}; received "
                             f"an array of shape {tuple(shape)}.")
        for name in self.ops:
            op = OPS[name]
            if rank not in op.ranks:
                fits = [n for n, o in OPS.items() if rank in o.ranks]
                raise InputError(f"augment {name!r} applies to {RANK_NAMES[op.ranks[0]]} only; "
                                 f"received {RANK_NAMES[rank]} of shape {tuple(shape)}. Ops for "
                                 f"{RANK_NAMES[rank]}: {', '.join(fits)}.")
            if name == "grayscale" and shape[1] != 3:
                raise InputError(f"augment 'grayscale' needs 3-channel (RGB) images; received "
                                 f"{shape[1]} channel(s) (shape {tuple(shape)}).")

    def __bool__(self) -> bool:
        return bool(self.ops)

    def __eq__(self, other) -> bool:
        return isinstance(other, Augment) and self.ops == other.ops

    def __hash__(self) -> int:
        return hash(tuple(self.ops.items()))

    def __str__(self) -> str:
        return ",".join(f"{name}={exact(value)}" if isinstance(value, float) else f"{name}={value}"
                        for name, value in self.ops.items())

    def __repr__(self) -> str:
        return f"Augment({str(self)!r})"


def exact(value: float) -> str:
    """The shortest text that reads back as exactly ``value`` ("10", "0.123456789"), so
    ``Augment(str(a)) == a`` bit for bit: a checkpoint resumes the same augmentation."""
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


def as_augment(value) -> Augment | Callable | None:
    """``None`` for no augmentation (None, "" or an Augment with no ops), an Augment for a
    string, mapping or Augment, or ``value`` itself when it is another callable
    ``(x, rng) -> x``."""
    if value is None or isinstance(value, (str, Mapping)):
        value = Augment(value)
    if isinstance(value, Augment):
        return value or None
    if callable(value):
        return value
    raise InputError(f"augment: expected a string such as 'flip_h,crop=4', a dict, an Augment "
                     f"or a callable (x, rng) -> x; received {type(value).__name__}.")


def parse_text(text: str) -> dict[str, object]:
    """``{"flip_h": True, "crop": "4"}`` from ``"flip_h,crop=4"`` (values checked later)."""
    settings: dict[str, object] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if name in settings:
            raise InputError(f"augment: {name!r} appears twice in {text!r}; keep one.")
        settings[name] = value.strip() if sep else True
    return settings


def _check_value(name: str, value) -> float | int | None:
    """The op's value as its kind, None when turned off, or InputError."""
    if name not in OPS:
        raise InputError(f"augment: unknown op {name!r}.{did_you_mean(name, OPS)} Known ops: "
                         f"{', '.join(OPS)}.")
    op = OPS[name]
    if value is True:
        return op.default
    if value is None or value is False:
        return None
    received = value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            value = None
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        raise InputError(f"augment {name!r}: expected a number ({op.help}); received "
                         f"{received!r}.")
    if value == 0:
        return None
    if op.kind is int:
        if value != int(value):
            raise InputError(f"augment {name!r}: expected a whole number of pixels; received "
                             f"{received!r}.")
        value = int(value)
    else:
        value = float(value)
    if not (op.low < value <= op.high):
        raise InputError(f"augment {name!r}: expected {op.low:g} < value <= {op.high:g} "
                         f"({op.help}); received {received!r}.")
    return value
