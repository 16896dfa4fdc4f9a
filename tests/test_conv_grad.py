"""Conv backward kernels (weight, bias and data gradients) and the sub-pixel transposed conv,
against the float64 reference, at both SIMD widths.

Each case lowers one conv layer's backward (``BACKWARD``) with the layouts a training plan
gives it (x with the conv's halo, dy and dx without) and runs the calls through
``kernel_harness.run_calls``. The reference is ``ReferenceExecutor.backward`` of the
one-layer net (its conv gradients are checked by finite differences in
test_ops_reference.py).
"""
import math

import numpy as np
import pytest

import cnngen
from cnngen.codegen.cpu import HALO, LOWER, GradLowering, Lowering
from cnngen.codegen.cpu.conv import conv_transpose_halo
from cnngen.codegen.cpu.conv_grad import BACKWARD, grad_output_halo, transposed_node
from cnngen.codegen.kernel import ParamGrad
from cnngen.codegen.layout import Blocked
from cnngen.errors import InputError
from cnngen.schedule import DepthwiseWgradSchedule, WgradSchedule
from cnngen.spec import build_graph
from cnngen.target import resolve

from .kernel_harness import run_calls
from .test_cpu_ops import TARGETS
from .workloads import single

# (id, spec, batch): real layers, then odd ones.
CASES = [
    ("lenet_c1", single("conv2d", (1, 32, 32), filters=6, kernel=5), 4),
    ("lenet_c3", single("conv2d", (6, 14, 14), filters=16, kernel=5), 4),
    ("mnist1d_c1", single("conv1d", (1, 40), filters=32, kernel=5, padding=2), 4),
    ("mnist1d_c2", single("conv1d", (32, 20), filters=32, kernel=5, padding=2), 3),
    ("resnet_3x3", single("conv2d", (64, 14, 14), filters=64, kernel=3, padding=1), 2),
    ("resnet_down_3x3_s2", single("conv2d", (32, 14, 14), filters=64, kernel=3, stride=2, padding=1), 2),
    ("resnet_down_1x1_s2", single("conv2d", (64, 13, 13), filters=32, kernel=1, stride=2, bias=False), 2),
    ("stride2_asym_pad", single("conv2d", (2, 7, 9), filters=3, kernel=3, stride=2, padding=[[1, 0], [0, 2]]), 3),
    ("dilation2_c17_k10", single("conv2d", (17, 9, 9), filters=10, kernel=3, dilation=2, padding=1), 3),
    ("rect_s3_d2_c3_k20", single("conv2d", (3, 11, 10), filters=20, kernel=[2, 3], stride=[3, 2], dilation=[2, 1], padding=[[2, 0], [1, 1]]), 2),
    ("groups_aligned", single("conv2d", (32, 9, 9), filters=32, kernel=3, groups=2, padding=1), 2),
    ("groups_general", single("conv2d", (12, 9, 8), filters=20, kernel=3, groups=4, padding="same"), 2),
    ("groups_one_channel", single("conv2d", (6, 7, 7), filters=6, kernel=3, groups=3, stride=2), 2),
    ("depthwise_3x3", single("conv2d", (20, 9, 9), filters=20, kernel=3, groups=20, padding=1), 3),
    ("depthwise_k5_s2", single("conv2d", (40, 15, 15), filters=40, kernel=5, stride=2, padding=2, groups=40), 1),
    ("conv1d_s2_d2_groups", single("conv1d", (4, 13), filters=2, kernel=3, stride=2, dilation=2, groups=2), 2),
    ("conv1d_depthwise_s3", single("conv1d", (6, 17), filters=6, kernel=4, stride=3, padding=[[2, 1]], groups=6), 2),
    ("odd_7x5_c6_k6", single("conv2d", (6, 7, 5), filters=6, kernel=[3, 2], padding=[[0, 2], [1, 0]]), 5),
]


def layouts_of(g: GradLowering, node) -> dict:
    return {node.inputs[0]: g.ins[0], node.name: g.out, f"{node.name}:grad": g.d_out,
            f"{node.name}:grad_in0": g.d_ins[0], **g.temps}


