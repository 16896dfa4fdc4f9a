"""Generated CPU pooling kernels against the float64 reference: max and average pools
(1-D and 2-D; asymmetric padding, ceil_mode, count_include_pad, overlapping windows),
global pools, max-pool switches and max_unpool.

The shape table is a few chains of pools, so one plan compiles many kernels at once (in
parallel); every layer of a chain is compared with the reference. The max chains run on
inputs centred at -4, so a zero halo taken for max's -inf padding shows in every layer.
Every case runs on AVX-512 (V = 16) where the host has it and on AVX2 (V = 8), with channel
counts that straddle a vector both ways (1, 3, 17, 64); every run checks that no kernel
wrote a halo. Pools that read a conv's halo (wider than their own padding, so it must be
clipped away) or whose output a padded conv reads are tested as small networks.
"""
import numpy as np
import pytest

import cnngen
from cnngen.codegen.cpu.pool import switches_layout
from cnngen.spec import Builder

from .plan_checks import assert_buffers_sound, run_keeping_activations

TARGETS = ("cpu", "cpu-avx2")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One kernel directory for the module: a shape compiles once for all its tests."""
    return tmp_path_factory.mktemp("kernels")


def run(spec, target, cache, n=2, x=None, mean=0.0, seed=0):
    """Compile and run twice (so stale buffers from a first batch would show); compare every
    layer of the second run with the reference. Returns the plan and the reference pass."""
    net = cnngen.compile(spec, target=target, cache_dir=cache)
    rng = np.random.default_rng(seed)
    if x is None:
        x = (rng.standard_normal((n, *spec["input"]["shape"])) + mean).astype(np.float32)
    net(rng.standard_normal(x.shape).astype(np.float32) * 10)
    y = net(x)
    fwd = cnngen.ReferenceExecutor(spec, net.weights).forward(x)
    plan = run_keeping_activations(net, x)
    for node in plan.graph.nodes:
        ref = fwd.activations[node.name]
        np.testing.assert_allclose(plan.tensor(node.name), ref, rtol=1e-5,
                                   atol=1e-5 * (1 + np.abs(ref).max()), err_msg=node.name)
    np.testing.assert_allclose(y, fwd.out, rtol=1e-5, atol=1e-5 * (1 + np.abs(fwd.out).max()))
    assert_buffers_sound(plan)
    assert_buffers_sound(net.plan(x.shape[0]))
    return plan, fwd


def switches(plan, pool):
    """A max-pool's switches buffer as integers, (N, C, *output spatial)."""
    layout = switches_layout(plan.layouts[pool])
    flat = layout.to_nchw(plan.buffers[f"{pool}:switches"], plan.n_batch)
    assert np.array_equal(flat, np.round(flat)), "switches must be exact integers"
    return flat.astype(np.int64).reshape(plan.n_batch, *plan.graph.type_of(pool).shape)


def chain(name, shape, layers):
    """A spec of ``layers`` ((name, op, attrs)), each reading the one before."""
    b = Builder(name, shape)
    for layer, op, attrs in layers:
        b.layer(op, layer, **attrs)
    return b.spec()


# ---- reference comparisons over real and odd shapes ----------------------------------------

