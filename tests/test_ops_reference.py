"""The float64 reference ops: gradients against finite differences for every op and
variant in the workload table, and hand-computed cases small enough to check by eye."""
import numpy as np
import pytest

import cnngen
from cnngen.ops import REGISTRY
from cnngen.spec import Builder

from . import gradcheck
from .workloads import OP_CASES, single


@pytest.mark.parametrize("spec,batch,train", [c[1:] for c in OP_CASES], ids=[c[0] for c in OP_CASES])
def test_gradients_match_finite_differences(spec, batch, train):
    gradcheck.check(spec, batch, train)


def test_every_op_has_a_workload():
    covered = {layer["op"] for _, spec, _, _ in OP_CASES for layer in spec["layers"]}
    assert set(REGISTRY) - covered == set()


def run(spec, x, weights=None, train=False, masks=None):
    ref = cnngen.ReferenceExecutor(spec, weights=weights)
    return ref, ref.forward(np.asarray(x, dtype=float), train=train, masks=masks)


# The lecture's 6x6 example, pooled with 3x3 windows and stride 3.
LECTURE = np.array([[1, 2, 6, 0, 0, 2],
                    [2, 0, 3, 2, 1, 0],
                    [0, 4, 3, 3, 5, 1],
                    [1, 2, 3, 0, 1.2, 2],
                    [5, 6, 4, 1, 0, 4.1],
                    [9, 2, 0, 2, 7.8, 4]])


def test_lecture_max_pool():
    _, fwd = run(single("maxpool2d", (1, 6, 6), size=3, stride=3), LECTURE[None, None])
    np.testing.assert_array_equal(fwd.out[0, 0], [[6, 5], [9, 7.8]])


def test_lecture_mean_pool():
    # Window sums 21, 14, 32 and 22.1 over 9 values. The lecture prints 1.3, 3.13 and 2.32
    # for three of these; those figures are wrong.
    _, fwd = run(single("avgpool2d", (1, 6, 6), size=3, stride=3), LECTURE[None, None])
    np.testing.assert_allclose(fwd.out[0, 0], [[21 / 9, 14 / 9], [32 / 9, 22.1 / 9]])
    np.testing.assert_allclose(fwd.out[0, 0], [[2.333, 1.556], [3.556, 2.456]], atol=5e-4)


def test_lecture_max_pool_switches_route_gradient_and_unpool():
    b = Builder("unpool", (1, 6, 6))
    b.maxpool2d("p", size=3, stride=3, return_switches=True)
    b.max_unpool("u", switches="p")
    ref, fwd = run(b.spec(), LECTURE[None, None])
    expected = np.zeros((6, 6))
    for r, c in [(0, 2), (2, 4), (5, 0), (5, 4)]:  # where 6, 5, 9 and 7.8 sit
        expected[r, c] = LECTURE[r, c]
    np.testing.assert_array_equal(fwd.out[0, 0], expected)
    grads = ref.backward(fwd, np.ones((1, 1, 6, 6)))
    np.testing.assert_array_equal(grads.input[0, 0], expected != 0)


def test_conv2d_by_hand():
    x = np.arange(9.0).reshape(1, 1, 3, 3)          # 0 1 2 / 3 4 5 / 6 7 8
    w = {"y": {"w": np.array([[[[1.0, 0.0], [0.0, -1.0]]]]), "b": np.array([0.5])}}
    _, fwd = run(single("conv2d", (1, 3, 3), filters=1, kernel=2), x, w)
    # out[i, j] = x[i, j] - x[i+1, j+1] + 0.5 = -4 + 0.5 everywhere
    np.testing.assert_array_equal(fwd.out[0, 0], [[-3.5, -3.5], [-3.5, -3.5]])


