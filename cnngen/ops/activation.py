"""Elementwise activations and softmax. The same table serves the standalone ops and
the ``activation:`` attribute of conv, dense and add.

    relu(x) = max(x, 0)                 leaky_relu(x) = x if x > 0 else alpha*x
    sigmoid(x) = 1 / (1 + exp(-x))      tanh(x)
    swish(x) = silu(x) = x*sigmoid(x)   hardswish(x) = x * min(max(x + 3, 0), 6) / 6
    softmax(x)_c = exp(x_c) / sum_c' exp(x_c')       over the channel axis

At the kinks the gradient matches PyTorch: relu'(0) = 0, leaky_relu'(0) = alpha,
hardswish'(-3) = 0 and hardswish'(3) = 1.
"""
from __future__ import annotations

import numpy as np

from .base import Attr, Choice, Float, Op

LEAKY_ALPHA = 0.01
# Activations whose derivative needs their input; every other one's is a function of its
# output (relu, leaky_relu with alpha > 0, sigmoid, tanh), so a layer that fuses it may
# keep only the output for the backward.
INPUT_DERIVATIVE = ("swish", "silu", "hardswish")


def sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def forward(name: str, x: np.ndarray, alpha: float = LEAKY_ALPHA) -> np.ndarray:
    if name == "identity":
        return x
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "leaky_relu":
        return np.where(x > 0, x, alpha * x)
    if name == "sigmoid":
        return sigmoid(x)
    if name == "tanh":
        return np.tanh(x)
    if name in ("swish", "silu"):
        return x * sigmoid(x)
    if name == "hardswish":
        return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0
    raise KeyError(name)


def backward(name: str, x: np.ndarray, y: np.ndarray, dy: np.ndarray,
             alpha: float = LEAKY_ALPHA) -> np.ndarray:
    """dL/dx given the input x, the output y and dL/dy."""
    if name == "identity":
        return dy
    if name == "relu":
        return dy * (x > 0)
    if name == "leaky_relu":
        return dy * np.where(x > 0, 1.0, alpha)
    if name == "sigmoid":
        return dy * y * (1.0 - y)
    if name == "tanh":
        return dy * (1.0 - y * y)
    if name in ("swish", "silu"):
        s = sigmoid(x)
        return dy * (s + x * s * (1.0 - s))
    if name == "hardswish":
        return dy * np.where(x <= -3.0, 0.0, np.where(x >= 3.0, 1.0, (2.0 * x + 3.0) / 6.0))
    raise KeyError(name)


NAMES = ("identity", "relu", "leaky_relu", "sigmoid", "tanh", "swish", "silu", "hardswish")
FUSED = Attr(Choice(NAMES, none_means="identity"), "identity",
             "activation applied to the result; leaky_relu uses alpha=0.01")


class Activation(Op):
    arity = 1

    def __init__(self, name: str):
        self.name = name
        self.attrs = {"alpha": Attr(Float(0.0, 1.0), LEAKY_ALPHA)} if name == "leaky_relu" else {}

    def infer(self, a, ins, refs):
        return a, ins[0]

    def forward(self, node, p, xs, ctx):
        return forward(self.name, xs[0], node.attrs.get("alpha", LEAKY_ALPHA)), None

    def backward(self, node, p, xs, saved, dy, ctx):
        y = forward(self.name, xs[0], node.attrs.get("alpha", LEAKY_ALPHA))
        return [backward(self.name, xs[0], y, dy, node.attrs.get("alpha", LEAKY_ALPHA))], {}


class Softmax(Op):
    """softmax over the channel axis (axis 1 of the batched tensor)."""

    name = "softmax"

    def infer(self, a, ins, refs):
        return a, ins[0]

    def forward(self, node, p, xs, ctx):
        z = xs[0] - xs[0].max(axis=1, keepdims=True)
        e = np.exp(z)
        y = e / e.sum(axis=1, keepdims=True)
        return y, y

    def backward(self, node, p, xs, y, dy, ctx):
        return [y * (dy - (dy * y).sum(axis=1, keepdims=True))], {}


OPS = [Activation(n) for n in NAMES] + [Softmax()]
