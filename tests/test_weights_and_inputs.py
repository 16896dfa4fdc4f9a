"""Weights (init, validation, npz round trip, corrupt files) and the reference executor's
input checks: clear errors that name the layer or parameter, and nothing lost on failure."""
import numpy as np
import pytest

import cnngen
from cnngen import InputError, WeightsError
from cnngen.weights import check_weights

from .workloads import single

SPEC = "examples/lenet5.yaml"


@pytest.fixture
def ref(request):
    return cnngen.ReferenceExecutor(request.config.rootpath / SPEC, seed=0)


def test_init_is_seeded_and_has_every_param_and_buffer():
    spec = single("conv2d", (3, 8, 8), filters=4, kernel=3)
    spec["layers"].append({"name": "bn", "op": "batchnorm"})
    a = cnngen.ReferenceExecutor(spec, seed=1).weights
    b = cnngen.ReferenceExecutor(spec, seed=1).weights
    assert set(a) == {"y", "bn"}
    assert set(a["bn"]) == {"gamma", "beta", "running_mean", "running_var"}
    np.testing.assert_array_equal(a["y"]["w"], b["y"]["w"])
    assert a["y"]["w"].std() == pytest.approx(np.sqrt(2 / 27), rel=0.3)   # He-normal, fan_in 27


def test_npz_round_trip(ref, tmp_path):
    path = tmp_path / "w.npz"
    cnngen.save_npz(ref.weights, path)
    loaded = cnngen.load_npz(path)
    assert sorted(np.load(path).files)[:2] == ["c1/b", "c1/w"]
    again = cnngen.ReferenceExecutor(ref.graph, weights=loaded)
    x = np.random.default_rng(0).normal(size=(2, 1, 32, 32))
    np.testing.assert_array_equal(again.forward(x).out, ref.forward(x).out)


def test_corrupt_weights_file_is_an_error_and_does_not_replace_a_good_one(ref, tmp_path,
                                                                         monkeypatch):
    path = tmp_path / "w.npz"
    cnngen.save_npz(ref.weights, path)
    good = path.read_bytes()
    bad = tmp_path / "bad.npz"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(WeightsError, match=r"bad\.npz' is corrupt or not an npz file"):
        cnngen.load_npz(bad)
    with pytest.raises(WeightsError, match=r"weights file '.*nothere\.npz' not found"):
        cnngen.load_npz(tmp_path / "nothere.npz")

    def interrupted(f, **arrays):
        f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cnngen.save_npz(ref.weights, path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("change,message", [
    (lambda w: w.pop("c3"), r"weights: missing layer 'c3' \(needs w, b\)"),
    (lambda w: w["c3"].pop("b"), r"weights: layer 'c3' is missing 'b' of shape \(16,\)"),
    (lambda w: w["c3"].update(w=np.zeros((16, 6, 3, 3))),
     r"weights: c3/w must have shape \(16, 6, 5, 5\); received \(16, 6, 3, 3\)"),
    (lambda w: w.update(c9={}), r"weights: 'c9' is not a layer with parameters in 'lenet5'"),
    (lambda w: w["c3"].update(gamma=np.ones(16)), r"weights: layer 'c3' has no parameter 'gamma'; expected w, b"),
    (lambda w: w["c3"].update(b=np.array(["a"] * 16)), r"weights: c3/b must be numeric; received dtype <U1"),
])
def test_bad_weights_name_layer_and_param(ref, change, message):
    weights = {layer: dict(params) for layer, params in ref.weights.items()}
    change(weights)
    with pytest.raises(WeightsError, match=message):
        check_weights(ref.graph, weights)


@pytest.mark.parametrize("x,message", [
    (np.zeros((1, 32, 32)), r"input: expected shape \(N, 1, 32, 32\) with N >= 1; received \(1, 32, 32\)\. Add the batch dimension: x\[None\]\."),
    (np.zeros((2, 3, 32, 32)), r"received \(2, 3, 32, 32\)"),
    (np.zeros((0, 1, 32, 32)), r"with N >= 1; received \(0, 1, 32, 32\)"),
    (np.zeros((2, 1, 32, 32), dtype=complex), r"input: expected a float array; received dtype complex128"),
    ("pixels", r"input: expected a numpy array of shape \(N, 1, 32, 32\); received str"),
])
def test_bad_input_is_an_error(ref, x, message):
    with pytest.raises(InputError, match=message):
        ref.forward(x)


def test_bad_dropout_mask_and_labels_are_errors():
    spec = single("dropout", (4,), rate=0.5)
    spec["loss"] = {"op": "softmax_cross_entropy"}
    ref = cnngen.ReferenceExecutor(spec)
    with pytest.raises(InputError, match=r"layer 'y' \(dropout\): the mask must have the activation's shape \(2, 4\); received \(4,\)"):
        ref.forward(np.ones((2, 4)), train=True, masks={"y": np.ones(4, bool)})
    with pytest.raises(InputError, match=r"labels must be in \[0, 4\); received values from 0 to 7"):
        ref.loss(np.zeros((2, 4)), np.array([0, 7]))
    with pytest.raises(InputError, match=r"integer labels must have shape \(2,\); received \(3,\)"):
        ref.loss(np.zeros((2, 4)), np.array([0, 1, 2]))


def test_loss_without_a_loss_in_the_spec_is_an_error():
    ref = cnngen.ReferenceExecutor(single("relu", (4,)))
    with pytest.raises(InputError, match=r"network 't_relu' has no loss; add 'loss: \{op: softmax_cross_entropy\}'"):
        ref.loss(np.zeros((1, 4)), np.array([0]))
