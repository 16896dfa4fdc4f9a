"""Inference passes: batch norm folding, activation, residual and pool fusion, by graph
shape and by the kernels the compiled net runs; the results still match the reference."""
import numpy as np
import pytest

import cnngen
from cnngen.passes import (MAX_FUSED_POOL_WIDTH, PIPELINE, drop_dropout, fold_batchnorm,
                           for_inference, fuse_activation, fuse_pool, fuse_residual, verify)
from cnngen.spec import Builder

from .plan_checks import assert_live_tensors_never_share, run_keeping_activations


def graph(b):
    return cnngen.build_graph(b.spec())


def conv_bn_relu_pool():
    b = Builder("block", (3, 12, 12))
    b.conv2d("c", filters=8, kernel=3, padding=1, bias=False)
    b.batchnorm("bn")
    b.relu("r")
    b.maxpool2d("p", size=2)
    return b


def test_conv_bn_relu_pool_becomes_one_node_named_after_its_last_layer():
    g = for_inference(graph(conv_bn_relu_pool()))
    assert [n.name for n in g.nodes] == ["p"]
    fused = g.node("p")
    assert fused.op == "conv2d" and fused.attrs["activation"] == "relu"
    assert [n.name for n in fused.fused] == ["c", "bn", "r", "p"]
    assert fused.out.shape == (8, 6, 6)


def test_each_pass_alone():
    g = graph(conv_bn_relu_pool())
    folded = fold_batchnorm(g)
    assert [n.name for n in folded.nodes] == ["bn", "r", "p"]
    assert [n.name for n in fuse_activation(g).nodes] == ["c", "bn", "r", "p"]
    assert [n.name for n in fuse_pool(g).nodes] == ["c", "bn", "r", "p"]   # relu is between
    assert [n.name for n in fuse_pool(fuse_activation(folded)).nodes] == ["p"]
    assert PIPELINE == (drop_dropout, fold_batchnorm, fuse_residual, fuse_activation, fuse_pool)


def test_inverted_dropout_disappears_and_its_readers_read_its_input():
    b = Builder("drop", (3, 6, 6))
    b.conv2d("c", filters=4, kernel=3)
    b.dropout("d1", rate=0.5)
    b.flatten("f")
    b.dropout("d2", rate=0.3, mode="scale_at_test")   # scales: stays
    b.dense("fc", units=5)
    b.dropout("d3", rate=0.5)                          # the output: stays
    g = drop_dropout(graph(b))
    assert [n.name for n in g.nodes] == ["c", "f", "d2", "fc", "d3"]
    assert g.node("f").inputs == ("c",)


def test_nothing_fuses_across_a_second_reader_or_into_a_non_conv():
    b = Builder("branch", (4, 8, 8))
    b.conv2d("c", filters=4, kernel=3, padding=1)
    b.batchnorm("bn")
    b.relu("r", inputs="c")                       # c has two readers: bn and r
    b.add("a", inputs=["bn", "r"])
    b.batchnorm("bn2")                            # after an add: stays
    b.conv2d("c2", filters=4, kernel=1, activation="tanh")
    b.relu("r2")                                  # conv already has an activation: stays
    g = for_inference(graph(b))
    assert [n.name for n in g.nodes] == ["c", "bn", "r", "a", "bn2", "c2", "r2"]


def test_verify_rejects_a_read_before_definition():
    g = graph(conv_bn_relu_pool())
    broken = g.__class__(g.name, g.input_name, g.input, tuple(reversed(g.nodes)), g.loss)
    with pytest.raises(AssertionError, match="before they are defined"):
        verify(broken)


