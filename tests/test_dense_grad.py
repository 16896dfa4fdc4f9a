"""Dense backward kernels (data gradient through the forward GEMM with w transposed; the
weight and bias gradients of ``dense_wgrad``) against the float64 reference executor.

Real layers (LeNet's f5, f6 and output layer) and odd sizes (units and features that are
not whole vectors, fewer features than a vector, batch 1), at both SIMD widths; every
branch of the task split: one batch slice, slices forced, and slices the heuristic picks on
a many-core target; frozen layers (no weight gradients) and first layers (no data
gradient); one case computed by hand.
"""
import dataclasses

import numpy as np
import pytest

import cnngen
from cnngen.codegen.cpu import GradLowering, LOWER, Lowering
from cnngen.codegen.cpu.dense_grad import BACKWARD, batch_splits, lower_dense_grad, wgrad_tiles
from cnngen.codegen.kernel import Const, ParamGrad
from cnngen.codegen.layout import Blocked
from cnngen.spec import build_graph
from cnngen.target import ISA_WIDTH, cpu, host, resolve

from .kernel_harness import run_calls

TARGETS = [f"cpu-{isa}" for isa in ("avx512", "avx2") if ISA_WIDTH[isa] <= host().vector]


def dense_spec(units, features, bias=True, activation="identity"):
    return {"cnngen": 1, "name": "t", "input": {"shape": [features]},
            "layers": [{"name": "f", "op": "dense", "units": units, "bias": bias,
                        "activation": activation}]}


def lowering(spec, n, target, d_in=True, weight_grads=True):
    graph = build_graph(spec)
    node = graph.nodes[0]
    t = resolve(target) if isinstance(target, str) else target
    x, y = Blocked.of(graph.input, t.vector), Blocked.of(node.out, t.vector)
    g = GradLowering(node, (x,), y, y, (x if d_in else None,), weight_grads, n, t)
    return graph, g


def run_backward(spec, n, target, cache, weights=None, dy=None, x=None, splits=None,
                 d_in=True, weight_grads=True, seed=0):
    """(kernel outputs, reference Gradients, calls) for one dense layer's backward."""
    graph, g = lowering(spec, n, target, d_in, weight_grads)
    ref = cnngen.ReferenceExecutor(spec, weights, seed=seed + 1)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *graph.input.shape)) if x is None else np.asarray(x, float)
    dy = rng.standard_normal((n, *g.node.out.shape)) if dy is None else np.asarray(dy, float)
    grads = ref.backward(ref.forward(x), dy)
    calls = lower_dense_grad(g, splits)
    layouts = {graph.input_name: g.ins[0], "f:grad": g.d_out, "f:grad_in0": g.ins[0], **g.temps}
    out = run_calls(calls, layouts, {graph.input_name: x, "f:grad": dy}, ref.weights, n,
                    g.target, cache)
    return out, grads, calls


def assert_close(got, ref, name):
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-5 * scale, err_msg=name)


def check(out, grads, n, d_in=True, weight_grads=True, bias=True):
    if d_in:
        assert_close(out["f:grad_in0"].reshape(n, -1), grads.input, "dx")
    else:
        assert "f:grad_in0" not in out
    if weight_grads:
        assert_close(out[ParamGrad("f", "w")], grads.weights["f"]["w"], "dw")
        if bias:
            assert_close(out[ParamGrad("f", "b")], grads.weights["f"]["b"], "db")
    else:
        assert not [k for k in out if isinstance(k, ParamGrad)]


# (units, features, batch): LeNet's f5, f6 and output layer at batch 64; odd sizes.
LAYERS = [(120, 400, 64), (84, 120, 64), (10, 84, 64), (17, 33, 3), (10, 16, 1),
          (17, 16, 100), (120, 400, 100), (3, 5, 2)]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("units, features, n", LAYERS, ids=lambda v: str(v))
def test_dense_backward_matches_reference(units, features, n, target, kernel_cache):
    out, grads, _ = run_backward(dense_spec(units, features), n, target, kernel_cache)
    check(out, grads, n)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("splits", [2, 3, 7])
def test_batch_slices_forced(splits, target, kernel_cache):
    """Slices that split the batch unevenly, and more slices than samples (empty ones)."""
    for units, features, n, bias in [(17, 33, 100, True), (10, 84, 5, False)]:
        out, grads, calls = run_backward(dense_spec(units, features, bias), n, target,
                                         kernel_cache, splits=splits)
        assert [c.kernel.ops[0] for c in calls] == ["dense_grad_input", "dense_wgrad",
                                                    "dense_wgrad_sum"]
        check(out, grads, n, bias=bias)


