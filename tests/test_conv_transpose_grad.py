"""Transposed conv backward kernels (data, weight and bias gradients) against the float64
reference, at both SIMD widths, and whole networks with a transposed conv trained through
``TrainPlan``.

Each kernel case lowers one conv_transpose layer's backward (``BACKWARD``) with the layouts a
training plan gives it (x with the forward's halo, dy with ``GRAD_HALO``'s, dx without) and
runs the calls through ``kernel_harness.run_calls``. The reference is
``ReferenceExecutor.backward`` of the one-layer net (checked by finite differences in
test_ops_reference.py).
"""
import numpy as np
import pytest

import cnngen
from cnngen.codegen.cpu import BACKWARD, GRAD_HALO, HALO, GradLowering, conv_grad
from cnngen.codegen.cpu.conv_transpose_grad import adjoint_conv
from cnngen.codegen.kernel import Const, ParamGrad
from cnngen.codegen.layout import Blocked
from cnngen.errors import InputError
from cnngen.spec import build_graph
from cnngen.target import resolve

from .kernel_harness import run_calls
from .test_cpu_ops import TARGETS
from .test_training import assert_loss_and_gradients_match, conv, net, run_both
from .workloads import single

# (id, spec, batch): odd channel counts and sizes, every attribute.
CASES = [
    ("s1_pad1_c5_k7", single("conv_transpose2d", (5, 6, 7), filters=7, kernel=3, padding=1), 3),
    ("s2_op1", single("conv_transpose2d", (3, 4, 5), filters=2, kernel=3, stride=2, padding=1,
                      output_padding=1), 2),
    ("s3_crop_op2", single("conv_transpose2d", (16, 5, 6), filters=17, kernel=3, stride=3,
                           padding=3, output_padding=2), 2),
    ("deconv_s2_k4_c20", single("conv_transpose2d", (20, 5, 5), filters=16, kernel=4, stride=2,
                                padding=1), 2),
    ("s2_d2_op1", single("conv_transpose2d", (4, 5, 6), filters=6, kernel=3, stride=2, dilation=2,
                         padding=1, output_padding=1), 2),
    ("s23_d32_asym", single("conv_transpose2d", (4, 5, 6), filters=6, kernel=[5, 3], stride=[2, 3],
                            dilation=[3, 2], padding=[[3, 1], [0, 2]], output_padding=[1, 2]), 2),
    ("s1_d2_op1", single("conv_transpose2d", (3, 5, 4), filters=5, kernel=2, dilation=2,
                         output_padding=1, bias=False), 2),
    ("groups_general", single("conv_transpose2d", (6, 4, 5), filters=9, kernel=3, groups=3,
                              stride=2, padding=1), 2),
    ("groups_aligned", single("conv_transpose2d", (32, 4, 3), filters=32, kernel=3, groups=2,
                              stride=2), 1),
    ("depthwise_s2", single("conv_transpose2d", (6, 5, 6), filters=6, kernel=3, stride=2,
                            padding=1, groups=6), 2),
    ("conv_transpose1d_s3", single("conv_transpose1d", (2, 5), filters=3, kernel=4, stride=3,
                                   padding=[[2, 1]], output_padding=1), 3),
    ("conv_transpose1d_groups_d2", single("conv_transpose1d", (4, 9), filters=6, kernel=3,
                                          dilation=2, groups=2, padding=2), 2),
]


def lowered(spec, batch, target, data=True, weights=True, schedule=None):
    """(node, GradLowering, calls) of the spec's one conv_transpose layer."""
    node = build_graph(spec).nodes[0]
    v = target.vector
    x = Blocked.of(node.in_types[0], v, HALO[node.op](node))
    dy = Blocked.of(node.out, v, GRAD_HALO[node.op](node))
    d_in = Blocked.of(node.in_types[0], v) if data else None
    g = GradLowering(node, (x,), Blocked.of(node.out, v), dy, (d_in,), weights, batch, target,
                     schedule)
    return node, g, BACKWARD[node.op](g)


def layouts_of(g: GradLowering, node) -> dict:
    return {node.inputs[0]: g.ins[0], node.name: g.out, f"{node.name}:grad": g.d_out,
            f"{node.name}:grad_in0": g.d_ins[0], **g.temps}


def assert_close(got, want, what):
    got = np.asarray(got).reshape(want.shape)
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5 * scale, err_msg=what)


