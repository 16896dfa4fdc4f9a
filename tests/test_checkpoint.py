"""Checkpoints: a bitwise round trip of weights, optimizer state, spec and metadata (RNG
states included); saves that fail or are killed half way leave the previous file intact;
truncated, corrupt, foreign and newer files raise errors that name the file."""
import json
import os
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import cnngen
from cnngen import WeightsError
from cnngen.runtime import checkpoint as ckpt_module
from cnngen.runtime.checkpoint import (Checkpoint, load_checkpoint, rng_from_state, rng_state,
                                       save_checkpoint)

SPEC = "examples/lenet5.yaml"


def special_floats(dtype):
    """Signed zeros, infinities, subnormals, extremes and NaNs with payloads."""
    info = np.finfo(dtype)
    values = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, info.tiny, info.tiny / 4, info.max,
                       info.eps, 1 / 3], dtype)
    nans = (np.array([0x7FC00001, 0xFFC12345], np.uint32).view(np.float32)
            if dtype == np.float32 else
            np.array([0x7FF8000000000001, 0xFFF8000000ABCDEF], np.uint64).view(np.float64))
    return np.concatenate([values, nans])


def state(seed=0):
    r = np.random.default_rng(seed)
    weights = {"c1": {"w": r.standard_normal((6, 1, 5, 5)).astype(np.float32),
                      "b": special_floats(np.float32)},
               "bn": {"gamma": np.asfortranarray(r.standard_normal((3, 4))),
                      "running_var": special_floats(np.float64)}}
    optimizer = {"name": None, "t": 1200, "lr": 1e-3, "nesterov": True,
                 "beta1": np.float32(0.9), "count": np.int64(7), "big": 2 ** 80,
                 "m": {"c1": {"w": r.standard_normal((6, 1, 5, 5)).astype(np.float32)}},
                 "flat": np.arange(10, dtype=np.int32), "scalar_array": np.array(2.5)}
    meta = {"epoch": 3, "step": 1200, "rng": rng_state(np.random.default_rng(seed)),
            "settings": {"optimizer": "adam", "lr": 0.01, "batch_size": 64, "augment": None,
                         "shape": (1, 32, 32)},
            "history": [{"loss": 0.5, "accuracy": np.float32(0.875)}], "nan": float("nan")}
    return weights, optimizer, meta


def assert_bitwise(a, b):
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_bitwise(a[k], b[k])
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    elif isinstance(a, float):
        assert np.float64(a).tobytes() == np.float64(b).tobytes()
    else:
        assert a == b


@pytest.fixture
def spec(request):
    return cnngen.load_spec(request.config.rootpath / SPEC)


def test_round_trip_is_bitwise(tmp_path, spec):
    weights, optimizer, meta = state()
    path = tmp_path / "run.ckpt"
    save_checkpoint(path, spec=spec, weights=weights, optimizer=optimizer, meta=meta)
    ckpt = load_checkpoint(path)
    assert isinstance(ckpt, Checkpoint)
    assert ckpt.spec == spec
    assert_bitwise(ckpt.weights, weights)
    assert_bitwise(ckpt.optimizer, optimizer)
    assert ckpt.meta["settings"]["shape"] == [1, 32, 32]                 # tuples become lists
    assert ckpt.meta["history"] == [{"loss": 0.5, "accuracy": 0.875}]
    assert np.isnan(ckpt.meta["nan"])
    assert {k: v for k, v in ckpt.meta.items() if k not in ("settings", "history", "nan")} == \
        {k: v for k, v in meta.items() if k not in ("settings", "history", "nan")}
    assert os.listdir(tmp_path) == ["run.ckpt"]                         # no temp file left


def test_file_is_a_plain_npz_with_a_json_document(tmp_path, spec):
    weights = state()[0]
    path = tmp_path / "run.ckpt"
    save_checkpoint(path, spec=spec, weights=weights, optimizer={}, meta={"epoch": 1})
    with np.load(path, allow_pickle=False) as z:                          # no pickle needed
        doc = json.loads(z["__checkpoint__"].tobytes())
        np.testing.assert_array_equal(z["weights/c1/w"], weights["c1"]["w"])
    assert doc["format"] == "cnngen-checkpoint" and doc["version"] == 1
    assert doc["cnngen"] == cnngen.__version__ and doc["meta"] == {"epoch": 1}
    assert doc["weights"] == {"c1": ["w", "b"], "bn": ["gamma", "running_var"]}
    assert zipfile.ZipFile(path).namelist()[0] == "__checkpoint__.npy"


