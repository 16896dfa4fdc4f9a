"""Generated CPU kernels of the elementwise, merge and shape ops against the float64
reference: batchnorm (inference), the standalone activations, dropout (inference),
softmax, add, multiply (with broadcasting), concat, flatten and reshape.

Each case is a small network whose layers are all compared (``plan.tensor``), on AVX-512
(V = 16) where the host has it and on AVX2 (V = 8), so channel counts straddle a vector
both ways. Several cases put a halo on the inputs or outputs of the ops under test (a
conv with padding reads them); every run also checks that each buffer's halo is still
zero and its pad lanes finite.
"""
import numpy as np
import pytest

import cnngen
from cnngen.spec import Builder

from .plan_checks import assert_buffers_sound, run_keeping_activations

TARGETS = ("cpu", "cpu-avx2")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("kernels")


def run(spec, target, cache, n=2, weights=None, scale=1.0, seed=0, layers=None, x=None):
    """Compile, run on a random batch, compare the output and ``layers`` with the reference."""
    net = cnngen.compile(spec, target=target, cache_dir=cache)
    if weights:
        net.weights = {**net.weights, **weights}
    if x is None:
        shape = spec["input"]["shape"]
        x = (np.random.default_rng(seed).standard_normal((n, *shape)) * scale).astype(np.float32)
    y = net(x)
    fwd = cnngen.ReferenceExecutor(spec, net.weights).forward(x)
    plan = run_keeping_activations(net, x)
    for name in layers or ():
        ref = fwd.activations[name]
        np.testing.assert_allclose(plan.tensor(name), ref, rtol=1e-5,
                                   atol=1e-5 * (1 + np.abs(ref).max()), err_msg=name)
    np.testing.assert_allclose(y, fwd.out, rtol=1e-5, atol=1e-5 * (1 + np.abs(fwd.out).max()))
    assert_buffers_sound(plan)
    assert_buffers_sound(net.plan(x.shape[0]))
    return y


def batchnorm_stats(c, seed):
    rng = np.random.default_rng(seed)
    return {"gamma": rng.uniform(0.5, 2.0, c), "beta": rng.standard_normal(c),
            "running_mean": rng.standard_normal(c), "running_var": rng.uniform(0.1, 3.0, c)}


# ---- reference comparisons over real and odd shapes ----------------------------------------

ACTIVATIONS = ("identity", "relu", "sigmoid", "tanh", "swish", "silu", "hardswish")


def test_activations_and_dropout(cache):
    """Every standalone activation and both dropout modes; vecmath's own tests cover the
    activations at every vector width, and scale_shift runs on AVX2 in the cases below."""
    b = Builder("acts", (17, 7, 7))
    for name in ACTIVATIONS:
        b.layer(name, name, inputs="input")
    b.leaky_relu("leaky", inputs="input", alpha=0.2)
    b.dropout("drop", inputs="input", rate=0.3)
    b.dropout("drop_test", inputs="input", rate=0.25, mode="scale_at_test")
    b.add("y", inputs=[*ACTIVATIONS, "leaky", "drop", "drop_test"])
    run(b.spec(), "cpu", cache, scale=4.0,
        layers=ACTIVATIONS + ("leaky", "drop_test"))    # inverted "drop" is a pass-through


def test_inverted_dropout_as_the_output_is_a_copy(cache):
    b = Builder("drop_out", (17, 7, 7))
    b.dropout("drop", rate=0.3)
    run(b.spec(), "cpu", cache)


@pytest.mark.parametrize("target", TARGETS)
def test_residual_adds_with_halos(target, cache):
    """add's inputs and output carry halos (convs with padding read them); batchnorm on a
    13x13 map; a 3-input add whose inputs have different halos. (The first add fuses into
    c1's epilogue; the 3-input add is a kernel of its own.)"""
    b = Builder("res", (17, 13, 13))
    b.conv2d("c1", filters=17, kernel=3, padding=1)
    b.add("s", inputs=["input", "c1"], activation="relu")
    b.batchnorm("bn", eps=1e-3)
    b.conv2d("c2", filters=17, kernel=3, padding=1)
    b.add("y", inputs=["c2", "s", "input"], activation="tanh")
    run(b.spec(), target, cache, layers=["s", "bn"], weights={"bn": batchnorm_stats(17, 1)})


@pytest.mark.parametrize("target", TARGETS)
def test_a_two_input_add_with_halos_that_fuses_into_no_conv(target, cache):
    """c1 has a second reader, so the add cannot move into its epilogue: a binary kernel
    adds the input (halo 1) and c1 (halo 2) into s (halo 1)."""
    b = Builder("bin", (17, 11, 12))
    b.conv2d("c1", filters=17, kernel=3, padding=1, activation="relu")
    b.conv2d("c2", inputs="c1", filters=17, kernel=5, padding=2)
    b.add("s", inputs=["input", "c1"], activation="relu")
    b.conv2d("c3", inputs="s", filters=17, kernel=3, padding=1)
    b.add("y", inputs=["c2", "c3"])
    run(b.spec(), target, cache, layers=["c1", "s"])


@pytest.mark.parametrize("target", TARGETS)
def test_multiply_broadcasts(target, cache):
    """Squeeze-and-excitation gate (C,H,W)*(C,1,1), a spatial gate (1,H,W), three inputs;
    batchnorm and sigmoid on a flat (C,) tensor; flatten of an input with a halo."""
    b = Builder("se", (40, 7, 7))
    b.flatten("f")
    b.dense("d", units=64)
    b.batchnorm("bn")
    b.sigmoid("g")
    b.dense("d2", units=40)
    b.reshape("gate", shape=[40, 1, 1])
    b.multiply("se", inputs=["input", "gate"])
    b.conv2d("spatial", inputs="input", filters=1, kernel=3, padding=1, activation="sigmoid")
    b.multiply("y", inputs=["gate", "se", "spatial"])
    run(b.spec(), target, cache, layers=["f", "bn", "g", "gate", "se"],
        weights={"bn": batchnorm_stats(64, 2)})


