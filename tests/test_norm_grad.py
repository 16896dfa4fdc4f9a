"""Training kernels of batch norm and dropout against the float64 reference executor.

batchnorm: the training forward's batch mean and biased variance (``<layer>:mean``,
``<layer>:var``), its output, and the backward's dx, dgamma and dbeta, through
``test_pool_grad.Step``; the running-statistics update against the reference's; a large
mean against a small spread, where a one-pass sum of squares would lose every digit.

dropout: the mask is drawn in the kernel from ``<layer>:seed``; it equals
``norm_grad.dropout_mask`` (numpy) bit for bit, whatever the SIMD width or the thread
split, is the same for the same seed and differs for another seed or another layer; the
keep rate is 1 - rate within a bound stated in the test; forward and backward equal
x*mask*scale and dy*mask*scale (the reference's, given the kernel's mask) in both modes.
"""
from __future__ import annotations

import numpy as np
import pytest

from cnngen.codegen.cpu import Lowering, norm_grad
from cnngen.codegen.layout import Blocked
from cnngen.spec import Builder, build_graph
from cnngen.target import resolve

from .kernel_harness import run_calls
from .test_cpu_ops import TARGETS
from .test_pool_grad import Step, single


def bn_weights(c, seed=1):
    rng = np.random.default_rng(seed)
    return {"y": {"gamma": rng.uniform(0.5, 2.0, c), "beta": rng.standard_normal(c),
                  "running_mean": rng.standard_normal(c), "running_var": rng.uniform(0.5, 2, c)}}


BN_CASES = [
    ("c6_28x28_b8", (6, 28, 28), 8),
    ("c17_9x11_b3", (17, 9, 11), 3),
    ("c64_7x7_b3", (64, 7, 7), 3),
    ("c3_7x7_b1", (3, 7, 7), 1),
    ("c1_9x11_b8", (1, 9, 11), 8),
    ("1d_c6_len40_b3", (6, 40), 3),
    ("flat_c17_b8", (17,), 8),
]


def batch_stats(x):
    axes = tuple(i for i in range(x.ndim) if i != 1)
    return x.mean(axis=axes), x.var(axis=axes)


def check_batch_stats(step, c, rtol=1e-5):
    mean, var = batch_stats(step.x)
    np.testing.assert_allclose(step.acts["y:mean"][:c], mean, rtol=rtol,
                               atol=rtol * np.abs(mean).max(), err_msg="mean")
    np.testing.assert_allclose(step.acts["y:var"][:c], var, rtol=rtol, err_msg="var")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", BN_CASES, ids=lambda c: c[0])
def test_batchnorm_training_step(case, target, kernel_cache):
    """Batch statistics, output, dx, dgamma and dbeta. Tolerances as in test_cpu_ops: the
    reductions run over at most 8*28*28 values per channel, with float64 across images."""
    _, shape, batch = case
    c = shape[0]
    step = Step(single("batchnorm", shape, eps=1e-3), batch, target, kernel_cache,
                weights=bn_weights(c), x_scale=3.0, x_mean=0.5)
    check_batch_stats(step, c)
    step.check()


def test_batchnorm_statistics_keep_their_digits_with_a_large_mean(kernel_cache):
    """x = 1000 + N(0, 1): a one-pass float32 E[x^2] - E[x]^2 would be off by about 1e6 *
    6e-8 * sqrt(M) (~ 1, the whole variance); the two-pass partials combined in float64 keep
    the variance to 1e-5, and dx (through x - mean) to test_cpu_ops' tolerance."""
    step = Step(single("batchnorm", (17, 9, 11)), 8, "cpu", kernel_cache,
                weights=bn_weights(17), x_mean=1000.0)
    check_batch_stats(step, 17)
    step.check()


def test_frozen_batchnorm_still_gives_dx_and_no_weight_gradients(kernel_cache):
    step = Step(single("batchnorm", (17, 5, 5)), 3, "cpu", kernel_cache,
                weights=bn_weights(17), weight_grads=False)
    assert step.weight_grads == {}
    step.weight_grads = None
    fwd = step.ref.forward(step.x, train=True)
    grads = step.ref.backward(fwd, step.dy)
    np.testing.assert_allclose(step.grads["input"], grads.input, rtol=1e-4,
                               atol=2e-5 * np.abs(grads.input).max())


