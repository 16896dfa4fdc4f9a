"""Fuzzing ``cnngen.check``: no input of any kind raises anything but ``SpecError``.

Four sources of input, from blind to nearly right:
  1. random JSON-like documents (and dicts holding Python objects YAML never makes);
  2. plausible specs: a valid header, registry ops, real attribute names, mostly sane values,
     so that shape inference runs deep (a fixed sample must contain valid specs);
  3. valid specs (LeNet-5 and Builder-made nets) with one to three mutations;
  4. text: random, and YAML/JSON dumps of valid specs with characters deleted or inserted,
     as a string and as a .yaml/.json file.
Each ``check`` runs under a time limit, so a spec that makes validation hang fails as
``CheckTooSlow`` instead of stalling the suite.
"""
import contextlib
import copy
import json
import signal
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import cnngen
from cnngen.ops import REGISTRY
from cnngen.ops.base import (MAX_ELEMENTS, REQUIRED, Bool, Choice, Float, Int, Ints, LayerName,
                             Padding, ShapeList)
from cnngen.spec import Builder

CHECK_SECONDS = 5.0
FUZZ = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                   HealthCheck.data_too_large,
                                                   HealthCheck.filter_too_much])
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


class CheckTooSlow(Exception):
    """``check`` ran past CHECK_SECONDS: a hang is a bug just as a crash is."""


@contextlib.contextmanager
def time_limit(seconds: float):
    if not hasattr(signal, "setitimer"):
        yield
        return

    def alarm(signum, frame):
        raise CheckTooSlow(f"check did not finish within {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def accepted(source) -> bool:
    """True when ``check`` accepts ``source``, False on SpecError; anything else propagates.
    An accepted spec must also make sense: positive sizes, reshapes that keep the size, and
    no tensor (per sample) or parameter past MAX_ELEMENTS."""
    with time_limit(CHECK_SECONDS):
        try:
            graph = cnngen.check(source).graph
        except cnngen.SpecError as e:
            assert len(str(e)) < 2000, f"a {len(str(e))}-character message: {str(e)[:200]}"
            return False
    assert graph.input.size <= MAX_ELEMENTS
    for node in graph.nodes:
        assert all(isinstance(d, int) and d >= 1 for d in node.out.shape), str(node)
        assert node.out.size <= MAX_ELEMENTS, str(node)
        for shape in (*node.params.values(), *node.state.values()):
            assert int(np.prod(shape, dtype=object)) <= MAX_ELEMENTS, f"{node}: {shape}"
        if node.op in ("flatten", "reshape"):
            assert node.out.size == node.in_types[0].size, f"size changed: {node}"
    return True


# --- vocabulary ---------------------------------------------------------------------------

OPS = sorted(REGISTRY)
MISSPELT = ["conv2", "Conv2d", "maxpool", "dense ", "relu6", "", "add\n", "global_pool"]
ATTR_NAMES = sorted({name for op in REGISTRY.values() for name in op.attrs})
FIELDS = ["cnngen", "name", "description", "input", "layers", "loss", "op", "inputs", "shape",
          "l2", *ATTR_NAMES]
# +-(2**e - 1) and +-2**e: past MAX_DIM, int64, float64 (2**1024) and the 4300-digit str limit.
# Built lazily: Hypothesis itself cannot repr a strategy that holds a 4800-digit literal.
huge_ints = st.builds(lambda sign, e, off: sign * (2**e + off), st.sampled_from([1, -1]),
                      st.sampled_from([31, 63, 1100, 16000]), st.sampled_from([-1, 0]))

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-3, 9), huge_ints,
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.5, -0.0, 1.0, 1e-5]),
    st.text(max_size=12), st.sampled_from(["same", "valid", "relu", "input", "c1", "x" * 70]))
keys = st.one_of(st.sampled_from(FIELDS), st.text(max_size=8))
json_like = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)), max_leaves=25)
junk = st.one_of(scalars, st.lists(scalars, max_size=3),
                 st.lists(st.lists(st.integers(-1, 9), max_size=3), max_size=3),
                 st.dictionaries(keys, scalars, max_size=2))