@pytest.mark.parametrize("target", ["cpu", "cpu-avx2"])
def test_folded_kernels_match_the_reference(target, kernel_cache):
    b = conv_bn_relu_pool()
    b.conv2d("c2", filters=20, kernel=3, groups=4, padding=1)     # misaligned groups
    b.batchnorm("bn2")
    b.leaky_relu("lr", alpha=0.2)
    b.conv2d("dw", filters=20, kernel=3, groups=20, padding=1)    # depthwise
    b.batchnorm("bn3")
    b.silu("s")
    spec = b.spec()
    net = cnngen.compile(spec, target=target, cache_dir=kernel_cache)
    rng = np.random.default_rng(0)
    weights = net.weights
    for layer in ("bn", "bn2", "bn3"):
        c = weights[layer]["gamma"].shape
        weights[layer] = {"gamma": rng.uniform(0.5, 1.5, c), "beta": rng.normal(0, 0.2, c),
                          "running_mean": rng.normal(0, 0.2, c),
                          "running_var": rng.uniform(0.5, 1.5, c)}
    net.weights = weights
    x = rng.standard_normal((2, 3, 12, 12)).astype(np.float32)
    ref = cnngen.ReferenceExecutor(spec, net.weights).forward(x).out
    np.testing.assert_allclose(net(x), ref, rtol=1e-4, atol=1e-5)
    kernels = [s.kernel.name for s in net.plan(2).steps if not s.edge]
    assert [k.split("__")[0] for k in kernels] == [
        "conv2d_bn_relu_maxpool2d", "conv2d_bn_leaky_relu", "conv2d_bn_silu"]


def basic_block(b, name, x, c_in, width, stride):
    """A ResNet basic block, as the zoo builds it: relu(bn(conv(relu(bn(conv x)))) + shortcut)."""
    b.conv2d(f"{name}_c1", inputs=x, filters=width, kernel=3, stride=stride, padding=1,
             bias=False)
    b.batchnorm(f"{name}_bn1")
    b.relu(f"{name}_r1")
    b.conv2d(f"{name}_c2", filters=width, kernel=3, padding=1, bias=False)
    y = b.batchnorm(f"{name}_bn2")
    shortcut = x
    if stride != 1 or c_in != width:
        b.conv2d(f"{name}_sc", inputs=x, filters=width, kernel=1, stride=stride, bias=False)
        shortcut = b.batchnorm(f"{name}_scbn")
    return b.add(f"{name}_add", inputs=[y, shortcut], activation="relu")


def test_a_residual_add_fuses_into_one_of_its_convs_and_takes_the_adds_place():
    b = Builder("res", (16, 8, 8))
    basic_block(b, "b1", "input", 16, 32, 2)
    g = for_inference(graph(b))
    assert [n.name for n in g.nodes] == ["b1_r1", "b1_scbn", "b1_add"]
    add = g.node("b1_add")
    assert add.op == "conv2d" and add.inputs == ("b1_r1", "b1_scbn")
    assert add.attrs["activation"] == "relu"
    assert [n.name for n in add.fused] == ["b1_c2", "b1_bn2", "b1_add"]


def test_residual_and_pool_fusion_stop_where_they_would_change_the_result():
    b = Builder("no", (16, 9, 9))
    b.conv2d("c", filters=16, kernel=3, padding=1)
    b.relu("r")                                          # activation before the add
    b.add("a", inputs=["r", "input"])
    b.conv2d("dw", filters=16, kernel=3, groups=16, padding=1)
    b.add("a2", inputs=["dw", "a"])                      # depthwise: its own kernel
    b.conv2d("c2", filters=16, kernel=1)
    b.maxpool2d("mp", size=2, return_switches=True)      # switches are read by the unpool
    b.max_unpool("up", switches="mp")
    b.conv2d("c3", filters=16, kernel=1)
    b.avgpool2d("ap", size=2, padding=1)                 # windows over padding
    b.conv2d("c4", filters=16, kernel=1)
    b.avgpool2d("ap2", size=2, ceil_mode=True)           # a last window past the edge
    g = for_inference(graph(b))
    assert [n.name for n in g.nodes] == ["r", "a", "dw", "a2", "c2", "mp", "up", "c3", "ap",
                                         "c4", "ap2"]


def pool_block(b, pool, activation="relu"):
    b.conv2d("c", filters=20, kernel=3, padding=1, bias=False)
    b.batchnorm("bn")
    b.layer(activation, "act")
    b.layer(pool[0], "pool", **pool[1])
    return b


def randomise_batchnorm(net, rng):
    weights = net.weights
    for layer, p in weights.items():
        if "gamma" in p:
            c = p["gamma"].shape
            weights[layer] = {"gamma": rng.uniform(0.5, 1.5, c), "beta": rng.normal(0, 0.2, c),
                              "running_mean": rng.normal(0, 0.2, c),
                              "running_var": rng.uniform(0.5, 1.5, c)}
    net.weights = weights


