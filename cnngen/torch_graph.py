"""Run a cnngen ``ir.Graph`` in PyTorch, node by node, with ``torch.nn.functional``.

The PyTorch peer of cnngen (``pip install torch``; this module imports it). In float64 it
mirrors ``cnngen.ReferenceExecutor``: the same graph, weights, dropout masks and mode, so
the parity tests compare outputs, gradients and running statistics. In float32 and eval
mode it is PyTorch eager inference of the same network, which the benchmarks time.

    run = run_graph(graph, weights, x, train=True, masks={"drop1": mask})
    value = loss(graph, run, target)       # the spec's loss with its L2 term
    value.backward()                       # run.x.grad, run.params[layer][param].grad

    forward = eager(graph, weights, channels_last=True)   # float32, no autograd
    y = forward(torch.from_numpy(x))

Where cnngen's attributes go beyond what a torch call takes (asymmetric padding, or
"same" resolved to asymmetric pairs), the input is padded with ``F.pad`` first and the
torch call gets ``padding=0``; a transposed conv crops its output instead. Combinations
with no faithful torch form raise ``NotImplementedError`` rather than approximate.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cnngen.ir import Graph, Node

CONV = {1: F.conv1d, 2: F.conv2d}
CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d}
MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d}
AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d}
MAX_UNPOOL = {1: F.max_unpool1d, 2: F.max_unpool2d}
ADAPTIVE_AVG = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d}
ADAPTIVE_MAX = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d}
STATE = ("running_mean", "running_var")


@dataclass
class TorchRun:
    """One torch forward pass: output, activations, and the leaves gradients land on.

    ``state`` holds the batch-norm running statistics after the pass (updated in place by
    ``F.batch_norm`` in train mode); ``switches`` each max pool's indices (in the unpadded
    input's flat numbering, as cnngen keeps them) and the padding torch pooled with."""

    graph: Graph
    x: torch.Tensor
    params: dict[str, dict[str, torch.Tensor]]
    state: dict[str, dict[str, torch.Tensor]]
    train: bool
    masks: dict[str, np.ndarray]
    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    switches: dict[str, tuple] = field(default_factory=dict)
    out: torch.Tensor | None = None


def leaves(weights, dtype=torch.float64, grad: bool = True,
           channels_last: bool = False) -> tuple[dict, dict]:
    """Trainable leaves (requires_grad if ``grad``) and detached copies of the running
    stats; 4-D weights in channels_last memory format if asked."""
    params, state = {}, {}
    for layer, ps in weights.items():
        for name, array in ps.items():
            t = torch.tensor(np.asarray(array), dtype=dtype)
            if channels_last and t.ndim == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            if name in STATE:
                state.setdefault(layer, {})[name] = t
            else:
                params.setdefault(layer, {})[name] = t.requires_grad_(grad)
    return params, state


def is_symmetric(pads) -> bool:
    return all(p0 == p1 for p0, p1 in pads)


def torch_pad(x: torch.Tensor, pads, value: float = 0.0) -> torch.Tensor:
    """``F.pad`` takes (begin, end) pairs last axis first."""
    flat = [p for pair in reversed(pads) for p in pair]
    return F.pad(x, flat, value=value) if any(flat) else x


def activation(name: str, z: torch.Tensor, alpha: float = 0.01) -> torch.Tensor:
    if name == "identity":
        return z
    if name == "relu":
        return F.relu(z)
    if name == "leaky_relu":
        return F.leaky_relu(z, negative_slope=alpha)
    if name == "sigmoid":
        return torch.sigmoid(z)
    if name == "tanh":
        return torch.tanh(z)
    if name in ("swish", "silu"):
        return F.silu(z)
    if name == "hardswish":
        return F.hardswish(z)
    raise KeyError(f"torch peer: no activation {name!r}")


def conv(node: Node, p, xs, run) -> torch.Tensor:
    a = node.attrs
    nd = len(a["kernel"])
    x, pads = xs[0], a["padding"]
    if not is_symmetric(pads):
        x, pads = torch_pad(x, pads), ((0, 0),) * nd
    z = CONV[nd](x, p["w"], p.get("b"), stride=a["stride"], padding=[p0 for p0, _ in pads],
                 dilation=a["dilation"], groups=a["groups"])
    return activation(a["activation"], z)


