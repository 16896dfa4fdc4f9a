"""NaN and Inf flow through every kernel family as they do through the float64 reference.

Kernels compile without the ``nnan``/``ninf`` fast-math flags, and relu, max and the max
pools propagate NaN as PyTorch's do. Each case is a small network for one kernel family;
NaN, +inf and -inf go into its input, or into one of its weights, and the output must have
NaN, +inf and -inf exactly where the reference has them, and the reference's values
elsewhere. Channel counts straddle a vector (20 channels: pad lanes at V = 16 and 8), so
a reduction never turns a pad lane's ``0 * inf`` into a NaN that a later layer reads.
"""
from pathlib import Path

import numpy as np
import pytest

import cnngen

TARGETS = ("cpu", "cpu-avx2")
# the reference computes -inf * 0 and inf - inf on purpose
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("kernels")


def net_spec(name, shape, *layers):
    return {"cnngen": 1, "name": name, "input": {"shape": list(shape)}, "layers": list(layers)}


def L(name, op, **attrs):
    return {"name": name, "op": op, **attrs}


CASES = {
    # direct conv with its epilogue; the second conv reads the first's pad lanes
    "conv2d": net_spec("conv2d", (3, 9, 11),
                       L("c1", "conv2d", filters=20, kernel=3, padding=1, activation="relu"),
                       L("c2", "conv2d", filters=20, kernel=3, padding="same"),
                       L("c3", "conv2d", filters=5, kernel=1, activation="leaky_relu")),
    "conv2d_bn_relu_maxpool": net_spec(
        "conv2d_bn_relu_maxpool", (4, 10, 14),
        L("c1", "conv2d", filters=20, kernel=3, padding=1, bias=False),
        L("bn", "batchnorm"), L("r", "relu"), L("p", "maxpool2d", size=2),
        L("c2", "conv2d", filters=6, kernel=3, padding=1, activation="sigmoid"),
        L("p2", "avgpool2d", size=3, stride=2)),
    "conv2d_residual": net_spec("conv2d_residual", (20, 7, 7),
                                L("c1", "conv2d", filters=20, kernel=3, padding=1),
                                L("add", "add", inputs=["c1", "input"], activation="relu"),
                                L("c2", "conv2d", filters=3, kernel=3, stride=2)),
    "depthwise": net_spec("depthwise", (20, 9, 9),
                          L("dw", "conv2d", filters=20, kernel=3, padding=1, groups=20,
                            activation="hardswish"),
                          L("pw", "conv2d", filters=4, kernel=1, activation="swish")),
    "conv1d": net_spec("conv1d", (5, 23),
                       L("c1", "conv1d", filters=20, kernel=5, padding=2, activation="tanh"),
                       L("p", "maxpool1d", size=3, stride=2, padding=1),
                       L("c2", "conv1d", filters=3, kernel=3, dilation=2)),
    "dense": net_spec("dense", (3, 5, 5),
                      L("c1", "conv2d", filters=20, kernel=3),
                      L("flat", "flatten"),
                      L("f1", "dense", units=20, activation="sigmoid"),
                      L("f2", "dense", units=7, activation="tanh"),
                      L("sm", "softmax")),
    "pools": net_spec("pools", (20, 9, 9),
                      L("mp", "maxpool2d", size=3, stride=2, padding=1),
                      L("ap", "avgpool2d", size=2, stride=1, inputs=["input"]),
                      L("gm", "global_maxpool", keepdims=True, inputs=["mp"]),
                      L("ga", "global_avgpool", keepdims=True, inputs=["ap"]),
                      L("cat", "concat", inputs=["gm", "ga"]),
                      L("flat", "flatten"), L("f", "dense", units=4)),
    "switches": net_spec("switches", (20, 8, 8),
                         L("mp", "maxpool2d", size=2, return_switches=True),
                         L("up", "max_unpool", switches="mp"),
                         L("c", "conv2d", filters=4, kernel=1)),
    "elementwise": net_spec("elementwise", (20, 6, 6),
                            L("bn", "batchnorm"), L("s", "sigmoid"),
                            L("t", "tanh", inputs=["input"]),
                            L("m", "multiply", inputs=["s", "t"]),
                            L("a", "add", inputs=["m", "input"]),
                            L("cat", "concat", inputs=["a", "bn"]),
                            L("lr", "leaky_relu", alpha=0.1),
                            L("c", "conv2d", filters=3, kernel=1)),
    "conv_transpose2d": net_spec("conv_transpose2d", (20, 5, 6),
                                 L("ct", "conv_transpose2d", filters=6, kernel=3, stride=2,
                                   padding=1, output_padding=1, activation="relu")),
}
# The transposed conv runs one stride-1 conv per output phase over the input with a zero
# halo, so at the borders a non-finite weight meets halo zeros (0 * inf = NaN) where the
# reference's scatter never multiplies it; peeling the border pixels into a kernel that
# clips its taps would remove those products.
SPREAD_ZEROS = "conv_transpose2d"


