"""Specs at the edges: impossible sizes, YAML 1.1 surprises, duplicate keys, huge messages,
and spec paths that are not files. Each case once slipped through (or hung) and now gets a
SpecError that says what is wrong, what was expected and what was received."""
import json
import os
import re
from pathlib import Path

import pytest
import yaml

import cnngen
from cnngen import SpecError, zoo
from cnngen.ops.base import MAX_ELEMENTS
from cnngen.spec.load import MAX_SPEC_BYTES

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def net(input_shape, *layers):
    return {"cnngen": 1, "name": "t", "input": {"shape": list(input_shape)}, "layers": list(layers)}


LENET_YAML = (EXAMPLES / "lenet5.yaml").read_text()


# ---- sizes the kernels cannot index --------------------------------------------------------

def test_input_of_impossible_size_is_refused():
    big = [2**31 - 1] * 3
    with pytest.raises(SpecError, match=r"field 'input\.shape': the input \(N, 2147483647, "
                       r"2147483647, 2147483647\) has 9,903,520,300,447,984,150,353,281,023 "
                       r"elements per sample; the limit is 2,147,483,647 \(2\*\*31 - 1\)"):
        cnngen.check(net(big, {"name": "r", "op": "relu"}))


def test_input_at_the_limit_is_accepted():
    graph = cnngen.check(net([MAX_ELEMENTS], {"name": "r", "op": "relu"})).graph
    assert graph.input.size == MAX_ELEMENTS
    with pytest.raises(SpecError, match=r"2,147,483,648 elements per sample"):
        cnngen.check(net([2, 2**30], {"name": "r", "op": "relu"}))


def test_huge_dense_weight_is_refused():
    spec = net([400], {"name": "fc", "op": "dense", "units": 2**31 - 1})
    with pytest.raises(SpecError, match=r"layer 'fc' \(dense\): parameter 'w' of shape "
                       r"\(2147483647, 400\) has 858,993,458,800 elements; the limit is "
                       r"2,147,483,647 \(2\*\*31 - 1\), because kernels index tensors with flat "
                       r"offsets\. Use fewer units"):
        cnngen.check(spec)


def test_layer_output_that_blows_up_is_refused():
    """The input fits (9e8 elements); 64 filters over it do not."""
    spec = net([1, 30000, 30000], {"name": "c", "op": "conv2d", "filters": 64, "kernel": 3})
    with pytest.raises(SpecError, match=r"layer 'c' \(conv2d\): the output \(N, 64, 29998, "
                       r"29998\) has 57,592,320,256 elements per sample; the limit is "
                       r"2,147,483,647 .*which the batch multiplies"):
        cnngen.check(spec)


def test_concat_that_blows_up_is_refused():
    layers = [{"name": f"b{i}", "op": "relu", "inputs": ["input"]} for i in range(3)]
    spec = net([2**30], *layers, {"name": "cat", "op": "concat", "inputs": ["b0", "b1", "b2"]})
    with pytest.raises(SpecError, match=r"layer 'cat' \(concat\): the output \(N, 3221225472\)"):
        cnngen.check(spec)


# ---- YAML 1.1 surprises --------------------------------------------------------------------

def lenet_with(old: str, new: str) -> str:
    assert old in LENET_YAML
    return LENET_YAML.replace(old, new, 1)


@pytest.mark.parametrize("written,message", [
    ("010", r"010 has a leading zero, which is ambiguous: YAML 1\.1 reads it as octal 8, "
            r"YAML 1\.2 as 10\. Write 10 \(or 8\) without the leading zero\."),
    ("08", r"08 has a leading zero, which is ambiguous: YAML 1\.1 reads such numbers as text, "
           r"YAML 1\.2 as decimal\. Write 8"),
    ("0x10", r"0x10 is not a plain decimal number: .* Write 16, or quote it"),
    ("0o10", r"0o10 is not a plain decimal number: .* Write 8,"),
    ("0b110", r"0b110 is not a plain decimal number: .* Write 6,"),
    ("1_6", r"1_6 is not a plain decimal number: .*'_' separators.* Write 16,"),
    ("1:30", r"1:30 is not a plain decimal number: .*base-60.* Write 90,"),
])
def test_integers_in_yaml11_notation_are_refused_with_the_line(written, message):
    text = lenet_with("filters: 16", f"filters: {written}")
    line = next(i for i, s in enumerate(text.splitlines(), 1) if f"filters: {written}" in s)
    with pytest.raises(SpecError, match=rf"<string>: line {line}, column \d+: {message}"):
        cnngen.check(text)