python_objects = st.one_of(
    st.tuples(st.integers(1, 8), st.integers(1, 8)), st.frozensets(st.integers(0, 3)),
    st.binary(max_size=4), st.sampled_from([np.int64(3), np.float32(0.5), np.bool_(True),
                                            np.array([1, 1]), np.array(1), np.array([]),
                                            float("nan"), 1 + 2j, ...]),
    st.builds(lambda: (i for i in range(1))))


# --- 1. random documents -------------------------------------------------------------------

ONE_LAYER = {"cnngen": 1, "input": {"shape": [4]}, "layers": [{"name": "a", "op": "relu"}]}
BIG = 10**5000  # past Python's 4300-digit limit on int -> str


# Crashes found by this file are pinned as explicit examples, so they fail fast and first.
@example({"cnngen": BIG, "input": {"shape": [4]}, "layers": []})
@example({"cnngen": 1, "input": {"shape": [BIG]}, "layers": []})
@example({"cnngen": 1, "input": {"shape": [4]}, "layers": [{"name": "a", "op": "dropout",
                                                           "rate": 10**400}]})
@example({**ONE_LAYER, "loss": {"op": "mse", "l2": 10**400}})
@settings(max_examples=300, **FUZZ)
@given(st.one_of(json_like, st.dictionaries(keys, json_like, max_size=6),
                 st.fixed_dictionaries({"cnngen": st.just(1), "input": json_like,
                                        "layers": json_like}, optional={"loss": json_like})))
def test_random_documents_raise_only_spec_error(doc):
    event(f"accepted={accepted(doc)}")


@example({**ONE_LAYER, "cnngen": np.array([1, 1])})
@example({**ONE_LAYER, "loss": {"op": np.array([1, 2])}})
@example({**ONE_LAYER, "input": (i for i in range(1))})
@settings(max_examples=150, **FUZZ)
@given(st.fixed_dictionaries(
    {"cnngen": st.one_of(st.just(1), python_objects),
     "input": st.one_of(st.just({"shape": [2, 6, 6]}), st.fixed_dictionaries(
         {"shape": st.one_of(python_objects, st.lists(python_objects, max_size=3))})),
     "layers": st.lists(st.fixed_dictionaries(
         {"name": st.one_of(st.just("a"), python_objects), "op": st.sampled_from(OPS)},
         optional={k: python_objects for k in ("kernel", "filters", "padding", "rate",
                                               "units", "shape", "inputs")}),
         min_size=1, max_size=2)},
    optional={"loss": st.fixed_dictionaries({"op": st.one_of(st.just("mse"), python_objects)},
                                            optional={"l2": python_objects})}))
def test_python_objects_in_dicts_raise_only_spec_error(doc):
    """Dicts reach ``check`` straight from Python, holding values YAML never produces."""
    event(f"accepted={accepted(doc)}")


def nested(depth: int, leaf, as_dict: bool):
    """``leaf`` wrapped in ``depth`` lists (or single-key dicts), built without recursion."""
    for _ in range(depth):
        leaf = {"shape": leaf} if as_dict else [leaf]
    return leaf


@example(depth=5000, field="input", as_dict=False, as_text=False)
@settings(max_examples=25, **FUZZ)
@given(depth=st.integers(1, 5000), field=st.sampled_from(["input", "layers", "loss", "name"]),
       as_dict=st.booleans(), as_text=st.booleans())
def test_deeply_nested_documents_raise_only_spec_error(depth, field, as_dict, as_text):
    if as_text:  # JSON flow style, which YAML reads too; written flat, without recursion
        opening, closing = ('{"shape": ', "}") if as_dict else ("[", "]")
        depth = min(depth, 1500)  # YAML gives up at about 1000; deeper only costs time
        doc = f"cnngen: 1\n{field}: {opening * depth}1{closing * depth}\n"
    else:
        doc = {"cnngen": 1, "input": {"shape": [1]}, "layers": [{"name": "a", "op": "relu"}],
               field: nested(depth, 1, as_dict)}
    event(f"accepted={accepted(doc)}")


# --- 2. plausible specs --------------------------------------------------------------------

ANY_RANK = ["identity", "relu", "leaky_relu", "sigmoid", "tanh", "swish", "silu",
            "hardswish", "softmax", "batchnorm", "dropout", "flatten", "reshape", "add",
            "concat", "multiply"]
