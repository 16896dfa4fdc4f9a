"""Augmentation: parsing with clear errors, each op checked by hand on small arrays,
determinism under the generator, and ops refused where they do not fit the data."""
import numpy as np
import pytest

from cnngen import InputError
from cnngen.runtime.augment import OPS, Augment, _shift, as_augment, rotate


def images(n=6, c=1, h=8, w=8, seed=0):
    return np.random.default_rng(seed).random((n, c, h, w), dtype=np.float32)


def rng(seed=0):
    return np.random.default_rng(seed)


# parsing -------------------------------------------------------------------------------------

def test_string_and_keywords_are_the_same_and_str_round_trips():
    a = Augment("flip_h,crop=4,rotate=10,brightness=0.2")
    b = Augment(brightness=0.2, rotate=10, crop=4, flip_h=True)
    assert a == b and hash(a) == hash(b)
    assert str(a) == "flip_h=0.5,crop=4,rotate=10,brightness=0.2"   # canonical order
    assert Augment(str(a)) == a
    assert repr(a) == "Augment('flip_h=0.5,crop=4,rotate=10,brightness=0.2')"


def test_bare_names_take_defaults_and_zero_or_false_turn_off():
    a = Augment("flip_h, flip_v ,crop,translate,rotate,brightness,contrast,grayscale")
    assert a.ops == {name: op.default for name, op in OPS.items()}
    assert isinstance(a.ops["crop"], int)
    assert Augment("flip_h=0,crop=0").ops == {}
    assert Augment("crop=4", crop=False).ops == {}           # keywords win
    assert Augment("crop=4", crop=2).ops == {"crop": 2}
    assert not Augment("") and not Augment()


def test_as_augment():
    assert as_augment(None) is None and as_augment("") is None and as_augment(Augment()) is None
    assert as_augment("flip_h") == Augment(flip_h=0.5)
    assert as_augment({"crop": 2}) == Augment(crop=2)

    def custom(x, r):
        return x
    assert as_augment(custom) is custom
    with pytest.raises(InputError, match=r"augment: expected a string .*received int"):
        as_augment(3)


@pytest.mark.parametrize("text, message", [
    ("flip_hh", r"unknown op 'flip_hh'\. Did you mean 'flip_h'\?.*Known ops: flip_h, flip_v"),
    ("rotation=10", r"unknown op 'rotation'\. Did you mean 'rotate'\?"),
    ("crop=abc", r"augment 'crop': expected a number .*received 'abc'"),
    ("crop=2.5", r"augment 'crop': expected a whole number of pixels; received '2.5'"),
    ("rotate=-5", r"augment 'rotate': expected 0 < value <= 180 .*received '-5'"),
    ("rotate=nan", r"augment 'rotate': expected a number"),
    ("flip_h=2", r"augment 'flip_h': expected 0 < value <= 1 \(probability.*received '2'"),
    ("translate=1.5", r"augment 'translate': expected 0 < value <= 1"),
    ("crop=2,crop=3", r"'crop' appears twice"),
])
def test_bad_text(text, message):
    with pytest.raises(InputError, match=message):
        Augment(text)


def test_bad_keyword_value():
    with pytest.raises(InputError, match=r"augment 'brightness': expected a number .*received "
                                         r"\[0\.1\]"):
        Augment(brightness=[0.1])


# each op -------------------------------------------------------------------------------------

def test_output_is_a_new_float32_array_and_input_untouched():
    x = images().astype(np.float64)
    before = x.copy()
    out = Augment("flip_h,crop=2,rotate=10,brightness=0.2,contrast=0.2")(x, rng())
    assert out.dtype == np.float32 and out.shape == x.shape and out.flags.c_contiguous
    np.testing.assert_array_equal(x, before)


def test_deterministic_under_the_generator():
    x = images(16, 3, 12, 10)
    aug = Augment("flip_h,flip_v,crop=3,translate=0.2,rotate=20,brightness=0.3,contrast=0.3,"
                  "grayscale=0.5")
    np.testing.assert_array_equal(aug(x, rng(7)), aug(x, rng(7)))
    assert not np.array_equal(aug(x, rng(7)), aug(x, rng(8)))