def test_conv2d_stride_padding_dilation_by_hand():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    w = {"y": {"w": np.ones((1, 1, 2, 2))}}
    _, fwd = run(single("conv2d", (1, 4, 4), filters=1, kernel=2, dilation=2, stride=2,
                        padding=1, bias=False), x, w)
    # padded 6x6, taps at (r, c), (r, c+2), (r+2, c), (r+2, c+2) for r, c in {0, 2}
    xp = np.pad(x[0, 0], 1)
    expected = [[xp[r, c] + xp[r, c + 2] + xp[r + 2, c] + xp[r + 2, c + 2] for c in (0, 2)]
                for r in (0, 2)]
    np.testing.assert_array_equal(fwd.out[0, 0], expected)
    np.testing.assert_array_equal(fwd.out[0, 0], [[0 + 0 + 0 + 5, 0 + 0 + 5 + 7],
                                                  [0 + 5 + 0 + 13, 5 + 7 + 13 + 15]])


def test_conv_transpose2d_by_hand():
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    w = {"y": {"w": np.ones((1, 1, 2, 2))}}
    _, fwd = run(single("conv_transpose2d", (1, 2, 2), filters=1, kernel=2, bias=False), x, w)
    np.testing.assert_array_equal(fwd.out[0, 0], [[1, 3, 2], [4, 10, 6], [3, 7, 4]])
    _, fwd = run(single("conv_transpose2d", (1, 2, 2), filters=1, kernel=2, stride=2,
                        bias=False), x, w)
    np.testing.assert_array_equal(fwd.out[0, 0], np.kron([[1, 2], [3, 4]], np.ones((2, 2))))


def test_same_padding_puts_the_odd_pad_at_the_end():
    # 6 wide, kernel 3, stride 2: ceil(6/2) = 3 outputs need (3-1)*2 + 3 - 6 = 1 pad -> (0, 1)
    graph = cnngen.build_graph(single("conv2d", (1, 6, 5), filters=1, kernel=3, stride=2,
                                      padding="same"))
    assert graph.output.attrs["padding"] == ((0, 1), (1, 1))
    assert graph.output.out.shape == (1, 3, 3)


def test_ceil_mode_never_starts_a_window_in_the_end_padding():
    # PyTorch's rule: 5 wide, size 2, stride 2, pad 1: ceil((5+2-2)/2)+1 = 4, but window 4
    # would start at 6 >= 5 + 1, so 3.
    graph = cnngen.build_graph(single("maxpool2d", (1, 5, 5), size=2, stride=2, padding=1,
                                      ceil_mode=True))
    assert graph.output.out.shape == (1, 3, 3)
    graph = cnngen.build_graph(single("maxpool2d", (1, 6, 6), size=3, stride=2, ceil_mode=True))
    assert graph.output.out.shape == (1, 3, 3)   # floor mode would give 2


def test_avgpool_count_include_pad_by_hand():
    x = np.ones((1, 1, 2, 2))
    _, inc = run(single("avgpool2d", (1, 2, 2), size=2, stride=1, padding=1), x)
    _, exc = run(single("avgpool2d", (1, 2, 2), size=2, stride=1, padding=1,
                        count_include_pad=False), x)
    np.testing.assert_allclose(inc.out[0, 0], [[0.25, 0.5, 0.25], [0.5, 1, 0.5], [0.25, 0.5, 0.25]])
    np.testing.assert_allclose(exc.out[0, 0], np.ones((3, 3)))


# ---- ONNX-style pool padding: up to size - 1 ---------------------------------------------

# [[1, 2], [3, 4]] pooled 3x3, stride 1, padding 2: 4x4 windows. Window (oh, ow) covers
# input rows [oh-2, oh] and cols [ow-2, ow]: rows {0}, {0, 1}, {0, 1}, {1} by oh (cols alike).
PAD2 = np.array([[1.0, 2.0], [3.0, 4.0]])[None, None]


def test_maxpool_padding_up_to_size_minus_one_by_hand():
    """Max over the input pixels only; switches index the unpadded 2x2 plane (1, 2, 3, 4
    sit at 0, 1, 2, 3)."""
    _, fwd = run(single("maxpool2d", (1, 2, 2), size=3, stride=1, padding=2,
                        return_switches=True), PAD2)
    np.testing.assert_array_equal(fwd.out[0, 0], [[1, 2, 2, 2], [3, 4, 4, 4], [3, 4, 4, 4],
                                                  [3, 4, 4, 4]])
    np.testing.assert_array_equal(fwd.context.saved["y"][0, 0], [[0, 1, 1, 1], [2, 3, 3, 3],
                                                                 [2, 3, 3, 3], [2, 3, 3, 3]])


