"""Every user mistake gets a SpecError that names the layer and field, says what was
expected and what was received, and suggests the fix. The messages are pinned here."""
import copy
import json
from pathlib import Path

import pytest

import cnngen
from cnngen import SpecError
from cnngen.spec import Builder

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
LENET = cnngen.load_spec(EXAMPLES / "lenet5.yaml")


def mutated(change):
    spec = copy.deepcopy(LENET)
    change(spec)
    return spec


def layer(i, **fields):
    return lambda spec: spec["layers"][i].update(fields)


CASES = [
    ("unknown op", layer(0, op="conv2"), r"layer 'c1': unknown op 'conv2'\. Did you mean 'conv2d'\?"),
    ("unknown attribute", layer(0, filter=3),
     r"layer 'c1' \(conv2d\): unknown attribute 'filter'\. Did you mean 'filters'\? conv2d takes: .*kernel"),
    ("missing attribute", lambda s: s["layers"][0].pop("filters"),
     r"layer 'c1' \(conv2d\): missing attribute 'filters' \(output channels\)"),
    ("missing name", lambda s: s["layers"][0].pop("name"),
     r"layers\[0\]: missing field 'name'\. Every layer needs a unique name, e\.g\. name: conv2d_0"),
    ("missing op", lambda s: s["layers"][1].pop("op"), r"layer 's2': missing field 'op'"),
    ("duplicate name", layer(2, name="c1"),
     r"layers\[2\]: duplicate layer name 'c1' \(first used by layers\[0\]\)"),
    ("input names no layer", layer(2, inputs=["s3"]),
     r"layer 'c3' \(conv2d\): reads 's3', which is not a layer\. Did you mean 's[24]'\? Layers: input, c1, s2, c3"),
    ("cycle", layer(1, inputs=["c3"]), r"layers form a cycle: s2 -> c3 -> s2"),
    ("self cycle", layer(1, inputs=["s2"]), r"layers form a cycle: s2 -> s2"),
    ("kernel larger than input", layer(2, kernel=15),
     r"layer 'c3' \(conv2d\): output height would be 0: O = \(W - K \+ 2P\)/S \+ 1 = "
     r"\(14 - 15 \+ 2\*0\)/1 \+ 1\. The kernel \(15\) is larger than the padded input \(14\)"),
    ("output size negative", layer(2, kernel=9, dilation=3),
     r"output height would be -\d+: .*\(14 - 25 \+ 2\*0\)/1 \+ 1\. The kernel \(25 \(kernel 9 dilated by 3\)\)"),
    ("pool bigger than map", layer(3, size=11),
     r"layer 's4' \(maxpool2d\): output height would be 0: O = \(W - K \+ 2P\)/S \+ 1 = \(10 - 11 \+ 2\*0\)/11 \+ 1\. The kernel \(11\) is larger"),
    ("groups do not divide channels", layer(2, groups=4),
     r"layer 'c3' \(conv2d\), field 'groups': input channels must be divisible by groups\. "
     r"Received: c_in=6, groups=4 \(input shape \(N, 6, 14, 14\)\)\. Use groups in \(1, 2\)\."),
    ("groups do not divide filters", layer(2, groups=3, filters=16),
     r"field 'groups': filters must be divisible by groups\. Received: filters=16, groups=3"),
    ("negative size", layer(2, kernel=-3),
     r"layer 'c3' \(conv2d\), field 'kernel': expected a positive integer or a list of 2; received -3\."),
    ("non-integer size", layer(2, kernel=2.5), r"field 'kernel': .*whole numbers.*received 2\.5"),
    ("boolean is not a size", layer(0, filters=True), r"field 'filters': expected a positive integer; received True"),
    ("wrong list length", layer(0, kernel=[5, 5, 5]), r"field 'kernel': expected .* a list of 2; received \[5, 5, 5\]"),
    ("bad padding word", layer(0, padding="sam"), r"field 'padding': expected \"same\", \"valid\".*received 'sam'"),
    ("bad activation", layer(0, activation="rleu"), r"field 'activation': .*Did you mean 'relu'\?"),
    ("dense on 4-D", lambda s: s["layers"].pop(4),
     r"layer 'f5' \(dense\): expects a flat \(N, features\) input; received \(N, 16, 5, 5\)\. "
     r"Add a 'flatten' layer"),
    ("conv on flat input", lambda s: s["layers"].insert(5, {"name": "cx", "op": "conv2d", "filters": 2, "kernel": 1}),
     r"layer 'cx' \(conv2d\): expects a \(N, C, H, W\) input; received \(N, 400\)\. Add a reshape layer"),
    ("unused layer", layer(1, inputs=["input"]),
     r"layer 'c1' \(conv2d\) is never used: no layer reads it and it is not the last layer"),
    ("add shape mismatch", lambda s: s["layers"].insert(4, {"name": "res", "op": "add", "inputs": ["s4", "s2"]}),
     r"layer 'res' \(add\): inputs must all have the same shape; received \(N, 16, 5, 5\), \(N, 6, 14, 14\)\..*\(inputs: s4, s2\)"),
    ("concat shape mismatch", lambda s: s["layers"].insert(4, {"name": "cat", "op": "concat", "inputs": ["s4", "s2"]}),
     r"layer 'cat' \(concat\): inputs must match in every axis but channels"),
    ("add needs inputs", lambda s: s["layers"].insert(4, {"name": "res", "op": "add"}),
     r"layer 'res' \(add\): needs two or more inputs; name them with 'inputs: \[a, b\]'"),
    ("one-input op given two", layer(2, inputs=["s2", "c1"]), r"layer 'c3' \(conv2d\), field 'inputs': takes exactly one input"),
    ("unpool without switches", lambda s: s["layers"].insert(4, {"name": "un", "op": "max_unpool", "switches": "s4"}),
     r"layer 'un' \(max_unpool\), field 'switches': layer 's4' does not keep its switches\. Add 'return_switches: true'"),
    ("unpool of a conv", lambda s: s["layers"].insert(4, {"name": "un", "op": "max_unpool", "switches": "c3"}),
     r"field 'switches': layer 'c3' is a conv2d, not a max-pool"),
    ("wrong version", lambda s: s.update(cnngen=2), r"field 'cnngen': unsupported spec version 2; this cnngen reads version 1"),
    ("missing version", lambda s: s.pop("cnngen"), r"missing field 'cnngen' \(the spec version\)\. Add 'cnngen: 1'"),
    ("unknown top-level field", lambda s: s.update(layer=[]), r"spec: unknown field 'layer'\. Did you mean 'layers'\?"),
    ("zero input size", lambda s: s.update(input={"shape": [1, 0, 32]}),
     r"field 'input.shape': expected a list of 1 to 3 positive integers.*received \[1, 0, 32\]"),
    ("input without shape", lambda s: s.update(input=[1, 32, 32]), r"field 'input': expected a mapping like \{shape: \[3, 32, 32\]\}"),
    ("empty layers", lambda s: s.update(layers=[]), r"field 'layers': expected a non-empty list of layers"),
    ("layer is not a mapping", lambda s: s["layers"].append("dense"), r"layers\[8\]: expected a mapping like \{name: c1, op: conv2d"),
    ("bad layer name", layer(0, name="c-1"), r"layers\[0\], field 'name': expected a name of letters, digits and underscores"),
    ("layer named like the input", layer(0, name="input"), r"layers\[0\]: layer name 'input' is the network input's name"),
    ("unknown loss", lambda s: s.update(loss={"op": "cross_entropy"}),
     r"field 'loss.op': expected one of mse, softmax_cross_entropy; received 'cross_entropy'\. Did you mean 'softmax_cross_entropy'\?"),
    ("negative l2", lambda s: s.update(loss={"op": "mse", "l2": -1}), r"field 'loss': expected a number in \[0, inf\); received -1"),
    ("dropout rate 1", lambda s: s["layers"].insert(5, {"name": "d", "op": "dropout", "rate": 1.0}),
     r"layer 'd' \(dropout\), field 'rate': expected a number in \[0, 1\); received 1\.0"),
    ("pool padding of the whole window", layer(1, padding=2),
     r"layer 's2' \(maxpool2d\), field 'padding': padding must be smaller than the window size, so that every window holds an input pixel\. Received: padding=2, size=2\. Use padding <= 1\."),
    ("output_padding too large", lambda s: s["layers"].insert(1, {"name": "up", "op": "conv_transpose2d", "filters": 6, "kernel": 2, "stride": 2, "output_padding": 2}),
     r"layer 'up' \(conv_transpose2d\), field 'output_padding': output_padding must be smaller than stride or dilation"),
    ("reshape size mismatch", lambda s: s["layers"].insert(5, {"name": "rs", "op": "reshape", "shape": [7, -1]}),
     r"layer 'rs' \(reshape\), field 'shape': cannot reshape \(N, 400\) \(400 values per sample\) to \[7, -1\]: 400 is not divisible by 7"),
]


