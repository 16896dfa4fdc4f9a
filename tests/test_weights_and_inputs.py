"""Weights (init, validation, npz round trip, corrupt and hostile files, saves that cannot
happen) and the reference executor's input checks: clear errors that name the layer or
parameter, and nothing lost on failure."""
import io
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest
from numpy.lib import format as np_format

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


def test_a_file_that_is_not_an_npz_says_what_it_found(ref, tmp_path):
    np.save(tmp_path / "x.npy", ref.weights["c1"]["w"].astype(np.float32))
    net = cnngen.compile(SPEC, cache_dir=tmp_path / "k")
    with pytest.raises(WeightsError, match=r"x\.npy' is a single \.npy array \(shape \(6, 1, 5, 5\), "
                       r"dtype float32\); expected an \.npz archive with one '<layer>/<param>' key"):
        net.load_weights(tmp_path / "x.npy")
    (tmp_path / "w.txt").write_text("c1/w = 1")
    with pytest.raises(WeightsError, match=r"w\.txt' is corrupt or not an npz file: found neither a "
                       r"zip archive nor an \.npy array \(it starts with b'c1/w ='\)"):
        cnngen.load_npz(tmp_path / "w.txt")
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(WeightsError, match=r"empty\.npz' is corrupt.*\(it is empty\)"):
        cnngen.load_npz(tmp_path / "empty.npz")
    with pytest.raises(WeightsError, match=r"weights file '.*' is a directory; expected an \.npz"):
        cnngen.load_npz(tmp_path)


def npz_by_hand(path, members, method=zipfile.ZIP_STORED):
    """An npz whose members are ``{name: (header dict, body bytes)}``, written without numpy's
    checks, as a hostile or broken writer would."""
    with zipfile.ZipFile(path, "w", method) as archive:
        for name, (header, body) in members.items():
            head = io.BytesIO()
            np_format.write_array_header_1_0(head, {"fortran_order": False, **header})
            archive.writestr(name, head.getvalue() + body)
    return path


HUGE = {"descr": "<f4", "shape": (100_000, 1_000_000)}      # 373 GiB of float32


@pytest.mark.parametrize("header, with_graph, message", [
    (HUGE, True, r"member 'c1/w\.npy': c1/w must have shape \(6, 1, 5, 5\); the file holds shape "
                 r"\(100000, 1000000\) \(float32\)"),
    (HUGE, False, r"member 'c1/w\.npy': the header claims shape \(100000, 1000000\) \(float32, "
                  r"400000000000 bytes\) but the member holds 16 bytes of data"),
    ({"descr": "<f4", "shape": (8192, 8192)}, False, r"claims shape \(8192, 8192\) \(float32, "
                                                      r"268435456 bytes\) but the member holds 16"),
    ({"descr": "|O", "shape": (2,)}, False, r"c1/w\.npy': must hold numbers \(float or int\); "
                                            r"the header claims dtype object"),
    ({"descr": "<U1", "shape": (4,)}, True, r"must hold numbers .* dtype <U1"),
], ids=["373GiB-graph", "373GiB", "256MiB", "object", "unicode-graph"])
def test_npz_headers_are_checked_before_any_data_is_read(ref, tmp_path, header, with_graph,
                                                         message):
    """The header alone decides: nothing near the claimed size is allocated (256 MiB would show
    in the peak), with or without the network's expected shapes."""
    path = npz_by_hand(tmp_path / "evil.npz", {"c1/w.npy": (header, b"\0" * 16)})
    tracemalloc.start()
    try:
        with pytest.raises(WeightsError, match=message):
            cnngen.load_npz(path, ref.graph if with_graph else None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_compiled_net_refuses_a_huge_header(tmp_path):
    path = npz_by_hand(tmp_path / "evil.npz", {"c1/w.npy": (HUGE, b"\0" * 16)})
    net = cnngen.compile(SPEC, cache_dir=tmp_path / "k")
    before = net.weights["c1"]["w"].copy()
    with pytest.raises(WeightsError, match=r"evil\.npz', member 'c1/w\.npy': .*\(100000, 1000000\)"):
        net.load_weights(path)
    np.testing.assert_array_equal(net.weights["c1"]["w"], before)


def test_npz_keys_and_sizes_are_checked_against_the_graph_and_the_archive(ref, tmp_path):
    small = {"descr": "<f4", "shape": (3,)}
    path = npz_by_hand(tmp_path / "k.npz", {"c9/w.npy": (small, b"\0" * 12)})
    with pytest.raises(WeightsError, match=r"member 'c9/w\.npy': 'c9/w' is not a parameter of this "
                       r"network; expected keys: c1/w, c1/b, c3/w"):
        cnngen.load_npz(path, ref.graph)
    assert cnngen.load_npz(path)["c9"]["w"].shape == (3,)
    path = npz_by_hand(tmp_path / "n.npz", {"c1/w": (small, b"\0" * 12)})
    with pytest.raises(WeightsError, match=r"member 'c1/w': expected '<layer>/<param>\.npy'"):
        cnngen.load_npz(path)
    # A central directory that declares 4 GiB for a 140-byte member.
    path = npz_by_hand(tmp_path / "lie.npz", {"c1/b.npy": (small, b"\0" * 12)})
    data = bytearray(path.read_bytes())
    entry = data.index(b"PK\x01\x02")
    data[entry + 24:entry + 28] = struct.pack("<I", 0xF000_0000)
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"member 'c1/b\.npy': declares 4026531840 bytes, more "
                       r"than its \d+ compressed bytes can hold"):
        cnngen.load_npz(path)