def test_avgpool_padding_up_to_size_minus_one_by_hand():
    """count_include_pad: every window lies inside the padded 6x6, so all divide by 9.
    Without it, each divides by its input pixels: 1, 2, 2, 1 rows times 1, 2, 2, 1 cols."""
    _, inc = run(single("avgpool2d", (1, 2, 2), size=3, stride=1, padding=2), PAD2)
    _, exc = run(single("avgpool2d", (1, 2, 2), size=3, stride=1, padding=2,
                        count_include_pad=False), PAD2)
    sums = np.array([[1, 3, 3, 2], [4, 10, 10, 6], [4, 10, 10, 6], [3, 7, 7, 4]])
    np.testing.assert_allclose(inc.out[0, 0], sums / 9)
    np.testing.assert_allclose(exc.out[0, 0], [[1, 1.5, 1.5, 2], [2, 2.5, 2.5, 3],
                                               [2, 2.5, 2.5, 3], [3, 3.5, 3.5, 4]])


def test_pool_padding_with_ceil_mode_by_hand():
    """[1, 2, 3, 4, 5], size 3, stride 2, padding (2, 1), ceil_mode: windows start at -2,
    0, 2 and 4; the last covers pixel 4, the explicit pad 5 and ceil_mode's extra 6. As in
    PyTorch, count_include_pad counts the explicit padding but not the extra position:
    5 / 2 for the last window, 1 / 3 for the first."""
    x = np.arange(1.0, 6.0)[None, None]
    attrs = dict(size=3, stride=2, padding=[[2, 1]], ceil_mode=True)
    _, inc = run(single("avgpool1d", (1, 5), **attrs), x)
    _, exc = run(single("avgpool1d", (1, 5), count_include_pad=False, **attrs), x)
    _, mx = run(single("maxpool1d", (1, 5), return_switches=True, **attrs), x)
    np.testing.assert_allclose(inc.out[0, 0], [1 / 3, 6 / 3, 12 / 3, 5 / 2])
    np.testing.assert_allclose(exc.out[0, 0], [1, 6 / 3, 12 / 3, 5])
    np.testing.assert_array_equal(mx.out[0, 0], [1, 3, 5, 5])
    np.testing.assert_array_equal(mx.context.saved["y"][0, 0], [0, 2, 4, 4])


def test_max_switches_never_point_into_the_padding():
    """An all -inf input ties with the -inf padding, yet each switch is the first input
    pixel of its window; a NaN wins its windows, and its position is their switch."""
    spec = single("maxpool1d", (1, 3), size=3, stride=1, padding=2, return_switches=True)
    _, fwd = run(spec, np.full((1, 1, 3), -np.inf))
    np.testing.assert_array_equal(fwd.out[0, 0], [-np.inf] * 5)
    np.testing.assert_array_equal(fwd.context.saved["y"][0, 0], [0, 0, 0, 1, 2])
    _, fwd = run(spec, np.array([[[1.0, np.nan, 3.0]]]))
    np.testing.assert_array_equal(fwd.out[0, 0], [1, np.nan, np.nan, np.nan, 3])
    np.testing.assert_array_equal(fwd.context.saved["y"][0, 0], [0, 1, 1, 1, 2])


@pytest.mark.parametrize("op,attrs", [
    ("maxpool2d", dict(size=3, stride=2, padding=2, ceil_mode=True)),
    ("avgpool2d", dict(size=3, stride=2, padding=[[2, 1], [0, 2]], ceil_mode=True)),
    ("avgpool2d", dict(size=[3, 4], stride=1, padding=[2, 3], count_include_pad=False)),
    ("maxpool1d", dict(size=4, stride=3, padding=[[3, 2]], return_switches=True)),
], ids=["max2d_ceil", "avg2d_asym_ceil", "avg2d_excl", "max1d"])
def test_large_pool_padding_gradients(op, attrs):
    shape = (2, 5, 6) if op.endswith("2d") else (2, 7)
    gradcheck.check(single(op, shape, **attrs), 2, False)


