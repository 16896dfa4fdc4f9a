"""Data sets (digits, MNIST-1D generated offline, npz and dict sources, validation splits,
clear errors) and Batches (deterministic order and augmentation, prefetch thread that shuts
down however the consumer stops)."""
import gc
import random
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import cnngen
from cnngen import CnngenError, InputError
from cnngen.runtime import data
from cnngen.runtime.augment import Augment
from cnngen.runtime.batches import Batches
from cnngen.runtime.data import Dataset, load_dataset


def batch_threads():
    return [t for t in threading.enumerate() if t.name == "cnngen-batches" and t.is_alive()]


@pytest.fixture(autouse=True)
def no_thread_left_behind():
    yield
    gc.collect()
    deadline = time.monotonic() + 5
    while batch_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not batch_threads(), "a Batches prefetch thread outlived its test"


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tried to reach the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def keras(n_train=12, n_test=5, shape=(6, 5), dtype=np.uint8, seed=0):
    r = np.random.default_rng(seed)
    return {"x_train": r.integers(0, 256, (n_train, *shape)).astype(dtype),
            "y_train": r.integers(0, 3, n_train), "x_test": r.integers(0, 256, (n_test, *shape))
            .astype(dtype), "y_test": r.integers(0, 3, n_test)}


# built-in data sets ----------------------------------------------------------------------------

def test_digits(no_network):
    ds = load_dataset("digits")
    assert isinstance(ds, Dataset) and ds.name == "digits" and ds.n_classes == 10
    assert ds.x_train.shape == (1438, 1, 8, 8) and ds.x_test.shape == (359, 1, 8, 8)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.x_train.min() == 0 and ds.x_train.max() == 1 and ds.input_shape == (1, 8, 8)
    assert ds.x_val is None and ds.y_val is None
    from sklearn.datasets import load_digits
    whole = np.sort((load_digits().images / 16).reshape(-1, 64).astype(np.float32), axis=0)
    np.testing.assert_array_equal(
        np.sort(np.concatenate([ds.x_train, ds.x_test]).reshape(-1, 64), axis=0), whole)
    again, other = load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    np.testing.assert_array_equal(again.x_test, ds.x_test)
    assert not np.array_equal(other.y_test, ds.y_test)
    assert repr(ds) == ("Dataset('digits': train=1438, test=359, samples (1, 8, 8), "
                        "10 classes)")


def test_mnist1d_is_generated_offline_and_leaves_global_state_alone(no_network, monkeypatch,
                                                                     tmp_path):
    monkeypatch.setattr(data, "_MNIST1D_CACHE", {})
    monkeypatch.chdir(tmp_path)
    np.random.seed(123)
    random.seed(123)
    np_state, py_state = np.random.get_state(), random.getstate()
    ds = load_dataset("mnist1d")
    assert ds.x_train.shape == (4000, 1, 40) and ds.x_test.shape == (1000, 1, 40)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64 and ds.n_classes == 10
    assert np.bincount(ds.y_train).min() > 350
    assert abs(float(np.concatenate([ds.x_train, ds.x_test]).std()) - 1) < 1e-3  # standardised
    assert list(tmp_path.iterdir()) == []                                   # no pickle written
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1])
    assert random.getstate() == py_state
    # the recipe's own seed: the same data every time, cached or not
    np.testing.assert_array_equal(load_dataset("mnist1d", seed=5).x_test, ds.x_test)
    monkeypatch.setattr(data, "_MNIST1D_CACHE", {})
    np.testing.assert_array_equal(load_dataset("mnist1d").x_train, ds.x_train)


def test_missing_optional_packages_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(CnngenError, match=r"'digits' needs scikit-learn.*pip install "
                                          r"\"cnngen\[data\]\""):
        load_dataset("digits")
    monkeypatch.setattr(data, "_MNIST1D_CACHE", {})
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(CnngenError, match=r"'mnist1d' needs the mnist1d package.*pip install "
                                          r"\"cnngen\[data\]\""):
        load_dataset("mnist1d")


