"""Training passes: the graph a training step lowers, from the spec's graph.

Training keeps what the backward reads, so it fuses less than inference: no batch norm is
folded into a conv (its statistics change every batch) and a conv keeps its own output.

- ``split_activations``: a conv or dense layer with a fused activation whose derivative
  reads the activation's input (swish, silu, hardswish) becomes the layer plus an
  activation layer; relu, leaky_relu, sigmoid and tanh stay fused (their derivative is a
  function of the layer's output).
- ``fuse_batchnorm_blocks``: batch norm -> activation -> max pool, or any prefix of it,
  becomes one node (named after its last layer, ``fused`` listing all): its training
  forward normalises, applies the activation and pools in one pass over the batch norm's
  input, writing only the pooled output and the switches; its backward turns the pooled
  gradient into the batch norm's input gradient recomputing act(scale*x + shift) from x,
  so the pre-pool activation is never stored. Only activations whose derivative is a
  function of their output fuse (``vecmath.OUTPUT_DERIVATIVES``).
"""
from __future__ import annotations

from dataclasses import replace

from ..codegen.vecmath import OUTPUT_DERIVATIVES
from ..ir import Graph, Node
from ..ops import activation
from . import ACTIVATIONS, absorb, origin, verify

MAX_POOLS = ("maxpool1d", "maxpool2d")


def split_activations(graph: Graph) -> Graph:
    """A conv or dense layer with a fused activation whose derivative reads the activation's
    input becomes the layer plus an activation layer ``<layer>:act`` that its readers read."""
    nodes, renamed = [], {}
    for node in graph.nodes:
        node = replace(node, inputs=tuple(renamed.get(i, i) for i in node.inputs))
        act = node.attrs.get("activation")
        if act in activation.INPUT_DERIVATIVE and node.op != "add":
            linear = replace(node, attrs={**node.attrs, "activation": "identity"})
            act_node = Node(f"{node.name}:act", act, (node.name,), {}, (node.out,), node.out,
                            {}, {}, 0)
            nodes += [linear, act_node]
            renamed[node.name] = act_node.name
        else:
            nodes.append(node)
    return replace(graph, nodes=tuple(nodes))


def block_parts(node: Node) -> tuple[Node, Node | None, Node | None]:
    """(batch norm, activation or None, max pool or None) of a batch-norm node."""
    parts = origin(node)
    act = next((n for n in parts if n.op in ACTIVATIONS), None)
    pool = next((n for n in parts if n.op in MAX_POOLS), None)
    return parts[0], act, pool


def fuse_batchnorm_blocks(graph: Graph) -> Graph:
    """Batch norm absorbs the activation and then the max pool that read it alone."""
    def takes_activation(p: Node, n: Node) -> bool:
        return (p.op == "batchnorm" and n.op in OUTPUT_DERIVATIVES and n.op in ACTIVATIONS
                and block_parts(p)[1:] == (None, None))

    def takes_pool(p: Node, n: Node) -> bool:
        return p.op == "batchnorm" and n.op in MAX_POOLS and block_parts(p)[2] is None

    def merge(p: Node, n: Node) -> Node:
        return replace(p, out=n.out)
    return absorb(absorb(graph, takes_activation, merge), takes_pool, merge)


def for_training(graph: Graph) -> Graph:
    """The graph a training step lowers, verified."""
    for run in (split_activations, fuse_batchnorm_blocks):
        graph = run(graph)
        verify(graph)
    return graph