def test_quoted_number_is_text():
    with pytest.raises(SpecError, match=r"field 'filters': expected a positive integer; "
                                        r"received '010'"):
        cnngen.check(lenet_with("filters: 16", 'filters: "010"'))


def test_floats_follow_yaml12():
    """YAML 1.1 (plain PyYAML) reads 5e-4 as text; a spec reads it as the number."""
    text = lenet_with("l2: 0.0005", "l2: 5e-4")
    assert yaml.safe_load(text)["loss"]["l2"] == "5e-4"
    assert cnngen.check(text).graph.loss.l2 == 5e-4


@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "Yes", "OFF"])
def test_yaml11_booleans_are_text_and_a_bool_attribute_says_so(word):
    text = lenet_with("op: maxpool2d, size: 2}", f"op: maxpool2d, size: 2, ceil_mode: {word}}}")
    with pytest.raises(SpecError, match=rf"layer 's2' \(maxpool2d\), field 'ceil_mode': "
                       rf"expected true or false; received '{word}' \(spec YAML reads "
                       rf"yes/no/on/off as text, as YAML 1\.2 does; write true or false\)"):
        cnngen.check(text)


def test_names_that_yaml11_would_retype_stay_names():
    """'on' and 'no' are booleans in YAML 1.1 and 2001-02-03 a date; here they are text."""
    doc = cnngen.load_spec("cnngen: 1\nname: on\ndescription: 2001-02-03\nx: =\n")
    assert (doc["name"], doc["description"], doc["x"]) == ("on", "2001-02-03", "=")
    spec = lenet_with("name: c1,", "name: on,")
    assert cnngen.check(spec).graph.nodes[0].name == "on"


def test_every_example_reads_as_plain_pyyaml_reads_it():
    """The dialect changes no value in a real spec."""
    for path in EXAMPLES.glob("*.yaml"):
        assert cnngen.load_spec(path) == yaml.safe_load(path.read_text()), path.name


@pytest.mark.parametrize("name", sorted(zoo.MODELS))
def test_zoo_specs_dumped_by_pyyaml_read_back_unchanged(name):
    spec = zoo.get(name)
    assert cnngen.load_spec(yaml.safe_dump(spec)) == spec


# ---- duplicate keys ------------------------------------------------------------------------

def test_duplicate_key_in_yaml_names_the_key_and_both_lines():
    text = lenet_with("{name: c3, op: conv2d, filters: 16,",
                      "{name: c3, op: conv2d, filters: 16, filters: 32,")
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "filters: 32" in s)
    with pytest.raises(SpecError, match=rf"<string>: line {line}, column \d+: duplicate key "
                       rf"'filters' \(first at line {line}\): the last one would silently "
                       rf"replace the first\. Keep one of them\."):
        cnngen.check(text)


