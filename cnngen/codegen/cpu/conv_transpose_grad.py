"""Backward of the transposed convolutions (``conv_transpose1d``, ``conv_transpose2d``).

A transposed conv is the adjoint of the conv with the same weights, stride, dilation, groups
and padding (ops/conv.py), so its backward is that conv's forward and weight gradient:

    dx[n, ci, i] = sum_{co in group(ci), k} w[ci, co, k] * dy_pad[n, co, i*stride + k*dilation]
    dw[ci, co, k] = sum_{n, i} x[n, ci, i] * dy_pad[n, co, i*stride + k*dilation]
    db[co]       = sum_{n, o} dy[n, co, o]

- dx: the conv of dy (``lower_conv`` on ``adjoint_conv``), whose (c_out, c_in/groups, *kernel)
  weights are the transposed conv's own (c_in, c_out/groups, *kernel) array, packed under
  names of their own (``w:dx``, ``b:dx``: the forward's sub-pixel phases pack ``w``) and
  without bias. Its output is the transposed conv's input size: ``output_padding`` only adds
  rows past the last one it reads.
- dw: conv_grad's weight-gradient kernel with the roles swapped: dy is its input (read
  through the padding) and x its output gradient; it stores (c_in, c_out/groups, *kernel),
  which is the transposed conv's PyTorch layout as it stands.
- db: ``channel_sum`` of dy (the wgrad's own bias sum would sum x here).

The layer's schedule is its weight gradient's (a ``WgradSchedule`` or
``DepthwiseWgradSchedule`` of the adjoint conv's wgrad); ``GRAD_SPACE`` holds what the tuner
searches, the adjoint's space. A schedule that does not fit names the layer's own op.

dy is read in place by both convs, with the zero halo ``grad_output_halo`` names.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ...ir import Node, frozen
from ...schedule import Schedule
from ..kernel import Buffer, Call, Const, spec
from . import GradLowering, Lowering, conv_grad, grad_name
from .conv import conv_halo, lower_conv, retarget


def adjoint_conv(node: Node) -> Node:
    """The conv whose forward is this transposed conv's data gradient: input dy (the
    transposed conv's output), output its input, the same weights, no bias."""
    attrs = {k: v for k, v in node.attrs.items() if k != "output_padding"}
    attrs.update(filters=node.in_types[0].channels, bias=False, activation="identity")
    return replace(node, op=f"conv{len(node.attrs['kernel'])}d", inputs=(grad_name(node.name),),
                   attrs=frozen(attrs), in_types=(node.out,), out=node.in_types[0],
                   params=frozen({"w": node.params["w"]}), fused=())


def grad_output_halo(node: Node) -> tuple[int, int, int, int]:
    """The zero halo around dy that the adjoint conv and the weight gradient read: the
    padding."""
    return conv_halo(adjoint_conv(node))


def check_halo(g: GradLowering) -> None:
    have, need = g.d_out.halo, grad_output_halo(g.node)
    if any(h < n for h, n in zip(have, need)):
        raise AssertionError(f"layer {g.node.name!r} ({g.node.op}): dy's halo {have} is "
                             f"narrower than the {need} its backward reads (GRAD_HALO)")


def dx_const(const: Const) -> Const:
    """``const`` of the adjoint conv under a name of its own, packed from ``w`` alone (the
    layer's ``b`` must not reach the data gradient)."""
    return Const(const.layer, f"{const.what}:dx", lambda p, pack=const.pack: pack({"w": p["w"]}))


def data_grad(g: GradLowering) -> list[Call]:
    low = Lowering(adjoint_conv(g.node), (g.d_out,), g.d_ins[0], g.n_batch, g.target,
                   temps=g.temps, avoid=g.avoid)
    if low.inputs[0] != g.grad_output:
        raise AssertionError(f"{g.node.name}: dy is {g.grad_output}, not {low.inputs[0]}")
    return [retarget(call, g.grad_input(0),
                     tuple(dx_const(a) if isinstance(a, Const) else a for a in call.args[:-1]))
            for call in lower_conv(low)]


@dataclass
class SwappedRoles(GradLowering):
    """The adjoint conv's GradLowering with x and dy exchanged: its input is dy and its
    output gradient is ``x_buffer`` (the transposed conv's input)."""

    x_buffer: Buffer | None = None

    @property
    def grad_output(self) -> Buffer:
        return self.x_buffer


def swapped(g: GradLowering) -> SwappedRoles:
    """The weight gradient of ``g``'s layer as the adjoint conv's, dy and x exchanged (its
    schedule, if any, is a weight-gradient one: the data gradient takes the heuristic's)."""
    return SwappedRoles(adjoint_conv(g.node), (g.d_out,), g.ins[0], g.ins[0], (None,), True,
                        g.n_batch, g.target, g.schedule, temps=g.temps, avoid=g.avoid,
                        x_buffer=g.inputs[0])


def weight_grad(g: GradLowering) -> list[Call]:
    """dw (conv_grad's kernel, roles swapped) and, if the layer has one, db."""
    node, dy = g.node, g.d_out
    calls = conv_grad.weight_grad(swapped(g), op=node.op)
    if "b" in node.params:
        kernel = spec("channel_sum", ("bias_grad",), f"nchw{dy.vector}c",
                      flops=g.n_batch * dy.blocks * dy.vector * dy.height * dy.width,
                      bytes=4 * dy.size(g.n_batch), channels=dy.channels, blocks=dy.blocks,
                      height=dy.height, width=dy.width, **dy.strides("x"))
        calls.append(Call(node.name, kernel, (g.grad_output, g.param_grad("b"))))
    return calls


def grad_space(g: GradLowering) -> list[Schedule]:
    """The tuner's space of the layer's weight gradient: the adjoint conv's, roles swapped
    (the data gradient, a conv, keeps the heuristic's schedule)."""
    return conv_grad.grad_space(swapped(g))


def lower_conv_transpose_backward(g: GradLowering) -> list[Call]:
    """The calls that turn dL/d(transposed conv output) into dL/dx (when asked) and dL/dw,
    dL/db."""
    conv_grad.check_unfused(g.node)
    check_halo(g)
    calls = data_grad(g) if g.d_ins[0] is not None else []
    if g.weight_grads:
        calls += weight_grad(g)
    return calls


BACKWARD = {"conv_transpose1d": lower_conv_transpose_backward,
            "conv_transpose2d": lower_conv_transpose_backward}
GRAD_HALO = {"conv_transpose1d": grad_output_halo, "conv_transpose2d": grad_output_halo}
GRAD_SPACE = {"conv_transpose1d": grad_space, "conv_transpose2d": grad_space}