def run_backward(spec, batch, target, cache, **kw):
    """(node, calls, the harness's buffers, the reference Gradients) of the one-layer net."""
    ref = cnngen.ReferenceExecutor(spec, seed=1)
    rng = np.random.default_rng(0)
    for p in ref.weights.values():      # a bias of 0 would hide one that leaks into dx
        if "b" in p:
            p["b"] = rng.standard_normal(p["b"].shape)
    x = rng.standard_normal((batch, *ref.graph.input.shape))
    fwd = ref.forward(x, train=True)
    dy = rng.standard_normal(fwd.out.shape)
    grads = ref.backward(fwd, dy)
    node, g, calls = lowered(spec, batch, target, **kw)
    out = run_calls(calls, layouts_of(g, node), {"input": x, "y:grad": dy}, ref.weights, batch,
                    target, cache)
    return node, calls, out, grads


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_conv_transpose_backward_matches_reference(case, target, kernel_cache):
    name, spec, batch = case
    node, _, out, grads = run_backward(spec, batch, resolve(target), kernel_cache)
    assert_close(out["y:grad_in0"], grads.input, f"{name} dx")
    for param in node.params:
        assert_close(out[ParamGrad("y", param)], grads.weights["y"][param], f"{name} d{param}")


def test_hand_computed_conv_transpose1d(kernel_cache):
    """x = [1, 2], w = [w0, w1, w2] = [1, -1, 2], stride 2, b: y = [x0*w0, x0*w1, x0*w2 + x1*w0,
    x1*w1, x1*w2] + b. With dy = [1, 10, 100, 1000, 10000]:
    dx0 = 1*1 + 10*(-1) + 100*2 = 191, dx1 = 100*1 + 1000*(-1) + 10000*2 = 19100;
    dw = [x0*dy0 + x1*dy2, x0*dy1 + x1*dy3, x0*dy2 + x1*dy4] = [201, 2010, 20100];
    db = 11111."""
    spec = single("conv_transpose1d", (1, 2), filters=1, kernel=3, stride=2)
    target = resolve(TARGETS[-1])
    node, g, calls = lowered(spec, 1, target)
    params = {"y": {"w": np.array([[[1.0, -1.0, 2.0]]]), "b": np.array([0.5])}}
    out = run_calls(calls, layouts_of(g, node),
                    {"input": np.array([[[1.0, 2.0]]]),
                     "y:grad": np.array([[[1.0, 10.0, 100.0, 1000.0, 10000.0]]])},
                    params, 1, target, kernel_cache)
    np.testing.assert_allclose(out["y:grad_in0"].ravel(), [191, 19100])
    np.testing.assert_allclose(out[ParamGrad("y", "w")].ravel(), [201, 2010, 20100])
    np.testing.assert_allclose(out[ParamGrad("y", "b")], [11111])


@pytest.mark.parametrize("target", TARGETS)
def test_an_explicit_weight_gradient_schedule_reaches_the_kernel(target, kernel_cache):
    """The layer's schedule is the weight gradient's (chunks, kh split, tail tile, pairs)."""
    schedule = conv_grad.WgradSchedule(oc_vecs=1, cols=2, axis=1, chunks=3, kh_tasks=2, pairs=1)
    spec = single("conv_transpose2d", (5, 4, 5), filters=3, kernel=3, stride=2, padding=1)
    node, calls, out, grads = run_backward(spec, 4, resolve(target), kernel_cache, data=False,
                                           schedule=schedule)
    assert [c.kernel.schedule for c in calls if c.kernel.template == "conv2d_wgrad"] == [schedule]
    for param in ("w", "b"):
        assert_close(out[ParamGrad("y", param)], grads.weights["y"][param], f"d{param}")


@pytest.mark.parametrize("spec, bad, problem", [
    (single("conv_transpose2d", (5, 4, 5), filters=3, kernel=3, stride=2, padding=1),
     conv_grad.WgradSchedule(oc_vecs=1, cols=2, axis=1, chunks=1, kh_tasks=4, pairs=0),
     "kh_tasks=4 must be at most the 3 kernel rows"),
    (single("conv_transpose1d", (6, 5), filters=6, kernel=3, groups=6, stride=2),
     conv_grad.DepthwiseWgradSchedule(cols=0, chunks=1, kh_tasks=1),
     "cols=0 must be >= 1"),
], ids=["conv_transpose2d", "conv_transpose1d_depthwise"])
def test_a_weight_gradient_schedule_that_does_not_fit_names_the_layer_and_its_op(spec, bad,
                                                                                 problem):
    """The message names the op the user wrote, not the adjoint conv it is lowered as."""
    target = resolve(TARGETS[-1])
    op = spec["layers"][0]["op"]
    with pytest.raises(InputError, match=rf"layer 'y' \({op}\) weight gradient: schedule "
                                         rf".* does not fit: {problem}"):
        lowered(spec, 2, target, data=False, schedule=bad)