@pytest.mark.parametrize("bit_generator", ["PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"])
def test_rng_state_round_trips_through_a_checkpoint(tmp_path, bit_generator):
    rng = np.random.Generator(getattr(np.random, bit_generator)(42))
    rng.random(17)
    path = tmp_path / "r.ckpt"
    save_checkpoint(path, spec={}, weights={}, optimizer={}, meta={"rng": rng_state(rng)})
    restored = rng_from_state(load_checkpoint(path).meta["rng"])
    np.testing.assert_array_equal(restored.random(100), rng.random(100))
    np.testing.assert_array_equal(restored.integers(0, 2 ** 62, 5), rng.integers(0, 2 ** 62, 5))


def test_bad_rng_state():
    with pytest.raises(WeightsError, match=r"rng state: expected a dict with 'bit_generator' one "
                                           r"of PCG64.*received 'Nope'"):
        rng_from_state({"bit_generator": "Nope"})
    with pytest.raises(WeightsError, match=r"rng state: not a valid PCG64 state"):
        rng_from_state({"bit_generator": "PCG64", "state": "x"})


def saved(tmp_path, seed=0, name="run.ckpt"):
    weights, optimizer, meta = state(seed)
    path = tmp_path / name
    save_checkpoint(path, spec={"name": f"v{seed}"}, weights=weights, optimizer=optimizer,
                    meta=meta)
    return path, path.read_bytes()


