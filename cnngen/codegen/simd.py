"""Explicit SIMD vectors for Numba: a ``float32 x V`` value type and the few operations a
convolution microkernel needs.

LLVM's loop vectoriser guesses which loop to vectorise and often guesses wrong (gathers,
stack spills). Kernels written with these intrinsics say exactly which values are vectors:
``load``/``store`` move ``V`` contiguous floats, ``splat`` broadcasts one float, ``fma``
is ``llvm.fma``. The width is a literal in the generated source, so one module serves
AVX-512 (16), AVX2 (8) and SSE (4). ``UIntVector`` (``uint32 x V``) runs integer hashes, such
as dropout's mask, in vector lanes.

Addresses are in-bounds GEPs from the array's data pointer plus a flat element offset:
no negative-index wraparound and no bounds check. Generated kernels compute offsets that
are in bounds by construction; the tests compare every kernel with the reference.
"""
from __future__ import annotations

import operator

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.datamodel import models
from numba.extending import intrinsic, overload, register_model


class FloatVector(types.Type):
    """A ``<width x float>`` register value."""

    def __init__(self, width: int):
        self.width = width
        super().__init__(name=f"float32x{width}")


@register_model(FloatVector)
class FloatVectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(ir.FloatType(), fe_type.width))


def _width(literal) -> int | None:
    """The value of a literal integer argument (widths, tile sizes); None if not literal."""
    return literal.literal_value if isinstance(literal, types.IntegerLiteral) else None


def _float_array(arr) -> bool:
    """A float32 array or a raw float32 pointer (what kernel tasks receive)."""
    if isinstance(arr, types.CPointer):
        return arr.dtype == types.float32
    return isinstance(arr, types.Array) and arr.dtype == types.float32


def _address(context, builder, arrty, arr, offset, width=None):
    """In-bounds pointer to element ``offset`` of ``arr`` (as a vector pointer if ``width``)."""
    if isinstance(arrty, types.CPointer):
        data = arr
    else:
        data = context.make_array(arrty)(context, builder, arr).data
    ptr = builder.gep(data, [offset], inbounds=True)
    if width is None:
        return ptr
    return builder.bitcast(ptr, ir.VectorType(ir.FloatType(), width).as_pointer())


def _access_width(arr, offset, width) -> int | None:
    """The literal width of a vector access ``arr[offset:offset+width]``; None if ill-typed."""
    if not (_float_array(arr) and isinstance(offset, types.Integer)):
        return None
    return _width(width)


def splat_ir(builder, scalar, width: int):
    """IR for a ``<width x float>`` with every lane equal to ``scalar``."""
    vec = ir.VectorType(ir.FloatType(), width)
    one = builder.insert_element(ir.Constant(vec, ir.Undefined), scalar,
                                 ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, one,
                                  ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width))


@intrinsic
def load(typingctx, arr, offset, width):
    """``arr[offset:offset+width]`` as a vector."""
    v = _access_width(arr, offset, width)
    if v is None:
        return None

    def codegen(context, builder, sig, args):
        ptr = _address(context, builder, sig.args[0], args[0], args[1], v)
        return builder.load(ptr, align=4)
    return FloatVector(v)(arr, offset, width), codegen


