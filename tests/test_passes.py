"""Inference passes: batch norm folding and activation fusion, by graph shape and by the
kernels the compiled net runs; the results still match the reference of the spec."""
import numpy as np
import pytest

import cnngen
from cnngen.passes import (PIPELINE, drop_dropout, fold_batchnorm, for_inference,
                           fuse_activation, verify)
from cnngen.spec import Builder


def graph(b):
    return cnngen.build_graph(b.spec())


def conv_bn_relu_pool():
    b = Builder("block", (3, 12, 12))
    b.conv2d("c", filters=8, kernel=3, padding=1, bias=False)
    b.batchnorm("bn")
    b.relu("r")
    b.maxpool2d("p", size=2)
    return b


def test_conv_bn_relu_becomes_one_node_named_after_its_last_layer():
    g = for_inference(graph(conv_bn_relu_pool()))
    assert [n.name for n in g.nodes] == ["r", "p"]
    fused = g.node("r")
    assert fused.op == "conv2d" and fused.attrs["activation"] == "relu"
    assert [n.name for n in fused.fused] == ["c", "bn", "r"]
    assert g.node("p").inputs == ("r",)


def test_each_pass_alone():
    g = graph(conv_bn_relu_pool())
    folded = fold_batchnorm(g)
    assert [n.name for n in folded.nodes] == ["bn", "r", "p"]
    assert [n.name for n in fuse_activation(g).nodes] == ["c", "bn", "r", "p"]
    assert PIPELINE == (drop_dropout, fold_batchnorm, fuse_activation)


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
        "conv2d_bn_relu", "maxpool2d", "conv2d_bn_leaky_relu", "conv2d_bn_silu"]
