"""Turn a spec document into a validated ``ir.Graph``: fields, attributes, references,
cycles, shapes and sizes. Every user mistake becomes a ``SpecError`` that names the layer
and the field, says what was expected and what was received, and suggests the fix.

Sizes: the input, every layer's output (per sample) and every parameter and state tensor
hold at most ``MAX_ELEMENTS`` = 2**31 - 1 elements (see ``ops.base``: kernels index
tensors with flat offsets that the batch multiplies). Messages stay short whatever the
spec: lists of layers show the first ``SHOWN`` names and "... and N more".
"""
from __future__ import annotations

from typing import Any, Mapping

from ..errors import SpecError
from ..ir import Graph, Loss, Node, TensorType, frozen
from ..ops import REGISTRY
from ..ops import loss as losses
from ..ops.base import (IDENTIFIER, MAX_ELEMENTS, REQUIRED, Float, Invalid, integer, is_int,
                        show)
from ..suggest import did_you_mean
from .load import load_spec

VERSION = 1
TOP_FIELDS = ("cnngen", "name", "description", "input", "layers", "loss")
LAYER_FIELDS = ("name", "op", "inputs")
SHOWN = 10                 # names a message lists before "... and N more"
MAX_OP_MESSAGE = 1000      # characters of an op's message kept (its head and its tail)


def build_graph(spec) -> Graph:
    """The validated, shape-inferred graph of a spec (path, text, dict or Graph)."""
    if isinstance(spec, Graph):
        return spec
    doc = load_spec(spec)
    check_fields(doc, TOP_FIELDS, "spec")
    check_version(doc)
    name = identifier(doc.get("name", "net"), "field 'name'")
    input_name, input_type = parse_input(doc)
    layers = doc.get("layers")
    if not isinstance(layers, list) or not layers:
        raise SpecError(f"field 'layers': expected a non-empty list of layers; received "
                        f"{show(layers)}.")
    parsed = [parse_layer(i, raw, input_name) for i, raw in enumerate(layers)]
    for i, layer in enumerate(parsed):
        if layer["inputs"] is None:  # a layer reads the previous one unless it names inputs
            layer["inputs"] = (parsed[i - 1]["name"],) if i else (input_name,)
    order = topological_order(parsed, input_name)
    nodes: dict[str, Node] = {}
    for layer in order:
        nodes[layer["name"]] = infer(layer, nodes, input_name, input_type)
    check_all_used(parsed, nodes)
    out = nodes[parsed[-1]["name"]]
    return Graph(name, input_name, input_type, tuple(nodes.values()), parse_loss(doc, out))


def sentence(message: str) -> str:
    return message if message.endswith((".", "?", "!", ")")) else message + "."


def listing(names, sep: str = ", ", shown: int = SHOWN) -> str:
    """``names`` joined by ``sep``: all of them, or the first ``shown`` and "... and N more"."""
    names = list(names)
    if len(names) <= shown + 1:
        return sep.join(names)
    return f"{sep.join(names[:shown])}{sep}... and {len(names) - shown} more"


def shortened(message: str) -> str:
    """An op's message, its middle cut when longer than MAX_OP_MESSAGE (a list of a
    thousand inputs' shapes): the head says what is wrong, the tail how to fix it."""
    if len(message) <= MAX_OP_MESSAGE:
        return message
    head, tail = MAX_OP_MESSAGE * 2 // 3, MAX_OP_MESSAGE // 3
    cut = len(message) - head - tail
    return f"{message[:head]} ... [{cut:,} characters cut] ... {message[-tail:]}"


def check_size(where: str, what: str, shape: tuple[int, ...], fix: str,
               per_sample: bool = True) -> None:
    """SpecError unless a tensor of ``shape`` holds at most MAX_ELEMENTS elements."""
    count = 1
    for d in shape:
        count *= d
    if count > MAX_ELEMENTS:
        each, batch = (" per sample", ", which the batch multiplies") if per_sample else ("", "")
        raise SpecError(f"{where}: {what} has {count:,} elements{each}; the limit is "
                        f"{MAX_ELEMENTS:,} (2**31 - 1), because kernels index tensors with "
                        f"flat offsets{batch}. {fix}")


def check_fields(raw: Mapping, allowed, where: str) -> None:
    for key in raw:
        if key not in allowed:
            raise SpecError(f"{where}: unknown field {show(key)}.{did_you_mean(key, allowed)} "
                            f"Allowed fields: {', '.join(allowed)}.")


def check_version(doc: dict) -> None:
    if "cnngen" not in doc:
        raise SpecError("spec: missing field 'cnngen' (the spec version). Add 'cnngen: 1' at the top.")
    if not is_int(doc["cnngen"]) or doc["cnngen"] != VERSION:
        raise SpecError(f"field 'cnngen': unsupported spec version {show(doc['cnngen'])}; this "
                        f"cnngen reads version {VERSION}.")