def conv_transpose(node: Node, p, xs, run) -> torch.Tensor:
    """Symmetric padding maps to torch's; otherwise run unpadded and crop (begin, end)."""
    a = node.attrs
    nd = len(a["kernel"])
    pads = a["padding"]
    symmetric = is_symmetric(pads)
    z = CONV_TRANSPOSE[nd](xs[0], p["w"], p.get("b"), stride=a["stride"],
                           padding=[p0 if symmetric else 0 for p0, _ in pads],
                           output_padding=a["output_padding"], groups=a["groups"],
                           dilation=a["dilation"])
    if not symmetric:
        z = z[(slice(None), slice(None), *(slice(p0, p0 + o) for (p0, _), o in
                                           zip(pads, node.out.spatial)))]
    return activation(a["activation"], z)


def maxpool(node: Node, p, xs, run) -> torch.Tensor:
    a = node.attrs
    nd = len(a["size"])
    x, pads = xs[0], a["padding"]
    if not is_symmetric(pads):
        if a["ceil_mode"]:
            raise NotImplementedError(f"{node.name}: asymmetric padding with ceil_mode")
        x, pads = torch_pad(x, pads, -np.inf), ((0, 0),) * nd
    y, idx = MAX_POOL[nd](x, a["size"], a["stride"], [p0 for p0, _ in pads],
                          ceil_mode=a["ceil_mode"], return_indices=True)
    if x is not xs[0]:  # renumber from the padded input to the unpadded one
        coords = np.unravel_index(idx.numpy(), x.shape[2:])
        idx = torch.from_numpy(np.ravel_multi_index(
            [c - p0 for c, (p0, _) in zip(coords, a["padding"])], xs[0].shape[2:]))
    run.switches[node.name] = (idx, pads)
    return y


def avgpool(node: Node, p, xs, run) -> torch.Tensor:
    a = node.attrs
    nd = len(a["size"])
    x, pads = xs[0], a["padding"]
    if not is_symmetric(pads):
        if a["ceil_mode"] or not a["count_include_pad"]:
            raise NotImplementedError(f"{node.name}: asymmetric padding with ceil_mode or "
                                      f"count_include_pad=False")
        x, pads = torch_pad(x, pads), ((0, 0),) * nd
    return AVG_POOL[nd](x, a["size"], a["stride"], [p0 for p0, _ in pads],
                        ceil_mode=a["ceil_mode"], count_include_pad=a["count_include_pad"])


def global_pool(table) -> Callable:
    def lower(node: Node, p, xs, run) -> torch.Tensor:
        x = xs[0]
        y = table[x.ndim - 2](x, 1)
        return y if node.attrs["keepdims"] else y.flatten(1)
    return lower


def max_unpool(node: Node, p, xs, run) -> torch.Tensor:
    pool = run.graph.node(node.attrs["switches"])
    idx, pads = run.switches[pool.name]
    return MAX_UNPOOL[len(node.out.spatial)](
        xs[0], idx, pool.attrs["size"], pool.attrs["stride"], [p0 for p0, _ in pads],
        output_size=node.out.spatial)


def batchnorm(node: Node, p, xs, run) -> torch.Tensor:
    s = run.state[node.name]
    return F.batch_norm(xs[0], s["running_mean"], s["running_var"], p["gamma"], p["beta"],
                        training=run.train, momentum=node.attrs["momentum"],
                        eps=node.attrs["eps"])


def dropout(node: Node, p, xs, run) -> torch.Tensor:
    """The mask is the one cnngen used where given (parity: no torch RNG involved), else
    torch's own (``F.dropout``: a training step as PyTorch users run it)."""
    rate, inverted = node.attrs["rate"], node.attrs["mode"] == "inverted"
    x = xs[0]
    if not run.train:
        return x if inverted else x * (1.0 - rate)
    if node.name not in run.masks:
        y = F.dropout(x, rate, training=True)
        return y if inverted else y * (1.0 - rate)
    keep = torch.from_numpy(np.asarray(run.masks[node.name], dtype=np.float64))
    return x * keep / (1.0 - rate) if inverted else x * keep


def multiply(node: Node, p, xs, run) -> torch.Tensor:
    y = xs[0]
    for x in xs[1:]:
        y = y * x
    return y


