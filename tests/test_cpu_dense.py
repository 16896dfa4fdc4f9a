"""The generated dense (GEMM microkernel) CPU kernel against the float64 reference.

Real layers (LeNet's f5 on a flattened 17x5x5 map, AlexNet's fc6 at batch 1), odd sizes
(features and units that are not whole vectors, batch tails), every branch of the task
split and reduction blocking (forced through explicit schedules and a target with a tiny
L2), softmax after dense, and one case computed by hand.
"""
import dataclasses

import numpy as np
import pytest

import cnngen
from cnngen.schedule import DenseSchedule
from cnngen.spec import Builder
from cnngen.target import cpu

from .plan_checks import assert_buffers_sound, run_keeping_activations


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("kernels")


def compare(spec, target, cache, n, layers=(), schedules=None, seed=0):
    net = cnngen.compile(spec, target=target, cache_dir=cache, schedules=schedules, seed=seed)
    x = np.random.default_rng(seed).standard_normal((n, *spec["input"]["shape"])).astype(np.float32)
    y = net(x)
    fwd = cnngen.ReferenceExecutor(spec, net.weights).forward(x)
    plan = run_keeping_activations(net, x)
    for name, got in [(name, plan.tensor(name)) for name in layers] + [("output", y)]:
        ref = fwd.activations[name] if name != "output" else fwd.out
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max(),
                                   err_msg=name)
    assert_buffers_sound(plan)
    assert_buffers_sound(net.plan(n))
    return net


def lenet_head(channels=17):
    """flatten (C, 5, 5) -> dense 120 relu -> dense 10 -> softmax."""
    b = Builder("head", (channels, 5, 5))
    b.flatten("flat")
    b.dense("f5", units=120, activation="relu")
    b.dense("f6", units=10)
    b.softmax("y")
    return b.spec()


@pytest.mark.parametrize("target, n", [("cpu", 1), ("cpu", 5), ("cpu", 64), ("cpu-avx2", 7)])
def test_lenet_head(target, n, cache):
    compare(lenet_head(), target, cache, n, layers=["flat", "f5", "f6"])


@pytest.mark.parametrize("target", ["cpu", "cpu-avx2"])
def test_alexnet_fc6_batch1(target, cache):
    b = Builder("fc6", (9216,))
    b.dense("y", units=4096, activation="relu")
    compare(b.spec(), target, cache, 1)


SCHEDULES = [DenseSchedule(1, 1), DenseSchedule(1, 3), DenseSchedule(1, 9)]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=str)
def test_explicit_schedules(schedule, cache):
    """37 features, 40 units (a partial last vector), batch 7: tails, one tile per task."""
    b = Builder("odd", (37,))
    b.dense("y", units=40, activation="tanh", bias=False)
    compare(b.spec(), "cpu", cache, 7, schedules={"y": schedule})


def test_reduction_in_passes(cache):
    """A target whose L2 holds two V x V weight blocks: one input vector per reduction pass
    (half of L2), several batch tiles a task."""
    v = cpu().vector
    small = dataclasses.replace(cpu(), l2_bytes=2 * v * v * 4)
    b = Builder("passes", (50,))
    b.dense("y", units=20, activation="sigmoid")
    net = compare(b.spec(), small, cache, 9, schedules={"y": DenseSchedule(1, 2)})
    values = dict(net.plan(9).steps[1].call.kernel.values)
    assert values["in_blocks"] == -(-50 // v) > 1
    assert values["k_blocks"] == 1 and values["tiles_per_task"] > 1


def test_dense_by_hand(cache):
    """relu(w @ x + b) with w = [[1, 2, 3], [0, -1, 1]], b = [0.5, -1], x = [1, 1, 2]."""
    b = Builder("hand", (3,))
    b.dense("y", units=2, activation="relu")
    net = cnngen.compile(b.spec(), cache_dir=cache)
    net.weights = {"y": {"w": np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 1.0]]),
                         "b": np.array([0.5, -1.0])}}
    y = net(np.array([[1.0, 1.0, 2.0], [0.0, 0.0, 0.0]], np.float32))
    np.testing.assert_array_equal(y, [[9.5, 0.0], [0.5, 0.0]])