def test_flips_with_probability_one():
    x = images(4, 2, 5, 7)
    np.testing.assert_array_equal(Augment(flip_h=1)(x, rng()), x[..., ::-1])
    np.testing.assert_array_equal(Augment(flip_v=1)(x, rng()), x[..., ::-1, :])
    s = images(3, 2, 1, 9)[:, :, 0]
    np.testing.assert_array_equal(Augment(flip_h=1)(s, rng()), s[..., ::-1])


def test_flip_picks_samples_by_probability():
    x = images(200, 1, 2, 3)
    out = Augment(flip_h=0.5)(x, rng())
    flipped = np.array([np.array_equal(o, xi[..., ::-1]) for o, xi in zip(out, x)])
    kept = np.array([np.array_equal(o, xi) for o, xi in zip(out, x)])
    assert (flipped ^ kept).all() and 60 < flipped.sum() < 140


def test_shift_by_hand():
    x = np.array([[[1, 2, 3, 4]]], np.float32)                       # (1, 1, 4)
    np.testing.assert_array_equal(_shift(x, (1,), np.array([[0]])), [[[0, 1, 2, 3]]])
    np.testing.assert_array_equal(_shift(x, (1,), np.array([[1]])), [[[1, 2, 3, 4]]])
    np.testing.assert_array_equal(_shift(x, (1,), np.array([[2]])), [[[2, 3, 4, 0]]])
    img = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    # pad 1, window offset (2, 0): rows move up by one, columns right by one
    np.testing.assert_array_equal(_shift(img, (1, 1), np.array([[2, 0]]))[0, 0],
                                  [[0, 4, 5], [0, 7, 8], [0, 0, 0]])