BY_RANK = {1: ANY_RANK + ["dense"] * 4,
           2: ANY_RANK + ["conv1d", "conv_transpose1d", "maxpool1d", "avgpool1d",
                          "global_avgpool", "global_maxpool", "max_unpool"] * 2,
           3: ANY_RANK + ["conv2d", "conv_transpose2d", "maxpool2d", "avgpool2d",
                          "global_avgpool", "global_maxpool", "max_unpool"] * 2}
SMALL = {"kernel": st.integers(1, 3), "size": st.integers(1, 3), "stride": st.integers(1, 2),
         "dilation": st.integers(1, 2), "output_padding": st.integers(0, 1),
         "groups": st.sampled_from([1, 1, 1, 2]), "filters": st.integers(1, 8),
         "units": st.integers(1, 8)}


def sane_value(draw, name, kind, ndim, earlier):
    """A value of the attribute's kind that is often, not always, right."""
    if isinstance(kind, (Int, Ints)):
        n = draw(SMALL.get(name, st.integers(kind.minimum, 8)))
        if isinstance(kind, Ints) and ndim and draw(st.booleans()):
            return [n] * ndim if draw(st.booleans()) else [n, *draw(st.lists(
                SMALL.get(name, st.integers(0, 8)), min_size=ndim - 1, max_size=ndim))]
        return n
    if isinstance(kind, Padding):
        return draw(st.one_of(st.sampled_from(["same", "valid", 0, 1, 2]),
                              st.lists(st.integers(0, 2), min_size=1, max_size=2),
                              st.lists(st.lists(st.integers(0, 2), min_size=2, max_size=2),
                                       min_size=1, max_size=2)))
    if isinstance(kind, Bool):
        return draw(st.booleans())
    if isinstance(kind, Float):
        return draw(st.sampled_from([0.0, 1e-5, 0.1, 0.5, 0.99, 1.0]))
    if isinstance(kind, Choice):
        return draw(st.sampled_from([*kind.options, None]))
    if isinstance(kind, LayerName):
        return draw(st.sampled_from(earlier + ["nowhere"]))
    if isinstance(kind, ShapeList):
        return draw(st.one_of(st.sampled_from([[-1], [-1, 1], [1, -1], [-1, 1, 1], [2, -1]]),
                              st.lists(st.sampled_from([-1, 1, 2, 4, 8]), min_size=1,
                                       max_size=3)))
    raise AssertionError(f"no strategy for attribute kind {kind!r}")


def next_rank(op, layer, rank):
    if op in ("flatten", "dense") or (op.startswith("global_") and not layer.get("keepdims")):
        return 1
    if op == "reshape" and isinstance(layer.get("shape"), list):
        return min(max(len(layer["shape"]), 1), 3)
    return rank


