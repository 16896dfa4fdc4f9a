"""A compiled net inside a user's program: threads, weight edits, many batch sizes, many
nets, preallocated outputs, impossible batches, deep graphs."""
import gc
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import cnngen
from cnngen.errors import InputError, WeightsError

LENET = Path(__file__).parents[1] / "examples" / "lenet5.yaml"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("kernels")


@pytest.fixture(scope="module")
def lenet(cache):
    return cnngen.compile(LENET, cache_dir=cache)


def test_threads_share_a_net(lenet):
    """4 threads x 500 calls of one net, each on its own input: every output is right."""
    rng = np.random.default_rng(0)
    inputs = [rng.random((2, 1, 32, 32)).astype(np.float32) for _ in range(4)]
    expected = [lenet(x) for x in inputs]
    wrong = []

    def work(i):
        for _ in range(500):
            if not np.array_equal(lenet(inputs[i]), expected[i]):
                wrong.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong, f"{len(wrong)} of 2000 outputs were wrong"


def test_weight_item_assignment_takes_effect(cache):
    net = cnngen.compile(LENET, cache_dir=cache)
    x = np.random.default_rng(1).random((3, 1, 32, 32)).astype(np.float32)
    net(x)                                               # a plan exists: it must be repacked
    w = np.random.default_rng(2).standard_normal(net.weights["c1"]["w"].shape)
    net.weights["c1"]["w"] = w
    np.testing.assert_array_equal(net.weights["c1"]["w"], w)
    ref = cnngen.ReferenceExecutor(LENET, net.weights).forward(x).out
    np.testing.assert_allclose(net(x), ref, rtol=1e-4, atol=1e-4)
    net.weights["out"] = {"w": np.zeros((10, 84)), "b": np.arange(10.0)}
    np.testing.assert_allclose(net(x), np.broadcast_to(np.arange(10.0), (3, 10)))


def test_weight_slice_assignment_fails_loudly(lenet):
    before = lenet.weights["c1"]["w"].copy()
    with pytest.raises(ValueError, match="read-only"):
        lenet.weights["c1"]["w"][...] = 0.0
    np.testing.assert_array_equal(lenet.weights["c1"]["w"], before)


def test_weight_assignment_is_validated(lenet):
    with pytest.raises(WeightsError, match=r"c1/w must have shape \(6, 1, 5, 5\)"):
        lenet.weights["c1"]["w"] = np.zeros((6, 1, 3, 3))
    with pytest.raises(WeightsError, match="no parameter 'gamma'"):
        lenet.weights["c1"]["gamma"] = np.zeros(6)
    with pytest.raises(WeightsError, match="cannot be removed"):
        del lenet.weights["c1"]["w"]


def test_out_argument(lenet):
    x = np.random.default_rng(3).random((2, 1, 32, 32)).astype(np.float32)
    out = np.empty((2, 10), np.float32)
    assert lenet(x, out=out) is out
    np.testing.assert_array_equal(out, lenet(x))
    with pytest.raises(InputError, match=r"out: expected .* shape \(2, 10\); received float64"):
        lenet(x, out=np.empty((2, 10)))
    with pytest.raises(InputError, match=r"shape \(2, 10\); received float32 \(3, 10\)"):
        lenet(x, out=np.empty((3, 10), np.float32))


def test_plans_are_bounded(cache):
    net = cnngen.compile(LENET, cache_dir=cache, max_plans=3)
    for n in range(1, 7):
        net(np.zeros((n, 1, 32, 32), np.float32))
    assert [key[0] for key in net._plans] == [4, 5, 6]
    net(np.zeros((4, 1, 32, 32), np.float32))             # a hit moves to the back
    assert [key[0] for key in net._plans] == [5, 6, 4]
    with pytest.raises(InputError, match="max_plans: expected an integer >= 1; received 0"):
        cnngen.compile(LENET, cache_dir=cache, max_plans=0)


def test_impossible_batch_is_an_input_error(lenet):
    with pytest.raises(InputError, match=r"batch size 100000000: 'lenet5' needs .* GiB .* "
                                         r"available\. Use a smaller batch"):
        lenet.plan(100_000_000)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    pytest.skip("no /proc/self/status on this platform: RSS is not measured")