def assert_same_nonfinite(y, ref, what):
    """NaN, +inf and -inf exactly where the reference has them; the finite values close."""
    for label, where in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        wrong = where(y) != where(ref)
        assert not wrong.any(), (f"{what}: {label} differs at {wrong.sum()} of {y.size} "
                                 f"outputs, first {np.argwhere(wrong)[0].tolist()}: got "
                                 f"{y[tuple(np.argwhere(wrong)[0])]}, reference "
                                 f"{ref[tuple(np.argwhere(wrong)[0])]}")
    finite = np.isfinite(ref)
    scale = 1 + np.abs(ref[finite]).max(initial=0)
    np.testing.assert_allclose(y[finite], ref[finite], rtol=1e-4, atol=1e-4 * scale,
                               err_msg=what)


def poison(a, rng, count=2):
    """A copy of ``a`` with ``count`` entries each of NaN, +inf and -inf at random places."""
    a = np.array(a, dtype=np.float32 if a.dtype == np.float32 else np.float64)
    flat = a.reshape(-1)
    spots = rng.choice(flat.size, size=min(flat.size, 3 * count), replace=False)
    for i, value in enumerate((np.nan, np.inf, -np.inf)):
        flat[spots[i * count:(i + 1) * count]] = value
    return a


def compare(spec, target, cache, x, weights=None, what=""):
    net = cnngen.compile(spec, target=target, cache_dir=cache)
    if weights is not None:
        net.weights = weights
    ref = cnngen.ReferenceExecutor(spec, net.weights).forward(x).out
    assert_same_nonfinite(net(x), ref, f"{spec['name']} {target} {what}")
    return ref


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_nonfinite_input(case, target, cache):
    spec = CASES[case]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, *spec["input"]["shape"])).astype(np.float32)
    ref = compare(spec, target, cache, poison(x, rng), what="input")
    assert not np.isfinite(ref).all(), "the case must carry a non-finite value to the output"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_nonfinite_weight(case, target, cache, request):
    if case == SPREAD_ZEROS:
        request.applymarker(pytest.mark.xfail(
            strict=True, reason="issue 11: the phase convs of a transposed conv read the input's "
                                "zero halo at its borders (0 * inf = NaN where the reference "
                                "adds nothing)"))
    spec = CASES[case]
    rng = np.random.default_rng(2)
    net = cnngen.compile(spec, target=target, cache_dir=cache)
    first = next(layer for layer, p in net.weights.items() if "w" in p)
    weights = net.weights
    weights[first] = {**weights[first], "w": poison(weights[first]["w"], rng, count=1)}
    x = rng.standard_normal((2, *spec["input"]["shape"])).astype(np.float32)
    ref = compare(spec, target, cache, x, weights, what=f"weights of {first!r}")
    assert not np.isfinite(ref).all(), "the case must carry a non-finite value to the output"


@pytest.mark.parametrize("target", TARGETS)
def test_lenet_nan_pixel(target, cache):
    """The issue's repro: one NaN pixel makes LeNet's logits NaN, as in the reference."""
    spec = cnngen.load_spec(Path(__file__).parents[1] / "examples" / "lenet5.yaml")
    x = np.random.default_rng(0).random((3, 1, 32, 32)).astype(np.float32)
    x[1, 0, 14, 17] = np.nan
    ref = compare(spec, target, cache, x)
    assert np.isnan(ref[1]).all() and np.isfinite(ref[[0, 2]]).all()