def lowered(spec, batch, target, data=True, weights=True, schedule=None, dy_halo=False):
    """(node, GradLowering, calls) of the spec's one conv layer."""
    node = build_graph(spec).nodes[0]
    v = target.vector
    x = Blocked.of(node.in_types[0], v, HALO[node.op](node))
    out = Blocked.of(node.out, v)
    dy = Blocked.of(node.out, v, grad_output_halo(node) if dy_halo else (0, 0, 0, 0))
    d_in = Blocked.of(node.in_types[0], v) if data else None
    g = GradLowering(node, (x,), out, dy, (d_in,), weights, batch, target, schedule)
    return node, g, BACKWARD[node.op](g)


def reference(spec, batch, seed=0):
    """x, dy and the reference Gradients of the one-layer net."""
    ref = cnngen.ReferenceExecutor(spec, seed=seed + 1)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *ref.graph.input.shape))
    fwd = ref.forward(x, train=True)
    dy = rng.standard_normal(fwd.out.shape)
    return ref, x, dy, ref.backward(fwd, dy)


def assert_close(got, want, what):
    got = np.asarray(got).reshape(want.shape)
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5 * scale, err_msg=what)


def run_backward(spec, batch, target, cache, **kw):
    ref, x, dy, grads = reference(spec, batch)
    node, g, calls = lowered(spec, batch, target, **kw)
    out = run_calls(calls, layouts_of(g, node), {node.inputs[0]: x, f"{node.name}:grad": dy},
                    ref.weights, batch, target, cache)
    return node, calls, out, grads


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_conv_backward_matches_reference(case, target, kernel_cache):
    name, spec, batch = case
    node, _, out, grads = run_backward(spec, batch, resolve(target), kernel_cache)
    assert_close(out[f"{node.name}:grad_in0"], grads.input, f"{name} dx")
    for param in node.params:
        assert_close(out[ParamGrad(node.name, param)], grads.weights[node.name][param],
                     f"{name} d{param}")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", [c for c in CASES if c[0] in ("resnet_3x3", "stride2_asym_pad",
                                                                "depthwise_k5_s2", "mnist1d_c2")],
                         ids=lambda c: c[0])
def test_dy_with_its_halo_is_read_in_place(case, target, kernel_cache):
    """Where the plan gives dy the halo ``grad_output_halo`` names, no copy of it is made."""
    name, spec, batch = case
    node, calls, out, grads = run_backward(spec, batch, resolve(target), kernel_cache,
                                           weights=False, dy_halo=True)
    assert "dilate2d" not in {c.kernel.template for c in calls}
    assert_close(out["y:grad_in0"], grads.input, f"{name} dx")


def test_hand_computed_conv1d(kernel_cache):
    """x = [1, 2, 3], w = [w0, w1] = [2, -1], b, dy = [1, 10]:
    y[i] = w0*x[i] + w1*x[i+1] + b, so dw = [1*1 + 10*2, 1*2 + 10*3] = [21, 32],
    db = 11, dx = [w0*1, w1*1 + w0*10, w1*10] = [2, 19, -10]."""
    spec = single("conv1d", (1, 3), filters=1, kernel=2)
    target = resolve(TARGETS[-1])
    node, g, calls = lowered(spec, 1, target)
    params = {"y": {"w": np.array([[[2.0, -1.0]]]), "b": np.array([0.5])}}
    out = run_calls(calls, layouts_of(g, node), {"input": np.array([[[1.0, 2.0, 3.0]]]),
                                                 "y:grad": np.array([[[1.0, 10.0]]])},
                    params, 1, target, kernel_cache)
    np.testing.assert_allclose(out[ParamGrad("y", "w")].ravel(), [21, 32])
    np.testing.assert_allclose(out[ParamGrad("y", "b")], [11])
    np.testing.assert_allclose(out["y:grad_in0"].ravel(), [2, 19, -10])


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("schedule", [
    WgradSchedule(oc_vecs=1, cols=5, axis=0, chunks=3, kh_tasks=1, pairs=1),
    WgradSchedule(oc_vecs=2, cols=2, axis=1, chunks=2, kh_tasks=3, pairs=0),
    WgradSchedule(oc_vecs=1, cols=3, axis=1, chunks=1, kh_tasks=2, pairs=1),
], ids=str)
def test_every_weight_grad_schedule_path(schedule, target, kernel_cache):
    """Explicit schedules reach each path of the template: both axes, tail tiles, pairs,
    batch chunks with a final sum (over a batch that does not divide evenly, and one chunk
    left empty), kernel rows split unevenly over tasks."""
    spec = single("conv2d", (20, 8, 7), filters=32, kernel=3, padding=1)
    for batch in (5, 1):
        node, calls, out, grads = run_backward(spec, batch, resolve(target), kernel_cache,
                                               data=False, schedule=schedule)
        assert (len(calls) == 3) == (schedule.chunks > 1)
        for param in ("w", "b"):
            assert_close(out[ParamGrad("y", param)], grads.weights["y"][param], f"d{param}")


