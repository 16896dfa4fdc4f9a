"""Inference passes: an ordered list of ``Graph -> Graph`` rewrites run before lowering.

Each pass is one loop over nodes with one decision. A fused node is named after the last
spec layer it computes and lists them all in ``Node.fused``, so readers keep their inputs
and the runtime can still find every layer's parameters by its spec name.
"""
from __future__ import annotations

from dataclasses import replace

from ..ir import Graph, Node

CONVS = ("conv1d", "conv2d")
POOLS = ("maxpool1d", "maxpool2d", "avgpool1d", "avgpool2d")
ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh", "swish", "silu", "hardswish")


def readers(graph: Graph) -> dict[str, list[Node]]:
    found: dict[str, list[Node]] = {graph.input_name: []}
    for node in graph.nodes:
        found.setdefault(node.name, [])
        for dep in node.deps:
            found[dep].append(node)
    return found


def origin(node: Node) -> tuple[Node, ...]:
    return node.fused or (node,)


def absorb(graph: Graph, can_absorb, merge) -> Graph:
    """Merge each node that ``can_absorb(producer, node)`` into its single-reader producer."""
    read_by = readers(graph)
    nodes = {n.name: n for n in graph.nodes}
    order = [n.name for n in graph.nodes]
    for name in list(order):
        node = nodes[name]
        if len(node.inputs) != 1 or node.inputs[0] == graph.input_name:
            continue
        producer = nodes.get(node.inputs[0])
        if producer is None or len(read_by[producer.name]) != 1 or not can_absorb(producer, node):
            continue
        merged = replace(merge(producer, node), name=node.name,
                         fused=origin(producer) + origin(node))
        nodes[node.name] = merged
        del nodes[producer.name]
        order.remove(producer.name)
    return replace(graph, nodes=tuple(nodes[n] for n in order))


def drop_dropout(graph: Graph) -> Graph:
    """Inverted dropout is the identity at inference: its readers read its input instead.

    (scale_at_test dropout scales, so it stays; so does a dropout that is the output.)"""
    alias: dict[str, str] = {}
    kept = []
    for node in graph.nodes:
        node = replace(node, inputs=tuple(alias.get(i, i) for i in node.inputs))
        if (node.op == "dropout" and node.attrs["mode"] == "inverted"
                and node is not graph.nodes[-1] and node.name != graph.nodes[-1].name):
            alias[node.name] = node.inputs[0]
        else:
            kept.append(node)
    return replace(graph, nodes=tuple(kept))


def fold_batchnorm(graph: Graph) -> Graph:
    """conv -> batchnorm becomes one conv whose packed weights and bias fold the statistics."""
    return absorb(graph,
                  lambda p, n: n.op == "batchnorm" and p.op in CONVS
                  and p.attrs["activation"] == "identity" and not p.fused,
                  lambda p, n: replace(p, out=n.out))


def fuse_activation(graph: Graph) -> Graph:
    """conv (or conv+bn) -> activation becomes one kernel with the activation in its epilogue."""
    def merge(p, n):
        attrs = dict(p.attrs, activation=n.op)
        if n.op == "leaky_relu":
            attrs["alpha"] = n.attrs["alpha"]
        return replace(p, attrs=attrs, out=n.out)
    return absorb(graph,
                  lambda p, n: n.op in ACTIVATIONS and p.op in CONVS
                  and p.attrs["activation"] == "identity",
                  merge)


def is_direct_conv(node: Node) -> bool:
    """A conv that lowers to the direct kernel, whose epilogue takes a residual and a pool
    (a depthwise conv has its own kernel)."""
    if node.op not in CONVS:
        return False
    groups = node.attrs["groups"]
    return not (groups > 1 and groups == node.in_types[0].channels == node.out.channels)


def fuse_residual(graph: Graph) -> Graph:
    """add(conv, shortcut) becomes the conv with the shortcut added in its epilogue, before
    the add's activation: a ResNet block's second conv-bn-add-relu is one kernel.

    The fused node takes the add's place, after both of its inputs; it reads
    ``(conv input, shortcut)``."""
    read_by = readers(graph)
    nodes = {n.name: n for n in graph.nodes}
    order = [n.name for n in graph.nodes]
    for name in list(order):
        node = nodes[name]
        if node.op != "add" or len(node.inputs) != 2:
            continue
        for i, src in enumerate(node.inputs):
            conv = nodes.get(src)
            if (conv is not None and is_direct_conv(conv) and len(conv.inputs) == 1
                    and conv.attrs["activation"] == "identity" and len(read_by[src]) == 1):
                attrs = dict(conv.attrs, activation=node.attrs["activation"])
                nodes[name] = replace(conv, name=name, inputs=(conv.inputs[0], node.inputs[1 - i]),
                                      attrs=attrs, out=node.out,
                                      fused=origin(conv) + origin(node))
                del nodes[src]
                order.remove(src)
                break
    return replace(graph, nodes=tuple(nodes[n] for n in order))


# The general fused pool keeps one conv row (up to 4 output-channel vectors x width x 16
# lanes of float32) on the task's stack: rows wider than this stay two kernels.
MAX_FUSED_POOL_WIDTH = 2048


def fuse_pool(graph: Graph) -> Graph:
    """conv (with its epilogue) -> max or avg pool becomes one kernel that writes only the
    pooled output. An avg pool fuses when each window lies inside the conv output (no
    padding, no ceil mode), so every count is the window's size. One pool per conv, none
    after a residual add, and none on conv rows wider than MAX_FUSED_POOL_WIDTH."""
    def can(p, n):
        if (n.op not in POOLS or not is_direct_conv(p) or len(p.inputs) != 1
                or any(f.op in POOLS for f in origin(p))
                or p.out.shape[-1] > MAX_FUSED_POOL_WIDTH):
            return False
        a = n.attrs
        if n.op.startswith("max"):
            return not a["return_switches"]
        return not a["ceil_mode"] and all(pads == (0, 0) for pads in a["padding"])
    return absorb(graph, can, lambda p, n: replace(p, out=n.out))


def verify(graph: Graph) -> None:
    """Every input is defined before it is read, names are unique, the output is last."""
    seen = {graph.input_name}
    for node in graph.nodes:
        missing = [d for d in node.deps if d not in seen]
        if missing or node.name in seen:
            raise AssertionError(f"graph {graph.name}: node {node.name} reads {missing} "
                                 f"before they are defined, or repeats a name")
        seen.add(node.name)


PIPELINE = (drop_dropout, fold_batchnorm, fuse_residual, fuse_activation, fuse_pool)


def for_inference(graph: Graph, passes=PIPELINE) -> Graph:
    """The graph after every inference pass, verified."""
    for run in passes:
        graph = run(graph)
        verify(graph)
    return graph