@st.composite
def plausible_specs(draw):
    """A valid header and 1-8 layers, mostly ops that fit the previous layer's rank.
    ``chaos`` 0 adds no junk, so deep nets get through; 1-3 add more and more."""
    chaos = draw(st.integers(0, 3))

    def rare(n):
        return chaos > 0 and draw(st.integers(0, n // chaos)) == 0

    rank = draw(st.integers(1, 3))
    shape = [draw(st.integers(1, 6))] + [draw(st.integers(3, 12)) for _ in range(rank - 1)]
    input_name = draw(st.sampled_from(["input", "input", "x"]))
    doc = {"cnngen": 1, "name": "fuzz", "input": {"shape": shape}, "layers": []}
    if input_name != "input":
        doc["input"]["name"] = input_name
    names = [input_name]
    n_layers = draw(st.integers(1, 8))
    for i in range(n_layers):
        op = draw(st.sampled_from(MISSPELT if rare(60) else OPS if rare(6) else BY_RANK[rank]))
        name = draw(st.sampled_from(names + ["9x", ""])) if rare(30) else f"l{i}"
        layer = {"name": name, "op": op}
        spec_op = REGISTRY.get(op)
        if spec_op is not None and spec_op.arity == 0:
            others = draw(st.lists(st.sampled_from(names[-2:]), min_size=1, max_size=2))
            layer["inputs"] = [names[-1], *others]
        if rare(12):  # reads something odd: later, missing, itself
            layer["inputs"] = draw(st.sampled_from(
                [[f"l{i + 1}"], ["missing"], [name], names[:1], names[-2:], [], "l0"]))
        for attr_name, attr in (spec_op.attrs.items() if spec_op else ()):
            if attr.default is not REQUIRED and draw(st.integers(0, 2)) == 0:
                continue
            if rare(20):
                layer[attr_name] = draw(junk)
            else:
                layer[attr_name] = sane_value(draw, attr_name, attr.kind, spec_op.ndim, names[1:])
        if op == "max_unpool" and doc["layers"] and draw(st.integers(0, 3)):
            layer["switches"] = names[-1]
            doc["layers"][-1]["return_switches"] = True
        if rare(30):
            layer[draw(st.sampled_from(ATTR_NAMES + ["junk", "Filters"]))] = draw(junk)
        doc["layers"].append(layer)
        names.append(name)
        rank = next_rank(op, layer, rank)
    if draw(st.integers(0, 3)) == 0:
        doc["loss"] = {"op": draw(st.sampled_from(["mse", "softmax_cross_entropy", "l1"])),
                       "l2": draw(st.sampled_from([0.0, 5e-4, -1.0, 1e9]))}
    return doc


@example({"cnngen": 1, "input": {"shape": [2**21, 2**21]},  # int64 product wraps to 2**42
          "layers": [{"name": "r", "op": "reshape", "shape": [2**21, 2**21, 2**22 + 1]}]})
@settings(max_examples=400, **FUZZ)
@given(plausible_specs())
def test_plausible_specs_raise_only_spec_error(spec):
    ok = accepted(spec)
    event(f"accepted={ok}")
    if ok:
        event(f"valid net of {len(spec['layers'])} layers")


def test_plausible_specs_are_often_valid():
    """Without valid specs the plausible fuzzer never reaches the end of shape inference."""
    outcomes = []

    @settings(max_examples=200, derandomize=True, database=None, **FUZZ)
    @given(plausible_specs())
    def run(spec):
        outcomes.append(accepted(spec))

    run()
    assert sum(outcomes) >= len(outcomes) // 10, (
        f"only {sum(outcomes)} of {len(outcomes)} plausible specs were valid")


# --- 3. mutations of valid specs -----------------------------------------------------------

def builder_specs() -> dict[str, dict]:
    res = Builder("residual", (4, 8, 8))
    c1 = res.conv2d("c1", filters=4, kernel=3, padding="same", activation="relu")
    c2 = res.conv2d("c2", filters=4, kernel=3, padding="same")
    res.add("res", inputs=[c2, c1], activation="relu")
    res.global_avgpool("gap", keepdims=True)
    res.conv2d("gate", filters=4, kernel=1, activation="sigmoid")
    res.multiply("se", inputs=["res", "gate"])
    res.flatten("flat")
    res.dense("out", units=10)
    res.loss("softmax_cross_entropy", l2=1e-4)

    inc = Builder("inception", (3, 16, 16))
    inc.conv2d("b1", inputs="input", filters=4, kernel=1)
    inc.conv2d("b3", inputs="input", filters=4, kernel=3, padding=[[1, 1], [1, 1]])
    inc.maxpool2d("p", inputs="input", size=3, stride=1, padding=1)
    inc.conv2d("bp", filters=2, kernel=1, groups=1)
    inc.concat("cat", inputs=["b1", "b3", "bp"])
    inc.batchnorm("bn", momentum=0.1)
    inc.relu("act")
    inc.avgpool2d("pool", size=2, ceil_mode=True, count_include_pad=False)
    inc.global_maxpool("gmp")
    inc.dense("out", units=5)

    c1d = Builder("conv1d_net", (2, 32))
    c1d.conv1d("c1", filters=4, kernel=5, stride=2, activation="relu")
    c1d.avgpool1d("p1", size=2)
    c1d.conv1d("c2", filters=4, kernel=3, dilation=2, padding="same", groups=2)
    c1d.leaky_relu("lr", alpha=0.2)
    c1d.maxpool1d("p2", size=2, ceil_mode=True)
    c1d.flatten("flat")
    c1d.dropout("drop", rate=0.5)
    c1d.dense("out", units=3)
    c1d.softmax("prob")

    unpool = Builder("unpool", (1, 8, 8), input_name="image")
    unpool.conv2d("c", filters=2, kernel=3, padding="same")
    unpool.maxpool2d("p", size=2, return_switches=True)
    unpool.max_unpool("u", switches="p")
    unpool.conv2d("out", filters=1, kernel=1)
    unpool.loss("mse")

    deconv = Builder("deconv", (4, 4, 4))
    deconv.conv_transpose2d("up", filters=2, kernel=3, stride=2, padding=1, output_padding=1)
    deconv.reshape("r", shape=[2, -1])
    deconv.conv_transpose1d("up1", filters=2, kernel=2, stride=2, groups=2, bias=False)
    deconv.tanh("t")
    return {b.spec()["name"]: b.spec() for b in (res, inc, c1d, unpool, deconv)}


BASES = {"lenet5": cnngen.load_spec(EXAMPLES / "lenet5.yaml"), **builder_specs()}


@pytest.mark.parametrize("name", BASES)
def test_base_specs_are_valid(name):
    assert accepted(BASES[name])


def slots(value):
    """Every (container, key) in a document, containers before their contents."""
    found = []
    items = value.items() if isinstance(value, dict) else enumerate(value) \
        if isinstance(value, list) else ()
    for key, child in items:
        found.append((value, key))
        found += slots(child)
    return found


def layer_dicts(doc):
    layers = doc.get("layers")
    return [layer for layer in layers if isinstance(layer, dict)] \
        if isinstance(layers, list) else []


def mutate(draw, doc, how):
    """Apply one named mutation in place; a no-op where the document has nothing to mutate."""
    places = slots(doc)
    layers = layer_dicts(doc)
    names = [layer.get("name") for layer in layers] + ["input", "ghost"]
    if how == "delete" and places:
        container, key = draw(st.sampled_from(places))
        container.pop(key)
    elif how == "junk" and places:
        container, key = draw(st.sampled_from(places))
        container[key] = draw(junk)
    elif how == "add_key":
        dicts = [doc] + [c[k] for c, k in places if isinstance(c[k], dict)]
        draw(st.sampled_from(dicts))[draw(keys)] = draw(junk)
    elif how == "rename" and layers:
        draw(st.sampled_from(layers))["name"] = draw(st.one_of(st.sampled_from(names), junk))
    elif how == "duplicate" and layers:
        doc["layers"].insert(draw(st.integers(0, len(doc["layers"]))),
                             copy.deepcopy(draw(st.sampled_from(layers))))
    elif how == "swap" and isinstance(doc.get("layers"), list) and len(doc["layers"]) > 1:
        i, j = draw(st.lists(st.integers(0, len(doc["layers"]) - 1), min_size=2, max_size=2,
                             unique=True))
        doc["layers"][i], doc["layers"][j] = doc["layers"][j], doc["layers"][i]
    elif how == "cycle" and layers:
        layer = draw(st.sampled_from(layers))
        layer["inputs"] = [layer.get("name")] if draw(st.booleans()) else \
            [layer.get("name"), draw(st.sampled_from(names))]
    elif how == "reroute" and layers:
        draw(st.sampled_from(layers))["inputs"] = draw(
            st.lists(st.sampled_from(names), min_size=1, max_size=3))
    elif how == "extreme_int" and places:  # sizes at and past the limits, where ints are
        ints = [(c, k) for c, k in places if isinstance(c[k], int) and not isinstance(c[k], bool)]
        if ints:
            container, key = draw(st.sampled_from(ints))
            container[key] = draw(EXTREME_INTS)
    elif how == "change_op" and layers:
        draw(st.sampled_from(layers))["op"] = draw(st.sampled_from(OPS + MISSPELT))


MUTATIONS = ["delete", "junk", "add_key", "rename", "duplicate", "swap", "cycle", "reroute",
             "change_op", "extreme_int"]
EXTREME_INTS = st.one_of(st.sampled_from([0, -1, 1, 10**8, 2**31 - 1]), huge_ints)


@st.composite
def mutated_specs(draw):
    doc = copy.deepcopy(BASES[draw(st.sampled_from(sorted(BASES)))])
    for how in draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=3)):
        mutate(draw, doc, how)
    return doc


