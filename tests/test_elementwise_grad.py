"""Backward kernels of the activations, softmax, add (with its fused activation), multiply
(broadcasting size-1 axes), concat, flatten and reshape against the float64 reference
executor, through ``test_pool_grad.Step``: the forward of every layer on the generated
kernels, the backward of every layer from a random dy, every activation and the input's
gradient compared with ``ReferenceExecutor``; every gradient's halo stays zero, its
interior is overwritten and its pad lanes are finite. AVX-512 (V = 16) where the host has
it and AVX2 (V = 8), so channel counts 1, 3, 6, 17, 64 straddle a vector both ways.
"""
from __future__ import annotations

import numpy as np
import pytest

from cnngen.codegen.cpu import GradLowering, elementwise_grad
from cnngen.codegen.layout import Blocked, FlatView
from cnngen.ops import activation
from cnngen.spec import Builder, build_graph
from cnngen.target import resolve

from .kernel_harness import run_calls
from .test_cpu_ops import TARGETS
from .test_pool_grad import Step, single


ACTIVATION_SHAPES = [((17, 9, 11), 3), ((6, 28, 28), 1), ((64, 40), 3), ((3,), 8)]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", activation.NAMES)
def test_activation_backward(name, target, kernel_cache):
    """Every activation on 2-D, 1-D and flat tensors; inputs spread to +-8, so that both
    sides of every kink (0, and hardswish's -3 and 3) are hit."""
    attrs = {"alpha": 0.2} if name == "leaky_relu" else {}
    for shape, batch in ACTIVATION_SHAPES:
        Step(single(name, shape, **attrs), batch, target, kernel_cache, x_scale=4.0).check()


