"""The fused loss kernels (softmax cross-entropy, mse) against ``ops.loss.value_and_grad``.

Classifier outputs (10 classes, 17, 2) and per-pixel outputs (2-D and 1-D, one with a
halo), batches 1 to 100, both SIMD widths: the mean of the per-sample losses is the batch's
loss, the gradient matches the float64 reference and its padding lanes are 0, the hits
match numpy's argmax (first maximum). Hand cases for ties, huge logits and labels outside
the classes.
"""
import numpy as np
import pytest

from cnngen.codegen.cpu.loss import (LOSS, LOSS_CORRECT, LOSS_TARGET, LOSS_VALUES,
                                     LossLowering, target_layout)
from cnngen.codegen.layout import Blocked, Flat
from cnngen.ir import TensorType
from cnngen.ops.loss import value_and_grad
from cnngen.target import ISA_WIDTH, host, resolve

from .kernel_harness import run_calls, to_blocked

TARGETS = [f"cpu-{isa}" for isa in ("avx512", "avx2") if ISA_WIDTH[isa] <= host().vector]
PER_SAMPLE = Flat(1, per_sample=True)


def run_loss(op, y, target_values, target, cache, halo=(0, 0, 0, 0), grad_halo=None):
    """The kernel's (per-sample losses, per-sample hits or None, gradient as y's shape,
    the gradient's raw buffer)."""
    n, shape = y.shape[0], y.shape[1:]
    t = resolve(target)
    out = Blocked.of(TensorType(shape), t.vector, halo)
    d_out = Blocked.of(TensorType(shape), t.vector, grad_halo) if grad_halo else None
    low = LossLowering(op, "y", out, n, t, d_out)
    grad_layout = d_out or out
    layouts = {"y": out, LOSS_TARGET: target_layout(op, TensorType(shape), t.vector),
               LOSS_VALUES: PER_SAMPLE, LOSS_CORRECT: PER_SAMPLE}
    # the gradient starts as NaN: every lane must be written
    flat = {"y:grad": np.full(grad_layout.size(n), np.nan, np.float32)}
    res = run_calls(LOSS[op](low), layouts, {"y": y, LOSS_TARGET: target_values}, {}, n, t,
                    cache, flat=flat)
    raw = res["y:grad"].astype(np.float32)
    grad = grad_layout.to_nchw(raw, n).reshape(y.shape)
    hits = res[LOSS_CORRECT].reshape(n) if op == "softmax_cross_entropy" else None
    return res[LOSS_VALUES].reshape(n), hits, grad, grad_layout, raw


def assert_padding_zero(layout, raw, n):
    """Lanes past the channels of the gradient's interior are 0."""
    lanes = layout.interior(raw, n).transpose(0, 2, 3, 1, 4).reshape(
        n, layout.height, layout.width, layout.blocks * layout.vector)
    assert (lanes[..., layout.channels:] == 0).all()
    assert np.isfinite(lanes[..., :layout.channels]).all()


def check(op, y, t, target, cache, **layout):
    n = y.shape[0]
    values, hits, grad, grad_layout, raw = run_loss(op, y, t, target, cache, **layout)
    loss, ref_grad = value_and_grad(op, y, t)
    np.testing.assert_allclose(values.mean(), loss, rtol=1e-5, atol=1e-6)
    scale = max(1.0, float(np.abs(ref_grad).max()))
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=2e-5 * scale)
    assert_padding_zero(grad_layout, raw, n)
    if hits is not None:
        right = (y.argmax(axis=1) == t).reshape(n, -1).mean(axis=1)
        np.testing.assert_allclose(hits, right, atol=1e-6)
    return values


# (output shape without the batch, batch)
XENT = [((10,), 64), ((10,), 100), ((17,), 3), ((2,), 1), ((100,), 5), ((3, 5, 7), 3),
        ((21, 9), 2), ((40, 4, 4), 2)]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("shape, n", XENT, ids=str)
def test_softmax_cross_entropy_matches_reference(shape, n, target, kernel_cache):
    rng = np.random.default_rng(0)
    y = 3 * rng.standard_normal((n, *shape))
    labels = rng.integers(0, shape[0], (n, *shape[1:]))
    values = check("softmax_cross_entropy", y, labels, target, kernel_cache)
    assert values.shape == (n,)