def test_only_the_gradients_asked_for():
    target = resolve(TARGETS[-1])
    spec = single("conv_transpose2d", (3, 5, 5), filters=4, kernel=3, stride=2, padding=1)
    _, _, calls = lowered(spec, 2, target, data=False)
    assert {c.kernel.template for c in calls} <= {"conv2d_wgrad", "conv2d_wgrad_sum",
                                                  "channel_sum"}
    _, _, calls = lowered(spec, 2, target, weights=False)
    assert [c.kernel.template for c in calls] == ["conv2d"]
    assert not any(isinstance(a, ParamGrad) for c in calls for a in c.args)
    assert calls[-1].args[-1].name == "y:grad_in0"
    assert lowered(spec, 2, target, data=False, weights=False)[2] == []


def test_data_gradient_is_one_strided_conv_with_weights_of_its_own():
    """dx is a single conv of dy at the layer's stride, reading dy in place; its weights
    pack from the layer under ':dx' names (the forward's sub-pixel 'w' stays its own), and
    the layer's bias never reaches it."""
    target = resolve(TARGETS[-1])
    spec = single("conv_transpose2d", (8, 5, 4), filters=6, kernel=3, stride=2, padding=1,
                  output_padding=1)
    node, g, calls = lowered(spec, 2, target, weights=False)
    [call] = calls
    values = dict(call.kernel.values)
    assert (call.kernel.template, values["stride_h"], values["stride_w"]) == ("conv2d", 2, 2)
    assert call.args[0].name == "y:grad"
    consts = [a for a in call.args if isinstance(a, Const)]
    assert {(c.layer, c.what) for c in consts} == {("y", "w:dx"), ("y", "b:dx")}
    params = {"w": np.ones(node.params["w"]), "b": np.full(6, 7.0)}
    bias = next(c for c in consts if c.what == "b:dx")
    assert not bias.pack(params).any()
    adjoint = adjoint_conv(node)
    assert (adjoint.op, adjoint.in_types, adjoint.out, adjoint.params["w"]) == (
        "conv2d", (node.out,), node.in_types[0], node.params["w"])


def test_depthwise_backward_stays_depthwise():
    target = resolve(TARGETS[-1])
    spec = single("conv_transpose2d", (32, 5, 5), filters=32, kernel=3, groups=32, stride=2)
    _, _, calls = lowered(spec, 2, target)
    templates = [c.kernel.template for c in calls]
    assert templates[0] == "depthwise2d" and "depthwise2d_wgrad" in templates
    assert "conv2d" not in templates and "conv2d_wgrad" not in templates


# Small autoencoders: conv down, conv_transpose back up to the input's shape, MSE.
AUTOENCODERS = {
    "autoencoder_2d": net("autoencoder_2d", (3, 9, 7), [
        conv("enc", 6, 3, stride=2, padding=1, activation="relu"),
        conv("dec", 3, 3, op="conv_transpose2d", stride=2, padding=1, activation="sigmoid")],
        loss="mse", l2=1e-3),
    "autoencoder_1d_grouped": net("autoencoder_1d_grouped", (4, 11), [
        conv("enc", 8, 3, op="conv1d", stride=2, activation="tanh"),
        conv("mid", 8, 3, op="conv_transpose1d", stride=2, groups=4, output_padding=1,
             activation="silu"),       # its derivative reads z: a layer of its own
        conv("dec", 4, 1, op="conv1d")], loss="mse"),
}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", AUTOENCODERS)
def test_autoencoder_loss_and_every_gradient_match_the_reference(name, target, kernel_cache):
    result = run_both(AUTOENCODERS[name], 3, target, kernel_cache)
    assert any(n.op.startswith("conv_transpose") for n in result[0].nodes)
    assert_loss_and_gradients_match(name, *result)


def test_an_autoencoder_trains(kernel_cache):
    """The Trainer fits a conv -> conv_transpose autoencoder to images mixed from four
    patterns (so a bottleneck can hold them): the reconstruction loss more than halves."""
    rng = np.random.default_rng(0)
    patterns = rng.uniform(0, 1, (4, 3 * 9 * 7))
    x = (rng.dirichlet(np.ones(4), 64) @ patterns).reshape(64, 3, 9, 7).astype(np.float32)
    data = {"x_train": x, "y_train": x, "x_test": x[:16], "y_test": x[:16]}
    trainer = cnngen.Trainer(AUTOENCODERS["autoencoder_2d"], optimizer="adam", lr=1e-2,
                             batch_size=16, seed=0)
    before = trainer.evaluate(x, x)["loss"]
    trainer.fit(data, epochs=20)
    assert trainer.evaluate(x, x)["loss"] < 0.5 * before
