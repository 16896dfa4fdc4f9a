"""Peer convolutions (PyTorch, ONNX Runtime), each run in its own worker process.

The rows come from ``shapes.json``: single convolutions (``Row``), fused conv-BN-ReLU-pool
blocks (``BlockRow``) and whole zoo networks (``NetRow``). Every process builds the same
float32 data from the row's name, so only the row description crosses the pipe. A peer runs in a worker
process so that its thread pool never shares a process with Numba's (DESIGN.md, traps).

Protocol. The parent starts ``python peers.py --worker PEER`` and talks to it over
stdin/stdout with length-prefixed pickles. Every request gets one reply,
``("ok", value)``, ``("error", traceback)`` or, first of all, the greeting
``("ok", info)`` / ``("unavailable", reason)``:

    ("prepare", kind, row_dict)      -> variant names, e.g. ["nchw", "channels_last"];
                                        kind is "conv", "block" or "net" (ROW_KINDS)
    ("time", variant, k, warmup)     -> k per-call times in ms (after ``warmup`` untimed
                                        calls); the reply waits until the peer's thread
                                        pool has stopped spinning (``settle``)
    ("output", variant)              -> the output as a C-contiguous NCHW / NCL numpy array
    ("quit",)                        -> the worker exits

Between requests a worker is blocked in ``read()`` on its pipe, and its pool threads have
stopped spinning: idle. The parent interleaves ``time`` requests across workers and its own
cnngen samples.

    with PeerProcess("torch") as torch_peer:
        variants = torch_peer.prepare(row)
        times_ms = torch_peer.time("channels_last", k=20)
"""
from __future__ import annotations

import json
import math
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
import traceback
import zlib
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from cnngen.tuning.measure import settle

SHAPES = Path(__file__).with_name("shapes.json")
SEED = 20240603
THREADS = 2


