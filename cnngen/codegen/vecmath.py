"""Vectorised float32 math on ``FloatVector`` values: ``vexp`` and the fused activations.

Each function is a Numba intrinsic that emits straight-line LLVM vector IR, so a kernel's
epilogue stays in SIMD registers (``llvm.exp.v16f32`` would be split into 16 libm calls).
A template imports the function that ``ACTIVATIONS`` names and calls it on an accumulator::

    from cnngen.codegen.vecmath import sigmoid, leaky_relu
    acc = sigmoid(acc)
    acc = leaky_relu(acc, 0.01)      # alpha: a float literal rendered from the layer's attrs

Every other activation takes the vector alone, or ``(v, alpha)`` and ignores alpha, so
templates call any activation as ``${activation}(v, ALPHA)``. The maths follows ``ops/activation.py``:

    exp(x)      = 2^n * p(r),  n = rint(x*log2(e)),  r = x - n*ln2,  p ~ exp on |r| <= ln2/2
    sigmoid(x)  = 1/(1 + e) if x >= 0 else e/(1 + e),   e = exp(-|x|)   (no overflow)
    tanh(x)     = sign(x) * (1 - e)/(1 + e),  e = exp(-2|x|)            for |x| >= 0.625
                = x + x^3 * q(x^2)                                       for |x| <  0.625
    swish(x)    = silu(x) = x * sigmoid(x)
    hardswish(x) = x * (min(max(x + 3, 0), 6) / 6)
    leaky_relu(x, alpha) = max(x, alpha*x)       (valid because 0 <= alpha <= 1)

Kernels compile with the flags in ``parallel.FASTMATH``: Numba puts them on every float binop
that has no flags of its own. Calls on vectors (``llvm.fma``) are left alone, so the
Cody-Waite reduction and the polynomials are written as FMAs, and the two ``2^k`` scalings
carry an explicit flag so that LLVM cannot reassociate them into an overflowing ``2^n``.
The divisions get ``arcp``; on x86 LLVM then emits a reciprocal estimate plus one Newton
step (``vrcp14ps``/``vrcpps``), measured within 4 half-ulps.

NaN and Inf behave as in the float64 reference (``ops/activation.py``): NaN in gives NaN
out, relu(inf) = inf, sigmoid(-inf) = 0, swish(-inf) = hardswish(-inf) = -inf * 0 = NaN.
Clamps and maxima are written as ``a > b ? a : b`` selects, one ``vmaxps``/``vminps``
each; which operand comes second decides where a NaN goes (x86 returns the second).
"""
from __future__ import annotations

import math

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .simd import FloatVector, _vector_fn, splat_ir

# exp: the input is clamped so that n = rint(x*log2(e)) stays in [-150, 128]; the result is
# then 0 or a denormal below about -103.3 and at most 3.39e38 (finite) above.
EXP_LO = -104.0
EXP_HI = 88.72283
LOG2E = 1.4426950408889634
# ln2 = LN2_HI + LN2_LO; LN2_HI has 9 significant bits, so n*LN2_HI and x - n*LN2_HI are exact.
LN2_HI = 0.693359375
LN2_LO = math.log(2) - LN2_HI
# p(r) = sum EXP_POLY[k] r^k: minimax for relative error on |r| <= ln2/2 with p(0) = p'(0) = 1;
# the approximation error is 5e-9, below float32 rounding.
EXP_POLY = (1.0, 1.0, 0.49999994, 0.16666515, 0.041668456, 0.008369419, 0.0013813144)
# tanh(x) = x + x^3 * q(x^2) on |x| < 0.625 (Cephes tanhf), where (1 - e)/(1 + e) cancels.
TANH_SMALL = 0.625
TANH_POLY = (-3.33332819422e-1, 1.33314422036e-1, -5.37397155531e-2, 2.06390887954e-2,
             -5.70498872745e-3)

_F32 = ir.FloatType()
_I32 = ir.IntType(32)
# A flag that is not "fast": Numba's fastmath pass only rewrites binops without flags.
_NO_REASSOC = ("nsz",)


def _const(width: int, value, scalar=_F32) -> ir.Constant:
    """A ``<width x scalar>`` constant with every lane equal to ``value``."""
    return ir.Constant(ir.VectorType(scalar, width), [value] * width)


def _call(builder, name: str, width: int, *args):
    """The result of the LLVM vector intrinsic ``llvm.<name>.v<width>f32`` on ``args``."""
    return builder.call(_vector_fn(builder, name, width, len(args)), args)


def _horner(builder, width: int, coefs, x):
    """``sum coefs[k] * x^k`` evaluated with FMAs, highest degree first."""
    acc = _const(width, coefs[-1])
    for coef in reversed(coefs[:-1]):
        acc = _call(builder, "fma", width, acc, x, _const(width, coef))
    return acc