# Each layer reads the one before; the comments give the output shapes.
POOLS_2D = [
    ("max_overlap_3s1_pad1", "maxpool2d", dict(size=3, stride=1, padding=1)),         # 29 x 31
    ("avg_rect_asym", "avgpool2d", dict(size=[3, 2], stride=[2, 1],
                                        padding=[[1, 1], [0, 1]])),                     # 15 x 31
    ("max_rect_asym", "maxpool2d", dict(size=[2, 3], stride=[1, 2],
                                        padding=[[1, 1], [0, 1]])),                     # 16 x 15
    # ceil_mode adds an extra row at the bottom, which count_include_pad=False ignores
    ("avg_s2_pad1_ceil_excl", "avgpool2d", dict(size=3, stride=2, padding=1, ceil_mode=True,
                                                count_include_pad=False)),              # 9 x 8
    # ceil_mode's last column would start in the end padding, so it is dropped
    ("max_k4s3_asym_ceil", "maxpool2d", dict(size=4, stride=3, padding=[[2, 1], [1, 2]],
                                             ceil_mode=True)),                          # 4 x 3
    # count_include_pad counts the padding but not the extra column ceil_mode adds
    ("avg_k4s3_asym_ceil", "avgpool2d", dict(size=4, stride=3, padding=[[2, 1], [1, 2]],
                                             ceil_mode=True)),                          # 2 x 2
    ("global_max_keepdims", "global_maxpool", dict(keepdims=True)),                   # 1 x 1
]
C1_2D = [
    ("max_s2_pad1_ceil", "maxpool2d", dict(size=3, stride=2, padding=1, ceil_mode=True)),  # 7 x 7
    ("avg_k2s1_asym_excl", "avgpool2d", dict(size=2, stride=1, padding=[[0, 1], [1, 0]],
                                             count_include_pad=False)),                 # 7 x 7
    ("max_s3_ceil", "maxpool2d", dict(size=3, stride=3, ceil_mode=True)),              # 3 x 3
    ("global_avg_keepdims", "global_avgpool", dict(keepdims=True)),
]
RESNET = [
    ("stem_pool", "maxpool2d", dict(size=3, stride=2, padding=1)),                    # 56 x 56
    ("to_7x7", "avgpool2d", dict(size=8, stride=8)),                                  # 7 x 7
    ("head", "global_avgpool", {}),                                                   # (64,)
]
POOLS_1D = [
    ("max_3s2_pad1_ceil", "maxpool1d", dict(size=3, stride=2, padding=1, ceil_mode=True)),  # 16
    ("avg_4s3_asym_ceil_excl", "avgpool1d", dict(size=4, stride=3, padding=[[2, 1]],
                                                 ceil_mode=True, count_include_pad=False)),  # 6
    ("avg_3s1_pad1", "avgpool1d", dict(size=3, stride=1, padding=1)),                 # 6
    ("max_2", "maxpool1d", dict(size=2)),                                             # 3
    ("global_avg_keepdims", "global_avgpool", dict(keepdims=True)),                   # 1
]

# ONNX-style padding, up to size - 1: windows that hold one input pixel at the borders.
ONNX_PADS_2D = [
    ("max_k3s1_pad2", "maxpool2d", dict(size=3, stride=1, padding=2)),                # 13 x 15
    ("avg_k3s2_pad2_incl", "avgpool2d", dict(size=3, stride=2, padding=2)),           # 8 x 9
    # ceil_mode adds a bottom row past the end padding (which stays uncounted)
    ("avg_k4s3_pad3_ceil_excl", "avgpool2d", dict(size=4, stride=3, padding=[[3, 0], [1, 3]],
                                                  ceil_mode=True, count_include_pad=False)),  # 4 x 4
    ("max_k3s2_asym_ceil", "maxpool2d", dict(size=3, stride=2, padding=[[2, 1], [1, 2]],
                                             ceil_mode=True)),                          # 3 x 3
    ("avg_k3s2_pad21_ceil_incl", "avgpool2d", dict(size=3, stride=2, padding=[[2, 1], [2, 1]],
                                                   ceil_mode=True)),                    # 3 x 3
    # a window wider than the input: the corner windows hold one pixel each
    ("max_k5s1_pad4", "maxpool2d", dict(size=5, stride=1, padding=4)),                # 7 x 7
]
ONNX_PADS_1D = [
    ("max_k3s1_pad2", "maxpool1d", dict(size=3, stride=1, padding=2)),                # 11
    ("avg_k4s3_pad31_ceil_incl", "avgpool1d", dict(size=4, stride=3, padding=[[3, 1]],
                                                   ceil_mode=True)),                    # 5
    ("avg_k3s1_pad2_excl", "avgpool1d", dict(size=3, stride=1, padding=2,
                                             count_include_pad=False)),                 # 7
]