def identifier(value: Any, where: str) -> str:
    if not isinstance(value, str) or not IDENTIFIER.fullmatch(value):
        raise SpecError(f"{where}: expected a name of letters, digits and underscores that "
                        f"does not start with a digit (at most 64 characters); received "
                        f"{show(value)}.")
    return value


def parse_input(doc: dict) -> tuple[str, TensorType]:
    raw = doc.get("input")
    if not isinstance(raw, dict):
        raise SpecError(f"field 'input': expected a mapping like {{shape: [3, 32, 32]}} (C, H, W "
                        f"without the batch); received {show(raw)}.")
    check_fields(raw, ("shape", "name"), "field 'input'")
    name = identifier(raw.get("name", "input"), "field 'input.name'")
    shape = raw.get("shape")
    what = "a list of 1 to 3 positive integers: (C,), (C, L) or (C, H, W) without the batch"
    if not isinstance(shape, list) or not 1 <= len(shape) <= 3:
        raise SpecError(f"field 'input.shape': expected {what}; received {show(shape)}.")
    try:
        dims = tuple(integer(d, 1, "a positive integer") for d in shape)
    except Invalid:
        raise SpecError(f"field 'input.shape': expected {what}; received {show(shape)}.") from None
    check_size("field 'input.shape'", f"the input {TensorType(dims)}", dims,
               "Use a smaller input.")
    return name, TensorType(dims)


def parse_layer(index: int, raw: Any, input_name: str) -> dict:
    """Fields of one layer, attributes validated but not yet shape-checked."""
    where = f"layers[{index}]"
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: expected a mapping like {{name: c1, op: conv2d, ...}}; "
                        f"received {show(raw)}.")
    op_name = raw.get("op")
    if "name" not in raw:
        hint = f"{op_name}_{index}" if isinstance(op_name, str) and IDENTIFIER.fullmatch(
            f"{op_name}_{index}") else f"layer_{index}"
        raise SpecError(f"{where}: missing field 'name'. Every layer needs a unique name, "
                        f"e.g. name: {hint}.")
    name = identifier(raw["name"], f"{where}, field 'name'")
    if name == input_name:
        raise SpecError(f"{where}: layer name {name!r} is the network input's name; pick "
                        f"another.")
    where = f"layer {name!r}"
    if "op" not in raw:
        raise SpecError(f"{where}: missing field 'op'. Known ops: {', '.join(sorted(REGISTRY))}.")
    if not isinstance(op_name, str) or op_name not in REGISTRY:
        raise SpecError(f"{where}: unknown op {show(op_name)}."
                        f"{did_you_mean(op_name, REGISTRY)} "
                        f"Known ops: {', '.join(sorted(REGISTRY))}.")
    op = REGISTRY[op_name]
    where = f"layer {name!r} ({op_name})"
    attrs = {}
    for key, value in raw.items():
        if key in LAYER_FIELDS:
            continue
        if key not in op.attrs:
            takes = ", ".join((*LAYER_FIELDS, *op.attrs))
            raise SpecError(f"{where}: unknown attribute {show(key)}."
                            f"{did_you_mean(key, op.attrs)} {op_name} takes: {takes}.")
        try:
            attrs[key] = op.attrs[key].kind(value, op.ndim or 0)
        except Invalid as e:
            raise SpecError(sentence(f"{where}, field {key!r}: {e}")) from None
    for key, attr in op.attrs.items():
        if key not in attrs:
            if attr.default is REQUIRED:
                doc = f" ({attr.doc})" if attr.doc else ""
                raise SpecError(f"{where}: missing attribute {key!r}{doc}.")
            attrs[key] = attr.default if attr.default is None else attr.kind(attr.default,
                                                                             op.ndim or 0)
    return {"name": name, "op": op_name, "inputs": parse_inputs(raw, where, op.arity),
            "attrs": attrs, "index": index}


def parse_inputs(raw: dict, where: str, arity: int) -> tuple[str, ...] | None:
    """Explicit input names, or None for "the previous layer"."""
    if "inputs" not in raw:
        if arity == 0:
            raise SpecError(f"{where}: needs two or more inputs; name them with "
                            f"'inputs: [a, b]'.")
        return None
    value = raw["inputs"]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise SpecError(f"{where}, field 'inputs': expected a list of layer names; received "
                        f"{show(value)}.")
    names = tuple(identifier(v, f"{where}, field 'inputs'") for v in value)
    if arity == 0 and len(names) < 2:
        raise SpecError(f"{where}, field 'inputs': needs two or more inputs; received "
                        f"[{listing(names)}].")
    if arity == 1 and len(names) != 1:
        raise SpecError(f"{where}, field 'inputs': takes exactly one input; received "
                        f"{len(names)}: [{listing(names)}].")
    return names


def dependencies(layer: dict) -> tuple[str, ...]:
    op = REGISTRY[layer["op"]]
    return layer["inputs"] + tuple(layer["attrs"][ref] for ref in op.refs)