@dataclass(frozen=True)
class Row:
    """One reference convolution layer; 1-D rows keep h_in = k_h = 1."""

    name: str
    nd: int
    n_batch: int
    c_in: int
    h_in: int
    w_in: int
    c_out: int
    k_h: int
    k_w: int
    stride: int
    pad: int
    groups: int

    @classmethod
    def from_dict(cls, d: dict) -> "Row":
        return cls(**d)

    @classmethod
    def from_json(cls, entry: dict, nd: int) -> "Row":
        e = entry
        if nd == 2:
            return cls(e["name"], 2, e["N"], e["C"], e["H"], e["W"], e["K"], e["R"], e["S"],
                       e["stride"], e["pad"], e["groups"])
        return cls(e["name"], 1, e["N"], e["C"], 1, e["L"], e["K"], 1, e["R"],
                   e["stride"], e["pad"], e["groups"])

    @property
    def op(self) -> str:
        return f"conv{self.nd}d"

    @property
    def h_out(self) -> int:
        # h_out = (h_in + 2*pad - k_h) // stride + 1; a 1-D row has no height to pad
        return 1 if self.nd == 1 else (self.h_in + 2 * self.pad - self.k_h) // self.stride + 1

    @property
    def w_out(self) -> int:
        return (self.w_in + 2 * self.pad - self.k_w) // self.stride + 1

    def _spatial(self, h, w) -> tuple:
        return (h, w) if self.nd == 2 else (w,)

    @property
    def x_shape(self) -> tuple:
        return (self.n_batch, self.c_in, *self._spatial(self.h_in, self.w_in))

    @property
    def w_shape(self) -> tuple:
        return (self.c_out, self.c_in // self.groups, *self._spatial(self.k_h, self.k_w))

    @property
    def out_shape(self) -> tuple:
        return (self.n_batch, self.c_out, *self._spatial(self.h_out, self.w_out))

    @property
    def flops(self) -> int:
        """Nominal FLOPs, 2*N*K*(C/groups)*R*S*Ho*Wo (multiply-adds on padding count too)."""
        return (2 * self.n_batch * self.c_out * (self.c_in // self.groups) * self.k_h * self.k_w
                * self.h_out * self.w_out)

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, w) float32, the same in every process: seeded from SEED and the row name."""
        rng = seeded(self.name)
        x = rng.standard_normal(self.x_shape, dtype=np.float32)
        fan_in = (self.c_in // self.groups) * self.k_h * self.k_w
        w = rng.standard_normal(self.w_shape, dtype=np.float32) * np.float32(math.sqrt(2 / fan_in))
        return x, w


def seeded(name: str) -> np.random.Generator:
    return np.random.default_rng([SEED, zlib.crc32(name.encode())])


@dataclass(frozen=True)
class BlockRow:
    """conv (no bias) -> batch norm (inference) -> ReLU -> pool x pool max pool."""

    name: str
    conv: Row
    pool: int

    op = "fused_block"

    @classmethod
    def from_dict(cls, d: dict) -> "BlockRow":
        return cls(d["name"], Row(**d["conv"]), d["pool"])

    @property
    def n_batch(self) -> int:
        return self.conv.n_batch

    @property
    def x_shape(self) -> tuple:
        return self.conv.x_shape

    @property
    def out_shape(self) -> tuple:
        n, c, h, w = self.conv.out_shape
        return (n, c, h // self.pool, w // self.pool)

    @property
    def flops(self) -> int:
        return self.conv.flops

    def data(self) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """(x, w, batch-norm parameters and statistics), float32, the same in every process."""
        x, w = self.conv.data()
        rng = seeded(self.name)
        c = self.conv.c_out
        bn = {"gamma": rng.uniform(0.5, 1.5, c), "beta": rng.normal(0, 0.2, c),
              "running_mean": rng.normal(0, 0.2, c), "running_var": rng.uniform(0.5, 1.5, c)}
        return x, w, {k: v.astype(np.float32) for k, v in bn.items()}

    def spec(self) -> dict:
        """The cnngen spec of the block; its layers are "conv", "bn", "relu", "pool"."""
        r = self.conv
        return {"cnngen": 1, "name": self.name, "input": {"shape": list(r.x_shape[1:])},
                "layers": [{"name": "conv", "op": "conv2d", "filters": r.c_out,
                            "kernel": [r.k_h, r.k_w], "stride": r.stride, "padding": r.pad,
                            "groups": r.groups, "bias": False},
                           {"name": "bn", "op": "batchnorm"},
                           {"name": "relu", "op": "relu"},
                           {"name": "pool", "op": "maxpool2d", "size": self.pool}]}

    def weights(self) -> dict:
        _, w, bn = self.data()
        return {"conv": {"w": w}, "bn": bn}


@dataclass(frozen=True)
class NetRow:
    """A zoo network (``cnngen.zoo``) at one input size and batch, with seeded weights."""

    name: str
    model: str
    n_batch: int
    size: int

    op = "network"

    @classmethod
    def from_dict(cls, d: dict) -> "NetRow":
        return cls(**d)

    def spec(self) -> dict:
        import cnngen
        return cnngen.zoo.get(self.model, input_size=self.size)

    def graph(self):
        import cnngen
        return cnngen.build_graph(self.spec())

    @property
    def x_shape(self) -> tuple:
        return (self.n_batch, *self.graph().input.shape)

    @property
    def flops(self) -> int:
        return 2 * self.n_batch * sum(n.macs for n in self.graph().nodes)

    def weights(self) -> dict:
        """cnngen's initialisation, seeded from the model name; batch-norm statistics are
        drawn near identity, so activations stay O(1) through the deepest nets."""
        from cnngen.weights import init_weights
        weights = init_weights(self.graph(), seed=zlib.crc32(self.model.encode()))
        rng = seeded(self.model)
        for params in weights.values():
            if "running_var" in params:
                c = params["running_var"].shape
                params.update(gamma=rng.uniform(0.9, 1.1, c), beta=rng.normal(0, 0.1, c),
                              running_mean=rng.normal(0, 0.1, c),
                              running_var=rng.uniform(0.9, 1.1, c))
        return {layer: {k: np.asarray(v, np.float32) for k, v in ps.items()}
                for layer, ps in weights.items()}

    def data(self) -> np.ndarray:
        return seeded(self.name).standard_normal(self.x_shape, dtype=np.float32)


ROW_KINDS = {"conv": Row, "block": BlockRow, "net": NetRow}


def row_kind(row) -> str:
    return next(kind for kind, cls in ROW_KINDS.items() if isinstance(row, cls))


def load_blocks(names: list[str] | None = None, path: Path = SHAPES) -> list[BlockRow]:
    """The fused_block rows of ``shapes.json``, each on its conv row."""
    table = json.loads(Path(path).read_text())
    convs = {r.name: r for r in load_rows(path=path)}
    blocks = [BlockRow(e["name"], convs[e["conv"]], e["pool"]) for e in table["fused_block"]]
    return select(blocks, names, path.name)


def select(rows: list, names: list[str] | None, source: str) -> list:
    """``rows`` named ``names`` in that order (all if None); an unknown name is a ValueError."""
    if names is None:
        return rows
    known = {r.name: r for r in rows}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown row(s) {', '.join(unknown)}; rows in {source}: "
                         f"{', '.join(known)}.")
    return [known[n] for n in names]


def load_rows(names: list[str] | None = None, path: Path = SHAPES) -> list[Row]:
    """The conv2d rows, then the conv1d rows, of ``shapes.json``; only ``names`` if given."""
    table = json.loads(Path(path).read_text())
    rows = ([Row.from_json(e, 2) for e in table["conv2d"]]
            + [Row.from_json(e, 1) for e in table["conv1d"]])
    return select(rows, names, path.name)


def time_calls(fn: Callable[[], object], k: int, warmup: int = 1) -> list[float]:
    """Per-call wall times in ms of ``k`` calls of ``fn``, after ``warmup`` untimed calls.

    The warm-up call wakes thread pools that went to sleep while another process ran."""
    for _ in range(warmup):
        fn()
    clock = time.perf_counter_ns
    times = []
    for _ in range(k):
        t0 = clock()
        fn()
        times.append((clock() - t0) * 1e-6)
    return times


class TorchPeer:
    """PyTorch eager, 2 threads, default OMP policy, each variant in NCHW and channels_last:

    - a conv row: ``F.conv2d`` (``F.conv1d``, NCL only);
    - a block row: "eager/..." runs conv, batch_norm, relu, max_pool2d as four ops;
      "folded/..." runs the conv with batch norm folded into its weights and bias, then
      relu and max_pool2d (what a deployment would do by hand);
    - a network row: the spec's graph node by node (``cnngen.torch_graph.eager``).

    A conv row also runs "user/nchw" and "user/channels_last": a user's call, from a NCHW
    numpy array to a NCHW result (``from_numpy``, and the layout conversions in and out
    for channels_last), the counterpart of cnngen's ``net(x)``.
    """

    name = "torch"

    def __init__(self):
        import torch
        torch.set_num_threads(THREADS)
        torch.set_grad_enabled(False)
        self.torch = torch
        self.calls: dict[str, Callable] = {}

    def info(self) -> dict:
        t = self.torch
        return {"torch": t.__version__, "threads": t.get_num_threads(),
                "mkldnn": t.backends.mkldnn.is_available(),
                "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "default")}

    def prepare(self, row) -> list[str]:
        if isinstance(row, BlockRow):
            self.calls = self._block(row)
        elif isinstance(row, NetRow):
            self.calls = self._net(row)
        else:
            self.calls = self._conv(row)
        return list(self.calls)

    def _layouts(self, name: str, make: Callable) -> dict[str, Callable]:
        """``make(memory_format)`` in both layouts, as "name/nchw" and "name/channels_last"."""
        t = self.torch
        return {f"{name}/nchw": make(t.contiguous_format),
                f"{name}/channels_last": make(t.channels_last)}

    def _block(self, row: BlockRow) -> dict[str, Callable]:
        t, F, r = self.torch, self.torch.nn.functional, row.conv
        x, w, bn = row.data()
        scale = bn["gamma"] / np.sqrt(bn["running_var"] + 1e-5)
        folded_w = w * scale[:, None, None, None]
        folded_b = bn["beta"] - bn["running_mean"] * scale
        stats = {k: t.from_numpy(v) for k, v in bn.items()}
        conv = dict(stride=r.stride, padding=r.pad, groups=r.groups)

        def eager(fmt):
            xt, wt = (t.from_numpy(a).contiguous(memory_format=fmt) for a in (x, w))
            return lambda: F.max_pool2d(F.relu(F.batch_norm(
                F.conv2d(xt, wt, None, **conv), stats["running_mean"], stats["running_var"],
                stats["gamma"], stats["beta"], training=False, eps=1e-5)), row.pool)

        def folded(fmt):
            xt, wt = (t.from_numpy(a).contiguous(memory_format=fmt) for a in (x, folded_w))
            bt = t.from_numpy(folded_b)
            return lambda: F.max_pool2d(F.relu(F.conv2d(xt, wt, bt, **conv)), row.pool)
        return {**self._layouts("eager", eager), **self._layouts("folded", folded)}

    def _net(self, row: NetRow) -> dict[str, Callable]:
        from cnngen.torch_graph import eager
        graph, weights, x = row.graph(), row.weights(), self.torch.from_numpy(row.data())
        cl = self.torch.channels_last
        nchw, channels_last = eager(graph, weights), eager(graph, weights, channels_last=True)
        x_cl = x.contiguous(memory_format=cl)
        return {"nchw": partial(nchw, x), "channels_last": partial(channels_last, x_cl)}

    def _conv(self, row: Row) -> dict[str, Callable]:
        t, F = self.torch, self.torch.nn.functional
        x_np, w_np = row.data()
        x, w = t.from_numpy(x_np), t.from_numpy(w_np)
        conv = F.conv2d if row.nd == 2 else F.conv1d
        args = dict(bias=None, stride=row.stride, padding=row.pad, groups=row.groups)
        if row.nd == 1:
            return {"ncl": partial(conv, x, w, **args),
                    "user/ncl": lambda: conv(t.from_numpy(x_np), w, **args)}
        cl = t.channels_last
        w_cl = w.contiguous(memory_format=cl)
        return {"nchw": partial(conv, x, w, **args),
                "channels_last": partial(conv, x.contiguous(memory_format=cl), w_cl, **args),
                "user/nchw": lambda: conv(t.from_numpy(x_np), w, **args),
                "user/channels_last": lambda: conv(
                    t.from_numpy(x_np).contiguous(memory_format=cl), w_cl, **args).contiguous()}

    def output(self, variant: str) -> np.ndarray:
        return np.ascontiguousarray(self.calls[variant]().numpy())


class OrtPeer:
    """ONNX Runtime, 2 intra-op threads, default graph optimisations, I/O bound once: a
    one-node Conv model for a conv row; Conv, BatchNormalization, Relu, MaxPool for a block
    row (ORT fuses them itself). Network rows are not run (there is no ONNX export)."""

    name = "ort"

    def __init__(self):
        import onnx
        import onnxruntime
        self.onnx, self.ort = onnx, onnxruntime
        self.calls: dict[str, Callable] = {}

    def info(self) -> dict:
        return {"onnxruntime": self.ort.__version__, "onnx": self.onnx.__version__,
                "threads": THREADS}

    def model(self, row, w: np.ndarray, bn: dict | None = None):
        """Conv(x, w) -> y with w as an initializer, or the block; opset 17, IR 8 (any recent
        ORT loads it)."""
        helper, P = self.onnx.helper, self.onnx.TensorProto
        conv = row.conv if isinstance(row, BlockRow) else row
        kernel = [conv.k_h, conv.k_w] if conv.nd == 2 else [conv.k_w]
        nodes = [helper.make_node("Conv", ["x", "w"], ["conv" if bn else "y"],
                                  kernel_shape=kernel, strides=[conv.stride] * conv.nd,
                                  pads=[conv.pad] * (2 * conv.nd), dilations=[1] * conv.nd,
                                  group=conv.groups)]
        arrays = {"w": w}
        if bn:
            arrays.update(bn)
            nodes += [helper.make_node("BatchNormalization",
                                       ["conv", "gamma", "beta", "running_mean", "running_var"],
                                       ["bn"], epsilon=1e-5),
                      helper.make_node("Relu", ["bn"], ["relu"]),
                      helper.make_node("MaxPool", ["relu"], ["y"], kernel_shape=[row.pool] * 2,
                                       strides=[row.pool] * 2)]
        graph = helper.make_graph(
            nodes, row.name, [helper.make_tensor_value_info("x", P.FLOAT, list(row.x_shape))],
            [helper.make_tensor_value_info("y", P.FLOAT, list(row.out_shape))],
            initializer=[self.onnx.numpy_helper.from_array(a, k) for k, a in arrays.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        self.onnx.checker.check_model(model)
        return model

    def prepare(self, row) -> list[str]:
        if isinstance(row, NetRow):
            self.calls = {}
            return []
        if isinstance(row, BlockRow):
            x, w, bn = row.data()
            model = self.model(row, w, bn)
        else:
            x, w = row.data()
            model = self.model(row, w)
        options = self.ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        session = self.ort.InferenceSession(model.SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])
        # bind input and a preallocated output once, so a call is the Conv and nothing else
        self.x, self.y = x, np.empty(row.out_shape, np.float32)
        binding = session.io_binding()
        binding.bind_cpu_input("x", self.x)
        binding.bind_output("y", "cpu", 0, np.float32, list(self.y.shape), self.y.ctypes.data)
        variant = "ncl" if isinstance(row, Row) and row.nd == 1 else "nchw"
        self.calls = {variant: partial(session.run_with_iobinding, binding)}
        return list(self.calls)

    def output(self, variant: str) -> np.ndarray:
        self.calls[variant]()
        return self.y.copy()


PEERS = {"torch": TorchPeer, "ort": OrtPeer}


# --- pipe framing: 8-byte big-endian length, then a pickle --------------------------------

def send(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack(">Q", len(data)) + data)
    stream.flush()


def recv(stream):
    """The next object, or None at end of stream."""
    head = stream.read(8)
    if len(head) < 8:
        return None
    (size,) = struct.unpack(">Q", head)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


def worker_main(peer: str) -> None:
    """Serve one peer on stdin/stdout until "quit" or end of input."""
    # the protocol keeps the real stdout; stray prints from libraries go to stderr
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    inp = sys.stdin.buffer
    try:
        runner = PEERS[peer]()
    except ImportError as e:
        send(out, ("unavailable", str(e)))
        return
    send(out, ("ok", runner.info()))
    while (msg := recv(inp)) is not None and msg[0] != "quit":
        try:
            if msg[0] == "prepare":
                reply = runner.prepare(ROW_KINDS[msg[1]].from_dict(msg[2]))
            elif msg[0] == "time":
                _, variant, k, warmup = msg
                reply = time_calls(runner.calls[variant], k, warmup)
                settle()
            elif msg[0] == "output":
                reply = runner.output(msg[1])
            else:
                raise ValueError(f"unknown request {msg[0]!r}")
            send(out, ("ok", reply))
        except Exception:  # noqa: BLE001  (the parent re-raises it with the traceback)
            send(out, ("error", traceback.format_exc()))


class PeerError(RuntimeError):
    pass


class PeerProcess:
    """Parent-side handle on one peer's worker process.

    ``available`` is False (and ``reason`` says why) when the peer's package is missing.
    OMP_WAIT_POLICY is removed from the worker's environment: peers run with their default
    wait policy (a passive policy makes PyTorch about 2x slower on small layers)."""

    def __init__(self, peer: str):
        self.peer = peer
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()),
                                      "--worker", peer], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        status, value = self._recv()
        self.available = status == "ok"
        self.info = value if self.available else {}
        self.reason = "" if self.available else value
        if not self.available:
            self.close()

    def _recv(self):
        reply = recv(self.proc.stdout)
        if reply is None:
            raise PeerError(f"{self.peer} worker exited (code {self.proc.wait()}); "
                            f"see its stderr above.")
        return reply

    def request(self, *msg):
        send(self.proc.stdin, msg)
        status, value = self._recv()
        if status == "error":
            raise PeerError(f"{self.peer} worker failed on {msg[0]!r}:\n{value}")
        return value

    def prepare(self, row) -> list[str]:
        return self.request("prepare", row_kind(row), asdict(row))

    def time(self, variant: str, k: int, warmup: int = 1) -> list[float]:
        return self.request("time", variant, k, warmup)

    def output(self, variant: str) -> np.ndarray:
        return self.request("output", variant)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                send(self.proc.stdin, ("quit",))
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "PeerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2])
    else:
        sys.exit("usage: python peers.py --worker {torch,ort}  (started by conv_table.py)")