def test_duplicate_top_level_key_in_a_yaml_file(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text(LENET_YAML + "name: other\n")
    last = len(path.read_text().splitlines())
    with pytest.raises(SpecError, match=rf"twice\.yaml: line {last}, column 1: duplicate key "
                                        rf"'name' \(first at line 4\)"):
        cnngen.check(path)


def test_duplicate_key_in_json(tmp_path):
    path = tmp_path / "twice.json"
    path.write_text('{"cnngen": 1, "input": {"shape": [4], "shape": [5]}, "layers": []}')
    with pytest.raises(SpecError, match=r"twice\.json: duplicate key 'shape' in a JSON object: "
                                        r"the last one would silently replace the first"):
        cnngen.check(path)


def test_yaml_merge_keys_may_be_overridden():
    """``<<`` merges an anchor; the mapping's own keys override it (not a duplicate)."""
    doc = cnngen.load_spec("cnngen: 1\nbase: &b {op: conv2d, filters: 8, kernel: 3}\n"
                           "layer:\n  <<: *b\n  filters: 16\n")
    assert doc["layer"] == {"op": "conv2d", "filters": 16, "kernel": 3}


# ---- messages stay short -------------------------------------------------------------------

def test_cycle_of_100k_layers_gives_a_short_message():
    n = 10**5
    layers = [{"name": f"l{i}", "op": "relu", "inputs": [f"l{(i + 1) % n}"]} for i in range(n)]
    with pytest.raises(SpecError) as e:
        cnngen.check(net([4], *layers))
    message = str(e.value)
    assert re.match(r"layers form a cycle of 100000 layers: l0 -> l1 -> .* -> l9 -> \.\.\. and "
                    r"99991 more \(each reads the next\)\.", message), message
    assert len(message) < 300


def test_long_lists_of_inputs_are_cut():
    names = [f"b{i}" for i in range(5000)]
    layers = [{"name": n, "op": "flatten", "inputs": ["input"]} for n in names]
    spec = net([2, 2], *layers, {"name": "sum", "op": "add", "inputs": [*names, "input"]})
    with pytest.raises(SpecError) as e:
        cnngen.check(spec)
    message = str(e.value)
    assert message.startswith("layer 'sum' (add): inputs must all have the same shape; "
                              "received (N, 4), (N, 4)"), message
    assert "characters cut] ..." in message and "... and 4991 more)" in message
    assert len(message) < 1500
    spec = net([4], *layers[:3000], {"name": "r", "op": "relu", "inputs": names[:3000]})
    with pytest.raises(SpecError, match=r"layer 'r' \(relu\), field 'inputs': takes exactly "
                       r"one input; received 3000: \[b0, b1, .*, b9, \.\.\. and 2990 more\]\.$"):
        cnngen.check(spec)


# ---- spec paths that are not files, and files too large ------------------------------------

def test_dev_zero_is_refused_without_reading():
    with pytest.raises(SpecError, match=r"spec path '/dev/zero' is a character device, not a "
                                        r"regular file; expected a \.yaml or \.json file\."):
        cnngen.check("/dev/zero")


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)  # with no writer, reading would wait forever
    with pytest.raises(SpecError, match=r"spec\.yaml' is a FIFO \(named pipe\), not a "
                                        r"regular file"):
        cnngen.check(fifo)


def test_directory_is_refused(tmp_path):
    with pytest.raises(SpecError, match=r"is a directory, not a regular file"):
        cnngen.check(tmp_path)


def test_oversized_spec_file_is_refused(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as f:  # sparse: no disk space used
        f.truncate(MAX_SPEC_BYTES + 1)
    with pytest.raises(SpecError, match=r"huge\.yaml' is larger than the limit of 16,777,216 "
                                        r"bytes \(MAX_SPEC_BYTES, 16 MiB\)"):
        cnngen.check(path)


def test_spec_file_at_the_limit_is_read(tmp_path):
    path = tmp_path / "padded.json"
    text = json.dumps(cnngen.load_spec(EXAMPLES / "lenet5.yaml"))
    path.write_text(text + " " * (MAX_SPEC_BYTES - len(text)))
    assert cnngen.check(path).params == 61_706


def test_oversized_spec_text_is_refused():
    text = LENET_YAML + "#" * MAX_SPEC_BYTES
    with pytest.raises(SpecError, match=r"spec text: 16,77\d,\d{3} characters is more than the "
                                        r"limit of 16,777,216"):
        cnngen.check(text)