def topological_order(layers: list[dict], input_name: str) -> list[dict]:
    """Layers in an order where each comes after what it reads; stable when already so."""
    by_name: dict[str, dict] = {}
    for layer in layers:
        if layer["name"] in by_name:
            first = by_name[layer["name"]]["index"]
            raise SpecError(f"layers[{layer['index']}]: duplicate layer name {layer['name']!r} "
                            f"(first used by layers[{first}]). Layer names must be unique.")
        by_name[layer["name"]] = layer
    deps = {layer["name"]: dependencies(layer) for layer in layers}
    for layer in layers:
        for dep in deps[layer["name"]]:
            if dep != input_name and dep not in by_name:
                known = [input_name, *by_name]
                raise SpecError(f"layer {layer['name']!r} ({layer['op']}): reads {dep!r}, "
                                f"which is not a layer.{did_you_mean(dep, known)} "
                                f"Layers: {listing(known)}.")
    return depth_first_order(layers, by_name, deps, input_name)


def depth_first_order(layers, by_name, deps, input_name) -> list[dict]:
    """Post-order of an iterative depth-first walk (specs may be thousands of layers deep).
    ``state`` is 1 while a layer is on the current path, 2 once it is placed."""
    order, state = [], {}
    for root in layers:
        if state.get(root["name"]) == 2:
            continue
        path = [root["name"]]
        stack = [iter(deps[root["name"]])]
        state[root["name"]] = 1
        while stack:
            for dep in stack[-1]:
                if dep == input_name or state.get(dep) == 2:
                    continue
                if state.get(dep) == 1:
                    cycle = path[path.index(dep):] + [dep]
                    size = f" of {len(cycle) - 1} layers" if len(cycle) > SHOWN + 1 else ""
                    raise SpecError(f"layers form a cycle{size}: {listing(cycle, ' -> ')} (each "
                                    f"reads the next). A layer cannot read its own output, "
                                    f"directly or through other layers.")
                state[dep] = 1
                path.append(dep)
                stack.append(iter(deps[dep]))
                break
            else:
                stack.pop()
                done = path.pop()
                state[done] = 2
                order.append(by_name[done])
    return order


def infer(layer: dict, nodes: dict[str, Node], input_name: str, input_type: TensorType) -> Node:
    op = REGISTRY[layer["op"]]
    ins = [input_type if i == input_name else nodes[i].out for i in layer["inputs"]]
    where = f"layer {layer['name']!r} ({layer['op']})"
    try:
        refs = {}
        for ref in op.refs:
            target = layer["attrs"][ref]
            if target == input_name:
                raise Invalid("names the network input; expected a layer.", ref)
            refs[ref] = nodes[target]
        attrs, out = op.infer(dict(layer["attrs"]), ins, refs)
    except Invalid as e:
        field = f", field {e.field!r}" if e.field else ""
        reads = f" (inputs: {listing(layer['inputs'])})" if len(ins) > 1 else ""
        raise SpecError(sentence(f"{where}{field}: {shortened(str(e))}{reads}")) from None
    check_size(where, f"the output {out}", out.shape,
               "Use a smaller input or fewer channels, or downsample earlier.")
    params, state = op.params(attrs, ins), op.state(attrs, ins)
    for key, shape in {**params, **state}.items():
        check_size(where, f"parameter {key!r} of shape ({', '.join(map(str, shape))})", shape,
                   "Use fewer units, filters or channels, or a smaller kernel.",
                   per_sample=False)
    return Node(layer["name"], layer["op"], layer["inputs"], frozen(attrs), tuple(ins), out,
                frozen(params), frozen(state),
                op.macs(attrs, ins, out), tuple(node.name for node in refs.values()))


def check_all_used(layers: list[dict], nodes: dict[str, Node]) -> None:
    read = {dep for node in nodes.values() for dep in node.deps}
    for layer in layers[:-1]:
        if layer["name"] not in read:
            raise SpecError(f"layer {layer['name']!r} ({layer['op']}) is never used: no layer "
                            f"reads it and it is not the last layer (the output, "
                            f"{layers[-1]['name']!r}). Add it to a later layer's inputs, or "
                            f"remove it.")


def parse_loss(doc: dict, out: Node) -> Loss | None:
    raw = doc.get("loss")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SpecError(f"field 'loss': expected a mapping like {{op: softmax_cross_entropy, "
                        f"l2: 0.0005}}; received {show(raw)}.")
    check_fields(raw, ("op", "l2"), "field 'loss'")
    op = raw.get("op")
    if not isinstance(op, str) or op not in losses.NAMES:
        raise SpecError(f"field 'loss.op': expected one of {', '.join(losses.NAMES)}; received "
                        f"{show(op)}.{did_you_mean(op, losses.NAMES)}")
    try:
        l2 = Float(0.0)(raw.get("l2", 0.0), 0)
        losses.check_output(op, out.out)
    except Invalid as e:
        raise SpecError(sentence(f"field 'loss': {e}")) from None
    return Loss(op, l2)
