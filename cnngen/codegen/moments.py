"""Per-channel mean and sum of squared deviations of a band of rows, for templates.

A batch norm's training statistics come from these, either over a whole image plane
(``batchnorm_stats_train``) or over the row band a conv task has just written, while it is
still in cache (``conv2d`` with STATS). Both take two passes: the band's mean, then the
squared deviations from it, so nothing cancels when the mean is large against the spread
(a one-pass sum of squares loses every digit there). Each row sums in four independent
chains into a row total, so the rounding error grows with width/4 + rows, not rows*width.

The functions are inlined into the kernel that calls them, where ``v`` is the template's
literal vector width.
"""
from numba import njit

from .simd import fma, load, splat, zeros


@njit(inline="always")
def row_sum(x, off, width, v):
    """The sum of one row's ``width`` vectors at ``off``, in four chains."""
    a0 = zeros(v)
    a1 = zeros(v)
    a2 = zeros(v)
    a3 = zeros(v)
    w = 0
    while w + 4 <= width:
        a0 = a0 + load(x, off + w * v, v)
        a1 = a1 + load(x, off + (w + 1) * v, v)
        a2 = a2 + load(x, off + (w + 2) * v, v)
        a3 = a3 + load(x, off + (w + 3) * v, v)
        w += 4
    while w < width:
        a0 = a0 + load(x, off + w * v, v)
        w += 1
    return (a0 + a1) + (a2 + a3)


@njit(inline="always")
def row_squares(x, off, width, v, mean):
    """The sum of (x - mean)**2 over one row, in four chains."""
    a0 = zeros(v)
    a1 = zeros(v)
    a2 = zeros(v)
    a3 = zeros(v)
    w = 0
    while w + 4 <= width:
        d0 = load(x, off + w * v, v) - mean
        d1 = load(x, off + (w + 1) * v, v) - mean
        d2 = load(x, off + (w + 2) * v, v) - mean
        d3 = load(x, off + (w + 3) * v, v) - mean
        a0 = fma(d0, d0, a0)
        a1 = fma(d1, d1, a1)
        a2 = fma(d2, d2, a2)
        a3 = fma(d3, d3, a3)
        w += 4
    while w < width:
        d0 = load(x, off + w * v, v) - mean
        a0 = fma(d0, d0, a0)
        w += 1
    return (a0 + a1) + (a2 + a3)


@njit(inline="always")
def band_moments(x, off, rows, row_stride, width, v):
    """(mean, M2) per lane of ``rows`` rows of ``width`` vectors starting at ``off``."""
    total = zeros(v)
    for h in range(rows):
        total = total + row_sum(x, off + h * row_stride, width, v)
    mean = total * splat(1.0 / (rows * width), v)
    m2 = zeros(v)
    for h in range(rows):
        m2 = m2 + row_squares(x, off + h * row_stride, width, v, mean)
    return mean, m2
