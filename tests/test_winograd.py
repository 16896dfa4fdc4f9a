"""Winograd F(2x2, 3x3) and F(4x4, 3x3) kernels against the float64 reference executor.

Odd shapes on purpose: outputs that are not a multiple of m (partial tiles at the right and
bottom edges), 1x1 outputs, channel counts that are not a multiple of the vector width,
padding 0, 1 and asymmetric, batches of 1 and 3, bias, fused batch norm, activations and a
fused residual add; at the host's width and at AVX2's (8 lanes).

Tolerance, as max |got - ref| over max |ref| (plus a relative term): 2e-5 for m = 2, the
direct kernels' bound; 1e-4 for m = 4. F(4x4) works with larger intermediate values: B^T
sums up to |4| + |5| + |1| input values per point in each dimension and A^T weighs the
products by up to 8 (so 8^2 = 64 in 2-D), while U = G g G^T is small, so float32 rounding
of the transformed values and of the products comes back multiplied by those factors.
Measured here with standard-normal inputs and the default initialisation, relative to max
|ref|: m = 2 2e-7 .. 8e-7 (the direct conv: 4e-7 .. 2.4e-6), m = 4 3e-6 (c_in 16) to 1e-5
(c_in 256 and 512). The bound leaves 10x headroom at c_in 512; a wrong transform
coefficient or a misplaced tile gives errors of order 1.
"""
import numpy as np
import pytest

import cnngen
from cnngen.codegen.cpu import winograd
from cnngen.errors import InputError
from cnngen.passes import for_inference
from cnngen.schedule import WinogradSchedule
from cnngen.spec import Builder
from cnngen.target import ISA_WIDTH, host, resolve
from .plan_checks import assert_buffers_sound, run_keeping_activations

TARGETS = [f"cpu-{isa}" for isa in ("avx512", "avx2") if ISA_WIDTH[isa] <= host().vector]
TOLERANCE = {2: 2e-5, 4: 1e-4}


def conv_net(c_in, hw, filters, padding, *, bias=True, activation=None, bn=False,
             residual=False):
    """input -> conv 3x3 ("c") [-> batchnorm] [-> add(input)] [-> activation]."""
    b = Builder("t_winograd", (c_in, *hw))
    b.conv2d("c", filters=filters, kernel=3, padding=padding, bias=bias)
    if bn:
        b.batchnorm("bn")
    if residual:
        b.add("sum", inputs=[b.last, "input"], activation=activation or "identity")
    elif activation:
        b.layer(activation, "act")
    return b.spec()


# name, spec, batch, (oc_vecs, tile_block, ic_block): knobs that fit at 16 and at 8 lanes
CASES = [
    ("c3_k17_7x9_pad1_bias_relu", conv_net(3, (7, 9), 17, 1, activation="relu"), 3, (1, 5, 1)),
    ("c17_k20_5x5_pad0_bn", conv_net(17, (7, 7), 20, 0, bias=False, bn=True), 1, (1, 4, 1)),
    ("c20_k3_1x1_pad0", conv_net(20, (3, 3), 3, 0), 3, (1, 2, 1)),
    ("c16_k32_asym_pad_leaky", conv_net(16, (6, 10), 32, [[0, 2], [2, 1]],
                                        activation="leaky_relu"), 1, (2, 3, 1)),
    ("c20_residual_bn_relu", conv_net(20, (9, 7), 20, 1, bias=False, bn=True, residual=True,
                                      activation="relu"), 3, (1, 6, 1)),
    ("c40_k48_11x13_blocks", conv_net(40, (11, 13), 48, 1), 2, (3, 3, 1)),
]


def random_batchnorm(net, rng):
    if "bn" in net.weights:
        c = len(net.weights["bn"]["gamma"])
        net.set_weights({"bn": {"gamma": rng.uniform(0.5, 1.5, c), "beta": rng.standard_normal(c),
                                "running_mean": rng.standard_normal(c) * 0.3,
                                "running_var": rng.uniform(0.5, 2.0, c)}})


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_winograd_matches_reference(case, m, target, kernel_cache):
    _, spec, batch, knobs = case
    schedule = WinogradSchedule(m, *knobs)
    net = cnngen.compile(spec, target=target, cache_dir=kernel_cache, seed=1,
                         schedules={"c": schedule})
    rng = np.random.default_rng(m)
    random_batchnorm(net, rng)
    x = rng.standard_normal((batch, *net.graph.input.shape)).astype(np.float32)
    ref = cnngen.ReferenceExecutor(spec, net.weights).forward(x.astype(np.float64)).out
    plan = run_keeping_activations(net, x)
    names = [step.call.kernel.name(net.target) for step in plan.steps if not step.edge]
    assert len(names) == 2 and names[0].startswith("winograd_input__")
    assert names[1].startswith("winograd_conv2d") and str(schedule) in names[1]
    assert_buffers_sound(plan)
    got = net(x)
    scale = float(np.abs(ref).max())
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=TOLERANCE[m] * scale)


