"""Autodiff: which gradients a training step computes, and where each one is summed.

A tensor needs a gradient when a trainable (not frozen) parameter lies upstream of it; the
network's input never does, so the first layer's data gradient is never computed (nor any
gradient below a frozen feature extractor). A layer runs its backward when it has trainable
parameters or one of its inputs needs a gradient.

A tensor read by one layer takes that layer's contribution as its gradient; a tensor read
by several (a residual shortcut, inception branches) sums their contributions first.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Graph, Node


@dataclass(frozen=True)
class GradStep:
    """The backward of one layer: the input gradients it writes, and whether it writes its
    parameters' gradients."""

    node: Node
    input_grads: tuple[bool, ...]
    weight_grads: bool


@dataclass(frozen=True)
class Backward:
    """The backward pass of a graph in run order.

    ``steps``: one per layer that runs a backward, from the output back.
    ``sums``: ``{tensor: [(reader, input index), ...]}`` for every tensor that needs a
    gradient, the contributions it adds up (one: an alias of that reader's buffer;
    none: the gradient is zero, e.g. a layer read only through max_unpool's switches)."""

    steps: tuple[GradStep, ...]
    sums: dict[str, list[tuple[str, int]]]


def trainable(node: Node, frozen: set[str]) -> bool:
    """Whether ``node`` has parameters to train: a fused node is frozen when its spec layer
    that owns them is."""
    return bool(node.params) and not any(n.name in frozen for n in node.fused or (node,))


def differentiate(graph: Graph, frozen: set[str] = frozenset()) -> Backward:
    """The backward pass of ``graph`` with the layers in ``frozen`` fixed."""
    upstream = {graph.input_name: False}
    for node in graph.nodes:
        upstream[node.name] = trainable(node, frozen) or any(upstream[i] for i in node.inputs)
    sums: dict[str, list[tuple[str, int]]] = {
        node.name: [] for node in graph.nodes if upstream[node.name]}
    steps = []
    for node in reversed(graph.nodes):
        if node.name not in sums:
            continue
        wanted = tuple(upstream[i] for i in node.inputs)
        for i, src in enumerate(node.inputs):
            if wanted[i]:
                sums[src].append((node.name, i))
        steps.append(GradStep(node, wanted, trainable(node, frozen)))
    return Backward(tuple(steps), sums)