def test_validation_split():
    whole = load_dataset("digits", seed=3)
    ds = load_dataset("digits", seed=3, validation=0.25)
    assert len(ds.x_val) == round(0.25 * 1438) and len(ds.x_train) + len(ds.x_val) == 1438
    np.testing.assert_array_equal(ds.x_test, whole.x_test)
    joined = np.concatenate([ds.x_train, ds.x_val]).reshape(1438, -1)
    np.testing.assert_array_equal(np.sort(joined, axis=0),
                                  np.sort(whole.x_train.reshape(1438, -1), axis=0))
    np.testing.assert_array_equal(load_dataset("digits", seed=3, validation=0.25).y_val, ds.y_val)


# npz and dict sources --------------------------------------------------------------------------

def test_npz_in_the_keras_convention(tmp_path):
    arrays = keras()
    np.savez(tmp_path / "mine.npz", **arrays)
    ds = load_dataset(tmp_path / "mine.npz")
    assert ds.name == "mine" and ds.x_train.shape == (12, 1, 6, 5) and ds.n_classes == 3
    np.testing.assert_array_equal(ds.x_train[:, 0], arrays["x_train"] / np.float32(255))
    np.testing.assert_array_equal(ds.y_test, arrays["y_test"])
    dict_ds = load_dataset(arrays)
    assert dict_ds.name == "arrays"
    np.testing.assert_array_equal(dict_ds.x_test, ds.x_test)


def test_channel_axis_and_regression_targets():
    r = np.random.default_rng(0)
    signals = {"x_train": r.random((10, 32)), "y_train": r.random((10, 2)),
               "x_test": r.random((4, 32)), "y_test": r.random((4, 2))}
    ds = load_dataset(signals)
    assert ds.x_train.shape == (10, 1, 32) and ds.x_train.dtype == np.float32
    assert ds.n_classes is None and ds.y_train.dtype == np.float32 and ds.y_train.shape == (10, 2)
    assert "regression" in repr(ds)


def test_labels_of_shape_n_by_1_are_flattened():
    arrays = keras()
    arrays["y_train"] = arrays["y_train"][:, None].astype(np.uint8)
    ds = load_dataset(arrays)
    assert ds.y_train.shape == (12,) and ds.y_train.dtype == np.int64


def test_input_shape_fits_samples_to_the_network():
    r = np.random.default_rng(0)
    nhwc = {"x_train": r.random((5, 4, 6, 3)), "y_train": np.arange(5),
            "x_test": r.random((2, 4, 6, 3)), "y_test": np.arange(2)}
    ds = load_dataset(nhwc, input_shape=(3, 4, 6))                   # channels-last moved
    assert ds.x_train.shape == (5, 3, 4, 6) and ds.x_train.flags.c_contiguous
    np.testing.assert_array_equal(ds.x_train[2, 1], nhwc["x_train"][2, :, :, 1].astype(np.float32))
    multi = {"x_train": r.random((5, 3, 20)), "y_train": np.arange(5),
             "x_test": r.random((2, 3, 20)), "y_test": np.arange(2)}
    assert load_dataset(multi, input_shape=(3, 20)).x_train.shape == (5, 3, 20)   # kept
    assert load_dataset(multi).x_train.shape == (5, 1, 3, 20)      # (N, H, W) without it
    assert load_dataset("digits", input_shape=[1, 8, 8]).x_train.shape == (1438, 1, 8, 8)
    flat = load_dataset("digits", input_shape=(64,))                  # a dense-only net
    assert flat.x_train.shape == (1438, 64) and flat.input_shape == (64,)
    with pytest.raises(InputError, match=r"data set 'digits', key 'x_train': samples of shape "
                                         r"\(1, 8, 8\) do not fit the network's input shape "
                                         r"\(1, 32, 32\)"):
        load_dataset("digits", input_shape=(1, 32, 32))