LOWER: dict[str, Callable] = {
    "conv1d": conv, "conv2d": conv,
    "conv_transpose1d": conv_transpose, "conv_transpose2d": conv_transpose,
    "maxpool1d": maxpool, "maxpool2d": maxpool,
    "avgpool1d": avgpool, "avgpool2d": avgpool,
    "global_avgpool": global_pool(ADAPTIVE_AVG), "global_maxpool": global_pool(ADAPTIVE_MAX),
    "max_unpool": max_unpool,
    "batchnorm": batchnorm, "dropout": dropout,
    "softmax": lambda node, p, xs, run: F.softmax(xs[0], dim=1),
    "dense": lambda node, p, xs, run: activation(node.attrs["activation"],
                                                 F.linear(xs[0], p["w"], p.get("b"))),
    "flatten": lambda node, p, xs, run: xs[0].flatten(1),
    "reshape": lambda node, p, xs, run: xs[0].reshape(xs[0].shape[0], *node.out.shape),
    "add": lambda node, p, xs, run: activation(node.attrs["activation"], sum(xs[1:], xs[0])),
    "concat": lambda node, p, xs, run: torch.cat(xs, dim=1),
    "multiply": multiply,
}
for _name in ("identity", "relu", "leaky_relu", "sigmoid", "tanh", "swish", "silu",
              "hardswish"):
    LOWER[_name] = (lambda name: lambda node, p, xs, run: activation(
        name, xs[0], node.attrs.get("alpha", 0.01)))(_name)


def forward(run: TorchRun) -> TorchRun:
    """Every node of ``run.graph`` on ``run.x``, in order."""
    acts = {run.graph.input_name: run.x}
    for node in run.graph.nodes:
        lower = LOWER.get(node.op)
        if lower is None:
            raise NotImplementedError(f"torch peer: no lowering for op {node.op!r}")
        acts[node.name] = lower(node, run.params.get(node.name, {}),
                                [acts[i] for i in node.inputs], run)
    run.activations = acts
    run.out = acts[run.graph.output.name]
    return run


def run_graph(graph: Graph, weights, x: np.ndarray, train: bool = False,
              masks: dict | None = None) -> TorchRun:
    """Run ``graph`` forward in float64 torch with ``weights`` (cnngen's layouts are
    PyTorch's, so they map one to one)."""
    params, state = leaves(weights)
    return forward(TorchRun(graph, torch.tensor(np.asarray(x, dtype=np.float64)).requires_grad_(True),
                            params, state, train, dict(masks or {})))


def eager(graph: Graph, weights, channels_last: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """PyTorch eager float32 inference of ``graph``: ``forward(x) -> y``, without autograd.

    With ``channels_last`` the 4-D weights are stored channels_last; pass an input in that
    format too, and every conv runs in it."""
    params, state = leaves(weights, torch.float32, grad=False, channels_last=channels_last)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return forward(TorchRun(graph, x, params, state, False, {})).out
    return run


def loss(graph: Graph, run: TorchRun, target: np.ndarray) -> torch.Tensor:
    """The spec's loss on ``run.out`` plus ``0.5*l2*sum(w**2)`` over every ``w``."""
    spec_loss = graph.loss
    t = torch.from_numpy(np.asarray(target))
    if spec_loss.op == "mse":
        value = F.mse_loss(run.out, t.to(torch.float64))
    elif spec_loss.op == "softmax_cross_entropy":
        value = F.cross_entropy(run.out, t if t.is_floating_point() else t.long())
    else:
        raise NotImplementedError(f"torch peer: no loss {spec_loss.op!r}")
    if spec_loss.l2:
        value = value + 0.5 * spec_loss.l2 * sum(
            (ps["w"] ** 2).sum() for ps in run.params.values() if "w" in ps)
    return value


def train_step(graph: Graph, weights, x: np.ndarray, y: np.ndarray,
               lr: float = 1e-3) -> Callable[[], float]:
    """PyTorch eager float32 training of ``graph`` on one batch: each call runs forward,
    the spec's loss, backward and ``torch.optim.Adam``'s step, and returns the loss."""
    params, state = leaves(weights, torch.float32)
    optimizer = torch.optim.Adam([p for ps in params.values() for p in ps.values()], lr=lr)
    inputs = torch.from_numpy(np.ascontiguousarray(x, np.float32))

    def step() -> float:
        run = forward(TorchRun(graph, inputs, params, state, True, {}))
        value = loss(graph, run, y)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        return float(value.detach())
    return step