def test_a_compressed_npz_loads(ref, tmp_path):
    path = tmp_path / "c.npz"
    np.savez_compressed(path, **{f"{layer}/{param}": a for layer, ps in ref.weights.items()
                                 for param, a in ps.items()})
    loaded = cnngen.load_npz(path, ref.graph)
    np.testing.assert_array_equal(loaded["c3"]["w"], ref.weights["c3"]["w"])


def test_save_where_it_cannot_be_saved_names_the_path(ref, tmp_path):
    target = tmp_path / "missing" / "w.npz"
    with pytest.raises(WeightsError, match=r"cannot save weights to '.*missing/w\.npz': its "
                       r"directory '.*missing' does not exist\. Create it first") as raised:
        cnngen.save_npz(ref.weights, target)
    assert ".tmp" not in str(raised.value)
    (tmp_path / "file").write_text("")
    with pytest.raises(WeightsError, match=r"cannot save weights to '.*file/w\.npz': '.*file' is "
                       r"not a directory"):
        cnngen.save_npz(ref.weights, tmp_path / "file" / "w.npz")
    with pytest.raises(WeightsError, match=r"cannot save weights to '.*': it is a directory; "
                       r"expected a file path such as '.*weights\.npz'"):
        cnngen.save_npz(ref.weights, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_failed_write_is_an_error_and_leaves_the_old_file(ref, tmp_path, monkeypatch):
    path = tmp_path / "w.npz"
    cnngen.save_npz(ref.weights, path)
    good = path.read_bytes()

    def disk_full(f, **arrays):
        f.write(b"part")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(WeightsError, match=r"cannot save weights to '.*w\.npz': No space left on "
                       r"device; the file there before, if any, is unchanged"):
        cnngen.save_npz(ref.weights, path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]


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


def test_pytorch_initialisation_is_uniform_in_one_over_root_fan_in():
    spec = {"cnngen": 1, "name": "n", "input": {"shape": [3, 8, 8]},
            "layers": [{"name": "c", "op": "conv2d", "filters": 64, "kernel": 3},
                       {"name": "f", "op": "flatten"}, {"name": "d", "op": "dense", "units": 50}]}
    w = cnngen.init_weights(cnngen.build_graph(spec), seed=0, scheme="pytorch")
    for layer, fan_in in (("c", 27), ("d", 64 * 36)):
        for p in ("w", "b"):
            bound = 1 / np.sqrt(fan_in)
            assert np.abs(w[layer][p]).max() <= bound
            assert np.abs(w[layer][p]).max() > 0.9 * bound          # spans the interval
    with pytest.raises(cnngen.WeightsError, match=r"init: expected one of he, pytorch; "
                       r"received 'xavier'"):
        cnngen.init_weights(cnngen.build_graph(spec), scheme="xavier")