def test_activation_gradients_at_the_kinks_by_hand(kernel_cache):
    """PyTorch's values at the kinks: relu'(0) = 0, leaky_relu'(0) = alpha,
    hardswish'(-3) = 0, hardswish'(3) = 1; away from them, by hand."""
    x = np.array([[[-4.0, -3.0, 0.0, 1.5, 3.0, 5.0]]])
    dy = np.full((1, 1, 6), 2.0)
    expect = {"relu": [0, 0, 0, 2, 2, 2],
              "leaky_relu": [0.4, 0.4, 0.4, 2, 2, 2],
              "hardswish": [0, 0, 1, 2, 2, 2],
              "identity": [2, 2, 2, 2, 2, 2]}
    for name, want in expect.items():
        attrs = {"alpha": 0.2} if name == "leaky_relu" else {}
        step = Step(single(name, (1, 6), **attrs), 1, "cpu", kernel_cache, x=x, dy=dy)
        np.testing.assert_allclose(step.grads["input"], [[want]], rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("shape, batch", [((17, 5, 5), 3), ((10,), 8), ((3, 7, 7), 1),
                                          ((64, 1, 7), 3), ((1, 6), 3)])
def test_softmax_backward(shape, batch, target, kernel_cache):
    Step(single("softmax", shape), batch, target, kernel_cache, x_scale=3.0).check()


def branches(shape, op, n_inputs=2, **attrs):
    """``op`` over tanh(x), sigmoid(x) and x (the first ``n_inputs`` of them)."""
    b = Builder(f"t_{op}", shape)
    b.tanh("a")
    b.sigmoid("b", inputs="input")
    b.layer(op, "y", inputs=["a", "b", "input"][:n_inputs], **attrs)
    return b.spec()


ADD_CASES = [
    ("plain_c17", branches((17, 9, 11), "add"), 3),
    ("relu_c64", branches((64, 7, 7), "add", activation="relu"), 3),
    ("leaky_c3", branches((3, 28, 28), "add", activation="leaky_relu"), 1),
    ("sigmoid_1d_c6", branches((6, 40), "add", activation="sigmoid"), 3),
    ("tanh_flat_c17", branches((17,), "add", activation="tanh"), 8),
    ("swish_3in_c17", branches((17, 9, 11), "add", 3, activation="swish"), 3),
    ("hardswish_c6", branches((6, 7, 7), "add", activation="hardswish"), 3),
    ("silu_3in_1d_c1", branches((1, 40), "add", 3, activation="silu"), 8),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", ADD_CASES, ids=lambda c: c[0])
def test_add_backward(case, target, kernel_cache):
    """Two and three inputs (the third gradient is a copy); the fused activation's
    derivative from the output, or from z recomputed (swish, silu, hardswish)."""
    _, spec, batch = case
    Step(spec, batch, target, kernel_cache, x_scale=2.0, halos={"a": (0, 0, 0, 0)}).check()


def test_add_of_four_inputs_copies_dz_to_all(kernel_cache):
    b = Builder("t_add4", (17, 5, 5))
    b.tanh("a")
    b.sigmoid("b", inputs="input")
    b.relu("c", inputs="input")
    b.add("y", inputs=["a", "b", "c", "input"], activation="tanh")
    Step(b.spec(), 3, "cpu", kernel_cache).check()


def se_gate(shape):
    """Squeeze and excitation: x * sigmoid(global_avgpool(x)), the gate (C, 1, 1)."""
    b = Builder("t_se", shape)
    b.global_avgpool("g", keepdims=True)
    b.sigmoid("s")
    b.multiply("y", inputs=["input", "s"])
    return b.spec()


def cross(shape):
    """(C, 1, W) * (1, C, W): each input broadcasts along an axis the other has."""
    c, _, w = shape
    b = Builder("t_cross", shape)
    b.sigmoid("s")
    b.reshape("r", shape=[1, c, w])
    b.multiply("y", inputs=["input", "r"])
    return b.spec()


def three(shape):
    """(C, H, W) * (C, 1, 1) * (C, H, W): the product of the others formed first."""
    b = Builder("t_mul3", shape)
    b.global_avgpool("g", keepdims=True)
    b.tanh("t", inputs="input")
    b.multiply("y", inputs=["t", "g", "input"])
    return b.spec()


MULTIPLY_CASES = [
    ("same_shape_c17", branches((17, 9, 11), "multiply"), 3),
    ("se_gate_c64", se_gate((64, 7, 7)), 3),
    ("se_gate_c6_28x28", se_gate((6, 28, 28)), 1),
    ("se_gate_1d_c17", se_gate((17, 40)), 3),
    ("cross_c17", cross((17, 1, 7)), 3),
    ("cross_c3", cross((3, 1, 9)), 8),
    ("three_c17", three((17, 5, 5)), 3),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", MULTIPLY_CASES, ids=lambda c: c[0])
def test_multiply_backward(case, target, kernel_cache):
    _, spec, batch = case
    Step(spec, batch, target, kernel_cache).check()


def concat(shape, order):
    """concat of x, a = tanh(x) and b = sigmoid(x) in ``order``."""
    b = Builder("t_concat", shape)
    if "a" in order:
        b.tanh("a")
    if "b" in order:
        b.sigmoid("b", inputs="input")
    b.concat("y", inputs=list(order))
    return b.spec()


CONCAT_CASES = [
    ("c3_offsets_0_3_6", concat((3, 7, 7), ["input", "a", "b"]), 3),
    ("c17_offsets_0_17_34", concat((17, 9, 11), ["a", "input", "b"]), 3),
    ("c16_whole_blocks", concat((16, 5, 5), ["a", "b", "input"]), 3),
    ("c6_1d", concat((6, 40), ["b", "input"]), 8),
    ("c1_flat", concat((1,), ["a", "b", "input"]), 8),
    ("c64", concat((64, 7, 7), ["input", "a"]), 1),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", CONCAT_CASES, ids=lambda c: c[0])
def test_concat_backward(case, target, kernel_cache):
    """Each input's channel range at whole-block and shifted offsets (3, 6, 17, 34 straddle
    8- and 16-lane blocks); the last input's pad lanes come from past the concat's end."""
    _, spec, batch = case
    Step(spec, batch, target, kernel_cache).check()


def shaped(input_shape, op, **attrs):
    """tanh, then ``op`` (so that the gradient reaching ``op``'s input has a layout)."""
    b = Builder(f"t_{op}", input_shape)
    b.tanh("t")
    b.layer(op, "y", **attrs)
    return b.spec()


RELAYOUT_CASES = [
    ("flatten_c17_9x11", shaped((17, 9, 11), "flatten"), 3),
    ("flatten_c6_28x28", shaped((6, 28, 28), "flatten"), 1),
    ("flatten_1d", shaped((6, 40), "flatten"), 8),
    ("reshape_c6_to_c24", shaped((6, 28, 28), "reshape", shape=[24, 14, 14]), 3),
    ("reshape_to_1d", shaped((3, 7, 7), "reshape", shape=[7, 21]), 3),
    ("reshape_same_channels", shaped((17, 9, 11), "reshape", shape=[17, 11, 9]), 1),
    ("reshape_flat_to_map", shaped((64,), "reshape", shape=[1, 8, 8]), 8),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", RELAYOUT_CASES, ids=lambda c: c[0])
def test_flatten_and_reshape_backward(case, target, kernel_cache):
    _, spec, batch = case
    Step(spec, batch, target, kernel_cache).check()


def test_flatten_read_in_place_by_dense_takes_its_gradient_in_the_source_layout(kernel_cache):
    """A flatten that dense layers read in place (``FlatView``): its gradient arrives in the
    source's layout and memory order, and the backward copies it into dx's layout."""
    spec = shaped((17, 9, 11), "flatten")
    graph, target = build_graph(spec), resolve("cpu")
    node = graph.node("y")
    source = Blocked.of(graph.type_of("t"), target.vector, (1, 1, 1, 1))
    dx = Blocked.of(graph.type_of("t"), target.vector, (0, 2, 1, 0))
    g = GradLowering(node, (source,), FlatView(source), FlatView(source), (dx,), True, 3, target)
    dy = np.random.default_rng(0).standard_normal((3, 17 * 9 * 11))
    out = run_calls(elementwise_grad.BACKWARD["flatten"](g),
                    {"y:grad": source, "y:grad_in0": dx}, {"y:grad": dy.reshape(3, 17, 9, 11)},
                    {}, 3, target, kernel_cache)
    np.testing.assert_array_equal(out["y:grad_in0"], dy.astype(np.float32).reshape(3, 17, 9, 11))


def test_every_activation_has_a_derivative_and_says_what_it_reads():
    assert set(elementwise_grad.DERIVATIVE_READS) == set(activation.NAMES)
    assert set(elementwise_grad.BACKWARD) >= set(activation.NAMES) | {
        "softmax", "add", "multiply", "concat", "flatten", "reshape"}