def test_a_save_that_fails_half_way_leaves_the_previous_file(tmp_path, monkeypatch):
    path, before = saved(tmp_path)

    def half_then_fail(f, arrays):
        f.write(before[:len(before) // 2])
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(ckpt_module, "_write_archive", half_then_fail)
    weights, optimizer, meta = state(1)
    with pytest.raises(WeightsError, match=r"cannot save checkpoint to '.*run\.ckpt': No space "
                                           r"left on device; the file there before, if any, is "
                                           r"unchanged"):
        save_checkpoint(path, spec={}, weights=weights, optimizer=optimizer, meta=meta)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["run.ckpt"]
    assert load_checkpoint(path).spec == {"name": "v0"}

    def interrupted(f, arrays):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt
    monkeypatch.setattr(ckpt_module, "_write_archive", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, spec={}, weights=weights, optimizer=optimizer, meta=meta)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["run.ckpt"]


KILL_MID_SAVE = """
import sys, time, numpy as np
from cnngen.runtime import checkpoint as c
path = sys.argv[1]
w = {"big": {"w": np.full((1 << 20,), 2.0, np.float32)}}
def slow(f, arrays):
    c.np.savez(f, **arrays)
    f.flush()
    size = f.tell()
    f.seek(size // 2)
    f.truncate()                      # half a file on disk, and the process stuck there
    f.flush()
    print("half", flush=True)
    time.sleep(600)
c._write_archive = slow
c.save_checkpoint(path, spec={"name": "new"}, weights=w, optimizer={}, meta={"epoch": 2})
"""


def kill_while_saving(script: str, path, wait_for) -> None:
    """Run ``script`` (which saves to ``path``) in a child process and SIGKILL it once
    ``wait_for(its stdout)`` returns; the child never outlives the call."""
    child = subprocess.Popen([sys.executable, "-c", script, str(path)],
                             stdout=subprocess.PIPE, text=True)
    try:
        wait_for(child.stdout)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()


def test_a_process_killed_mid_save_leaves_the_previous_file(tmp_path):
    path, before = saved(tmp_path)
    temps = []

    def half_written(stdout):
        assert stdout.readline() == "half\n"
        temps.extend(p for p in tmp_path.iterdir() if p.name.startswith(".run.ckpt."))
        assert len(temps) == 1 and temps[0].stat().st_size > 1 << 20   # the save was under way
    kill_while_saving(KILL_MID_SAVE, path, half_written)
    assert path.read_bytes() == before
    assert load_checkpoint(path).spec == {"name": "v0"}
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_checkpoint(temps[0])                          # what the kill left is refused


RACE = """
import sys, numpy as np
from cnngen.runtime.checkpoint import save_checkpoint
path = sys.argv[1]
for i in range(10 ** 6):
    w = np.full((1 << 19,), float(i), np.float32)
    save_checkpoint(path, spec={"i": i}, weights={"l": {"w": w}}, optimizer={}, meta={})
    print(i, flush=True)
"""


def test_a_kill_at_a_random_moment_leaves_a_whole_checkpoint(tmp_path):
    path = tmp_path / "run.ckpt"
    rng = np.random.default_rng()

    def after_a_few_saves(stdout):
        for _ in range(int(rng.integers(1, 4))):
            stdout.readline()
    for _ in range(3):
        kill_while_saving(RACE, path, after_a_few_saves)
        ckpt = load_checkpoint(path)
        i = ckpt.spec["i"]
        np.testing.assert_array_equal(ckpt.weights["l"]["w"], np.full((1 << 19,), i, np.float32))


# unreadable files ------------------------------------------------------------------------------

def test_missing_empty_and_directory(tmp_path):
    with pytest.raises(WeightsError, match=r"checkpoint '.*nope\.ckpt' not found"):
        load_checkpoint(tmp_path / "nope.ckpt")
    with pytest.raises(WeightsError, match=r"checkpoint '.*' is a directory"):
        load_checkpoint(tmp_path)
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(WeightsError, match=r"empty\.ckpt' is not a cnngen checkpoint: it is empty"):
        load_checkpoint(tmp_path / "empty.ckpt")
    (tmp_path / "text.ckpt").write_text("epoch: 3")
    with pytest.raises(WeightsError, match=r"text\.ckpt' is not a cnngen checkpoint: it is not a "
                                           r"zip archive \(it starts with b'epoc'\)"):
        load_checkpoint(tmp_path / "text.ckpt")


def test_every_truncation_is_refused(tmp_path):
    _, data = saved(tmp_path)
    cut = tmp_path / "cut.ckpt"
    for n in sorted({1, 2, 10, 100, 1000, len(data) // 3, len(data) // 2, len(data) - 22,
                     len(data) - 1}):
        cut.write_bytes(data[:n])
        with pytest.raises(WeightsError,
                           match=r"cut\.ckpt' is (truncated or corrupt|not a cnngen)"):
            load_checkpoint(cut)


def test_flipped_bits_are_caught(tmp_path):
    _, data = saved(tmp_path)
    w = state()[0]["c1"]["w"]
    where = data.find(w.tobytes()[400:440])
    bad = bytearray(data)
    bad[where + 3] ^= 0x10
    (tmp_path / "bad.ckpt").write_bytes(bytes(bad))
    with pytest.raises(WeightsError, match=r"bad\.ckpt' is truncated or corrupt: Bad CRC-32 for "
                                           r"file 'weights/c1/w\.npy'"):
        load_checkpoint(tmp_path / "bad.ckpt")


def test_foreign_files(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.zeros(3), b=np.ones(2))
    with pytest.raises(WeightsError, match=r"other\.npz' is not a cnngen checkpoint: it has no "
                                           r"'__checkpoint__\.npy' member \(members: a\.npy, "
                                           r"b\.npy\)"):
        load_checkpoint(tmp_path / "other.npz")
    cnngen.save_npz({"c1": {"w": np.zeros(3)}}, tmp_path / "w.npz")
    with pytest.raises(WeightsError, match=r"w\.npz' is a weights file .*load it with "
                                           r"net\.load_weights"):
        load_checkpoint(tmp_path / "w.npz")


def forged(tmp_path, doc, **members):
    text = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    path = tmp_path / "forged.ckpt"
    with open(path, "wb") as f:                         # a path would get '.npz' appended
        np.savez(f, __checkpoint__=np.frombuffer(text, np.uint8), **members)
    return path


GOOD = {"format": "cnngen-checkpoint", "version": 1, "spec": {}, "meta": {}, "weights": {},
        "optimizer": {"dict": {}}}


@pytest.mark.parametrize("doc, members, message", [
    ({**GOOD, "version": 2, "cnngen": "9.0"}, {},
     r"has checkpoint format version 2 \(written by cnngen 9\.0\); this cnngen reads version 1 "
     r"and older\. Upgrade cnngen"),
    ({**GOOD, "version": "1"}, {}, r"format version must be an integer >= 1; received '1'"),
    ({**GOOD, "format": "other"}, {}, r"not a cnngen checkpoint: its document's format is "
                                      r"'other'"),
    ([1, 2], {}, r"not a cnngen checkpoint: its document's format is 'list'"),
    (b"{not json", {}, r"the JSON document is corrupt"),
    (b"\xff\xfe", {}, r"the JSON document is corrupt"),
    ({**GOOD, "weights": {"c1": ["w"]}}, {}, r"member 'weights/c1/w\.npy' is listed but missing"),
    ({**GOOD, "weights": {"c1": "w"}}, {}, r"lists 'c1' with 'w'; expected a list"),
    ({**GOOD, "meta": []}, {}, r"the document's 'meta' must be a dict; received list"),
    ({**GOOD, "optimizer": {"dict": {"m": {"tensor": 1}}}}, {},
     r"optimizer\['m'\] is stored as \{'tensor': 1\}, which this cnngen cannot read"),
    ({**GOOD, "weights": {"c1": ["w"]}}, {"weights/c1/w": np.array(["a", "b"])},
     r"member 'weights/c1/w\.npy': must hold numbers; the header claims dtype <U1"),
])
def test_forged_documents(tmp_path, doc, members, message):
    with pytest.raises(WeightsError, match=r"checkpoint '.*forged\.ckpt'.*" + message):
        load_checkpoint(forged(tmp_path, doc, **members))


def test_a_document_that_is_not_bytes(tmp_path):
    path = tmp_path / "f.ckpt"
    with open(path, "wb") as f:
        np.savez(f, __checkpoint__=np.zeros(3))
    with pytest.raises(WeightsError, match=r"member '__checkpoint__\.npy' must be a 1-D uint8 "
                                           r"array"):
        load_checkpoint(path)


def test_a_header_that_lies_about_its_size_is_refused_before_allocating(tmp_path):
    path = forged(tmp_path, {**GOOD, "weights": {"c1": ["w"]}}, **{"weights/c1/w": np.zeros(4)})
    honest = b"'shape': (4,), }" + b" " * 10                          # eats header padding
    lying = b"'shape': (99999999999,), }"
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    assert members["weights/c1/w.npy"].count(honest) == 1
    members["weights/c1/w.npy"] = members["weights/c1/w.npy"].replace(honest, lying)
    with zipfile.ZipFile(path, "w") as z:                             # with matching CRCs
        for name, data in members.items():
            z.writestr(name, data)
    with pytest.raises(WeightsError, match=r"member 'weights/c1/w\.npy': the header claims shape "
                                           r"\(99999999999,\) \(float64, 799999999992 bytes\) but "
                                           r"the member holds 32 bytes; the file is corrupt"):
        load_checkpoint(path)


# what cannot be saved --------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"meta": {1: "x"}}, r"checkpoint meta: keys must be strings \(JSON\); received 1"),
    ({"meta": {"f": open}}, r"checkpoint meta\['f'\]: cannot store a builtin_function_or_method"),
    ({"spec": {"a": {1, 2}}}, r"checkpoint spec\['a'\]: cannot store a set"),
    ({"optimizer": {"m": [np.zeros(2)]}}, r"checkpoint optimizer\['m'\]: cannot store a list"),
    ({"optimizer": {"a/b": 1}}, r"optimizer: key names must be non-empty strings without '/'"),
    ({"optimizer": {"s": np.array(["x"])}}, r"optimizer\['s'\]: must be a numeric array"),
    ({"weights": {"c/1": {"w": np.zeros(1)}}}, r"layer names must be non-empty strings"),
    ({"weights": {"c1": np.zeros(1)}}, r"weights\['c1'\]: expected \{param: array\}"),
    ({"weights": [1]}, r"checkpoint weights: expected \{layer: \{param: array\}\}"),
    ({"optimizer": 3}, r"checkpoint optimizer: expected a dict"),
])
def test_what_cannot_be_saved(tmp_path, kwargs, message):
    args = {"spec": {}, "weights": {}, "optimizer": {}, "meta": {}, **kwargs}
    with pytest.raises(WeightsError, match=message):
        save_checkpoint(tmp_path / "x.ckpt", **args)
    assert os.listdir(tmp_path) == []


def test_save_into_a_missing_folder_or_onto_a_folder(tmp_path):
    args = {"spec": {}, "weights": {}, "optimizer": {}, "meta": {}}
    with pytest.raises(WeightsError, match=r"its directory '.*nowhere' does not exist"):
        save_checkpoint(tmp_path / "nowhere" / "x.ckpt", **args)
    with pytest.raises(WeightsError, match=r"it is a directory"):
        save_checkpoint(tmp_path, **args)