def test_pool_padding_of_the_window_size_is_refused():
    with pytest.raises(cnngen.SpecError, match=r"layer 'y' \(maxpool2d\), field 'padding': "
                       r"padding must be smaller than the window size.*Received: padding=3, "
                       r"size=3\. Use padding <= 2"):
        cnngen.check(single("maxpool2d", (1, 8, 8), size=3, padding=3))
    with pytest.raises(cnngen.SpecError, match=r"padding=2, size=2\. Use padding <= 1"):
        cnngen.check(single("avgpool1d", (1, 8), size=[2], padding=[[0, 2]]))


def test_batchnorm_train_and_running_stats_by_hand():
    x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(4, 1)
    ref, fwd = run(single("batchnorm", (1,), eps=0.0 + 1e-12, momentum=0.5), x, train=True)
    # mean 2.5, biased variance 1.25, unbiased 5/3
    np.testing.assert_allclose(fwd.out[:, 0], (x[:, 0] - 2.5) / np.sqrt(1.25), rtol=1e-9)
    np.testing.assert_allclose(fwd.state_updates["y"]["running_mean"], [0.5 * 2.5])
    np.testing.assert_allclose(fwd.state_updates["y"]["running_var"], [0.5 * 1 + 0.5 * 5 / 3])
    np.testing.assert_array_equal(ref.weights["y"]["running_mean"], [0.0])  # not mutated


def test_batchnorm_eval_uses_running_stats():
    w = {"y": {"gamma": np.array([2.0]), "beta": np.array([1.0]),
               "running_mean": np.array([3.0]), "running_var": np.array([4.0])}}
    _, fwd = run(single("batchnorm", (1,), eps=1e-12), np.array([[5.0], [1.0]]), w)
    np.testing.assert_allclose(fwd.out[:, 0], [2 * (5 - 3) / 2 + 1, 2 * (1 - 3) / 2 + 1])


@pytest.mark.parametrize("mode,train_scale,eval_scale", [("inverted", 1 / 0.75, 1.0),
                                                          ("scale_at_test", 1.0, 0.75)])
def test_dropout_modes_by_hand(mode, train_scale, eval_scale):
    spec = single("dropout", (4,), rate=0.25, mode=mode)
    x = np.array([[1.0, 2.0, 3.0, 4.0]])
    mask = np.array([[True, False, True, True]])
    _, fwd = run(spec, x, train=True, masks={"y": mask})
    np.testing.assert_allclose(fwd.out, x * mask * train_scale)
    _, fwd = run(spec, x)
    np.testing.assert_allclose(fwd.out, x * eval_scale)


def test_dropout_draws_a_fresh_mask_with_the_right_rate():
    ref = cnngen.ReferenceExecutor(single("dropout", (1000,), rate=0.3))
    fwd = ref.forward(np.ones((10, 1000)), train=True, seed=1)
    kept = fwd.masks["y"].mean()
    assert 0.68 < kept < 0.72
    np.testing.assert_allclose(fwd.out[fwd.masks["y"]], 1 / 0.7)


def test_activations_by_hand():
    x = np.array([[-4.0, -1.0, 0.5, 4.0]])
    cases = {
        "relu": [0, 0, 0.5, 4],
        "leaky_relu": [-0.04, -0.01, 0.5, 4],
        "hardswish": [0, -1 * 2 / 6, 0.5 * 3.5 / 6, 4],
        "sigmoid": 1 / (1 + np.exp(-x[0])),
        "silu": x[0] / (1 + np.exp(-x[0])),
        "tanh": np.tanh(x[0]),
    }
    for op, expected in cases.items():
        _, fwd = run(single(op, (4,)), x)
        np.testing.assert_allclose(fwd.out[0], expected, err_msg=op)