@example({"cnngen": 1, "input": {"shape": [2**31 - 1, 4]},
          "layers": [{"name": "c", "op": "conv1d", "filters": 1, "kernel": 1}]})
@settings(max_examples=400, **FUZZ)
@given(mutated_specs())
def test_mutated_specs_raise_only_spec_error(spec):
    event(f"accepted={accepted(spec)}")


# --- 4. text -------------------------------------------------------------------------------

DUMPS = [yaml.safe_dump(spec, sort_keys=False) for spec in BASES.values()]
DUMPS += [yaml.safe_dump(spec, default_flow_style=True) for spec in BASES.values()]
DUMPS += [json.dumps(spec, indent=1) for spec in BASES.values()]
DUMPS.append((EXAMPLES / "lenet5.yaml").read_text())
SIGNIFICANT = st.sampled_from(list(":{}[],-&*!|>'\"#%@?\n\t 019e.") + [
    "!!binary ", "!!set ", "!!int ", "!!float ", "!!bool ", "!!timestamp ", "!!str ", "0x", "0b2",
    "2001-02-30", "9" * 5000, "*a", "&a ", "\x00", "\ufeff", "~"])


@st.composite
def mutated_dumps(draw):
    text = draw(st.sampled_from(DUMPS))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = min(len(text), i + draw(st.integers(0, 6)))
        insert = draw(st.one_of(SIGNIFICANT, st.text(max_size=3), st.just("")))
        text = text[:i] + insert + text[j:]
    return text


