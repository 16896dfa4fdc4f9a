"""A net rewritten to evaluate ``size`` candidate weight sets side by side on one batch.

    pop = population_graph(graph, size=40, align=16)
    pop.graph                                   # one net; its output is (N, size*K', ...)
    pop.lay_out("c1", "w", values)              # (size, *w.shape) -> the population's w
    pop.candidate_outputs(y)                    # (size, N, *graph output shape)

Every tensor that depends on the weights holds the candidates' channels one after the
other: candidate p's C channels are channels ``p*C' .. p*C' + C - 1``, where ``C'`` pads
C up to a multiple of ``align`` with channels whose weights are zero. So every layer
computes all candidates at once:

- a conv or dense reading the shared input (or a parameter-free op of it) keeps its
  grouping and produces ``size*K'`` channels: every candidate reads the same input;
- a later conv takes ``groups = size*groups`` (depthwise: ``size*C'``), so candidate p's
  filters read only candidate p's channels;
- a dense reading a candidate tensor becomes a conv whose kernel covers the whole (L) or
  (H, W) plane with ``groups = size`` (a flat tensor is first reshaped to (C, 1)); the
  flatten before it is dropped, and its weights ``(U, C*H*W)`` read as ``(U, C, H, W)``;
- activations, pools, batch norm (each candidate its own gamma and beta), dropout and
  residual adds are per channel already.

Padding each candidate to whole vectors (``align`` = the target's SIMD width) keeps every
grouped conv on the direct kernel: a conv whose groups are not whole vectors runs as a
dense conv with ``groups`` times the multiply-adds, which for ``groups = size`` would cost
more than evaluating the candidates one by one. Concat (the candidates' channels would
interleave per branch), softmax over channels, reshapes, transposed convs, unpooling and
grouped (not depthwise) convs when padding are not rewritten: ``population_graph`` raises
``Unsupported`` saying which layer, and the caller evaluates one candidate at a time.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import Graph, Node, TensorType, frozen
from ..ops import REGISTRY
from ..ops.base import Invalid
from . import ACTIVATIONS, CONVS, POOLS

PER_CHANNEL = (*ACTIVATIONS, "identity", *POOLS, "global_avgpool", "global_maxpool",
               "batchnorm", "dropout")
ELEMENTWISE = ("add", "multiply")
# Filled into a candidate's padding channels: zero weights, and a unit variance so a
# padding channel's batch norm divides by a finite number.
PAD_FILL = {"running_var": 1.0}


class Unsupported(Exception):
    """The net has a layer the population rewrite does not handle (the message says which)."""


@dataclass(frozen=True)
class Slot:
    """One parameter of one candidate: its values read as ``shape`` (the spec's shape, or a
    dense's weights as a conv's), zero-padded to ``padded`` in the population net."""

    shape: tuple[int, ...]
    padded: tuple[int, ...]
    fill: float = 0.0


@dataclass(frozen=True)
class Candidates:
    """A tensor of the population net that holds every candidate's ``channels`` channels,
    each padded to ``padded``; ``flattened`` when the spec flattened it (the population
    net keeps its planes)."""

    channels: int
    padded: int
    flattened: bool = False


@dataclass(frozen=True)
class Population:
    graph: Graph
    size: int
    slots: dict[tuple[str, str], Slot]
    output: Candidates
    output_shape: tuple[int, ...]          # one candidate's output, as the spec's net gives it

    def lay_out(self, layer: str, param: str, values: np.ndarray) -> np.ndarray:
        """The population net's ``layer/param`` from every candidate's values, an array of
        ``(size, *spec shape)`` (or ``(1, *spec shape)``: every candidate shares them)."""
        slot = self.slots[layer, param]
        values = np.asarray(values).reshape(-1, *slot.shape)
        out = np.full((self.size, *slot.padded), slot.fill, values.dtype)
        out[(slice(None), *(slice(0, d) for d in slot.shape))] = values
        return out.reshape(self.size * slot.padded[0], *slot.padded[1:])

    def candidate_outputs(self, y: np.ndarray) -> np.ndarray:
        """``(size, N, *output shape)``: each candidate's output from the population net's
        output ``y`` of shape ``(N, size*C', ...)``."""
        n, out = y.shape[0], self.output
        planes = y.reshape(n, self.size, out.padded, *self.graph.output.out.spatial)
        return np.moveaxis(planes[:, :, :out.channels], 1, 0).reshape(
            self.size, n, *self.output_shape)


def padded(channels: int, align: int) -> int:
    return -(-channels // align) * align


def is_depthwise(node: Node) -> bool:
    groups = node.attrs["groups"]
    return groups > 1 and groups == node.in_types[0].channels == node.out.channels


def rebuilt(node: Node, inputs: tuple[str, ...], in_types, name: str | None = None,
            op: str | None = None, **changes) -> Node:
    """``node`` (or a new ``op`` layer) shape-inferred again on ``in_types`` with ``changes``
    to its attributes, as ``spec.build`` infers a layer."""
    op_name = op or node.op
    rule = REGISTRY[op_name]
    ins = list(in_types)
    try:
        attrs, out = rule.infer({**(node.attrs if op is None else {}), **changes}, ins, {})
    except Invalid as error:
        raise Unsupported(f"layer {node.name!r} ({node.op}): {error}") from None
    return Node(name or node.name, op_name, inputs, frozen(attrs), tuple(ins), out,
                frozen(rule.params(attrs, ins)), frozen(rule.state(attrs, ins)),
                rule.macs(attrs, ins, out))


class Rewrite:
    """The state of one ``population_graph`` walk: nodes so far, what each tensor holds."""

    def __init__(self, graph: Graph, size: int, align: int):
        self.graph, self.size, self.align = graph, size, align
        self.nodes: list[Node] = []
        self.types: dict[str, TensorType] = {graph.input_name: graph.input}
        self.held: dict[str, Candidates] = {}       # by spec name; absent: shared
        self.alias: dict[str, str] = {}             # dropped flatten -> the tensor it flattened
        self.slots: dict[tuple[str, str], Slot] = {}

    def add(self, node: Node, held: Candidates | None) -> None:
        self.nodes.append(node)
        self.types[node.name] = node.out
        if held is not None:
            self.held[node.name] = held

    def source(self, node: Node) -> tuple[str, Candidates | None]:
        """The population tensor ``node`` reads, and what it holds (None: shared)."""
        if len(node.inputs) != 1:
            raise Unsupported(f"layer {node.name!r} ({node.op}) reads {len(node.inputs)} inputs")
        name = node.inputs[0]
        return self.alias.get(name, name), self.held.get(name)

    def pad(self, channels: int, node: Node, shared_input: bool) -> int:
        """Padded output channels; the output layer reading the shared input needs none."""
        last = node is self.graph.nodes[-1]
        return channels if shared_input and last else padded(channels, self.align)

    def conv(self, node: Node) -> None:
        (src, held), (k, c, *kernel) = self.source(node), node.params["w"]
        groups = node.attrs["groups"]
        if held is None and groups != 1:
            raise Unsupported(f"layer {node.name!r} ({node.op}) reads the shared input with "
                              f"groups={groups}")
        k_pad = self.pad(node.out.channels, node, held is None)
        if held is None:
            groups, w_padded = 1, (k_pad, c, *kernel)
        elif is_depthwise(node):
            k_pad, w_padded = held.padded, (held.padded, 1, *kernel)
            groups = self.size * k_pad
        else:
            groups, w_padded = self.size * groups, (k_pad, held.padded // groups, *kernel)
        self.add(rebuilt(node, (src,), (self.types[src],), filters=self.size * k_pad,
                         groups=groups), Candidates(node.out.channels, k_pad))
        self.slots[node.name, "w"] = Slot((k, c, *kernel), w_padded)
        if "b" in node.params:
            self.slots[node.name, "b"] = Slot((k,), (k_pad,))

    def dense(self, node: Node) -> None:
        (src, held), (units, features) = self.source(node), node.params["w"]
        u_pad = self.pad(units, node, held is None)
        if held is None:
            self.add(rebuilt(node, (src,), (self.types[src],), units=self.size * u_pad),
                     Candidates(units, u_pad))
            self.slots[node.name, "w"] = Slot((units, features), (u_pad, features))
        else:
            src = self.planes(src, held, node)
            spatial = self.types[src].spatial
            attrs = {"filters": self.size * u_pad, "kernel": spatial,
                     "stride": (1,) * len(spatial), "padding": ((0, 0),) * len(spatial),
                     "dilation": (1,) * len(spatial), "groups": self.size,
                     "bias": node.attrs["bias"], "activation": node.attrs["activation"]}
            self.add(rebuilt(node, (src,), (self.types[src],), op=f"conv{len(spatial)}d",
                             **attrs), Candidates(units, u_pad))
            self.slots[node.name, "w"] = Slot((units, held.channels, *spatial),
                                              (u_pad, held.padded, *spatial))
        if "b" in node.params:
            self.slots[node.name, "b"] = Slot((units,), (u_pad,))

    def planes(self, src: str, held: Candidates, reader: Node) -> str:
        """``src``, or a reshape of a flat candidate tensor to (C, 1) that a conv can read."""
        if len(self.types[src].shape) > 1:
            return src
        name = f"{src}_planes"
        if name in self.types or any(n.name == name for n in self.graph.nodes):
            raise Unsupported(f"layer {reader.name!r}: the name {name!r} is taken")
        shape = (self.types[src].channels, 1)
        self.add(rebuilt(reader, (src,), (self.types[src],), name=name, op="reshape",
                         shape=shape), held)
        return name

    def per_channel(self, node: Node) -> None:
        src, held = self.source(node)
        if held is None:
            if node.params:
                raise Unsupported(f"layer {node.name!r} ({node.op}) has parameters and reads "
                                  f"the shared input")
            self.add(node, None)
            return
        if held.flattened and node.op not in (*ACTIVATIONS, "identity", "dropout"):
            raise Unsupported(f"layer {node.name!r} ({node.op}) reads a flattened tensor")
        if node.op.startswith("maxpool") and node.attrs["return_switches"]:
            raise Unsupported(f"layer {node.name!r} ({node.op}) keeps switches for an unpool")
        self.add(rebuilt(node, (src,), (self.types[src],)), held)
        for param in (*node.params, *node.state):
            self.slots[node.name, param] = Slot((held.channels,), (held.padded,),
                                                PAD_FILL.get(param, 0.0))

    def flatten(self, node: Node) -> None:
        src, held = self.source(node)
        if held is None:
            self.add(node, None)
        else:
            self.alias[node.name] = src
            self.held[node.name] = Candidates(held.channels, held.padded, flattened=True)

    def elementwise(self, node: Node) -> None:
        srcs = tuple(self.alias.get(i, i) for i in node.inputs)
        held = {self.held.get(i) for i in node.inputs}
        if len(held) != 1 or None in held:
            raise Unsupported(f"layer {node.name!r} ({node.op}) mixes the shared input with "
                              f"candidate tensors, or tensors of different layouts")
        self.add(rebuilt(node, srcs, tuple(self.types[s] for s in srcs)), held.pop())


def population_graph(graph: Graph, size: int, align: int = 1) -> Population:
    """``graph`` rewritten to evaluate ``size`` candidates at once (see the module
    docstring); each candidate's channels are padded to a multiple of ``align``."""
    if align > 1 and any(n.op in CONVS and n.attrs["groups"] > 1 and not is_depthwise(n)
                         for n in graph.nodes):
        raise Unsupported("a grouped (not depthwise) conv cannot keep whole vectors per group")
    rewrite = Rewrite(graph, size, align)
    for node in graph.nodes:
        if node.refs:
            raise Unsupported(f"layer {node.name!r} ({node.op}) reads another layer's switches")
        if node.op in CONVS:
            rewrite.conv(node)
        elif node.op == "dense":
            rewrite.dense(node)
        elif node.op == "flatten":
            rewrite.flatten(node)
        elif node.op in PER_CHANNEL:
            rewrite.per_channel(node)
        elif node.op in ELEMENTWISE:
            rewrite.elementwise(node)
        else:
            raise Unsupported(f"layer {node.name!r} ({node.op}) has no population rewrite")
    out = graph.output.name
    if out not in rewrite.held or rewrite.nodes[-1].name != rewrite.alias.get(out, out):
        raise Unsupported("the output does not depend on the weights")
    pop = Graph(f"{graph.name}_x{size}", graph.input_name, graph.input, tuple(rewrite.nodes),
                graph.loss)
    return Population(pop, size, rewrite.slots, rewrite.held[out], graph.output.out.shape)