@pytest.mark.parametrize("m", [2, 4])
def test_transform_matrices_compute_a_3_tap_correlation(m):
    """By hand, in float64: A^T [(G g) * (B^T d)] = the m outputs of correlating d with g."""
    rng = np.random.default_rng(0)
    d, g = rng.standard_normal(m + 2), rng.standard_normal(3)
    expected = [d[i:i + 3] @ g for i in range(m)]
    got = winograd.A_T[m] @ ((winograd.G[m] @ g) * (winograd.B_T[m] @ d))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def fused_conv(spec):
    return next(n for n in for_inference(cnngen.compile(spec).graph).nodes if n.op == "conv2d")


@pytest.mark.parametrize("target", TARGETS)
def test_space_is_legal_and_starts_with_the_default(target):
    t = resolve(target)
    for spec in (conv_net(64, (56, 56), 64, 1), conv_net(20, (7, 9), 17, 1),
                 conv_net(512, (7, 7), 512, 1, bn=True, residual=True)):
        node = fused_conv(spec)
        assert winograd.applies(node) is None
        points = winograd.space(node, t)
        assert points[0] == winograd.default(node, t) and len(set(points)) == len(points)
        assert {p.m for p in points} == {2, 4}
        for s in points:
            winograd.check(node, s, t)


def layer(op, name, **attrs):
    b = Builder("t_bad", (8, 12, 12))
    b.layer(op, name, **attrs)
    return b


NOT_QUALIFYING = [
    ("stride 2", layer("conv2d", "c", filters=16, kernel=3, stride=2, padding=1).spec(),
     r"layer 'c' \(conv2d\).*does not apply.*stride=\(2, 2\)"),
    ("5x5", layer("conv2d", "c", filters=16, kernel=5).spec(),
     r"layer 'c' \(conv2d\).*does not apply.*kernel=\(5, 5\)"),
    ("dilation 2", layer("conv2d", "c", filters=16, kernel=3, dilation=2).spec(),
     r"layer 'c' \(conv2d\).*does not apply.*dilation=\(2, 2\)"),
    ("groups 2", layer("conv2d", "c", filters=16, kernel=3, groups=2).spec(),
     r"layer 'c' \(conv2d\).*does not apply.*groups=2"),
]


def pooled():
    b = layer("conv2d", "c", filters=16, kernel=3, padding=1, activation="relu")
    b.maxpool2d("p", size=2)
    return b.spec()


NOT_QUALIFYING.append(("fused pool", pooled(),
                       r"layer 'c' \(conv2d\).*does not apply.*pooled.*maxpool2d 'p'"))


@pytest.mark.parametrize("case", NOT_QUALIFYING, ids=lambda c: c[0])
def test_a_conv_winograd_cannot_compute_is_an_input_error(case, kernel_cache):
    _, spec, message = case
    net = cnngen.compile(spec, cache_dir=kernel_cache,
                         schedules={"c": WinogradSchedule(2, 1, 4, 1)})
    with pytest.raises(InputError, match=message + r".*Use a ConvSchedule"):
        net.plan(1)


@pytest.mark.parametrize("knobs, message", [
    ((3, 1, 4, 1), r"m=3 must be 2 or 4"),
    ((2, 2, 4, 1), r"oc_vecs=2 must divide the 3 output-channel vectors"),
    ((2, 1, 4, 2), r"ic_block=2 must divide the 3 input-channel vectors"),
    ((4, 1, 20, 1), r"oc_vecs\*tile_block=20 accumulators exceed the \d+ that fit 16 vector"),
    ((4, 1, 0, 1), r"tile_block=0 must be >= 1"),
])
@pytest.mark.skipif("cpu-avx2" not in TARGETS, reason="needs AVX2: this machine is SSE-only")
def test_a_schedule_that_does_not_fit_is_an_input_error(knobs, message, kernel_cache):
    spec = conv_net(17, (8, 8), 17, 1)       # 3 vectors of channels in and out at 8 lanes
    net = cnngen.compile(spec, target="cpu-avx2", cache_dir=kernel_cache,
                         schedules={"c": WinogradSchedule(*knobs)})
    with pytest.raises(InputError, match=r"layer 'c' \(conv2d\): schedule .* does not fit: .*"
                       + message):
        net.plan(1)