def test_batchnorm_by_hand(kernel_cache):
    """Hand-computed: one channel, x = [0, 1, 2] over the batch, gamma 2, beta 1, eps ~0:
    mean 1, var 2/3, inv = sqrt(3/2), xhat = [-1, 0, 1]*sqrt(3/2), y = 2*xhat + 1. With
    dy = [1, 0, 0]: dbeta = 1, dgamma = -sqrt(3/2), and
    dx = gamma*inv/3 * (3*dy - dbeta - xhat*dgamma) = 2*sqrt(3/2)/3 * [0.5, -1, 0.5]."""
    weights = {"y": {"gamma": [2.0], "beta": [1.0], "running_mean": [0.0], "running_var": [1.0]}}
    step = Step(single("batchnorm", (1,), eps=1e-12), 3, "cpu", kernel_cache, weights=weights,
                x=[[0.0], [1.0], [2.0]], dy=[[1.0], [0.0], [0.0]])
    r = np.sqrt(1.5)
    np.testing.assert_allclose(step.acts["y:mean"][:1], [1.0], rtol=1e-6)
    np.testing.assert_allclose(step.acts["y:var"][:1], [2.0 / 3.0], rtol=1e-6)
    np.testing.assert_allclose(step.acts["y"][:, 0], [1 - 2 * r, 1.0, 1 + 2 * r], rtol=1e-6)
    np.testing.assert_allclose(step.weight_grads["y"]["beta"], [1.0], rtol=1e-6)
    np.testing.assert_allclose(step.weight_grads["y"]["gamma"], [-r], rtol=1e-6)
    np.testing.assert_allclose(step.grads["input"][:, 0], 2 * r / 3 * np.array([0.5, -1, 0.5]),
                               rtol=1e-5)


def test_update_running_stats_matches_the_reference(kernel_cache):
    """PyTorch's convention: momentum-weighted, unbiased variance for the running one."""
    weights = bn_weights(17)
    spec = single("batchnorm", (17, 9, 11), momentum=0.2)
    step = Step(spec, 3, "cpu", kernel_cache, weights=weights)
    fwd = step.ref.forward(step.x, train=True)
    params = {k: np.array(v, np.float32) for k, v in weights["y"].items()}
    n = norm_grad.values_per_channel(Blocked.of(step.graph.input, 16), 3)
    norm_grad.update_running_stats(params, step.acts["y:mean"], step.acts["y:var"], n, 0.2)
    for key in ("running_mean", "running_var"):
        np.testing.assert_allclose(params[key], fwd.state_updates["y"][key], rtol=1e-5,
                                   err_msg=key)


# ---- dropout --------------------------------------------------------------------------------

def dropout_step(shape, batch, target, cache, seed, rate=0.3, mode="inverted", name="y"):
    b = Builder("t_dropout", shape)
    b.dropout(name, rate=rate, mode=mode)
    return Step(b.spec(), batch, target, cache,
                values={f"{name}:seed": norm_grad.encode_seed(seed)})