@pytest.mark.parametrize("target", TARGETS)
def test_depthwise_schedule_with_chunks(target, kernel_cache):
    spec = single("conv2d", (18, 9, 7), filters=18, kernel=[3, 5], groups=18,
                  padding=[[1, 1], [2, 2]])
    schedule = DepthwiseWgradSchedule(cols=2, chunks=2, kh_tasks=2)
    node, calls, out, grads = run_backward(spec, 3, resolve(target), kernel_cache, data=False,
                                           schedule=schedule)
    assert calls[0].kernel.template == "depthwise2d_wgrad"
    for param in ("w", "b"):
        assert_close(out[ParamGrad("y", param)], grads.weights["y"][param], f"d{param}")


def test_only_the_gradients_asked_for():
    target = resolve(TARGETS[-1])
    spec = single("conv2d", (3, 7, 7), filters=4, kernel=3, stride=2, padding=1)
    _, g, calls = lowered(spec, 2, target, data=False)
    assert {c.kernel.template for c in calls} <= {"conv2d_wgrad", "conv2d_wgrad_sum"}
    _, g, calls = lowered(spec, 2, target, weights=False)
    assert not any("wgrad" in c.kernel.template for c in calls)
    assert not any(isinstance(a, ParamGrad) for c in calls for a in c.args)
    assert calls[-1].args[-1].name == "y:grad_in0"
    assert lowered(spec, 2, target, data=False, weights=False)[2] == []


def test_data_gradient_shares_the_transposed_conv_and_its_names():
    """dx is conv_transpose's lowering: its weights pack from the conv layer under names of
    their own (the forward conv's 'w' stays), its temps are the layer's, no spread grid."""
    target = resolve(TARGETS[-1])
    spec = single("conv2d", (8, 10, 9), filters=16, kernel=3, stride=2, padding=1)
    node, g, calls = lowered(spec, 2, target, weights=False)
    consts = [a for c in calls for a in c.args if type(a).__name__ == "Const"]
    assert {c.layer for c in consts} == {"y"}
    assert "w" not in {c.what for c in consts} and all(":dx" in c.what for c in consts)
    assert all(name.startswith("y:") for name in g.temps)
    templates = [c.kernel.template for c in calls]
    assert templates.count("conv2d") == 4 and templates[-1] == "conv2d_phase_merge"
    t = transposed_node(node)
    assert (t.op, t.out, t.in_types, t.attrs["output_padding"]) == (
        "conv_transpose2d", node.in_types[0], (node.out,), (1, 0))


def test_depthwise_data_gradient_stays_depthwise():
    target = resolve(TARGETS[-1])
    spec = single("conv2d", (32, 9, 9), filters=32, kernel=3, groups=32, stride=2, padding=1)
    _, _, calls = lowered(spec, 2, target, weights=False)
    templates = {c.kernel.template for c in calls}
    assert "depthwise2d" in templates and "conv2d" not in templates


def test_fused_activation_is_refused():
    spec = single("conv2d", (3, 7, 7), filters=4, kernel=3, activation="relu")
    with pytest.raises(AssertionError, match=r"'y'.*activation 'identity'.*'relu'"):
        lowered(spec, 2, resolve(TARGETS[-1]))