def compute_kernels(net, n_batch):
    return [s.kernel.name for s in net.plan(n_batch).steps if not s.edge]


POOLS = {
    "max2": ("maxpool2d", {"size": 2}),                                   # register tile
    "max2ceil": ("maxpool2d", {"size": 2, "ceil_mode": True}),   # last windows past an odd edge
    "max3s2p1": ("maxpool2d", {"size": 3, "stride": 2, "padding": 1}),   # ResNet's stem pool
    "max3s2ceil": ("maxpool2d", {"size": 3, "stride": 2, "ceil_mode": True}),
    "avg2": ("avgpool2d", {"size": 2}),
    "avg3s1": ("avgpool2d", {"size": 3, "stride": 1}),
}


@pytest.mark.parametrize("target", ["cpu", "cpu-avx2"])
@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_conv_bn_act_pool_is_exactly_one_kernel(target, pool, activation, kernel_cache):
    b = pool_block(Builder("block", (5, 13, 15)), POOLS[pool], activation)
    spec = b.spec()
    net = cnngen.compile(spec, target=target, cache_dir=kernel_cache)
    rng = np.random.default_rng(1)
    randomise_batchnorm(net, rng)
    x = rng.standard_normal((3, 5, 13, 15)).astype(np.float32)
    ref = cnngen.ReferenceExecutor(spec, net.weights).forward(x).out
    np.testing.assert_allclose(net(x), ref, rtol=1e-4, atol=1e-5)
    kernels = compute_kernels(net, 3)
    assert len(kernels) == 1
    assert kernels[0].startswith(f"conv2d_bn_{activation}_{POOLS[pool][0]}__")
    (step,) = [s for s in net.plan(3).steps if not s.edge]
    in_registers = pool == "max2" and activation == "relu"    # silu is not monotone
    assert dict(step.call.kernel.values)["pool"] == (2 if in_registers else 1)


@pytest.mark.parametrize("pool", ["maxpool1d", "avgpool1d"])
def test_conv1d_pool_is_one_kernel(pool, kernel_cache):
    b = Builder("seq", (4, 31))
    b.conv1d("c", filters=24, kernel=5, padding=2, activation="tanh")
    b.layer(pool, "p", size=2)
    spec = b.spec()
    net = cnngen.compile(spec, cache_dir=kernel_cache)
    x = np.random.default_rng(2).standard_normal((2, 4, 31)).astype(np.float32)
    ref = cnngen.ReferenceExecutor(spec, net.weights).forward(x).out
    np.testing.assert_allclose(net(x), ref, rtol=1e-4, atol=1e-5)
    assert len(compute_kernels(net, 2)) == 1


@pytest.mark.parametrize("target", ["cpu", "cpu-avx2"])
@pytest.mark.parametrize("stride,c_in,width", [(1, 16, 16), (2, 16, 32), (1, 24, 40)])
def test_a_resnet_basic_block_is_two_kernels_plus_one_for_a_downsampling_shortcut(
        target, stride, c_in, width, kernel_cache):
    b = Builder("block", (c_in, 10, 11))
    basic_block(b, "b", "input", c_in, width, stride)
    spec = b.spec()
    net = cnngen.compile(spec, target=target, cache_dir=kernel_cache)
    rng = np.random.default_rng(3)
    randomise_batchnorm(net, rng)
    x = rng.standard_normal((2, c_in, 10, 11)).astype(np.float32)
    ref = cnngen.ReferenceExecutor(spec, net.weights).forward(x).out
    np.testing.assert_allclose(net(x), ref, rtol=1e-4, atol=1e-5)
    chains = [k.split("__")[0] for k in compute_kernels(net, 2)]
    projected = stride != 1 or c_in != width
    assert chains == ["conv2d_bn_relu"] + ["conv2d_bn"] * projected + ["conv2d_bn_add_relu"]


