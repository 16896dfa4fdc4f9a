"""CompiledNet: numpy in, numpy out; weights by layer name; one plan per batch size."""
import numpy as np
import pytest

import cnngen
from cnngen.errors import InputError, WeightsError

SPEC = {"cnngen": 1, "name": "tiny", "input": {"shape": [3, 9, 9]},
        "layers": [{"name": "c1", "op": "conv2d", "filters": 5, "kernel": 3, "padding": 1,
                    "activation": "relu"},
                   {"name": "c2", "op": "conv2d", "filters": 4, "kernel": 3, "stride": 2}]}


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return cnngen.compile(SPEC, cache_dir=tmp_path_factory.mktemp("k"))


def reference(net, x):
    return cnngen.ReferenceExecutor(SPEC, net.weights).forward(x).out


def test_call_matches_reference_and_returns_fresh_arrays(net):
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 9)).astype(np.float32)
    y1 = net(x)
    y2 = net(x * 2)
    assert y1.shape == (2, 4, 4, 4) and y1.dtype == np.float32
    np.testing.assert_allclose(y1, reference(net, x), rtol=1e-4, atol=1e-5)
    assert not np.shares_memory(y1, y2)
    np.testing.assert_allclose(y1, reference(net, x), rtol=1e-4, atol=1e-5)


def test_each_batch_size_gets_its_own_plan(net):
    for n in (1, 3):
        x = np.random.default_rng(n).standard_normal((n, 3, 9, 9)).astype(np.float32)
        np.testing.assert_allclose(net(x), reference(net, x), rtol=1e-4, atol=1e-5)
    assert {(1, True), (3, True)} <= set(net._plans)
    assert net.plan(3) is net.plan(3)


def test_documented_conversions(net):
    x = np.random.default_rng(2).standard_normal((1, 3, 9, 9))
    expected = net(x.astype(np.float32))
    np.testing.assert_allclose(net(x), expected, rtol=1e-6)                       # float64
    fortran = np.asfortranarray(x.astype(np.float32))
    np.testing.assert_allclose(net(fortran), expected, rtol=1e-6)                 # non-contiguous
    wide = np.zeros((1, 3, 9, 18), np.float32)
    wide[..., ::2] = x
    np.testing.assert_allclose(net(wide[..., ::2]), expected, rtol=1e-6)          # strided view
    assert net(np.ones((1, 3, 9, 9), np.int64)).shape == (1, 4, 4, 4)             # integers


@pytest.mark.parametrize("x, message", [
    (np.zeros((3, 9, 9), np.float32), r"expected shape \(N, 3, 9, 9\).*Add the batch dimension"),
    (np.zeros((1, 3, 9, 8), np.float32), r"expected shape \(N, 3, 9, 9\).*received \(1, 3, 9, 8\)"),
    (np.zeros((0, 3, 9, 9), np.float32), r"N >= 1"),
    (np.zeros((1, 3, 9, 9), np.complex64), r"expected a float array; received dtype complex64"),
    (np.zeros((1, 3, 9, 9), np.float16), r"expected float32.*received dtype float16"),
    ("not an array", r"expected a numpy array"),
])
def test_bad_input_is_a_clear_error(net, x, message):
    with pytest.raises(InputError, match=message):
        net(x)


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_bad_batch_size(net, n):
    with pytest.raises(InputError, match="batch size: expected an integer >= 1"):
        net.plan(n)


def test_weights_get_set_and_npz_round_trip(net, tmp_path):
    x = np.random.default_rng(3).standard_normal((2, 3, 9, 9)).astype(np.float32)
    before = net(x)
    weights = net.weights
    weights["c2"]["w"] = weights["c2"]["w"] * -0.5
    weights["c2"]["b"] = weights["c2"]["b"] + 0.25
    net.weights = weights                          # repacks every plan in place
    after = net(x)
    np.testing.assert_allclose(after, reference(net, x), rtol=1e-4, atol=1e-5)
    assert not np.allclose(after, before)
    net.save_weights(tmp_path / "w.npz")
    fresh = cnngen.compile(SPEC, cache_dir=net.cache.dir, seed=7)
    fresh.load_weights(tmp_path / "w.npz")
    np.testing.assert_allclose(fresh(x), after, rtol=1e-6)


def test_bad_weights_are_refused_and_keep_the_old_ones(net):
    old = net.weights["c1"]["w"].copy()
    bad = {layer: dict(params) for layer, params in net.weights.items()}
    bad["c1"]["w"] = np.zeros((5, 3, 2, 2))
    with pytest.raises(WeightsError, match="c1"):
        net.weights = bad
    with pytest.raises(WeightsError, match="c1"):
        net.weights["c1"]["w"] = np.zeros((5, 3, 2, 2))
    np.testing.assert_array_equal(net.weights["c1"]["w"], old)


def test_compile_from_a_yaml_path(tmp_path):
    path = tmp_path / "net.yaml"
    path.write_text("cnngen: 1\nname: p\ninput: {shape: [2, 5]}\n"
                    "layers:\n  - {name: c, op: conv1d, filters: 3, kernel: 3}\n")
    net = cnngen.compile(path, cache_dir=tmp_path / "k")
    assert net(np.ones((1, 2, 5), np.float32)).shape == (1, 3, 3)
    assert "p" in repr(net)


def test_schedules_must_name_a_layer_and_be_a_schedule(net):
    from cnngen.schedule import ConvSchedule, DenseSchedule
    spec = net.graph
    with pytest.raises(InputError, match=r"schedules: no layer 'c3' in 'tiny'"):
        cnngen.compile(spec, schedules={"c3": ConvSchedule(1, 4, 1, 1)})
    with pytest.raises(InputError, match=r"schedules\['c1'\]: layer 'c1' \(conv2d\) takes a "
                                         r"cnngen.schedule.ConvSchedule or cnngen.schedule.WinogradSchedule; received dict"):
        cnngen.compile(spec, schedules={"c1": {"oc_vecs": 1}})
    with pytest.raises(InputError, match=r"takes a cnngen.schedule.ConvSchedule or cnngen.schedule.WinogradSchedule; received DenseSchedule"):
        cnngen.compile(spec, schedules={"c1": DenseSchedule(1, 1)})
    with_relu = {**SPEC, "layers": SPEC["layers"] + [{"name": "r", "op": "relu"}]}
    with pytest.raises(InputError, match=r"schedules\['r'\]: layer 'r' \(relu\) takes no schedule"):
        cnngen.compile(with_relu, schedules={"r": ConvSchedule(1, 4, 1, 1)})


@pytest.mark.parametrize("schedule,problem", [
    ((3, 4, 1, 1), "oc_vecs=3 must divide the 1 output-channel vectors per group"),
    ((1, 0, 1, 1), "ow_tile=0 must be >= 1"),
    ((1, 4, 1, 0), "rows=0 must be >= 1"),
])
def test_a_schedule_that_does_not_fit_its_layer_is_named(schedule, problem, tmp_path):
    from cnngen.schedule import ConvSchedule
    net = cnngen.compile(SPEC, cache_dir=tmp_path, schedules={"c1": ConvSchedule(*schedule)})
    with pytest.raises(InputError, match=rf"layer 'c1' \(conv2d\): schedule .* does not fit: {problem}"):
        net(np.zeros((1, 3, 9, 9), np.float32))