@intrinsic
def store(typingctx, arr, offset, vec):
    """``arr[offset:offset+width] = vec``."""
    if not (_float_array(arr) and isinstance(offset, types.Integer)
            and isinstance(vec, FloatVector)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _address(context, builder, sig.args[0], args[0], args[1], sig.args[2].width)
        builder.store(args[2], ptr, align=4)
        return context.get_dummy_value()
    return types.none(arr, offset, vec), codegen


@intrinsic
def index_at(typingctx, arr, offset):
    """Element ``offset`` of ``arr`` read as the int32 it holds (an index table passed as a
    float32 buffer: ``table.view(np.float32)``), as an int64."""
    if not (_float_array(arr) and isinstance(offset, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = builder.bitcast(_address(context, builder, sig.args[0], args[0], args[1]),
                              ir.IntType(32).as_pointer())
        return builder.sext(builder.load(ptr, align=4), ir.IntType(64))
    return types.int64(arr, offset), codegen


@intrinsic
def splat(typingctx, value, width):
    """A vector with every lane equal to the scalar ``value``."""
    if not isinstance(value, (types.Float, types.Integer)):
        return None
    v = _width(width)
    if v is None:
        return None

    def codegen(context, builder, sig, args):
        return splat_ir(builder, context.cast(builder, args[0], sig.args[0], types.float32), v)
    return FloatVector(v)(value, width), codegen


@intrinsic
def broadcast(typingctx, arr, offset, width):
    """A vector with every lane equal to ``arr[offset]`` (one broadcast load)."""
    v = _access_width(arr, offset, width)
    if v is None:
        return None

    def codegen(context, builder, sig, args):
        return splat_ir(builder, builder.load(_address(context, builder, sig.args[0], args[0],
                                                       args[1])), v)
    return FloatVector(v)(arr, offset, width), codegen


@intrinsic
def zeros(typingctx, width):
    v = _width(width)
    if v is None:
        return None

    def codegen(context, builder, sig, args):
        return ir.Constant(ir.VectorType(ir.FloatType(), v), [0.0] * v)
    return FloatVector(v)(width), codegen


def keep_lanes_ir(builder, value, count: int, width: int):
    """IR for ``value`` (a ``<width x float>``) with the lanes from ``count`` on set to 0."""
    mask = ir.Constant(ir.VectorType(ir.IntType(1), width), [int(i < count) for i in range(width)])
    return builder.select(mask, value, ir.Constant(ir.VectorType(ir.FloatType(), width),
                                                   [0.0] * width))


@intrinsic
def keep_lanes(typingctx, vec, count):
    """``vec`` with the lanes from a literal ``count`` on set to 0 (one masked move).

    A reduction over channels writes its last output block's pad lanes as sums of
    ``0 * x``, which is NaN where x is NaN or Inf; a later reduction would read that NaN
    (times a zero weight) into real channels. Writers keep those lanes 0."""
    n = _width(count)
    if not isinstance(vec, FloatVector) or n is None or not 0 < n <= vec.width:
        return None

    def codegen(context, builder, sig, args):
        return keep_lanes_ir(builder, args[0], n, vec.width)
    return vec(vec, count), codegen


@intrinsic
def where_max(typingctx, x, best, then, otherwise):
    """``then`` in the lanes where ``x`` is the maximum ``best`` (equal to it, or NaN: NaN
    counts as the largest value, as in numpy's argmax and PyTorch's pool indices), else
    ``otherwise``. One compare pair and a blend."""
    if not (isinstance(x, FloatVector) and x == best == then == otherwise):
        return None

    def codegen(context, builder, sig, args):
        a, b, yes, no = args
        hit = builder.or_(builder.fcmp_ordered("==", a, b), builder.fcmp_ordered("uno", a, a))
        return builder.select(hit, yes, no)
    return x(x, best, then, otherwise), codegen


@intrinsic
def stack_floats(typingctx, count):
    """A scratch array of a literal ``count`` float32 on the calling function's stack.

    Uninitialised, and valid until that function returns: call it in the task body itself,
    never in a helper that returns the pointer.
    """
    n = _width(count)
    if n is None or n <= 0:
        return None

    def codegen(context, builder, sig, args):
        return cgutils.alloca_once(builder, ir.FloatType(), size=n)
    return types.CPointer(types.float32)(count), codegen


@intrinsic
def lane(typingctx, vec, index):
    """Lane ``index`` of ``vec`` as a float32 scalar."""
    if not (isinstance(vec, FloatVector) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        idx = context.cast(builder, args[1], sig.args[1], types.int32)
        return builder.extract_element(args[0], idx)
    return types.float32(vec, index), codegen


def _vector_fn(builder, name: str, width: int, arity: int):
    vec = ir.VectorType(ir.FloatType(), width)
    return cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vec, [vec] * arity), f"llvm.{name}.v{width}f32")


@intrinsic
def fma(typingctx, a, b, c):
    """``a*b + c`` lane by lane, one rounding."""
    if not (isinstance(a, FloatVector) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        return builder.call(_vector_fn(builder, "fma", a.width, 3), args)
    return a(a, b, c), codegen


def max_ir(builder, a, b):
    """IR for ``max(a, b)`` that is NaN if either operand is NaN, as PyTorch's max is.

    ``a > b ? a : b`` is one ``vmaxps``, whose result is ``b`` when either is NaN; the
    second select keeps a NaN ``a``. (``llvm.maxnum`` drops NaN; under ``nnan`` LLVM may
    assume there is none.)"""
    larger = builder.select(builder.fcmp_ordered(">", a, b), a, b)
    return builder.select(builder.fcmp_ordered("uno", a, a), a, larger)


def min_ir(builder, a, b):
    """IR for ``min(a, b)``, NaN if either operand is NaN (see ``max_ir``)."""
    smaller = builder.select(builder.fcmp_ordered("<", a, b), a, b)
    return builder.select(builder.fcmp_ordered("uno", a, a), a, smaller)


def _binary(build):
    """An intrinsic ``f(a, b)`` on two vectors of one width: ``build(builder, a, b)`` is an
    IRBuilder method name or a function of the builder."""
    def typer(typingctx, a, b):
        if not (isinstance(a, FloatVector) and a == b):
            return None

        def codegen(context, builder, sig, args):
            if callable(build):
                return build(builder, args[0], args[1])
            return getattr(builder, build)(args[0], args[1])
        return a(a, b), codegen
    typer.__name__ = getattr(build, "__name__", build)
    return intrinsic(typer)


vmax = _binary(max_ir)
vmin = _binary(min_ir)
vadd = _binary("fadd")
vsub = _binary("fsub")
vmul = _binary("fmul")
vdiv = _binary("fdiv")


def _overload_operator(op, vector_fn):
    @overload(op, inline="always")
    def impl(a, b):
        if isinstance(a, FloatVector) and a == b:
            return lambda a, b: vector_fn(a, b)


for _op, _fn in ((operator.add, vadd), (operator.sub, vsub), (operator.mul, vmul),
                 (operator.truediv, vdiv)):
    _overload_operator(_op, _fn)


# uint32 vectors -------------------------------------------------------------------------------
# Numba widens uint32 arithmetic to 64 bits, and truncating back with np.uint32() reaches LLVM
# as ``and 0xFFFFFFFF`` on i64 values, so an integer hash stays in 64-bit lanes. AVX2 has no
# 64-bit vector multiply (AVX-512 has vpmullq), so LLVM leaves such a hash scalar there. These
# vectors are ``<width x i32>``: add, mul, xor and >> wrap mod 2**32, one instruction each.

class UIntVector(types.Type):
    """A ``<width x i32>`` register value of uint32 lanes; arithmetic wraps mod 2**32."""

    def __init__(self, width: int):
        self.width = width
        super().__init__(name=f"uint32x{width}")


@register_model(UIntVector)
class UIntVectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(ir.IntType(32), fe_type.width))


def _uint_splat_ir(context, builder, scalar, scalar_type, width: int):
    """IR for a ``<width x i32>`` with every lane equal to the integer ``scalar`` mod 2**32."""
    vec = ir.VectorType(ir.IntType(32), width)
    value = builder.trunc(context.cast(builder, scalar, scalar_type, types.uint64), ir.IntType(32))
    one = builder.insert_element(ir.Constant(vec, ir.Undefined), value,
                                 ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, one,
                                  ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width))


def _uint_operand_ir(context, builder, operand_type, operand, width: int):
    """IR for a uint32 vector operand: itself, or an integer scalar splat to every lane."""
    if isinstance(operand_type, UIntVector):
        return operand
    return _uint_splat_ir(context, builder, operand, operand_type, width)


def _uint_operand(vec, other) -> bool:
    """Whether ``other`` pairs with the uint32 vector ``vec``: the same type, or an integer."""
    return isinstance(vec, UIntVector) and (other == vec or isinstance(other, types.Integer))


@intrinsic
def uint_splat(typingctx, value, width):
    """A uint32 vector with every lane equal to the integer ``value`` mod 2**32."""
    v = _width(width)
    if v is None or not isinstance(value, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return _uint_splat_ir(context, builder, args[0], sig.args[0], v)
    return UIntVector(v)(value, width), codegen


@intrinsic
def uint_ramp(typingctx, first, step, width):
    """The uint32 vector whose lane i is ``first + i*step`` mod 2**32 (integer scalars)."""
    v = _width(width)
    if v is None or not (isinstance(first, types.Integer) and isinstance(step, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        lanes = ir.Constant(ir.VectorType(ir.IntType(32), v), list(range(v)))
        steps = builder.mul(_uint_splat_ir(context, builder, args[1], sig.args[1], v), lanes)
        return builder.add(_uint_splat_ir(context, builder, args[0], sig.args[0], v), steps)
    return UIntVector(v)(first, step, width), codegen


def _uint_binary(name: str):
    """An intrinsic ``f(a, b)``: the IRBuilder method ``name`` on the uint32 vector ``a`` and
    ``b``, a vector of its type or an integer scalar for every lane."""
    def typer(typingctx, a, b):
        if not _uint_operand(a, b):
            return None

        def codegen(context, builder, sig, args):
            other = _uint_operand_ir(context, builder, sig.args[1], args[1], a.width)
            return getattr(builder, name)(args[0], other)
        return a(a, b), codegen
    typer.__name__ = f"uint_{name}"
    return intrinsic(typer)


uint_add = _uint_binary("add")
uint_mul = _uint_binary("mul")
uint_xor = _uint_binary("xor")
uint_shr = _uint_binary("lshr")     # a logical shift; counts must be in [0, 32)


def _overload_uint_operator(op, vector_fn):
    @overload(op, inline="always")
    def impl(a, b):
        if _uint_operand(a, b):
            return lambda a, b: vector_fn(a, b)


for _op, _fn in ((operator.add, uint_add), (operator.mul, uint_mul), (operator.xor, uint_xor),
                 (operator.rshift, uint_shr)):
    _overload_uint_operator(_op, _fn)


@intrinsic
def where_below(typingctx, a, bound, then, otherwise):
    """``then`` in the lanes where the uint32 vector ``a`` is below ``bound`` (unsigned; a
    vector, or an integer for every lane), else ``otherwise``. One compare and a blend."""
    if not (_uint_operand(a, bound) and isinstance(then, FloatVector) and then == otherwise
            and then.width == a.width):
        return None

    def codegen(context, builder, sig, args):
        limit = _uint_operand_ir(context, builder, sig.args[1], args[1], a.width)
        return builder.select(builder.icmp_unsigned("<", args[0], limit), args[2], args[3])
    return then(a, bound, then, otherwise), codegen
