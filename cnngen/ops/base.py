"""What every op declares: attribute kinds, the Op interface, and the Invalid signal.

Attribute kinds turn raw spec values (anything YAML, JSON or Python can hold) into
normalised values, or raise ``Invalid`` saying what was expected and what was received.
``cnngen.spec`` adds the layer and field to that message and raises ``SpecError``.
"""
from __future__ import annotations

import math
import numbers
import re
import reprlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..ir import Node, TensorType
from ..suggest import did_you_mean

MAX_DIM = 2**31 - 1
# The most elements one sample's activation, or one parameter or state tensor, may hold.
# Kernels address a tensor with flat int64 offsets (``n*X_BATCH + cb*X_BLOCK + ...``); the
# blocked layout pads channels up to the vector width (16x for one channel) and adds
# halos, and the batch multiplies the per-sample stride, so a per-sample bound of 2**31
# keeps every offset far below 2**63 for any batch a machine can hold. One float32 sample
# at the limit is already 8 GiB; spec/build checks every tensor against it.
MAX_ELEMENTS = 2**31 - 1
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
REQUIRED = object()
YAML11_BOOLS = ("yes", "no", "on", "off", "y", "n")


class ShortRepr(reprlib.Repr):
    """reprlib that also shortens integers too long for ``repr`` (over 4300 digits)."""

    def repr_int(self, x, level):
        if x.bit_length() > 128:
            return f"<an integer of about {int(x.bit_length() * 0.30103)} digits>"
        return repr(x)


SHORT_REPR = ShortRepr()
SHORT_REPR.maxlevel, SHORT_REPR.maxlist, SHORT_REPR.maxdict = 3, 8, 8
SHORT_REPR.maxstring, SHORT_REPR.maxlong, SHORT_REPR.maxother = 40, 40, 40