def test_batch_slices_where_tasks_are_too_few(kernel_cache):
    """A 16-core target: the output layer's few tasks get batch slices, LeNet's f5 does not."""
    many = dataclasses.replace(cpu(), cores=16)
    assert batch_splits(tasks=6, n_batch=100, cores=16, flops=10**7) == 6
    assert batch_splits(tasks=6, n_batch=100, cores=2, flops=10**7) == 1
    assert batch_splits(tasks=1, n_batch=100, cores=16, flops=10**4) == 1     # too small
    assert batch_splits(tasks=1, n_batch=20, cores=16, flops=10**7) == 1      # too few samples
    out, grads, calls = run_backward(dense_spec(17, 400), 100, many, kernel_cache)
    values = dict(calls[1].kernel.values)
    assert values["splits"] > 1 and calls[-1].kernel.ops == ("dense_wgrad_sum",)
    check(out, grads, 100)
    _, g = lowering(dense_spec(120, 400), 64, many)
    assert dict(lower_dense_grad(g)[1].kernel.values)["splits"] == 1


@pytest.mark.parametrize("target", TARGETS)
def test_first_and_frozen_layers(target, kernel_cache):
    """No data gradient for a first layer; no weight gradients for a frozen one."""
    spec = dense_spec(17, 33)
    out, grads, calls = run_backward(spec, 5, target, kernel_cache, d_in=False)
    assert [c.kernel.ops[0] for c in calls] == ["dense_wgrad"]
    check(out, grads, 5, d_in=False)
    out, grads, calls = run_backward(spec, 5, target, kernel_cache, weight_grads=False)
    assert [c.kernel.ops[0] for c in calls] == ["dense_grad_input"]
    check(out, grads, 5, weight_grads=False)


def test_dense_backward_by_hand(kernel_cache):
    """w = [[1, 2, 3], [0, -1, 1]], x = [[1, 0, 2], [0, 1, 1]], dy = [[1, 2], [3, 4]]:
    dx = dy w = [[1, 0, 5], [3, 2, 13]], dw = dy^T x = [[1, 3, 5], [2, 4, 8]], db = [4, 6]."""
    weights = {"f": {"w": np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 1.0]]), "b": np.zeros(2)}}
    out, _, _ = run_backward(dense_spec(2, 3), 2, "cpu", kernel_cache, weights=weights,
                             x=[[1, 0, 2], [0, 1, 1]], dy=[[1, 2], [3, 4]])
    np.testing.assert_array_equal(out["f:grad_in0"].reshape(2, 3), [[1, 0, 5], [3, 2, 13]])
    np.testing.assert_array_equal(out[ParamGrad("f", "w")], [[1, 3, 5], [2, 4, 8]])
    np.testing.assert_array_equal(out[ParamGrad("f", "b")], [4, 6])


@pytest.mark.parametrize("target", TARGETS)
def test_data_gradient_writes_every_lane(target, kernel_cache):
    """dx's padding lanes are 0 and every real lane is written (the buffer starts as NaN)."""
    spec = dense_spec(10, 21)
    graph, g = lowering(spec, 3, target, weight_grads=False)
    ref = cnngen.ReferenceExecutor(spec, seed=1)
    dy = np.random.default_rng(0).standard_normal((3, 10))
    x_layout = g.ins[0]
    out = run_calls(lower_dense_grad(g), {"f:grad": g.d_out}, {"f:grad": dy}, ref.weights, 3,
                    g.target, kernel_cache,
                    flat={"f:grad_in0": np.full(x_layout.size(3), np.nan, np.float32)})
    lanes = out["f:grad_in0"].reshape(3, x_layout.blocks * x_layout.vector)
    np.testing.assert_allclose(lanes[:, :21], dy @ ref.weights["f"]["w"], rtol=1e-4, atol=1e-5)
    assert (lanes[:, 21:] == 0).all()


def test_transposed_weights_are_a_constant_of_their_own():
    """The plan shares Consts by (layer, what): the backward's must not alias the forward's."""
    spec = dense_spec(17, 33)
    graph, g = lowering(spec, 4, "cpu")
    forward = LOWER["dense"](Lowering(g.node, g.ins, g.out, 4, g.target))
    backward = lower_dense_grad(g)
    whats = lambda calls: {a.what for c in calls for a in c.args if isinstance(a, Const)}
    assert not whats(forward) & whats(backward)
    assert BACKWARD["dense"] is lower_dense_grad


def test_fused_activation_is_refused():
    _, g = lowering(dense_spec(4, 3, activation="relu"), 2, "cpu")
    with pytest.raises(ValueError, match=r"layer 'f' \(dense\).*activation 'relu'"):
        lower_dense_grad(g)


@pytest.mark.parametrize("unit_blocks, vector, registers, tile", [
    (6, 16, 32, (3, 8)), (8, 16, 32, (4, 4)), (1, 16, 32, (1, 16)),
    (15, 8, 16, (1, 8)), (2, 8, 16, (2, 4)), (11, 8, 16, (1, 8))])
def test_wgrad_tiles_fit_the_registers(unit_blocks, vector, registers, tile):
    tiles = wgrad_tiles(unit_blocks, vector, registers)
    assert tiles[0] == tile
    for unit_vecs, in_tile in tiles:
        assert unit_blocks % unit_vecs == 0 and vector % in_tile == 0
        assert unit_vecs * in_tile + unit_vecs + 1 <= (28 if registers == 32 else registers - 1)