def test_source_with_its_own_validation_set():
    arrays = {**keras(), "x_val": keras(seed=1)["x_test"], "y_val": keras(seed=1)["y_test"]}
    ds = load_dataset(arrays)
    assert ds.x_val.shape == (5, 1, 6, 5) and len(ds.x_train) == 12
    with pytest.raises(InputError, match=r"already has x_val and y_val; received "
                                         r"validation=0\.2"):
        load_dataset(arrays, validation=0.2)
    del arrays["y_val"]
    with pytest.raises(InputError, match=r"has 'x_val' but no 'y_val'"):
        load_dataset(arrays)


# errors ----------------------------------------------------------------------------------------

def test_file_errors(tmp_path):
    with pytest.raises(InputError, match=r"data file '.*nope\.npz' not found"):
        load_dataset(tmp_path / "nope.npz")
    with pytest.raises(InputError, match=r"data file '.*' is a directory"):
        load_dataset(tmp_path)
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(InputError, match=r"data file '.*text\.npz' is not a readable \.npz "
                                         r"archive"):
        load_dataset(tmp_path / "text.npz")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(InputError, match=r"one\.npy' holds a single array of shape \(3,\)"):
        load_dataset(tmp_path / "one.npy")
    np.savez(tmp_path / "objects.npz", **{**keras(), "x_train": np.array([[1], [1, 2]],
                                                                        dtype=object)})
    with pytest.raises(InputError, match=r"objects\.npz', key 'x_train': cannot be read without "
                                         r"pickle"):
        load_dataset(tmp_path / "objects.npz")
    good = tmp_path / "good.npz"
    np.savez(good, **keras(n_train=400))
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:1500])
    with pytest.raises(InputError, match=r"cut\.npz"):
        load_dataset(tmp_path / "cut.npz")


def test_unknown_name_and_wrong_source_type():
    with pytest.raises(InputError, match=r"unknown data set 'digit'\. Did you mean 'digits'\? "
                                         r"Expected one of 'digits', 'mnist1d', a path"):
        load_dataset("digit")
    with pytest.raises(InputError, match=r"data: expected 'digits', 'mnist1d'.*received list"):
        load_dataset([1, 2])


def test_missing_key(tmp_path):
    arrays = keras()
    arrays["x_tets"] = arrays.pop("x_test")
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(InputError, match=r"data file '.*d\.npz': missing key 'x_test'\. Did you "
                                         r"mean 'x_tets'\? Expected the keys x_train, y_train, "
                                         r"x_test, y_test .*found 'x_train', 'y_train', 'y_test', "
                                         r"'x_tets'"):
        load_dataset(tmp_path / "d.npz")


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(y_train=a["y_train"][:-1]),
     r"'x_train' and 'y_train' must have the same length; received 12 samples and 11 targets"),
    (lambda a: a.update(x_train=a["x_train"].astype(np.int64)),
     r"key 'x_train': expected float or uint8 inputs; received dtype int64"),
    (lambda a: a.update(y_test=a["y_test"].astype(bool)),
     r"key 'y_test': expected integer class labels or float regression targets; received dtype "
     r"bool"),
    (lambda a: a.update(y_test=a["y_test"].astype(np.float32)),
     r"'y_test' must be the same kind as 'y_train'.*received regression targets"),
    (lambda a: a.update(y_train=a["y_train"] - 5),
     r"key 'y_train': class labels must be >= 0; received -5"),
    (lambda a: a.update(x_test=a["x_test"][:, :3]),
     r"samples of 'x_test' have shape \(1, 3, 5\), those of 'x_train' \(1, 6, 5\)"),
    (lambda a: a.update(x_train=a["x_train"][:0], y_train=a["y_train"][:0]),
     r"key 'x_train': expected a non-empty batch"),
    (lambda a: a.update(y_train=np.zeros((12, 2), np.int64)),
     r"key 'y_train': integer targets are class labels and must have shape \(N,\) or \(N, 1\)"),
])
def test_array_errors(change, message):
    arrays = keras()
    change(arrays)
    with pytest.raises(InputError, match=r"data dict[,:] " + message):
        load_dataset(arrays)