@st.composite
def alias_texts(draw):
    """YAML whose anchors and aliases expand to ``width**depth`` leaves: tiny text, big value."""
    width, depth = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    if width**depth > 2 * 10**8:  # more would take minutes to repr, time limit or not
        depth -= 1
    levels = [f"&a0 [{', '.join(['1'] * width)}]"]
    levels += [f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, depth)]
    field = draw(st.sampled_from(["input", "layers", "loss", "name", "cnngen"]))
    head = "cnngen: 1\n" if field != "cnngen" else ""
    return f"{head}description: [{', '.join(levels)}]\n{field}: *a{depth - 1}\n"


texts = st.one_of(mutated_dumps(), alias_texts(), st.text(max_size=80).map(lambda t: t + "\n"),
                  st.text(alphabet=":{}[],-&*!|>'\"#\n abc01", max_size=60).map(
                      lambda t: t + "\n"))


@example("cnngen: 010\n")
@example("cnngen: 1\ncnngen: 1\n")
@example("cnngen: 1\ninput: {shape: [0x10, 1_0, 1:30]}\n")
@example("? [1]\n: 1\n")
@example("cnngen: 2001-02-30\n")
@example("cnngen: !!int abc\n")
@example("cnngen: !!bool maybe\n")
@example("cnngen: !!timestamp x\n")
@example("cnngen: !!float ''\n")
@example("cnngen: " + "9" * 5000 + "\n")
@example("cnngen: 1\ndescription: [&a0 [1, 1, 1, 1, 1, 1, 1, 1], "
         + ", ".join(f"&a{i} [{', '.join([f'*a{i - 1}'] * 8)}]" for i in range(1, 9))
         + "]\ninput: *a8\n")
@settings(max_examples=300, **FUZZ)
@given(texts)
def test_text_raises_only_spec_error(text):
    event(f"accepted={accepted(text)}")


@example(text='{"cnngen": ' + "9" * 5000 + "}", suffix=".json", as_path=True)
@settings(max_examples=200, **FUZZ)
@given(text=texts, suffix=st.sampled_from([".yaml", ".yml", ".json", ".txt"]),
       as_path=st.booleans())
def test_files_raise_only_spec_error(tmp_path_factory, text, suffix, as_path):
    path = tmp_path_factory.getbasetemp() / f"spec{suffix}"
    path.write_text(text, encoding="utf-8")
    event(f"accepted={accepted(path if as_path else str(path))}")


@example("spec\x00.yaml")
@settings(max_examples=150, **FUZZ)
@given(st.one_of(st.text(max_size=40).filter(lambda t: "\n" not in t),
                 st.binary(max_size=10), st.integers(), st.none(), st.lists(st.text())))
def test_paths_and_non_documents_raise_only_spec_error(source):
    """A string without a newline is a path; anything that is no path, text or dict is refused."""
    event(f"accepted={accepted(source)}")
