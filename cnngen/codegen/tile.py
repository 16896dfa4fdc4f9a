"""The register tile of a convolution microkernel: ``rows x cols`` SIMD accumulators.

A tile is one SSA value (an LLVM array of vectors) that LLVM splits into registers, so a
template writes the oneDNN inner loop as one call per reduction step::

    acc = tile_zeros(OC_VECS, OW_TILE, V)
    for ...:
        acc = tile_fma(acc, w, w_off, W_ROW, x, x_off, X_COL)   # rows loads, cols broadcasts
    tile_store(out, out_off, OUT_ROW, OUT_COL, acc)

``tile_fma`` emits straight-line IR: ``rows`` weight-vector loads, then for each column one
broadcast load of ``x`` and ``rows`` FMAs. With rows*cols <= 28 every accumulator stays in
one of AVX-512's 32 registers. ``tile_fma_lanes`` is the depthwise form: one weight vector
times a vector load of ``x`` per column (no broadcast, no reduction across lanes).
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core.datamodel import models
from numba.extending import intrinsic, register_model

from .simd import (FloatVector, _address, _float_array, _vector_fn, _width, keep_lanes_ir,
                   max_ir, splat_ir)


class Tile(types.Type):
    def __init__(self, rows: int, cols: int, width: int):
        self.rows, self.cols, self.width = rows, cols, width
        super().__init__(name=f"tile{rows}x{cols}x{width}")


@register_model(Tile)
class TileModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        vec = ir.VectorType(ir.FloatType(), fe_type.width)
        super().__init__(dmm, fe_type, ir.ArrayType(vec, fe_type.rows * fe_type.cols))


def _offset(builder, base, stride, k):
    return builder.add(base, builder.mul(stride, ir.Constant(stride.type, k)))


@intrinsic
def tile_zeros(typingctx, rows, cols, width):
    sizes = (_width(rows), _width(cols), _width(width))
    if None in sizes:
        return None
    tile = Tile(*sizes)

    def codegen(context, builder, sig, args):
        vec = ir.VectorType(ir.FloatType(), tile.width)
        zero = ir.Constant(vec, [0.0] * tile.width)
        return ir.Constant(ir.ArrayType(vec, tile.rows * tile.cols), [zero] * (tile.rows * tile.cols))
    return tile(rows, cols, width), codegen


def _ints(*args) -> bool:
    return all(isinstance(a, types.Integer) for a in args)


@intrinsic
def tile_fma(typingctx, acc, w, w_off, w_row, x, x_off, x_col):
    """acc[r][c] += w[w_off + r*w_row : +V] * x[x_off + c*x_col] (broadcast)."""
    if not (isinstance(acc, Tile) and _float_array(w) and _float_array(x)
            and _ints(w_off, w_row, x_off, x_col)):
        return None

    def codegen(context, builder, sig, args):
        tile, wv, w_off_, w_row_, xv, x_off_, x_col_ = args
        w_ty, x_ty = sig.args[1], sig.args[4]
        w_off_, w_row_, x_off_, x_col_ = (context.cast(builder, v, t, types.intp) for v, t in zip(
            (w_off_, w_row_, x_off_, x_col_), (sig.args[2], sig.args[3], sig.args[5], sig.args[6])))
        fma = _vector_fn(builder, "fma", acc.width, 3)
        weights = [builder.load(_address(context, builder, w_ty, wv,
                                         _offset(builder, w_off_, w_row_, r), acc.width), align=4)
                   for r in range(acc.rows)]
        for c in range(acc.cols):
            scalar = builder.load(_address(context, builder, x_ty, xv,
                                           _offset(builder, x_off_, x_col_, c)))
            b = splat_ir(builder, scalar, acc.width)
            for r in range(acc.rows):
                i = r * acc.cols + c
                tile = builder.insert_value(
                    tile, builder.call(fma, [weights[r], b, builder.extract_value(tile, i)]), i)
        return tile
    return acc(acc, w, w_off, w_row, x, x_off, x_col), codegen


@intrinsic
def tile_fma_lanes(typingctx, acc, wvec, x, x_off, x_col):
    """acc[0][c] += wvec * x[x_off + c*x_col : +V] (depthwise: no broadcast)."""
    if not (isinstance(acc, Tile) and acc.rows == 1 and isinstance(wvec, FloatVector)
            and _float_array(x) and _ints(x_off, x_col)):
        return None

    def codegen(context, builder, sig, args):
        tile, wv, xv, x_off_, x_col_ = args
        x_off_, x_col_ = (context.cast(builder, v, t, types.intp)
                          for v, t in zip((x_off_, x_col_), (sig.args[3], sig.args[4])))
        fma = _vector_fn(builder, "fma", acc.width, 3)
        for c in range(acc.cols):
            xval = builder.load(_address(context, builder, sig.args[2], xv,
                                         _offset(builder, x_off_, x_col_, c), acc.width), align=4)
            tile = builder.insert_value(tile, builder.call(fma, [wv, xval, builder.extract_value(tile, c)]), c)
        return tile
    return acc(acc, wvec, x, x_off, x_col), codegen


@intrinsic
def tile_pair_max(typingctx, acc):
    """The rows x cols/2 tile of max(acc[r][2c], acc[r][2c+1]): a 2-wide max pool of columns."""
    if not (isinstance(acc, Tile) and acc.cols % 2 == 0):
        return None
    half = Tile(acc.rows, acc.cols // 2, acc.width)

    def codegen(context, builder, sig, args):
        vec = ir.VectorType(ir.FloatType(), half.width)
        value = ir.Constant(ir.ArrayType(vec, half.rows * half.cols), ir.Undefined)
        for r in range(half.rows):
            for c in range(half.cols):
                a = builder.extract_value(args[0], r * acc.cols + 2 * c)
                b = builder.extract_value(args[0], r * acc.cols + 2 * c + 1)
                value = builder.insert_value(value, max_ir(builder, a, b), r * half.cols + c)
        return value
    return half(acc), codegen


@intrinsic
def tile_max(typingctx, a, b):
    """The lane-wise max of two tiles of one shape."""
    if not (isinstance(a, Tile) and a == b):
        return None

    def codegen(context, builder, sig, args):
        value = args[0]
        for i in range(a.rows * a.cols):
            value = builder.insert_value(value, max_ir(builder, builder.extract_value(args[0], i),
                                                          builder.extract_value(args[1], i)), i)
        return value
    return a(a, b), codegen


@intrinsic
def tile_store(typingctx, out, off, row_stride, col_stride, acc, cols):
    """Store the first ``cols`` columns: out[off + r*row_stride + c*col_stride : +V] = acc[r][c].

    ``cols`` is a literal <= acc.cols, so a tail tile at the right edge stores only what lies
    inside the output row.
    """
    if not (isinstance(acc, Tile) and _float_array(out) and _ints(off, row_stride, col_stride)):
        return None
    n_cols = _width(cols)
    if n_cols is None or n_cols > acc.cols:
        return None

    def codegen(context, builder, sig, args):
        outv, off_, rs, cs, tile, _ = args
        off_, rs, cs = (context.cast(builder, v, t, types.intp)
                        for v, t in zip((off_, rs, cs), sig.args[1:4]))
        for r in range(acc.rows):
            row = _offset(builder, off_, rs, r)
            for c in range(n_cols):
                ptr = _address(context, builder, sig.args[0], outv, _offset(builder, row, cs, c), acc.width)
                builder.store(builder.extract_value(tile, r * acc.cols + c), ptr, align=4)
        return context.get_dummy_value()
    return types.none(out, off, row_stride, col_stride, acc, cols), codegen


@intrinsic
def tile_load(typingctx, arr, off, row_stride, col_stride, rows, cols, width):
    """A tile read from memory: acc[r][c] = arr[off + r*row_stride + c*col_stride : +V]."""
    sizes = (_width(rows), _width(cols), _width(width))
    if None in sizes or not (_float_array(arr) and _ints(off, row_stride, col_stride)):
        return None
    tile = Tile(*sizes)

    def codegen(context, builder, sig, args):
        arrv, off_, rs, cs = args[:4]
        off_, rs, cs = (context.cast(builder, v, t, types.intp)
                        for v, t in zip((off_, rs, cs), sig.args[1:4]))
        vec = ir.VectorType(ir.FloatType(), tile.width)
        value = ir.Constant(ir.ArrayType(vec, tile.rows * tile.cols), ir.Undefined)
        for r in range(tile.rows):
            row = _offset(builder, off_, rs, r)
            for c in range(tile.cols):
                ptr = _address(context, builder, sig.args[0], arrv, _offset(builder, row, cs, c), tile.width)
                value = builder.insert_value(value, builder.load(ptr, align=4), r * tile.cols + c)
        return value
    return tile(arr, off, row_stride, col_stride, rows, cols, width), codegen


def _transpose(builder, rows: list, width: int) -> list:
    """The ``width x width`` transpose of ``rows`` (``width`` vectors): log2(width) stages of
    two-input shuffles; the stage of distance d swaps the off-diagonal d x d blocks of every
    2d x 2d block (after all stages, row i lane l holds the input's row l lane i)."""
    rows = list(rows)
    d = 1
    while d < width:
        lo = ir.Constant(ir.VectorType(ir.IntType(32), width),
                         [lane if not lane & d else width + lane - d for lane in range(width)])
        hi = ir.Constant(ir.VectorType(ir.IntType(32), width),
                         [lane + d if not lane & d else width + lane for lane in range(width)])
        for i in range(width):
            if not i & d:
                a, b = rows[i], rows[i + d]
                rows[i] = builder.shuffle_vector(a, b, lo)
                rows[i + d] = builder.shuffle_vector(a, b, hi)
        d *= 2
    return rows


@intrinsic
def transpose_block(typingctx, src, src_off, src_stride, rows_in, dst, dst_off, dst_stride,
                    rows_out, width):
    """A width x width block transposed through registers (a layout change at the network's
    edges): ``dst[dst_off + p*dst_stride + r] = src[src_off + r*src_stride + p]``.

    Rows ``r >= rows_in`` of the source read as zero, and only the first ``rows_out`` rows of
    the result are stored (the channels of a partial block); both are literals <= width, a
    power of two."""
    sizes = (_width(rows_in), _width(rows_out), _width(width))
    if (None in sizes or not (_float_array(src) and _float_array(dst)
                              and _ints(src_off, src_stride, dst_off, dst_stride))):
        return None
    n_in, n_out, v = sizes
    if v & (v - 1) or not (0 < n_in <= v and 0 < n_out <= v):
        return None

    def codegen(context, builder, sig, args):
        srcv, s_off, s_stride, _, dstv, d_off, d_stride = args[:7]
        s_off, s_stride = (context.cast(builder, a, t, types.intp)
                           for a, t in zip((s_off, s_stride), sig.args[1:3]))
        d_off, d_stride = (context.cast(builder, a, t, types.intp)
                           for a, t in zip((d_off, d_stride), sig.args[5:7]))
        zero = ir.Constant(ir.VectorType(ir.FloatType(), v), [0.0] * v)
        rows = [builder.load(_address(context, builder, sig.args[0], srcv,
                                      _offset(builder, s_off, s_stride, r), v), align=4)
                if r < n_in else zero for r in range(v)]
        for p, row in enumerate(_transpose(builder, rows, v)[:n_out]):
            builder.store(row, _address(context, builder, sig.args[4], dstv,
                                        _offset(builder, d_off, d_stride, p), v), align=4)
        return context.get_dummy_value()
    return types.none(src, src_off, src_stride, rows_in, dst, dst_off, dst_stride, rows_out,
                      width), codegen


@intrinsic
def tile_keep_lanes(typingctx, acc, count):
    """``acc`` with the lanes from a literal ``count`` on of its last row set to 0, in
    registers: the last output-channel block's pad lanes, whose sums of ``0 * x`` are NaN
    where x is NaN or Inf (a later reduction would read them). One masked move a column."""
    n = _width(count)
    if not isinstance(acc, Tile) or n is None or not 0 < n <= acc.width:
        return None

    def codegen(context, builder, sig, args):
        value = args[0]
        for c in range(acc.cols):
            i = (acc.rows - 1) * acc.cols + c
            value = builder.insert_value(
                value, keep_lanes_ir(builder, builder.extract_value(value, i), n, acc.width), i)
        return value
    return acc(acc, count), codegen