# (id, input shape, layers, batch, input mean). Inputs centred at -4 keep every max negative.
CHAINS = [
    ("pools2d_c17_29x31", (17, 29, 31), POOLS_2D, 2, -4.0),
    ("pools2d_c1_13x13", (1, 13, 13), C1_2D, 3, -4.0),
    ("resnet_c64_112x112", (64, 112, 112), RESNET, 1, 0.0),
    ("pools1d_c17_l31", (17, 31), POOLS_1D, 2, -4.0),
    ("onnx_pads2d_c17_11x13", (17, 11, 13), ONNX_PADS_2D, 2, -4.0),
    ("onnx_pads2d_c3_7x5", (3, 7, 5), ONNX_PADS_2D[:4], 1, -4.0),
    ("onnx_pads1d_c17_l9", (17, 9), ONNX_PADS_1D, 2, -4.0),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("shape,layers,n,mean", [c[1:] for c in CHAINS], ids=[c[0] for c in CHAINS])
def test_pool_chain_matches_reference(shape, layers, n, mean, target, cache):
    run(chain("pools", shape, layers), target, cache, n=n, mean=mean)


# ---- pools between convolutions: halos on both sides ---------------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_conv_pool_conv(target, cache):
    """conv(pad 1) -> maxpool(pad 1) -> conv(pad 1): the pool writes only the interior of an
    output that the second conv reads through its halo."""
    b = Builder("conv_pool_conv", (5, 13, 13))
    b.conv2d("c1", filters=17, kernel=3, padding=1, activation="relu")
    b.maxpool2d("p", size=3, stride=2, padding=1)
    b.conv2d("c2", filters=3, kernel=3, padding=1)
    plan, _ = run(b.spec(), target, cache)
    assert plan.layouts["p"].halo == (1, 1, 1, 1)


@pytest.mark.parametrize("target", TARGETS)
def test_pools_read_conv_halo(target, cache):
    """GoogLeNet's pool branch: 3x3/s1 max and avg pools (pad 1) read the same tensor as a
    5x5 conv (pad 2), so their input has a halo of 2 that they must clip away. The branches
    merge through max_unpool (so this test needs no other op family): the conv's output is
    unpooled through the max pool's switches, pooled again, and the avg pool's output is
    unpooled through those switches."""
    b = Builder("halo_readers", (17, 13, 13))
    b.conv2d("conv", filters=17, kernel=5, padding=2)
    b.maxpool2d("max", size=3, stride=1, padding=1, return_switches=True, inputs="input")
    b.avgpool2d("avg", size=3, stride=1, padding=1, count_include_pad=False, inputs="input")
    b.max_unpool("merge", switches="max", inputs="conv")
    b.maxpool2d("max2", size=3, stride=1, padding=1, return_switches=True)
    b.max_unpool("y", switches="max2", inputs="avg")
    plan, fwd = run(b.spec(), target, cache, mean=-4.0)
    assert plan.layouts["input"].halo == (2, 2, 2, 2)
    np.testing.assert_array_equal(switches(plan, "max"), fwd.context.saved["max"])


@pytest.mark.parametrize("target", TARGETS)
def test_fused_max_pool_with_onnx_padding(target, cache):
    """conv -> relu -> maxpool(3, stride 2, padding 2) is one kernel whose general pool
    clips windows that are mostly padding."""
    b = Builder("conv_pool_pad2", (5, 13, 11))
    b.conv2d("c1", filters=17, kernel=3, padding=1, activation="relu")
    b.maxpool2d("p", size=3, stride=2, padding=2)
    plan, _ = run(b.spec(), target, cache)
    assert [n.name for n in plan.graph.nodes] == ["p"]


# ---- switches and max_unpool ---------------------------------------------------------------

def unpool_spec(shape, **pool):
    b = Builder("unpool", shape)
    b.layer("maxpool2d" if len(shape) == 3 else "maxpool1d", "p", return_switches=True, **pool)
    b.max_unpool("u", switches="p")
    return b.spec()


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("values", ["normal", "all_equal", "rounded"])
def test_max_unpool_3x3s2_switches(target, values, cache):
    """Ties resolve as the reference does (first maximum in window order); where overlapping
    windows pick the same element, max_unpool adds the values."""
    spec = unpool_spec((3, 13, 13), size=3, stride=2, padding=1)
    rng = np.random.default_rng(1)
    x = {"normal": rng.standard_normal((2, 3, 13, 13)),
         "all_equal": np.full((2, 3, 13, 13), -1.5),
         "rounded": np.round(rng.standard_normal((2, 3, 13, 13)))}[values].astype(np.float32)
    plan, fwd = run(spec, target, cache, x=x)
    np.testing.assert_array_equal(switches(plan, "p"), fwd.context.saved["p"])


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("shape,pool", [
    ((17, 9, 11), dict(size=3, stride=2, padding=2)),
    ((3, 8, 7), dict(size=4, stride=3, padding=[[3, 1], [2, 3]], ceil_mode=True)),
    ((17, 5), dict(size=3, stride=1, padding=2)),
], ids=["k3s2_pad2", "k4s3_asym_ceil", "1d_k3s1_pad2"])
def test_switches_with_onnx_padding(shape, pool, target, cache):
    """Padding up to size - 1: every switch indexes the unpadded input (never the padding),
    as the reference's do."""
    plan, fwd = run(unpool_spec(shape, **pool), target, cache, mean=-4.0)
    np.testing.assert_array_equal(switches(plan, "p"), fwd.context.saved["p"])


@pytest.mark.parametrize("target", TARGETS)
def test_max_unpool_1d(target, cache):
    plan, fwd = run(unpool_spec((17, 31), size=2), target, cache)
    np.testing.assert_array_equal(switches(plan, "p"), fwd.context.saved["p"])


@pytest.mark.parametrize("target", TARGETS)
def test_pool_unpool_between_convs(target, cache):
    """The pool reads a haloed input (a 3x3/s2 conv reads it too); max_unpool scatters that
    conv's output and writes an output a padded conv reads, so it must zero only its
    interior."""
    b = Builder("conv_unpool", (17, 9, 9))
    b.maxpool2d("p", size=3, stride=2, padding=1, return_switches=True)
    b.conv2d("down", filters=17, kernel=3, stride=2, padding=1, inputs="input")
    b.max_unpool("u", switches="p")
    b.conv2d("c", filters=3, kernel=3, padding=1)
    plan, fwd = run(b.spec(), target, cache, mean=-4.0)
    assert plan.layouts["input"].halo == plan.layouts["u"].halo == (1, 1, 1, 1)
    np.testing.assert_array_equal(switches(plan, "p"), fwd.context.saved["p"])


# ---- by hand -------------------------------------------------------------------------------

# The lecture's 6x6 example (as in test_ops_reference), pooled with 3x3 windows, stride 3.
LECTURE = np.array([[1, 2, 6, 0, 0, 2],
                    [2, 0, 3, 2, 1, 0],
                    [0, 4, 3, 3, 5, 1],
                    [1, 2, 3, 0, 1.2, 2],
                    [5, 6, 4, 1, 0, 4.1],
                    [9, 2, 0, 2, 7.8, 4]], np.float32)


def test_lecture_pools_by_hand(cache):
    """Max and average pools of the lecture's example; max_unpool puts the averages where
    the maxima were."""
    b = Builder("lecture", (1, 6, 6))
    b.maxpool2d("max", size=3, stride=3, return_switches=True)
    b.avgpool2d("avg", size=3, stride=3, inputs="input")
    b.max_unpool("y", switches="max")
    net = cnngen.compile(b.spec(), cache_dir=cache)
    y = net(LECTURE[None, None])
    plan = net.plan(1)
    np.testing.assert_array_equal(plan.tensor("max")[0, 0], np.float32([[6, 5], [9, 7.8]]))
    np.testing.assert_array_equal(switches(plan, "max")[0, 0], [[2, 16], [30, 34]])
    # window sums 21, 14, 32 and 22.1 over 9 values
    avg = [[21 / 9, 14 / 9], [32 / 9, 22.1 / 9]]
    np.testing.assert_allclose(plan.tensor("avg")[0, 0], avg, rtol=1e-6)
    expected = np.zeros((6, 6))
    for (r, c), value in zip([(0, 2), (2, 4), (5, 0), (5, 4)], np.ravel(avg)):
        expected[r, c] = value                      # where 6, 5, 9 and 7.8 sit
    np.testing.assert_allclose(y[0, 0], expected, rtol=1e-6)


def test_padding_and_ties_by_hand(cache):
    """A 2x3 map of -1s, pooled 2x2 with stride 1 and one column of padding on the left:
    windows start at columns -1, 0 and 1. Max ignores the padding (it is -inf) and ties take
    the first element, so the switches are 0, 0, 1. Avg counts the padding
    (count_include_pad): (-1 - 1 + 0 + 0) / 4 first. max_unpool sums the averages onto the
    switches, so position 0 gets two of them."""
    b = Builder("ties", (1, 2, 3))
    b.maxpool2d("max", size=2, stride=1, padding=[[0, 0], [1, 0]], return_switches=True)
    b.avgpool2d("avg", size=2, stride=1, padding=[[0, 0], [1, 0]], inputs="input")
    b.max_unpool("y", switches="max")
    net = cnngen.compile(b.spec(), cache_dir=cache)
    y = net(-np.ones((1, 1, 2, 3), np.float32))
    plan = net.plan(1)
    np.testing.assert_array_equal(plan.tensor("max")[0, 0], [[-1, -1, -1]])
    np.testing.assert_array_equal(switches(plan, "max")[0, 0], [[0, 0, 1]])
    np.testing.assert_array_equal(plan.tensor("avg")[0, 0], [[-0.5, -1, -1]])
    np.testing.assert_array_equal(y[0, 0], [[-1.5, -1, 0], [0, 0, 0]])


# ---- limits --------------------------------------------------------------------------------

def test_switches_beyond_float32_integers_are_refused(cache):
    net = cnngen.compile(unpool_spec((1, 2 ** 24), size=2), cache_dir=cache)
    with pytest.raises(cnngen.SpecError, match=r"layer 'p' \(maxpool1d\).*2\*\*24"):
        net.plan(1)
