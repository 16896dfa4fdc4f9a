"""Backward lowerings of the activations, softmax, the merge ops and the shape ops.

- every activation: ``activation_grad``, dx = dy * act'(src), src the activation's input
  or output, whichever its derivative needs (``DERIVATIVE_READS``). A task per (image,
  channel block, row), one vector load of each operand and one store per pixel.
- softmax over the channels: ``softmax_grad``, dx = y*(dy - sum_c dy*y), a task per row.
- add: dz = dy * act'(z) (the fused activation, identity if none) written to every input
  that wants a gradient: one ``activation_grad`` call writes the first two, copies (the
  identity) write the rest. act' reads the output for identity, relu, leaky_relu,
  sigmoid and tanh; swish, silu and hardswish need z itself, which ``binary`` recomputes
  into ``<layer>:z`` (the sum of the inputs).
- multiply (size-1 axes broadcast): ``multiply_grad`` per input, dx_i = dy * (the product
  of the others), summed over the axes x_i broadcasts along. With two inputs the product is
  the other input, read in place with the forward's broadcasting strides; with more,
  ``binary`` first forms it in ``<layer>:others``.
- concat: ``concat_grad`` per input, its channel range of dy (any offset).
- flatten and reshape: ``relayout`` from dy's shape back to the input's (the C-order
  values move; the same kernel as the forward).

Every kernel reads each operand through its own strides and origin and writes only the
interior of its outputs, every lane (pad lanes finite).
"""
from __future__ import annotations

from ...ops import activation
from ..kernel import Buffer, Call, Const, spec
from ..layout import Blocked, FlatView
from . import LEAKY_ALPHA, GradLowering
from .elementwise import operand, padded

# What each activation's derivative reads: its input (the pre-activation) or its output.
DERIVATIVE_READS = {name: "input" if name in activation.INPUT_DERIVATIVE else "output"
                    for name in activation.NAMES}
DERIVATIVE = {name: f"{'swish' if name == 'silu' else name}_grad" for name in activation.NAMES}
UNUSED = {"batch": 0, "block": 0, "row": 0, "origin": 0}


def no_strides(prefix: str) -> dict:
    return {f"{prefix}_{key}": value for key, value in UNUSED.items()}


def activation_grad(layer: str, act: str, dy: tuple[Buffer, Blocked],
                    src: tuple[Buffer, Blocked], outs, n_batch: int,
                    alpha: float = LEAKY_ALPHA) -> Call:
    """One call of dx = dy * act'(src) into one or two ``(buffer, layout)`` outputs.

    ``src`` is the activation's input or output as ``DERIVATIVE_READS[act]`` says (for
    identity: anything, it is not read). Usable for any op with a fused activation."""
    (dy_buffer, dy_layout), (src_buffer, src_layout) = dy, src
    layout = outs[0][1]
    second = len(outs) == 2
    pixels = n_batch * layout.blocks * layout.vector * layout.height * layout.width
    kernel = spec("activation_grad", (act, "grad"), f"nchw{layout.vector}c",
                  flops=2 * pixels, bytes=4 * pixels * (2 + len(outs)),
                  derivative=DERIVATIVE[act], alpha=float(alpha), second=second,
                  blocks=layout.blocks, height=layout.height, width=layout.width,
                  **dy_layout.strides("dy"), **src_layout.strides("src"),
                  **outs[0][1].strides("dx0"),
                  **(outs[1][1].strides("dx1") if second else no_strides("dx1")))
    return Call(layer, kernel, (dy_buffer, src_buffer, *(b for b, _ in outs)))


def activation_backward(g: GradLowering) -> list[Call]:
    if g.d_ins[0] is None:
        return []
    act = g.node.op
    src = ((g.output, g.out) if DERIVATIVE_READS[act] == "output"
           else (g.inputs[0], g.ins[0]))
    return [activation_grad(g.node.name, act, (g.grad_output, g.d_out), src,
                            [(g.grad_input(0), g.d_ins[0])], g.n_batch,
                            g.node.attrs.get("alpha", LEAKY_ALPHA))]


def softmax_backward(g: GradLowering) -> list[Call]:
    if g.d_ins[0] is None:
        return []
    y, dy, dx = g.out, g.d_out, g.d_ins[0]
    pixels = g.n_batch * y.blocks * y.vector * y.height * y.width
    kernel = spec("softmax_grad", ("softmax", "grad"), f"nchw{y.vector}c", flops=4 * pixels,
                  bytes=4 * 4 * pixels, blocks=y.blocks, height=y.height, width=y.width,
                  **y.strides("y"), **dy.strides("dy"), **dx.strides("dx"))
    return [Call(g.node.name, kernel, (g.output, g.grad_output, g.grad_input(0)))]


