"""The float64 numpy reference executor: the oracle every generated kernel is judged by.

It runs any graph forward (train or eval mode) and backward, giving the gradient of the
input and of every parameter. It is slow on purpose: each op's reference is the plain
maths of its docstring, not a schedule.

    ref = ReferenceExecutor(spec, seed=0)            # or weights={layer: {param: array}}
    fwd = ref.forward(x, train=True, masks={"drop1": mask})
    loss, dout = ref.loss(fwd.out, labels)
    grads = ref.backward(fwd, dout)                  # grads.input, grads.weights[layer][param]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InputError
from .ir import Graph
from .ops import REGISTRY
from .ops import loss as losses
from .spec import build_graph
from .weights import Weights, check_weights, init_weights


@dataclass
class RunContext:
    """What ops may read and record during one pass."""

    train: bool
    rng: np.random.Generator
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    saved: dict[str, Any] = field(default_factory=dict)
    state_updates: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


@dataclass(frozen=True)
class Forward:
    """One forward pass: the output, every activation, and what backward needs.

    ``masks`` are the dropout masks used; ``state_updates`` the batch-norm running
    statistics a train-mode pass would write (the executor's weights are not changed)."""

    out: np.ndarray
    activations: dict[str, np.ndarray]
    context: RunContext

    @property
    def masks(self) -> dict[str, np.ndarray]:
        return self.context.masks

    @property
    def state_updates(self) -> dict[str, dict[str, np.ndarray]]:
        return self.context.state_updates


@dataclass(frozen=True)
class Gradients:
    input: np.ndarray
    weights: Weights


def check_input(graph: Graph, x) -> np.ndarray:
    """``x`` as float64 (N, *input shape), or an InputError saying what was expected."""
    if not hasattr(x, "shape") and not isinstance(x, (list, tuple)):
        raise InputError(f"input: expected a numpy array of shape {graph.input}; received "
                         f"{type(x).__name__}.")
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise InputError(f"input: expected a float array; received dtype {x.dtype}.")
    expected = graph.input.shape
    if x.shape[1:] != expected or x.shape[0] < 1:
        hint = " Add the batch dimension: x[None]." if x.shape == expected else ""
        raise InputError(f"input: expected shape {graph.input} with N >= 1; received "
                         f"{x.shape}.{hint}")
    return x.astype(np.float64)


class ReferenceExecutor:
    def __init__(self, spec, weights: Weights | None = None, seed: int = 0):
        self.graph = build_graph(spec)
        self.weights = (init_weights(self.graph, seed) if weights is None
                        else check_weights(self.graph, weights))
        self.seed = seed

    def forward(self, x, train: bool = False, masks: dict | None = None,
                seed: int | None = None) -> Forward:
        """Run the graph. Dropout uses ``masks[layer]`` (keep = True) where given, else a
        mask drawn from ``seed`` (default: the executor's seed)."""
        ctx = RunContext(train, np.random.default_rng(self.seed if seed is None else seed),
                         dict(masks or {}))
        acts = {self.graph.input_name: check_input(self.graph, x)}
        for node in self.graph.nodes:
            op = REGISTRY[node.op]
            y, ctx.saved[node.name] = op.forward(node, self.weights.get(node.name, {}),
                                                 [acts[i] for i in node.inputs], ctx)
            acts[node.name] = y
        return Forward(acts[self.graph.output.name], acts, ctx)

    def loss(self, out: np.ndarray, target) -> tuple[float, np.ndarray]:
        """The spec's loss (with its L2 term) of a forward output, and dL/d(out)."""
        if self.graph.loss is None:
            raise InputError(f"network {self.graph.name!r} has no loss; add "
                             f"'loss: {{op: softmax_cross_entropy}}' or 'loss: {{op: mse}}'.")
        value, dout = losses.value_and_grad(self.graph.loss.op, out, target)
        l2 = self.graph.loss.l2
        if l2:
            value += 0.5 * l2 * sum(float(np.sum(w * w)) for w in self.decayed())
        return value, dout

    def decayed(self):
        """The weights L2 decay applies to: every ``w`` (conv, deconv and dense kernels)."""
        return [p[losses.DECAYED] for p in self.weights.values() if losses.DECAYED in p]

    def backward(self, fwd: Forward, dout: np.ndarray) -> Gradients:
        """Gradients of the input and every parameter, given dL/d(out).

        The L2 term's gradient ``l2*w`` is included when the spec has a loss with l2."""
        graph, acts, ctx = self.graph, fwd.activations, fwd.context
        grads: dict[str, np.ndarray] = {graph.output.name: np.asarray(dout, dtype=np.float64)}
        weight_grads: Weights = {}
        for node in reversed(graph.nodes):
            dy = grads.pop(node.name, None)
            if dy is None:  # read only through max_unpool switches
                dy = np.zeros_like(acts[node.name])
            op = REGISTRY[node.op]
            p = self.weights.get(node.name, {})
            dxs, dp = op.backward(node, p, [acts[i] for i in node.inputs],
                                  ctx.saved[node.name], dy, ctx)
            for name, dx in zip(node.inputs, dxs):
                grads[name] = grads[name] + dx if name in grads else dx
            if dp:
                weight_grads[node.name] = dp
        l2 = graph.loss.l2 if graph.loss else 0.0
        if l2:
            for layer, dp in weight_grads.items():
                if losses.DECAYED in dp:
                    dp[losses.DECAYED] = dp[losses.DECAYED] + l2 * self.weights[layer][losses.DECAYED]
        return Gradients(grads[graph.input_name], weight_grads)

    def loss_and_grads(self, x, target, train: bool = True, masks: dict | None = None):
        """``(loss, Gradients, Forward)`` for one batch."""
        fwd = self.forward(x, train=train, masks=masks)
        value, dout = self.loss(fwd.out, target)
        return value, self.backward(fwd, dout), fwd