def _abs_and_sign(builder, width: int, x):
    """``(|x|, sign bits of x)``: the sign as an integer vector for ``_with_sign``."""
    bits = builder.bitcast(x, ir.VectorType(_I32, width))
    sign = builder.and_(bits, _const(width, -0x80000000, _I32))
    return _call(builder, "fabs", width, x), sign


def _with_sign(builder, width: int, magnitude, sign):
    """``magnitude`` (non-negative) with the sign bits ``sign`` copied in."""
    bits = builder.bitcast(magnitude, ir.VectorType(_I32, width))
    return builder.bitcast(builder.or_(bits, sign), ir.VectorType(_F32, width))


def _pow2(builder, width: int, k):
    """``2^k`` for an integer vector ``k`` in [-126, 127], built in the exponent bits."""
    biased = builder.add(k, _const(width, 127, _I32))
    bits = builder.shl(biased, _const(width, 23, _I32))
    return builder.bitcast(bits, ir.VectorType(_F32, width))


def _select_max(builder, a, b):
    """``a > b ? a : b``: one ``vmaxps``; ``b`` when either is NaN."""
    return builder.select(builder.fcmp_ordered(">", a, b), a, b)


def _select_min(builder, a, b):
    """``a < b ? a : b``: one ``vminps``; ``b`` when either is NaN."""
    return builder.select(builder.fcmp_ordered("<", a, b), a, b)


def _exp(builder, width: int, x):
    """``exp(x)`` lane by lane: relative error < 1e-7 on [-87.3, 88.7], 0 below -104, at
    most 3.39e38 above 88.7 (never inf), NaN for NaN."""
    result = _exp_clamped(builder, width, x)
    return builder.select(builder.fcmp_ordered("uno", x, x), x, result)


def _exp_clamped(builder, width: int, x):
    """``exp`` of ``x`` clamped to [EXP_LO, EXP_HI] (a NaN lane becomes EXP_LO)."""
    # range reduction: x = n*ln2 + r, |r| <= ln2/2
    x = _select_min(builder, _select_max(builder, x, _const(width, EXP_LO)), _const(width, EXP_HI))
    n = _call(builder, "rint", width, builder.fmul(x, _const(width, LOG2E)))
    r = _call(builder, "fma", width, n, _const(width, -LN2_HI), x)
    r = _call(builder, "fma", width, n, _const(width, -LN2_LO), r)
    p = _horner(builder, width, EXP_POLY, r)
    # scale by 2^n = 2^(n//2) * 2^(n - n//2): each factor stays a normal float for n in
    # [-150, 128], and the second product rounds once into the denormals
    k = builder.fptosi(n, ir.VectorType(_I32, width))
    k_half = builder.ashr(k, _const(width, 1, _I32))
    p = builder.fmul(p, _pow2(builder, width, k_half), flags=_NO_REASSOC)
    return builder.fmul(p, _pow2(builder, width, builder.sub(k, k_half)), flags=_NO_REASSOC)


def _sigmoid(builder, width: int, x):
    """``1/(1 + exp(-x))`` computed from ``exp(-|x|)``, so no lane overflows."""
    magnitude, _ = _abs_and_sign(builder, width, x)
    e = _exp(builder, width, builder.fneg(magnitude))
    one = _const(width, 1.0)
    numerator = builder.select(builder.fcmp_ordered(">=", x, _const(width, 0.0)), one, e)
    return builder.fdiv(numerator, builder.fadd(one, e))


def _tanh(builder, width: int, x):
    """``tanh(x)``: an odd polynomial near 0, ``(1 - e)/(1 + e)`` with the sign outside."""
    magnitude, sign = _abs_and_sign(builder, width, x)
    e = _exp(builder, width, builder.fmul(magnitude, _const(width, -2.0)))
    one = _const(width, 1.0)
    large = _with_sign(builder, width, builder.fdiv(builder.fsub(one, e), builder.fadd(one, e)),
                       sign)
    x2 = builder.fmul(x, x)
    q = _horner(builder, width, TANH_POLY, x2)
    small = _call(builder, "fma", width, builder.fmul(x, x2), q, x)
    is_small = builder.fcmp_ordered("<", magnitude, _const(width, TANH_SMALL))
    return builder.select(is_small, small, large)


def _swish(builder, width: int, x):
    """``x * sigmoid(x)``."""
    return builder.fmul(x, _sigmoid(builder, width, x))


def _hardswish(builder, width: int, x):
    """``x * (min(max(x + 3, 0), 6) / 6)``; the factor is in [0, 1], so no lane overflows."""
    gate = _select_max(builder, _const(width, 0.0), builder.fadd(x, _const(width, 3.0)))
    gate = _select_min(builder, _const(width, 6.0), gate)
    return builder.fmul(x, builder.fmul(gate, _const(width, 1.0 / 6.0)))