DROPOUT_CASES = [
    ("c17_9x11", (17, 9, 11), 3, 0.3, "inverted"),
    ("c64_7x7", (64, 7, 7), 3, 0.5, "scale_at_test"),
    ("c3_28x28", (3, 28, 28), 1, 0.1, "inverted"),
    ("1d_c6_len40", (6, 40), 8, 0.25, "scale_at_test"),
    ("flat_c1", (1,), 8, 0.5, "inverted"),
    ("rate_0", (6, 7, 7), 3, 0.0, "inverted"),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", DROPOUT_CASES, ids=lambda c: c[0])
def test_dropout_forward_and_backward_through_the_kernels_mask(case, target, kernel_cache):
    """y = x*mask*scale and dx = dy*mask*scale, scale 1/(1 - rate) (inverted) or 1
    (scale_at_test), with the mask the kernel drew: ``dropout_mask`` reproduces it."""
    _, shape, batch, rate, mode = case
    seed = 123456789012
    step = dropout_step(shape, batch, target, kernel_cache, seed, rate, mode)
    mask = norm_grad.dropout_mask(seed, "y", (batch, *shape), rate)
    step.check(masks={"y": mask})
    kept = step.acts["y"] != 0
    assert np.array_equal(kept, mask), "the forward's mask is dropout_mask's"


def test_dropout_mask_is_deterministic_under_its_seed(kernel_cache):
    """The same seed gives the same mask on every SIMD width and thread split; another
    seed, or another layer with the same seed, a different one."""
    shape, batch = (17, 9, 11), 3
    masks = [dropout_step(shape, batch, t, kernel_cache, 7).acts["y"] != 0 for t in TARGETS]
    serial = run_dropout_serially(shape, batch, 7, kernel_cache)
    for mask in masks[1:] + [serial]:
        assert np.array_equal(mask, masks[0])
    again = dropout_step(shape, batch, "cpu", kernel_cache, 7).acts["y"] != 0
    assert np.array_equal(again, masks[0])
    other_seed = dropout_step(shape, batch, "cpu", kernel_cache, 8).acts["y"] != 0
    other_layer = dropout_step(shape, batch, "cpu", kernel_cache, 7, name="z").acts["z"] != 0
    for other in (other_seed, other_layer):
        assert 0.3 < (other != masks[0]).mean() < 0.54     # independent masks: 2pq = 0.42


def test_step_seeds_differ_per_step_and_run_and_round_trip_exactly():
    seeds = {tuple(norm_grad.step_seed(run, step)) for run in (0, 1, 2**24 - 1)
             for step in (0, 1, 2**24 - 1)}
    assert len(seeds) == 9
    for seed in (0, 1, 2**24 - 1, 2**24, 2**48 - 1):
        lo, hi = norm_grad.encode_seed(seed)
        assert int(lo) + (int(hi) << 24) == seed and lo == int(lo) and hi == int(hi)


def run_dropout_serially(shape, batch, seed, cache):
    """The dropout forward on one thread (tasks in order 0, 1, ...) on ones: its mask."""
    b = Builder("t_dropout", shape)
    b.dropout("y", rate=0.3)
    node, target = build_graph(b.spec()).nodes[0], resolve("cpu")
    layout = Blocked.of(node.out, target.vector, (1, 1, 1, 1))
    low = Lowering(node, (layout,), layout, batch, target)
    out = run_calls(norm_grad.TRAIN["dropout"](low), {"input": layout, "y": layout, **low.temps},
                    {"input": np.ones((batch, *shape)), "y:seed": norm_grad.encode_seed(seed)},
                    {}, batch, target, cache, parallel=False)
    return out["y"].reshape(batch, *shape) != 0


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_dropout_keeps_one_minus_rate(rate, kernel_cache):
    """Over 8 seeds of 3 x 64 x 28 x 28 = 150528 elements (1204224 in all) the kept fraction
    is 1 - rate within 6 standard deviations of a binomial, sqrt(p(1-p)/M) <= 4.6e-4 at
    M = 1204224, so within 2.8e-3. The hash and the seeds are fixed, so the test is
    deterministic and cannot flake; a bias of the hash above ~0.3% would fail it. Each
    seed's own fraction must lie within 6 of its standard deviations too (<= 7.8e-3)."""
    shape, batch = (64, 28, 28), 3
    p = 1.0 - rate
    fractions = []
    for seed in range(8):
        step = dropout_step(shape, batch, "cpu", kernel_cache, seed * 1000003, rate)
        fractions.append(float((step.acts["y"] != 0).mean()))
        count = batch * int(np.prod(shape))
        assert abs(fractions[-1] - p) <= 6 * np.sqrt(p * (1 - p) / count), fractions
    assert abs(np.mean(fractions) - p) <= 6 * np.sqrt(p * (1 - p) / (8 * count)), fractions