def test_softmax_cross_entropy_by_hand():
    spec = single("identity", (2,))
    spec["loss"] = {"op": "softmax_cross_entropy"}
    ref = cnngen.ReferenceExecutor(spec)
    logits = np.array([[0.0, np.log(3.0)], [0.0, 0.0]])  # softmax [1/4, 3/4] and [1/2, 1/2]
    value, dout = ref.loss(logits, np.array([1, 0]))
    np.testing.assert_allclose(value, (-np.log(0.75) - np.log(0.5)) / 2)
    np.testing.assert_allclose(dout, [[0.25 / 2, -0.25 / 2], [-0.5 / 2, 0.5 / 2]])
    value_p, _ = ref.loss(logits, np.array([[0.0, 1.0], [1.0, 0.0]]))
    assert value_p == pytest.approx(value)


def test_mse_and_l2_by_hand():
    spec = single("dense", (2,), units=1, bias=False)
    spec["loss"] = {"op": "mse", "l2": 0.1}
    ref = cnngen.ReferenceExecutor(spec, weights={"y": {"w": np.array([[1.0, 2.0]])}})
    fwd = ref.forward(np.array([[1.0, 1.0]]))           # out = 3
    value, dout = ref.loss(fwd.out, np.array([[1.0]]))
    assert value == pytest.approx((3 - 1) ** 2 + 0.5 * 0.1 * (1 + 4))
    grads = ref.backward(fwd, dout)                     # dL/dw = 2*(3-1)*x + 0.1*w
    np.testing.assert_allclose(grads.weights["y"]["w"], [[4 + 0.1, 4 + 0.2]])


def test_loss_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    for op, target in [("softmax_cross_entropy", np.array([2, 0, 1])),
                       ("softmax_cross_entropy", rng.dirichlet(np.ones(4), size=3)),
                       ("mse", rng.normal(size=(3, 4)))]:
        spec = single("identity", (4,))
        spec["loss"] = {"op": op}
        ref = cnngen.ReferenceExecutor(spec)
        out = rng.normal(size=(3, 4))
        _, dout = ref.loss(out, target)
        numeric = gradcheck.numeric(lambda: ref.loss(out, target)[0], out)
        np.testing.assert_allclose(dout, numeric, rtol=1e-6, atol=1e-9)


def test_whole_network_gradients_with_bn_dropout_residual_and_l2():
    b = Builder("mix", (2, 6, 6))
    b.conv2d("c1", filters=3, kernel=3, padding=1, bias=False)
    b.batchnorm("bn1")
    b.relu("r1")
    b.conv2d("c2", filters=3, kernel=3, padding="same", activation="tanh")
    b.conv2d("sc", filters=3, kernel=1, inputs="input")
    b.add("res", inputs=["c2", "sc"], activation="silu")
    b.maxpool2d("p", size=2)
    b.flatten("f")
    b.dropout("d", rate=0.2)
    b.dense("out", units=3)
    b.loss("softmax_cross_entropy", l2=0.01)
    rng = np.random.default_rng(0)
    ref = cnngen.ReferenceExecutor(b.spec(), seed=0)
    gradcheck.randomize(ref, rng)
    x = rng.normal(size=(3, 2, 6, 6))
    labels = np.array([0, 2, 1])
    value, grads, fwd = ref.loss_and_grads(x, labels)

    def f():
        return ref.loss(ref.forward(x, train=True, masks=fwd.masks).out, labels)[0]

    np.testing.assert_allclose(grads.input, gradcheck.numeric(f, x), rtol=1e-5, atol=1e-8)
    for layer in ("c1", "bn1", "c2", "sc", "out"):
        for name in ref.graph.node(layer).params:
            np.testing.assert_allclose(grads.weights[layer][name],
                                       gradcheck.numeric(f, ref.weights[layer][name]),
                                       rtol=1e-5, atol=1e-8, err_msg=f"{layer}/{name}")
