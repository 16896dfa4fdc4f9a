"""Peer convolutions (PyTorch, ONNX Runtime), each run in its own worker process.

The rows come from ``shapes.json``; every process builds the same float32 data from the
row's name, so only the row description crosses the pipe. A peer runs in a worker
process so that its thread pool never shares a process with Numba's (DESIGN.md, traps).

Protocol. The parent starts ``python peers.py --worker PEER`` and talks to it over
stdin/stdout with length-prefixed pickles. Every request gets one reply,
``("ok", value)``, ``("error", traceback)`` or, first of all, the greeting
``("ok", info)`` / ``("unavailable", reason)``:

    ("prepare", row_dict)            -> variant names, e.g. ["nchw", "channels_last"]
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
        rng = np.random.default_rng([SEED, zlib.crc32(self.name.encode())])
        x = rng.standard_normal(self.x_shape, dtype=np.float32)
        fan_in = (self.c_in // self.groups) * self.k_h * self.k_w
        w = rng.standard_normal(self.w_shape, dtype=np.float32) * np.float32(math.sqrt(2 / fan_in))
        return x, w


def load_rows(names: list[str] | None = None, path: Path = SHAPES) -> list[Row]:
    """The conv2d rows, then the conv1d rows, of ``shapes.json``; only ``names`` if given."""
    table = json.loads(Path(path).read_text())
    rows = ([Row.from_json(e, 2) for e in table["conv2d"]]
            + [Row.from_json(e, 1) for e in table["conv1d"]])
    if names is None:
        return rows
    known = {r.name: r for r in rows}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown row(s) {', '.join(unknown)}; rows in {path.name}: "
                         f"{', '.join(known)}.")
    return [known[n] for n in names]


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


def settle(timeout_s: float = 0.5, quiet_polls: int = 3, poll_s: float = 0.001) -> float:
    """Wait until no other thread of this process is running; return the wait in ms.

    Thread pools spin after their last task (measured here: libgomp in PyTorch about 8 ms,
    ONNX Runtime about 45 ms), and a spinning pool steals a core from whichever runner goes
    next. Each process calls this after its sample, so the next sample starts on a quiet
    machine and idle workers really are idle. Without /proc it sleeps 50 ms instead."""
    t0 = time.perf_counter()
    task = "/proc/self/task"
    if not os.path.isdir(task):
        time.sleep(0.05)
        return (time.perf_counter() - t0) * 1e3
    me = str(threading.get_native_id())
    quiet = 0
    while quiet < quiet_polls and time.perf_counter() - t0 < timeout_s:
        quiet = 0 if any(_running(f"{task}/{tid}/stat") for tid in os.listdir(task)
                         if tid != me) else quiet + 1
        time.sleep(poll_s)
    return (time.perf_counter() - t0) * 1e3


def _running(stat_path: str) -> bool:
    try:
        with open(stat_path) as f:
            return f.read().rpartition(")")[2].split()[0] == "R"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False  # the thread exited between listdir and open


class TorchConv:
    """``F.conv2d`` in NCHW and channels_last, or ``F.conv1d``; 2 threads, default OMP policy."""

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

    def prepare(self, row: Row) -> list[str]:
        t, F = self.torch, self.torch.nn.functional
        x, w = (t.from_numpy(a) for a in row.data())
        conv = F.conv2d if row.nd == 2 else F.conv1d
        args = dict(bias=None, stride=row.stride, padding=row.pad, groups=row.groups)
        if row.nd == 1:
            self.calls = {"ncl": partial(conv, x, w, **args)}
        else:
            cl = t.channels_last
            self.calls = {"nchw": partial(conv, x, w, **args),
                          "channels_last": partial(conv, x.contiguous(memory_format=cl),
                                                   w.contiguous(memory_format=cl), **args)}
        return list(self.calls)

    def output(self, variant: str) -> np.ndarray:
        return np.ascontiguousarray(self.calls[variant]().numpy())


class OrtConv:
    """A one-node ONNX Conv; 2 intra-op threads, default graph optimisations, I/O bound once."""

    name = "ort"

    def __init__(self):
        import onnx
        import onnxruntime
        self.onnx, self.ort = onnx, onnxruntime
        self.calls: dict[str, Callable] = {}

    def info(self) -> dict:
        return {"onnxruntime": self.ort.__version__, "onnx": self.onnx.__version__,
                "threads": THREADS}

    def model(self, row: Row, w: np.ndarray):
        """Conv(x, w) -> y with w as an initializer; opset 17, IR 8 (any recent ORT loads it)."""
        helper, P = self.onnx.helper, self.onnx.TensorProto
        kernel = [row.k_h, row.k_w] if row.nd == 2 else [row.k_w]
        node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=kernel,
                                strides=[row.stride] * row.nd, pads=[row.pad] * (2 * row.nd),
                                dilations=[1] * row.nd, group=row.groups)
        graph = helper.make_graph(
            [node], row.name, [helper.make_tensor_value_info("x", P.FLOAT, list(row.x_shape))],
            [helper.make_tensor_value_info("y", P.FLOAT, list(row.out_shape))],
            initializer=[self.onnx.numpy_helper.from_array(w, "w")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        self.onnx.checker.check_model(model)
        return model

    def prepare(self, row: Row) -> list[str]:
        x, w = row.data()
        options = self.ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        session = self.ort.InferenceSession(self.model(row, w).SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])
        # bind input and a preallocated output once, so a call is the Conv and nothing else
        self.x, self.y = x, np.empty(row.out_shape, np.float32)
        binding = session.io_binding()
        binding.bind_cpu_input("x", self.x)
        binding.bind_output("y", "cpu", 0, np.float32, list(self.y.shape), self.y.ctypes.data)
        variant = "nchw" if row.nd == 2 else "ncl"
        self.calls = {variant: partial(session.run_with_iobinding, binding)}
        return list(self.calls)

    def output(self, variant: str) -> np.ndarray:
        self.calls[variant]()
        return self.y.copy()


PEERS = {"torch": TorchConv, "ort": OrtConv}


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
                reply = runner.prepare(Row(**msg[1]))
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

    def prepare(self, row: Row) -> list[str]:
        return self.request("prepare", asdict(row))

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