@pytest.mark.parametrize("target", TARGETS)
def test_cross_entropy_through_halos(target, kernel_cache):
    """An output with a halo, and a gradient laid out with a different one."""
    rng = np.random.default_rng(1)
    y = rng.standard_normal((3, 19, 4, 5))
    labels = rng.integers(0, 19, (3, 4, 5))
    check("softmax_cross_entropy", y, labels, target, kernel_cache, halo=(1, 0, 2, 1),
          grad_halo=(0, 1, 1, 0))


MSE = [((10,), 64), ((17,), 3), ((1,), 100), ((3, 5, 7), 3), ((21, 9), 2), ((33, 2, 3), 1)]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("shape, n", MSE, ids=str)
def test_mse_matches_reference(shape, n, target, kernel_cache):
    rng = np.random.default_rng(2)
    check("mse", rng.standard_normal((n, *shape)), rng.standard_normal((n, *shape)), target,
          kernel_cache)


def test_mse_through_a_halo(kernel_cache):
    rng = np.random.default_rng(3)
    y, t = rng.standard_normal((2, 5, 3, 4)), rng.standard_normal((2, 5, 3, 4))
    check("mse", y, t, "cpu", kernel_cache, halo=(1, 1, 1, 1))


def test_mse_ignores_the_padding_lanes_of_output_and_target(kernel_cache):
    """Junk in the lanes past the channels changes neither the loss nor the gradient."""
    tgt = resolve("cpu")
    out = Blocked.of(TensorType((3,)), tgt.vector)
    y = np.array([[1.0, 2.0, -1.0]])
    yb, tb = to_blocked(out, y, 1), to_blocked(out, np.zeros((1, 3)), 1)
    yb[3:tgt.vector], tb[3:tgt.vector] = 7.0, -5.0
    res = run_calls(LOSS["mse"](LossLowering("mse", "y", out, 1, tgt)), {LOSS_VALUES: PER_SAMPLE},
                    {}, {}, 1, tgt, kernel_cache, flat={"y": yb, LOSS_TARGET: tb,
                                                        "y:grad": np.full_like(yb, np.nan)})
    np.testing.assert_allclose(res[LOSS_VALUES].ravel(), [2.0])        # (1 + 4 + 1) / 3
    np.testing.assert_allclose(res["y:grad"][:3], [2 / 3, 4 / 3, -2 / 3], rtol=1e-6)
    assert (res["y:grad"][3:] == 0).all()


def test_cross_entropy_by_hand(kernel_cache):
    """Ties go to the first maximum; logits of +-1000 stay finite (max-subtracted); labels
    outside the classes give a NaN loss and touch nothing else."""
    y = np.array([[1.0, 3.0, 3.0], [1.0, 3.0, 3.0], [1000.0, -1000.0, 0.0],
                  [1000.0, -1000.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    labels = np.array([1, 2, 0, 1, 3, -1])
    values, hits, grad, _, _ = run_loss("softmax_cross_entropy", y, labels, "cpu",
                                        kernel_cache)
    lse = 3 + np.log(2 + np.exp(-2))
    np.testing.assert_allclose(values[:4], [lse - 3, lse - 3, 0.0, 2000.0], rtol=1e-6)
    assert np.isnan(values[4:]).all()
    np.testing.assert_array_equal(hits, [1, 0, 1, 0, 0, 0])
    p = np.exp(y[0] - lse)
    np.testing.assert_allclose(grad[0], (p - [0, 1, 0]) / 6, rtol=1e-5)
    np.testing.assert_allclose(grad[3], np.array([1.0, -1.0, 0.0]) / 6, atol=1e-7)
    np.testing.assert_allclose(grad[4], np.full(3, 1 / 18), rtol=1e-5)   # softmax only


def test_target_layouts():
    assert target_layout("softmax_cross_entropy", TensorType((10,)), 16) == Flat(1, True)
    assert target_layout("softmax_cross_entropy", TensorType((4, 5, 7)), 8) == Flat(35, True)
    assert target_layout("softmax_cross_entropy", TensorType((4, 9)), 8) == Flat(9, True)
    assert target_layout("mse", TensorType((3, 5, 7)), 8) == Blocked(3, 5, 7, 8)
    with pytest.raises(ValueError, match=r"no generated loss 'hinge'"):
        target_layout("hinge", TensorType((3,)), 8)


def test_one_kernel_serves_every_batch():
    """The count the gradient divides by comes from the batch argument, not the source."""
    t = resolve("cpu")
    out = Blocked.of(TensorType((10,)), t.vector)
    sources = {LOSS[op](LossLowering(op, "y", out, n, t))[0].kernel.source(t)
               for op in LOSS for n in (1, 64)}
    assert len(sources) == 2