@pytest.mark.slow
def test_many_nets_do_not_leak(cache):
    """300 nets of one spec, each called and dropped: kernels are shared in-process and a
    dropped net frees its plans, so memory stays flat (the issue saw 0.12 MiB per net)."""
    x = np.zeros((2, 1, 32, 32), np.float32)
    for _ in range(20):                                     # warm: kernels and caches
        cnngen.compile(LENET, cache_dir=cache)(x)
    gc.collect()
    before = rss_bytes()
    start = time.perf_counter()
    for _ in range(300):
        cnngen.compile(LENET, cache_dir=cache)(x)
    gc.collect()
    grown = rss_bytes() - before
    assert grown < 8 << 20, f"RSS grew by {grown / (1 << 20):.1f} MiB over 300 nets"
    per_net = (time.perf_counter() - start) / 300
    assert per_net < 0.25, f"{per_net * 1e3:.0f} ms per net: kernels were loaded again"


def relu_chain(n: int) -> dict:
    return {"cnngen": 1, "name": f"chain{n}", "input": {"shape": [4, 4, 4]},
            "layers": [{"name": f"r{i}", "op": "relu"} for i in range(n)]}


@pytest.mark.slow
def test_plan_build_is_linear_in_layers(cache):
    """Quadratic steps (a linear Graph.node scan per lookup) made 10k layers take 16 s and
    100k never finish. 4x the layers must take well under 16x the time (the best of three
    builds each, without the cyclic garbage collector, whose passes grow with the heap)."""
    def build_seconds(n):
        net = cnngen.compile(relu_chain(n), cache_dir=cache)
        best = float("inf")
        for _ in range(3):
            net._plans.clear()
            gc.collect()
            gc.disable()
            try:
                start = time.perf_counter()
                net.plan(1)
                best = min(best, time.perf_counter() - start)
            finally:
                gc.enable()
        return best

    build_seconds(100)                                      # the kernel compiles here
    small, large = build_seconds(2500), build_seconds(10000)
    assert large < 8 * small, f"2.5k layers {small:.2f} s, 10k layers {large:.2f} s"


@pytest.mark.parametrize("target", ("cpu", "cpu-avx2"))
def test_one_compile_serves_every_batch_size(target, cache):
    """The batch size is a kernel argument: the kernels of batch 1 run every other batch
    (dense's tail samples included: its tile is 6 samples at most)."""
    net = cnngen.compile(LENET, target=target, cache_dir=cache)
    ref = cnngen.ReferenceExecutor(LENET, net.weights)
    net(np.zeros((1, 1, 32, 32), np.float32))
    kernels = {step.kernel.path for step in net.plan(1).steps}
    rng = np.random.default_rng(4)
    for n in (2, 5, 6, 7, 13, 64):
        x = rng.random((n, 1, 32, 32)).astype(np.float32)
        np.testing.assert_allclose(net(x), ref.forward(x).out, rtol=1e-4, atol=1e-5,
                                   err_msg=f"batch {n}")
        assert {step.kernel.path for step in net.plan(n).steps} == kernels


@pytest.mark.parametrize("target", ("cpu", "cpu-avx2"))
@pytest.mark.parametrize("shape", [(1, 5, 5), (3, 9, 37), (20, 5, 17), (32, 16, 16),
                                   (16, 1, 33), (17, 40), (7,)])
def test_edges_round_trip(shape, target, cache):
    """NCHW -> blocked -> NCHW through the transposing edge kernels: whole V x V blocks,
    partial channel blocks, and pixels past the last whole block, exactly."""
    spec = {"cnngen": 1, "name": "edges", "input": {"shape": list(shape)},
            "layers": [{"name": "id", "op": "identity"}]}
    net = cnngen.compile(spec, target=target, cache_dir=cache)
    x = np.random.default_rng(5).standard_normal((3, *shape)).astype(np.float32)
    np.testing.assert_array_equal(net(x), x)