@pytest.mark.parametrize("change,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_names_layer_field_expected_and_received(change, message):
    with pytest.raises(SpecError, match=message):
        cnngen.check(mutated(change))


def test_the_example_is_valid():
    assert cnngen.check(LENET).params == 61_706


def test_yaml_syntax_error_has_line_number(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("cnngen: 1\nlayers:\n  - {name: a, op: relu\n  - {name: b}\n")
    with pytest.raises(SpecError, match=r"bad\.yaml: YAML syntax error at line 4, column 5: expected .,. or .}., but got .{."):
        cnngen.check(path)


def test_json_syntax_error_has_line_number(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"cnngen": 1,\n "layers": [1,]}')
    with pytest.raises(SpecError, match=r"bad\.json: JSON syntax error at line 2, column 15"):
        cnngen.check(path)


def test_missing_file():
    with pytest.raises(SpecError, match=r"spec file 'no/such\.yaml' not found"):
        cnngen.check("no/such.yaml")


def test_document_that_is_not_a_mapping():
    with pytest.raises(SpecError, match=r"expected a mapping with the keys cnngen, input and layers; received list"):
        cnngen.load_spec("- 1\n- 2\n")


def test_yaml_json_dict_and_builder_give_the_same_graph(tmp_path):
    json_path = tmp_path / "lenet.json"
    json_path.write_text(json.dumps(LENET))
    b = Builder("lenet5", (1, 32, 32))
    b.conv2d("c1", filters=6, kernel=5, activation="relu")
    b.maxpool2d("s2", size=2)
    b.conv2d("c3", filters=16, kernel=5, stride=1, padding="valid", activation="relu")
    b.maxpool2d("s4", size=2)
    b.flatten("flat")
    b.dense("f5", units=120, activation="relu")
    b.dense("f6", units=84, activation="relu")
    b.dense("out", units=10)
    b.loss("softmax_cross_entropy", l2=0.0005)
    graphs = [cnngen.build_graph(s) for s in (EXAMPLES / "lenet5.yaml", json_path, LENET,
                                              b.spec(), (EXAMPLES / "lenet5.yaml").read_text())]
    assert all(g == graphs[0] for g in graphs)


def test_builder_rejects_unknown_op_with_suggestion():
    with pytest.raises(AttributeError, match=r"Builder has no op 'conv2D'\. Did you mean 'conv2d'\?"):
        Builder("x", (1, 8, 8)).conv2D("c", filters=1, kernel=1)


def test_layers_may_be_listed_before_what_they_read():
    spec = {"cnngen": 1, "input": {"shape": [2, 4, 4]}, "layers": [
        {"name": "a", "op": "relu", "inputs": ["input"]},
        {"name": "sum", "op": "add", "inputs": ["a", "b"]},
        {"name": "b", "op": "tanh", "inputs": ["input"]},
        {"name": "out", "op": "flatten", "inputs": ["sum"]},
    ]}
    assert [n.name for n in cnngen.build_graph(spec).nodes] == ["a", "b", "sum", "out"]


def test_deep_chains_do_not_hit_the_recursion_limit():
    layers = [{"name": f"r{i}", "op": "relu"} for i in range(3000)]
    graph = cnngen.build_graph({"cnngen": 1, "input": {"shape": [4]}, "layers": layers})
    assert len(graph.nodes) == 3000