def test_explicit_schedule_that_does_not_fit():
    target = resolve(TARGETS[-1])
    spec = single("conv2d", (16, 7, 7), filters=3 * target.vector, kernel=3)
    with pytest.raises(InputError, match=r"'y'.*oc_vecs=2 must divide the 3 output-channel"):
        lowered(spec, 2, target, data=False, schedule=WgradSchedule(2, 4, 0, 1, 1, 0))


# conv_transpose forward, lowered per output phase (sub-pixel).
TRANSPOSED = [
    ("s2_op1", single("conv_transpose2d", (3, 4, 5), filters=2, kernel=3, stride=2, padding=1, output_padding=1), 2),
    ("deconv_s2_k4", single("conv_transpose2d", (32, 7, 7), filters=16, kernel=4, stride=2, padding=1, activation="relu"), 1),
    ("s3_crop", single("conv_transpose2d", (16, 5, 6), filters=17, kernel=3, stride=3, padding=3, output_padding=2), 2),
    ("s2_d2_empty_phases", single("conv_transpose2d", (4, 5, 6), filters=6, kernel=3, stride=2, dilation=2, padding=1, activation="sigmoid"), 2),
    ("s23_d32", single("conv_transpose2d", (4, 5, 6), filters=6, kernel=5, stride=[2, 3], dilation=[3, 2], padding=[[3, 1], [0, 4]], output_padding=[1, 2]), 2),
    ("groups_dilation", single("conv_transpose2d", (4, 3, 3), filters=6, kernel=2, groups=2, dilation=2), 1),
    ("depthwise_s2", single("conv_transpose2d", (6, 5, 6), filters=6, kernel=3, stride=2, padding=1, groups=6, activation="tanh"), 2),
    ("conv_transpose1d_s3", single("conv_transpose1d", (2, 5), filters=3, kernel=4, stride=3, padding=[[2, 1]]), 2),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", TRANSPOSED, ids=lambda c: c[0])
def test_conv_transpose_per_phase_matches_reference(case, target, kernel_cache):
    name, spec, batch = case
    t = resolve(target)
    ref = cnngen.ReferenceExecutor(spec, seed=3)
    node = ref.graph.nodes[0]
    x = np.random.default_rng(3).standard_normal((batch, *ref.graph.input.shape))
    halo = conv_transpose_halo(node) if "depthwise" in name or "s3" in name else (0, 0, 0, 0)
    xl, ol = Blocked.of(node.in_types[0], t.vector, halo), Blocked.of(node.out, t.vector)
    low = Lowering(node, (xl,), ol, batch, t)
    calls = LOWER[node.op](low)
    out = run_calls(calls, {"input": xl, "y": ol, **low.temps}, {"input": x}, ref.weights,
                    batch, t, kernel_cache)
    assert_close(out["y"], ref.forward(x).out, name)
    # no spread grid: a phase's conv runs only the taps that land on its pixels, at most
    # every (stride/gcd(stride, dilation))-th per axis, at stride 1 over the input itself
    kernel, stride, dilation = ((1, *node.attrs[a])[-2:] for a in ("kernel", "stride", "dilation"))
    step = [s // math.gcd(s, d) for s, d in zip(stride, dilation)]
    convs = [dict(c.kernel.values) for c in calls if c.kernel.template in ("conv2d", "depthwise2d")]
    assert 0 < len(convs) <= stride[0] * stride[1]
    for values in convs:
        assert values["k_h"] <= -(-kernel[0] // step[0])
        assert values["k_w"] <= -(-kernel[1] // step[1])
        assert values["stride_h"] == values["stride_w"] == 1
    assert all(dict(c.kernel.values).get("stride_h", 1) == 1 for c in calls
               if c.kernel.template == "dilate2d")
    # an input with the halo its phases read is read in place
    assert ("dilate2d" in {c.kernel.template for c in calls}) == (
        any(conv_transpose_halo(node)) and halo == (0, 0, 0, 0))