class Invalid(Exception):
    """A spec value broke a rule. ``field`` names the attribute when one is to blame."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def show(value: Any) -> str:
    """The received value as the user wrote it, shortened."""
    text = SHORT_REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def integer(value: Any, minimum: int, what: str) -> int:
    if not is_int(value):
        hint = " (sizes are whole numbers)" if isinstance(value, float) else ""
        raise Invalid(f"expected {what}{hint}; received {show(value)}")
    if not minimum <= int(value) <= MAX_DIM:
        raise Invalid(f"expected {what}; received {show(value)}")
    return int(value)


def what_int(minimum: int) -> str:
    return {0: "a non-negative integer", 1: "a positive integer"}.get(
        minimum, f"an integer >= {minimum}")


@dataclass(frozen=True)
class Int:
    minimum: int = 1

    def __call__(self, value: Any, ndim: int) -> int:
        return integer(value, self.minimum, what_int(self.minimum))


@dataclass(frozen=True)
class Ints:
    """One integer per spatial dimension: ``3`` or ``[3, 5]`` for 2-D."""

    minimum: int = 1

    def __call__(self, value: Any, ndim: int) -> tuple[int, ...]:
        what = what_int(self.minimum)
        if isinstance(value, (list, tuple)):
            if len(value) != ndim:
                raise Invalid(f"expected {what} or a list of {ndim}; received {show(value)}")
            return tuple(integer(v, self.minimum, what) for v in value)
        return (integer(value, self.minimum, f"{what} or a list of {ndim}"),) * ndim


@dataclass(frozen=True)
class Padding:
    """``"same"``, ``"valid"``, an int, one int per dimension, or ``[begin, end]`` per dimension.

    Returns ``"same"`` or a tuple of ``(begin, end)`` pairs, one per spatial dimension.
    """

    allow_same: bool = True

    def __call__(self, value: Any, ndim: int) -> str | tuple[tuple[int, int], ...]:
        what = (f'"same", "valid", a non-negative integer, a list of {ndim}, '
                f"or a list of {ndim} [begin, end] pairs")
        if not self.allow_same:
            what = what.replace('"same", ', "")
        if isinstance(value, str):
            if value == "valid":
                return ((0, 0),) * ndim
            if value == "same" and self.allow_same:
                return "same"
            raise Invalid(f"expected {what}; received {show(value)}")
        if isinstance(value, (list, tuple)):
            if len(value) != ndim:
                raise Invalid(f"expected {what}; received {show(value)}")
            pairs = []
            for v in value:
                if isinstance(v, (list, tuple)):
                    if len(v) != 2:
                        raise Invalid(f"expected {what}; received {show(value)}")
                    pairs.append(tuple(integer(p, 0, what) for p in v))
                else:
                    p = integer(v, 0, what)
                    pairs.append((p, p))
            return tuple(pairs)
        p = integer(value, 0, what)
        return ((p, p),) * ndim


@dataclass(frozen=True)
class Bool:
    def __call__(self, value: Any, ndim: int) -> bool:
        if not isinstance(value, (bool, np.bool_)):
            hint = (" (spec YAML reads yes/no/on/off as text, as YAML 1.2 does; write true or "
                    "false)" if isinstance(value, str) and value.lower() in YAML11_BOOLS else "")
            raise Invalid(f"expected true or false; received {show(value)}{hint}")
        return bool(value)


@dataclass(frozen=True)
class Float:
    """A finite number in ``[low, high)`` (or ``[low, high]`` with ``high_inclusive``)."""

    low: float = 0.0
    high: float = math.inf
    high_inclusive: bool = False

    def __call__(self, value: Any, ndim: int) -> float:
        closing = "]" if self.high_inclusive else ")"
        what = f"a number in [{self.low:g}, {self.high:g}{closing}"
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise Invalid(f"expected {what}; received {show(value)}")
        try:
            v = float(value)
        except OverflowError:
            raise Invalid(f"expected {what}; received {show(value)}") from None
        inside = self.low <= v and (v <= self.high if self.high_inclusive else v < self.high)
        if not (math.isfinite(v) and inside):
            raise Invalid(f"expected {what}; received {show(value)}")
        return v


@dataclass(frozen=True)
class Choice:
    options: tuple[str, ...]
    none_means: str | None = None

    def __call__(self, value: Any, ndim: int) -> str:
        if value is None and self.none_means is not None:
            return self.none_means
        if not isinstance(value, str) or value not in self.options:
            tail = did_you_mean(value, self.options) if isinstance(value, str) else ""
            raise Invalid(f"expected one of {', '.join(self.options)}; "
                          f"received {show(value)}.{tail}")
        return value


@dataclass(frozen=True)
class LayerName:
    def __call__(self, value: Any, ndim: int) -> str:
        if not isinstance(value, str) or not IDENTIFIER.fullmatch(value):
            raise Invalid(f"expected a layer name; received {show(value)}")
        return value


@dataclass(frozen=True)
class ShapeList:
    """A target shape without the batch: positive integers and at most one -1."""

    def __call__(self, value: Any, ndim: int) -> tuple[int, ...]:
        what = "a list of positive integers with at most one -1"
        if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= 3:
            raise Invalid(f"expected {what} (1 to 3 entries, batch excluded); "
                          f"received {show(value)}")
        dims = tuple(-1 if is_int(v) and v == -1 else integer(v, 1, what) for v in value)
        if dims.count(-1) > 1:
            raise Invalid(f"expected {what}; received {show(value)}")
        return dims


@dataclass(frozen=True)
class Attr:
    kind: Callable[[Any, int], Any]
    default: Any = REQUIRED
    doc: str = ""


class Op:
    """One op family member. Subclasses set the class attributes and override the rules.

    ``ndim`` is the number of spatial dimensions the op expects (None: any rank).
    ``arity`` is 1, or 0 for "two or more inputs".
    Forward and backward are the float64 numpy reference: ``forward`` returns the output
    and whatever ``backward`` needs; ``backward`` returns one gradient per input and a dict
    of parameter gradients.
    """

    name: str = ""
    ndim: int | None = None
    arity: int = 1
    attrs: dict[str, Attr] = {}
    refs: tuple[str, ...] = ()

    def infer(self, a: dict, ins: list[TensorType],
              refs: dict[str, Node]) -> tuple[dict, TensorType]:
        """Resolved attributes and the output type, or ``Invalid``. ``refs`` maps each
        attribute named in ``refs`` (a class attribute) to the layer it names."""
        raise NotImplementedError

    def params(self, a: dict, ins: list[TensorType]) -> dict[str, tuple[int, ...]]:
        return {}

    def state(self, a: dict, ins: list[TensorType]) -> dict[str, tuple[int, ...]]:
        return {}

    def macs(self, a: dict, ins: list[TensorType], out: TensorType) -> int:
        return 0

    def init(self, node: Node, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {}

    def forward(self, node: Node, p: dict, xs: list[np.ndarray], ctx) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    def backward(self, node: Node, p: dict, xs: list[np.ndarray], saved: Any,
                 dy: np.ndarray, ctx) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        raise NotImplementedError


def expect_rank(ins: list[TensorType], rank: int, what: str, hint: str = "") -> None:
    """Raise Invalid unless the single input has ``rank`` non-batch dimensions."""
    got = ins[0]
    if len(got.shape) != rank:
        raise Invalid(f"expects {what}; received {got}.{(' ' + hint) if hint else ''}")


def he_normal(shape: tuple[int, ...], fan_in: int, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0.0, math.sqrt(2.0 / max(fan_in, 1)), size=shape)