def combine(g: GradLowering, op: str, operands, what: str) -> tuple[list[Call], Buffer, Blocked]:
    """``binary`` calls that add or multiply ``operands`` ((buffer, layout) pairs) into the
    temp ``<layer>:<what>`` of the output's shape (no halo)."""
    out = g.out
    layout = Blocked(out.channels, out.height, out.width, out.vector)
    temp = g.temp(what, layout)
    calls = []
    for i in range(1, len(operands)):
        a_buffer, a_layout = operands[0] if i == 1 else (temp, layout)
        b_buffer, b_layout = operands[i]
        kernel = spec("binary", (op, what), f"nchw{out.vector}c",
                      flops=g.n_batch * out.channels * out.height * out.width,
                      bytes=4 * 3 * layout.size(g.n_batch), activation="identity", alpha=0.0,
                      combine={"add": "vadd", "multiply": "vmul"}[op], blocks=layout.blocks,
                      height=layout.height, width=layout.width,
                      **operand("a", a_layout, layout), **operand("b", b_layout, layout),
                      **layout.strides("out"))
        calls.append(Call(g.node.name, kernel, (a_buffer, b_buffer, temp)))
    return calls, temp, layout


def add_backward(g: GradLowering) -> list[Call]:
    """dz = dy * act'(z) into every input that wants a gradient."""
    wanted = [(g.grad_input(i), d) for i, d in enumerate(g.d_ins) if d is not None]
    if not wanted:
        return []
    act = g.node.attrs.get("activation", "identity")
    calls: list[Call] = []
    if act == "identity":
        src = (g.grad_output, g.d_out)
    elif DERIVATIVE_READS[act] == "output":
        src = (g.output, g.out)
    else:
        calls, z, layout = combine(g, "add", list(zip(g.inputs, g.ins)), "z")
        src = (z, layout)
    dy = (g.grad_output, g.d_out)
    calls.append(activation_grad(g.node.name, act, dy, src, wanted[:2], g.n_batch))
    for i in range(2, len(wanted), 2):
        calls.append(activation_grad(g.node.name, "identity", wanted[0], wanted[0],
                                     wanted[i:i + 2], g.n_batch))
    return calls


def multiply_backward(g: GradLowering) -> list[Call]:
    """dx_i = dy * prod_{j != i} x_j, summed over the axes x_i broadcasts along."""
    out, dy, v, name = g.out, g.d_out, g.out.vector, g.node.name
    operands = list(zip(g.inputs, g.ins))
    mask = Const(name, "channel_mask", lambda p: padded(1.0, out.channels, v))
    calls = []
    for i, dx in enumerate(g.d_ins):
        if dx is None:
            continue
        others = operands[:i] + operands[i + 1:]
        if len(others) == 1:
            p, p_layout = others[0]
        else:
            product, p, p_layout = combine(g, "multiply", others, "others")
            calls += product
        x = g.ins[i]
        kernel = spec("multiply_grad", ("multiply", "grad"), f"nchw{v}c",
                      flops=2 * g.n_batch * out.blocks * v * out.height * out.width,
                      bytes=4 * (2 * dy.size(g.n_batch) + dx.size(g.n_batch)),
                      sum_c=x.channels == 1 < out.channels, sum_h=x.height == 1 < out.height,
                      sum_w=x.width == 1 < out.width, blocks=out.blocks, height=out.height,
                      width=out.width, **dy.strides("dy"), **operand("p", p_layout, out),
                      **dx.strides("dx"))
        calls.append(Call(name, kernel, (g.grad_output, p, mask, g.grad_input(i))))
    return calls


def concat_backward(g: GradLowering) -> list[Call]:
    """Each input's channel range of dy."""
    dy, calls, offset = g.d_out, [], 0
    for i, (x, dx) in enumerate(zip(g.ins, g.d_ins)):
        if dx is not None:
            kernel = spec("concat_grad", ("concat", "grad"), f"nchw{dy.vector}c",
                          bytes=8 * g.n_batch * x.channels * x.height * x.width,
                          height=dy.height, width=dy.width, channels=x.channels,
                          offset=offset, dy_blocks=dy.blocks, **dy.strides("dy"),
                          **dx.strides("dx"))
            calls.append(Call(g.node.name, kernel, (g.grad_output, g.grad_input(i))))
        offset += x.channels
    return calls


def relayout_backward(g: GradLowering) -> list[Call]:
    """flatten / reshape: dy's C-order values moved back to the input's shape."""
    dx = g.d_ins[0]
    if dx is None:
        return []
    # a flatten that dense layers read in place has its gradient in the source's layout
    dy = g.d_out.source if isinstance(g.d_out, FlatView) else g.d_out
    kernel = spec("relayout", (g.node.op, "grad"), f"nchw{dx.vector}c",
                  bytes=8 * g.n_batch * dx.channels * dx.height * dx.width,
                  c_in=dy.channels, h_in=dy.height, w_in=dy.width,
                  c_out=dx.channels, h_out=dx.height, w_out=dx.width,
                  **dy.strides("x"), **dx.strides("out"))
    return [Call(g.node.name, kernel, (g.grad_output, g.grad_input(0)))]


TRAIN: dict = {}

BACKWARD = {
    "softmax": softmax_backward, "add": add_backward, "multiply": multiply_backward,
    "concat": concat_backward, "flatten": relayout_backward, "reshape": relayout_backward,
    **{name: activation_backward for name in activation.NAMES},
}