def inception(b, x, widths):
    """GoogLeNet's module: 1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max pool -> 1x1, concatenated."""
    c1, r3, c3, r5, c5, pp = widths
    b.conv2d("b1", inputs=x, filters=c1, kernel=1, activation="relu")
    b.conv2d("b2r", inputs=x, filters=r3, kernel=1, activation="relu")
    b.conv2d("b2", filters=c3, kernel=3, padding=1, activation="relu")
    b.conv2d("b3r", inputs=x, filters=r5, kernel=1, activation="relu")
    b.conv2d("b3", filters=c5, kernel=5, padding=2, activation="relu")
    b.maxpool2d("b4p", inputs=x, size=3, stride=1, padding=1)
    b.conv2d("b4", filters=pp, kernel=1, activation="relu")
    return b.concat("cat", inputs=["b1", "b2", "b3", "b4"])


@pytest.mark.parametrize("target", ["cpu", "cpu-avx2"])
@pytest.mark.parametrize("widths,in_place", [
    ((16, 16, 32, 8, 16, 16), True),       # every branch starts on a whole block
    ((8, 16, 24, 8, 8, 8), False),         # an 8-channel branch: not at 16 lanes
])
def test_an_inception_module_writes_its_branches_into_the_concat_without_a_copy(
        target, widths, in_place, kernel_cache):
    b = Builder("inception", (12, 9, 10))
    inception(b, "input", widths)
    b.conv2d("after", filters=8, kernel=3, padding=1)        # reads the concat with a halo
    spec = b.spec()
    net = cnngen.compile(spec, target=target, cache_dir=kernel_cache)
    x = np.random.default_rng(4).standard_normal((2, 12, 9, 10)).astype(np.float32)
    ref = cnngen.ReferenceExecutor(spec, net.weights).forward(x).out
    np.testing.assert_allclose(net(x), ref, rtol=1e-4, atol=1e-5)
    plan = net.plan(2)
    vector = plan.target.vector
    expect_in_place = in_place or vector == 8
    chains = [k.split("__")[0] for k in compute_kernels(net, 2)]
    assert ("concat" in chains) is not expect_in_place
    for branch in ("b1", "b2", "b3", "b4"):
        shared = np.shares_memory(plan.buffers[branch], plan.buffers["cat"])
        assert shared is expect_in_place
        np.testing.assert_allclose(plan.tensor(branch), cnngen.ReferenceExecutor(
            spec, net.weights).forward(x).activations[branch], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("target", ["cpu", "cpu-avx2"])
def test_a_flatten_that_only_dense_layers_read_is_read_in_place(target, kernel_cache):
    b = Builder("head", (5, 7, 9))
    b.conv2d("c", filters=32, kernel=3, padding=1, activation="relu")
    b.conv2d("side", inputs="c", filters=16, kernel=1)
    b.flatten("f", inputs="c")
    b.dense("fc1", units=10, activation="relu")
    b.dense("fc2", inputs="f", units=3)                           # a second dense reader
    b.reshape("r", inputs="side", shape=[16 * 7 * 9])              # reshape to a vector: same
    b.dense("fc3", units=6)
    b.flatten("g", inputs="side")                                  # read by softmax: a copy
    b.softmax("sm")
    b.concat("out", inputs=["fc1", "fc2", "fc3", "sm"])
    spec = b.spec()
    net = cnngen.compile(spec, target=target, cache_dir=kernel_cache)
    x = np.random.default_rng(5).standard_normal((3, 5, 7, 9)).astype(np.float32)
    ref = cnngen.ReferenceExecutor(spec, net.weights).forward(x)
    np.testing.assert_allclose(net(x), ref.out, rtol=1e-4, atol=1e-5)
    plan = run_keeping_activations(net, x)
    layers = [s.layer for s in plan.steps if not s.edge]
    assert "f" not in layers and "r" not in layers and "g" in layers
    assert np.shares_memory(plan.buffers["f"], plan.buffers["c"])
    np.testing.assert_allclose(plan.tensor("sm"), ref.activations["sm"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(plan.tensor("f"), ref.activations["f"], rtol=1e-4, atol=1e-5)


def test_buffers_are_reused_once_their_readers_have_run(kernel_cache):
    b = Builder("chain", (16, 10, 10))
    for i in range(6):
        b.conv2d(f"c{i}", filters=16, kernel=3, padding=1, activation="relu")
    b.conv2d("skip", inputs="c1", filters=16, kernel=3, padding=1)   # keeps c1 alive
    b.add("out", inputs=["c5", "skip"])
    spec = b.spec()
    net = cnngen.compile(spec, cache_dir=kernel_cache)
    rng = np.random.default_rng(6)
    for _ in range(2):                       # a second input finds no stale values
        x = rng.standard_normal((2, 16, 10, 10)).astype(np.float32)
        np.testing.assert_allclose(net(x), cnngen.ReferenceExecutor(spec, net.weights)
                                   .forward(x).out, rtol=1e-4, atol=1e-5)
    plan = net.plan(2)
    assert_live_tensors_never_share(plan)
    holders = {id(plan.buffers[n.name]) for n in plan.graph.nodes} | {id(plan.buffers["input"])}
    # skip fuses with the add into "out" (reading c1, adding c5). Planes with a 1-pixel halo
    # (read by 3x3 convs): input, c0..c4, at most 3 live at once (c1 and two of the chain).
    # Planes without: c5 (read as the residual) and out, both live at once.
    assert len(holders) == 3 + 2
    halo1, halo0 = 2 * 16 * 12 * 12 * 4, 2 * 16 * 10 * 10 * 4
    m = plan.memory
    assert (m.allocated, m.unshared) == (3 * halo1 + 2 * halo0, 6 * halo1 + 2 * halo0)
    assert m.live_peak == 3 * halo1               # c1, c2 and c3 while c3 is computed
    with pytest.raises(KeyError, match="'c0': its buffer was reused by 'c2'"):
        plan.tensor("c0")
    kept = run_keeping_activations(net, x)
    assert kept.memory.allocated == m.unshared
    np.testing.assert_allclose(kept.tensor("c0"), cnngen.ReferenceExecutor(
        spec, net.weights).forward(x).activations["c0"], rtol=1e-4, atol=1e-5)


def test_a_second_pool_and_a_very_wide_row_stay_kernels_of_their_own(kernel_cache):
    b = Builder("pools", (4, 8, 8))
    b.conv2d("c", filters=16, kernel=3, padding=1, activation="relu")
    b.maxpool2d("p1", size=2)
    b.avgpool2d("p2", size=2)                      # a pool of the fused conv+pool
    spec = b.spec()
    net = cnngen.compile(spec, cache_dir=kernel_cache)
    x = np.random.default_rng(7).standard_normal((2, 4, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(net(x), cnngen.ReferenceExecutor(spec, net.weights).forward(x).out,
                               rtol=1e-4, atol=1e-5)
    assert [k.split("__")[0] for k in compute_kernels(net, 2)] == [
        "conv2d_relu_maxpool2d", "avgpool2d"]

    wide = Builder("wide", (2, 2 * MAX_FUSED_POOL_WIDTH + 2))
    wide.conv1d("c", filters=16, kernel=3, activation="relu")     # a 4098-wide output row
    wide.maxpool1d("p", size=2)
    spec = wide.spec()
    net = cnngen.compile(spec, cache_dir=kernel_cache)
    x = np.random.default_rng(8).standard_normal((1, 2, 2 * MAX_FUSED_POOL_WIDTH + 2))
    np.testing.assert_allclose(net(x.astype(np.float32)), cnngen.ReferenceExecutor(
        spec, net.weights).forward(x).out, rtol=1e-4, atol=1e-5)
    assert [k.split("__")[0] for k in compute_kernels(net, 1)] == ["conv1d_relu", "maxpool1d"]


def test_a_flatten_of_a_narrow_tensor_is_copied_rather_than_read_with_16x_the_work(kernel_cache):
    b = Builder("mlp", (1, 28, 28))
    b.flatten("f")
    b.dense("fc", units=32)
    spec = b.spec()
    net = cnngen.compile(spec, cache_dir=kernel_cache)
    x = np.random.default_rng(9).standard_normal((2, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(net(x), cnngen.ReferenceExecutor(spec, net.weights).forward(x).out,
                               rtol=1e-4, atol=1e-5)
    assert [k.split("__")[0] for k in compute_kernels(net, 2)] == ["flatten", "dense"]