def test_nan_and_inf(tmp_path):
    arrays = keras(dtype=np.float64)
    arrays["x_train"][3, 2, 1] = np.nan
    np.savez(tmp_path / "nan.npz", **arrays)
    with pytest.raises(InputError, match=r"nan\.npz', key 'x_train': holds 1 NaN or Inf value\(s\) "
                                         r"\(as float32\), the first at index \(3, 0, 2, 1\)"):
        load_dataset(tmp_path / "nan.npz")
    arrays = keras(dtype=np.float64)
    arrays["x_test"][0, 0, 0] = 1e39                       # overflows float32
    with pytest.raises(InputError, match=r"key 'x_test': holds 1 NaN or Inf"):
        load_dataset(arrays)
    arrays = {**keras(), "y_train": np.full(12, np.inf), "y_test": np.zeros(5)}
    with pytest.raises(InputError, match=r"key 'y_train': holds 12 NaN or Inf regression"):
        load_dataset(arrays)


@pytest.mark.parametrize("kwargs, message", [
    ({"validation": 1.0}, r"validation: expected a fraction .*received 1\.0"),
    ({"validation": "0.1"}, r"validation: expected a fraction"),
    ({"seed": -1}, r"seed: expected an integer >= 0; received -1"),
    ({"validation": 0.999}, r"leaves none to train on"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(InputError, match=message):
        load_dataset(keras(), **kwargs)


def test_errors_are_cnngen_errors():
    assert issubclass(InputError, cnngen.CnngenError)


# Batches ---------------------------------------------------------------------------------------

def xy(n=50, shape=(1, 4, 4)):
    x = np.arange(n * int(np.prod(shape)), dtype=np.float64).reshape(n, *shape)
    return x, np.arange(n)


def collect(batches):
    return [(xb.copy(), yb.copy()) for xb, yb in batches]


def test_one_epoch_covers_every_sample_once():
    x, y = xy(50)
    got = collect(Batches(x, y, 16, seed=1))
    assert [len(yb) for _, yb in got] == [16, 16, 16, 2]
    order = np.concatenate([yb for _, yb in got])
    assert sorted(order) == list(range(50)) and list(order) != list(range(50))
    for xb, yb in got:
        assert xb.dtype == np.float32 and xb.flags.c_contiguous
        np.testing.assert_array_equal(xb, x[yb].astype(np.float32))
    assert len(Batches(x, y, 16)) == 4
    dropped = collect(Batches(x, y, 16, drop_last=True))
    assert len(dropped) == 3 == len(Batches(x, y, 16, drop_last=True))
    ordered = np.concatenate([yb for _, yb in collect(Batches(x, y, 16, shuffle=False))])
    assert list(ordered) == list(range(50))


def test_order_is_a_function_of_seed_and_epoch():
    x, y = xy(40)

    def order(**kw):
        return np.concatenate([yb for _, yb in Batches(x, y, 8, **kw)])
    np.testing.assert_array_equal(order(seed=3, epoch=2), order(seed=3, epoch=2))
    assert not np.array_equal(order(seed=3, epoch=2), order(seed=3, epoch=1))
    assert not np.array_equal(order(seed=3, epoch=2), order(seed=4, epoch=2))


def test_start_resumes_mid_epoch_with_the_same_batches():
    x, y = xy(50)
    aug = Augment("flip_h,crop=1,brightness=0.5")
    full = collect(Batches(x, y, 8, seed=5, epoch=3, augment=aug))
    tail = Batches(x, y, 8, seed=5, epoch=3, augment=aug, start=4)
    assert len(tail) == 3 and tail.n_batches == 7
    for (xa, ya), (xb, yb) in zip(full[4:], collect(tail), strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert collect(Batches(x, y, 8, start=7)) == []


def test_augmentation_is_deterministic_per_batch_and_runs_in_the_thread():
    x, y = xy(32, (1, 6, 6))
    runs = [collect(Batches(x, y, 8, seed=2, epoch=1, augment="flip_h,crop=2,rotate=20"))
            for _ in range(2)]
    plain = collect(Batches(x, y, 8, seed=2, epoch=1))
    for (a, ya), (b, _), (p, yp) in zip(*runs, plain):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ya, yp)
        assert not np.array_equal(a, p)
    threads = []

    def record(xb, rng):
        threads.append(threading.current_thread().name)
        return xb * 2
    collect(Batches(x, y, 8, augment=record))
    assert threads == ["cnngen-batches"] * 4


def test_the_thread_prefetches_before_the_consumer_asks():
    x, y = xy(64)
    made = []

    def count(xb, rng):
        made.append(len(xb))
        return xb
    with Batches(x, y, 4, augment=count, prefetch=3) as batches:
        deadline = time.monotonic() + 10
        while len(made) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        assert 3 <= len(made) <= 4           # the queue is full, one more may wait to go in
        next(batches)


def test_stopping_early_stops_the_thread():
    x, y = xy(400)
    # break out of a loop over an unnamed Batches: collected, so its thread stops
    for _ in Batches(x, y, 4):
        break
    gc.collect()
    # close()
    batches = Batches(x, y, 4)
    next(batches)
    batches.close()
    assert not batches._thread.is_alive()
    with pytest.raises(StopIteration):
        next(batches)
    # an exception in the consumer, inside a with block
    with pytest.raises(ZeroDivisionError):
        with Batches(x, y, 4) as batches:
            for _ in batches:
                1 / 0
    assert not batches._thread.is_alive()
    # Ctrl-C in the consumer
    with pytest.raises(KeyboardInterrupt):
        with Batches(x, y, 4) as batches:
            next(batches)
            raise KeyboardInterrupt
    assert not batches._thread.is_alive()
    # a Batches that is never iterated
    Batches(x, y, 4)
    gc.collect()


def test_an_error_in_the_thread_reaches_the_consumer():
    x, y = xy(40)

    def broken(xb, rng):
        if rng.random() < 2:
            raise ValueError("augment broke")
    with pytest.raises(ValueError, match="augment broke"):
        collect(Batches(x, y, 8, augment=broken))

    def wrong_shape(xb, rng):
        return xb[:, :, :2]
    with pytest.raises(InputError, match=r"must return an array of the batch's shape "
                                         r"\(8, 1, 4, 4\); received \(8, 1, 2, 4\)"):
        collect(Batches(x, y, 8, augment=wrong_shape))


def test_interpreter_exits_with_a_thread_still_prefetching(tmp_path):
    script = ("import numpy as np\n"
              "from cnngen.runtime.batches import Batches\n"
              "b = Batches(np.zeros((1000, 1, 8, 8)), np.zeros(1000), 2)\n"
              "next(b)\n"
              "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr


@pytest.mark.parametrize("args, kwargs, message", [
    ((np.zeros((4, 1, 3)), np.zeros(5), 2), {}, r"same length; received 4 samples and 5"),
    ((np.zeros((4, 1, 3)), np.zeros(4), 0), {}, r"batch_size must be an integer >= 1; received 0"),
    ((np.zeros((4, 1, 3)), np.zeros(4), 2), {"prefetch": 0}, r"prefetch must be"),
    ((np.zeros((4, 1, 3)), np.zeros(4), 8), {"drop_last": True},
     r"4 sample\(s\) with batch_size=8 and drop_last=True make no batch"),
    ((np.zeros((4, 1, 3)), np.zeros(4), 2), {"start": 3}, r"start=3 is past the epoch's 2"),
    ((np.zeros((4, 1, 3)), np.zeros(4), 2), {"seed": -2}, r"seed: expected an integer >= 0"),
    ((np.zeros((4, 1, 3)), np.zeros(4), 2), {"augment": "rotate=5"},
     r"augment 'rotate' applies to images"),
    ((np.zeros((4, 1, 3)), np.zeros(4), 2), {"augment": "flip"},
     r"unknown op 'flip'\. Did you mean"),
])
def test_batches_argument_errors(args, kwargs, message):
    with pytest.raises(InputError, match=message):
        Batches(*args, **kwargs)