def _relu(builder, width: int, x):
    """``max(x, 0)``; NaN stays NaN (x is the select's second operand)."""
    return _select_max(builder, _const(width, 0.0), x)


def _identity(builder, width: int, x):
    """``x`` unchanged."""
    return x


def _unary(build, name: str):
    """A Numba intrinsic ``name(v)`` that returns ``build(builder, width, v)``.

    The returned function also accepts ``name(v, alpha)`` and ignores alpha, so that a
    template calls every activation the same way as leaky_relu: ``${activation}(v, ALPHA)``.
    """
    def typer(typingctx, v):
        if not isinstance(v, FloatVector):
            return None

        def codegen(context, builder, sig, args):
            return build(builder, v.width, args[0])
        return v(v), codegen
    typer.__name__ = name
    typer.__doc__ = build.__doc__
    vector_fn = intrinsic(typer)

    @njit(inline="always")
    def activation(v, alpha=0.0):
        return vector_fn(v)
    activation.__doc__ = build.__doc__
    return activation


vexp = _unary(_exp, "vexp")
identity = _unary(_identity, "identity")
relu = _unary(_relu, "relu")
sigmoid = _unary(_sigmoid, "sigmoid")
tanh = _unary(_tanh, "tanh")
swish = _unary(_swish, "swish")
silu = swish
hardswish = _unary(_hardswish, "hardswish")


@intrinsic
def leaky_relu(typingctx, v, alpha):
    """``max(v, alpha*v)`` = ``v if v > 0 else alpha*v`` for a scalar ``0 <= alpha <= 1``."""
    if not (isinstance(v, FloatVector) and isinstance(alpha, (types.Float, types.Integer))):
        return None

    def codegen(context, builder, sig, args):
        alphas = splat_ir(builder, context.cast(builder, args[1], sig.args[1], types.float32),
                          v.width)
        return _select_max(builder, builder.fmul(alphas, args[0]), args[0])
    return v(v, alpha), codegen


# ---- derivatives from the activation's output y ----------------------------------------------
# relu, leaky_relu, sigmoid and tanh have derivatives that are functions of y = act(x), so a
# backward needs only the forward's output (or recomputes y). The kinks follow PyTorch:
# relu'(0) = 0, leaky_relu'(0) = alpha; a NaN y gives relu' = 0 and leaky_relu' = alpha.

def _identity_grad(builder, width: int, y):
    """1."""
    return _const(width, 1.0)


def _relu_grad(builder, width: int, y):
    """relu' from y = relu(x): 1 where y > 0, else 0."""
    return builder.select(builder.fcmp_ordered(">", y, _const(width, 0.0)), _const(width, 1.0),
                          _const(width, 0.0))


def _sigmoid_grad(builder, width: int, y):
    """sigmoid' from y = sigmoid(x): y*(1 - y)."""
    return builder.fmul(y, builder.fsub(_const(width, 1.0), y))


def _tanh_grad(builder, width: int, y):
    """tanh' from y = tanh(x): 1 - y*y."""
    return builder.fsub(_const(width, 1.0), builder.fmul(y, y))


identity_grad = _unary(_identity_grad, "identity_grad")
relu_grad = _unary(_relu_grad, "relu_grad")
sigmoid_grad = _unary(_sigmoid_grad, "sigmoid_grad")
tanh_grad = _unary(_tanh_grad, "tanh_grad")


@intrinsic
def leaky_relu_grad(typingctx, y, alpha):
    """leaky_relu' from y = leaky_relu(x, alpha): 1 where y > 0, else alpha."""
    if not (isinstance(y, FloatVector) and isinstance(alpha, (types.Float, types.Integer))):
        return None

    def codegen(context, builder, sig, args):
        alphas = splat_ir(builder, context.cast(builder, args[1], sig.args[1], types.float32),
                          y.width)
        return builder.select(builder.fcmp_ordered(">", args[0], _const(y.width, 0.0)),
                              _const(y.width, 1.0), alphas)
    return y(y, alpha), codegen


# activation name -> the function of this module that gives its derivative from its output;
# called as ``${derivative}(y, ALPHA)`` like the activations.
OUTPUT_DERIVATIVES: dict[str, str] = {
    "identity": "identity_grad",
    "relu": "relu_grad",
    "leaky_relu": "leaky_relu_grad",
    "sigmoid": "sigmoid_grad",
    "tanh": "tanh_grad",
}


# activation name (ops/activation.NAMES) -> the function in this module a template calls.
# Each takes the vector alone, except leaky_relu(v, alpha).
ACTIVATIONS: dict[str, str] = {
    "identity": "identity",
    "relu": "relu",
    "leaky_relu": "leaky_relu",
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "swish": "swish",
    "silu": "silu",
    "hardswish": "hardswish",
}