@pytest.mark.parametrize("target", TARGETS)
def test_concat_at_any_channel_offset(target, cache):
    """3 + 17 + 16 channels at offsets 0, 3, 20 (the 3 are the input, with a halo), and
    the same at 0, 16, 19: whole-vector, partial-vector and shifted copies."""
    b = Builder("cat", (3, 7, 7))
    b.conv2d("b", filters=17, kernel=1)
    b.conv2d("c", inputs="input", filters=16, kernel=3, padding=1)
    b.concat("abc", inputs=["input", "b", "c"])
    b.concat("cab", inputs=["c", "input", "b"])
    b.add("y", inputs=["abc", "cab"])
    run(b.spec(), target, cache, layers=["abc", "cab"])


@pytest.mark.parametrize("target", TARGETS)
def test_softmax_over_channels(target, cache):
    """17 channels (a partly filled last block), large logits, and a single channel."""
    b = Builder("sm", (17, 5, 5))
    b.softmax("s17")
    b.reshape("one", shape=[1, 17, 25])
    b.softmax("y")
    run(b.spec(), target, cache, scale=30.0, layers=["s17"])


@pytest.mark.parametrize("target", TARGETS)
def test_reshape_between_ranks(target, cache):
    """(C, L) -> (C, H, W) (then read with a halo) and back, reshapes that move channels,
    and batchnorm on a 1-D map."""
    b = Builder("rs", (6, 12))
    b.batchnorm("bn")
    b.reshape("r", shape=[6, 3, 4])
    b.conv2d("c", filters=6, kernel=3, padding=1)
    b.reshape("back", shape=[6, 12])
    b.reshape("moved", inputs="r", shape=[8, 9])
    b.reshape("moved_back", shape=[6, 12])
    b.add("y", inputs=["back", "moved_back"])
    run(b.spec(), target, cache, n=3, layers=["bn", "r", "back", "moved"],
        weights={"bn": batchnorm_stats(6, 3)})


# ---- hand-computed cases, one per kernel family ---------------------------------------------

def test_batchnorm_by_hand(cache):
    """gamma * (x - mean) / sqrt(var + eps) + beta, with sqrt(var + eps) = 2 and 0.5."""
    b = Builder("bn_hand", (2, 2))
    b.batchnorm("y", eps=1e-5)
    x = np.array([[[1.0, 3.0], [2.0, -2.0]]], np.float32)
    stats = {"gamma": np.array([2.0, 1.0]), "beta": np.array([0.0, 1.0]),
             "running_mean": np.array([1.0, 0.0]), "running_var": np.array([4.0, 0.25]) - 1e-5}
    y = run(b.spec(), "cpu", cache, x=x, weights={"y": stats})
    np.testing.assert_allclose(y, [[[0.0, 2.0], [5.0, -3.0]]], atol=1e-6)


def test_softmax_by_hand(cache):
    """softmax(0, ln 3) = (1/4, 3/4); softmax(1000, 1000) = (1/2, 1/2) without overflow."""
    b = Builder("sm_hand", (2, 2))
    b.softmax("y")
    x = np.array([[[0.0, 1000.0], [np.log(3.0), 1000.0]]], np.float32)
    y = run(b.spec(), "cpu", cache, x=x)
    np.testing.assert_allclose(y, [[[0.25, 0.5], [0.75, 0.5]]], atol=1e-6)


def test_add_and_multiply_by_hand(cache):
    """s = relu(x + relu(x)), then the one-channel s times (x, 2x): a channel broadcast."""
    b = Builder("bin_hand", (1, 3))
    b.relu("r")
    b.add("s", inputs=["input", "r"], activation="relu")
    b.add("twice", inputs=["input", "input"])
    b.concat("two", inputs=["input", "twice"])
    b.multiply("y", inputs=["s", "two"])
    net = cnngen.compile(b.spec(), cache_dir=cache)
    y = net(np.array([[[-1.0, 2.0, 3.0]]], np.float32))
    np.testing.assert_allclose(net.plan(1).tensor("s"), [[[0.0, 4.0, 6.0]]])
    np.testing.assert_allclose(y, [[[0.0, 8.0, 18.0], [0.0, 16.0, 36.0]]])


def test_concat_by_hand(cache):
    b = Builder("cat_hand", (2, 1))
    b.relu("r")
    b.concat("y", inputs=["input", "r", "input"])
    y = run(b.spec(), "cpu", cache, x=np.array([[[-1.0], [2.0]]], np.float32))
    np.testing.assert_array_equal(y[0, :, 0], [-1.0, 2.0, 0.0, 2.0, -1.0, 2.0])


def test_reshape_and_flatten_by_hand(cache):
    b = Builder("rs_hand", (2, 3))
    b.reshape("r", shape=[3, 1, 2])
    b.flatten("y")
    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    y = run(b.spec(), "cpu", cache, x=x, layers=["r"])
    net = cnngen.compile(b.spec(), cache_dir=cache)
    net(x)
    np.testing.assert_array_equal(net.plan(1).tensor("r")[0, :, 0], [[0, 1], [2, 3], [4, 5]])
    np.testing.assert_array_equal(y, [[0, 1, 2, 3, 4, 5]])