def shifted(x, dy, dx):
    """x (C, H, W) moved by (dy, dx) with zero fill: out[i, j] = x[i - dy, j - dx]."""
    out = np.zeros_like(x)
    h, w = x.shape[-2:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[:, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


@pytest.mark.parametrize("text, max_y, max_x", [("crop=2", 2, 2), ("translate=0.25", 2, 3)])
def test_crop_and_translate_are_zero_filled_shifts_within_bounds(text, max_y, max_x):
    x = images(40, 2, 8, 12) + 0.5          # no zeros inside, so every shift is told apart
    out = Augment(text)(x, rng(3))
    seen = set()
    for o, xi in zip(out, x):
        shifts = [(dy, dx) for dy in range(-max_y, max_y + 1) for dx in range(-max_x, max_x + 1)
                  if np.array_equal(o, shifted(xi, dy, dx))]
        assert len(shifts) == 1
        seen.add(shifts[0])
    assert len(seen) > 10


def test_crop_and_translate_on_signals():
    s = np.random.default_rng(0).random((30, 2, 16), dtype=np.float32) + 0.5
    for text, limit in (("crop=3", 3), ("translate=0.25", 4)):
        out = Augment(text)(s, rng(1))
        for o, si in zip(out, s):
            assert any(np.array_equal(o, shifted(si[:, None], 0, d)[:, 0])
                       for d in range(-limit, limit + 1))


def test_rotate_by_hand():
    x = images(3, 2, 6, 6)
    np.testing.assert_allclose(rotate(x, np.full(3, 90.0)), np.rot90(x, 1, axes=(2, 3)),
                               atol=1e-5)                          # counterclockwise
    np.testing.assert_allclose(rotate(x, np.full(3, -90.0)), np.rot90(x, -1, axes=(2, 3)),
                               atol=1e-5)
    np.testing.assert_allclose(rotate(x, np.full(3, 180.0)), x[..., ::-1, ::-1], atol=1e-5)
    np.testing.assert_allclose(rotate(x, np.zeros(3)), x, atol=1e-6)
    ones = np.ones((1, 1, 9, 9), np.float32)
    r45 = rotate(ones, np.array([45.0]))[0, 0]
    assert r45[4, 4] == pytest.approx(1) and r45[0, 0] == 0          # corners fall outside


def test_rotate_is_bilinear():
    # a 1-pixel-wide vertical line rotated by a small angle spreads over two columns
    x = np.zeros((1, 1, 9, 9), np.float32)
    x[0, 0, :, 4] = 1
    r = rotate(x, np.array([5.0]))[0, 0]
    assert 0 < r[0, 3] < 1 or 0 < r[0, 5] < 1
    # each row keeps about the line's mass (1/cos(5 degrees) = 1.004 for the tilted line)
    np.testing.assert_allclose(r.sum(axis=1)[2:-2], 1, rtol=0.01)


def test_rotate_op_draws_one_angle_per_sample_within_the_limit():
    x = images(50, 2, 9, 7)
    out = Augment(rotate=30)(x, rng(4))
    angles = rng(4).uniform(-30, 30, size=50)
    np.testing.assert_array_equal(out, rotate(x, angles))
    assert np.ptp(angles) > 40


def test_brightness_multiplies_each_sample_within_range():
    x = images(50) + 0.1
    out = Augment(brightness=0.3)(x, rng())
    ratio = out / x
    per_sample = ratio.reshape(50, -1)
    np.testing.assert_allclose(per_sample, np.broadcast_to(per_sample[:, :1], per_sample.shape),
                               rtol=1e-6)
    assert per_sample.min() >= 0.7 - 1e-6 and per_sample.max() <= 1.3 + 1e-6
    assert np.ptp(per_sample[:, 0]) > 0.3


def test_contrast_keeps_the_mean_and_scales_the_spread():
    x = images(30, 3, 4, 4)
    out = Augment(contrast=0.5)(x, rng())
    m_in, m_out = x.mean(axis=(1, 2, 3)), out.mean(axis=(1, 2, 3))
    np.testing.assert_allclose(m_out, m_in, atol=1e-6)
    f = (out - m_in[:, None, None, None]) / (x - m_in[:, None, None, None])
    f = f.reshape(30, -1)
    np.testing.assert_allclose(f, np.broadcast_to(f[:, :1], f.shape), rtol=1e-3)
    assert f.min() >= 0.5 - 1e-3 and f.max() <= 1.5 + 1e-3


def test_grayscale():
    x = images(40, 3, 4, 5)
    out = Augment(grayscale=1)(x, rng())
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for c in range(3):
        np.testing.assert_allclose(out[:, c], luma, rtol=1e-6)
    half = Augment(grayscale=0.5)(x, rng())
    gray = np.array([np.allclose(h[0], h[1]) and np.allclose(h[1], h[2]) for h in half])
    untouched = np.array([np.array_equal(h, xi) for h, xi in zip(half, x)])
    assert (gray ^ untouched).all() and 5 < gray.sum() < 35


def test_jitters_on_signals():
    s = np.random.default_rng(0).random((8, 2, 40), dtype=np.float32)
    out = Augment("flip_h,crop=4,translate=0.1,brightness=0.2,contrast=0.2")(s, rng())
    assert out.shape == s.shape and np.isfinite(out).all()


@pytest.mark.parametrize("text, shape, message", [
    ("rotate=10", (2, 1, 40), r"augment 'rotate' applies to images \(N, C, H, W\) only; "
                              r"received 1-D signals \(N, C, L\) of shape \(2, 1, 40\)\. Ops "
                              r"for 1-D signals \(N, C, L\): flip_h, crop, translate"),
    ("flip_v", (2, 1, 40), r"augment 'flip_v' applies to images"),
    ("grayscale", (2, 3, 40), r"augment 'grayscale' applies to images"),
    ("grayscale", (2, 1, 8, 8), r"augment 'grayscale' needs 3-channel \(RGB\) images; received "
                                r"1 channel"),
    ("flip_h", (2, 8), r"augment: expected images .*received an array of shape \(2, 8\)"),
])
def test_op_that_does_not_fit_the_data(text, shape, message):
    aug = Augment(text)
    with pytest.raises(InputError, match=message):
        aug.check(shape)
    with pytest.raises(InputError, match=message):
        aug(np.zeros(shape, np.float32), rng())


def test_a_large_batch_runs_every_op():
    x = np.random.default_rng(0).random((128, 3, 32, 32), dtype=np.float32)
    aug = Augment("flip_h,flip_v,crop=4,translate=0.1,rotate=15,brightness=0.2,contrast=0.2,"
                  "grayscale=0.2")
    out = aug(x, rng())
    assert out.shape == x.shape and np.isfinite(out).all()


def test_the_text_of_an_augment_reads_back_bit_for_bit():
    a = Augment("brightness=0.123456789,rotate=10,contrast=0.1")
    assert Augment(str(a)) == a and "brightness=0.123456789" in str(a) and "rotate=10," in str(a)
