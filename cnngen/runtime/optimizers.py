"""Optimizers: generated kernels over the flat parameter buffer, and the Python side that
drives them (learning-rate schedule, hyperparameters, state for checkpoints).

    opt = make_optimizer("adam", n_params, n_decayed, l2=5e-4, lr=1e-3, target=target,
                         schedule="cosine", total_steps=8000, warmup_steps=100)
    opt.calls()                # the kernel calls, over "params", "grads" and "opt:*"
    opt.layouts()              # {buffer name: Flat} of every buffer they read or write
    opt.buffers                # the "opt:*" arrays the optimizer owns (bind these)
    opt.set_step(step)         # before update number ``step`` (0, 1, ...): fills opt:hyper
    opt.step(params, step, cache)   # or all at once: set_step, then the kernels on
                                    # params.flat / params.grads (a runtime Parameters)
    opt.l2_term()              # 0.5 * l2 * sum(decayed params**2) at the last step's weights
    opt.state(); opt.load_state(state)

The plan binds "params" and "grads" to the trainable parameters and their gradients (the
``n_decayed`` decayed ones, every "w", first: the spec's L2 applies to them, and so does
AdamW's decoupled weight decay) and the "opt:*" buffers to ``opt.buffers``. The
gradients are the loss's without the L2 term; the kernel adds ``l2 * w``.

An optimizer is any ``Optimizer``: an evolutionary one (selectable by name like the others,
through ``OPTIMIZERS``) says ``uses_grads = False``, so the trainer skips the backward pass,
and drives its own calls and buffers.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..codegen.cache import KernelCache
from ..codegen.cpu import optimizer as kernels
from ..codegen.kernel import Call
from ..codegen.layout import Flat
from ..codegen.parallel import MAX_ARGS, launch_parallel, run_serial
from ..errors import InputError
from ..target import Target, resolve
from .plan import UNUSED, worth_parallel

SCHEDULES = ("constant", "step", "cosine")


def _number(owner: str, option: str, value, low: float, high: float = math.inf,
            low_open: bool = False, high_open: bool = True) -> float:
    """``value`` as a float in the interval, or an InputError naming the option."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok:
        x = float(value)
        ok = (math.isfinite(x) and (x > low if low_open else x >= low)
              and (x < high if high_open else x <= high))
    if not ok:
        bounds = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise InputError(f"{owner}: option {option!r} must be a number in {bounds}; "
                         f"received {value!r}.")
    return x


def _count(owner: str, option: str, value, low: int) -> int:
    """``value`` as an int >= low, or an InputError naming the option."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InputError(f"{owner}: option {option!r} must be an integer >= {low}; "
                         f"received {value!r}.")
    return int(value)


@dataclass(frozen=True)
class LearningRate:
    """The learning rate at each step: a linear warm-up over the first ``warmup_steps``
    steps (lr * (step + 1) / warmup_steps), then, counting steps from the warm-up's end:

        constant:  lr
        step:      lr * gamma ** (step // step_every)                (torch's StepLR)
        cosine:    lr * (1 + cos(pi * min(step, T) / T)) / 2,  T = total_steps - warmup_steps
                   (torch's CosineAnnealingLR to 0)
    """

    lr: float
    schedule: str = "constant"
    step_every: int = 0
    gamma: float = 0.1
    total_steps: int = 0
    warmup_steps: int = 0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        step -= self.warmup_steps
        if self.schedule == "step":
            return self.lr * self.gamma ** (step // self.step_every)
        if self.schedule == "cosine":
            span = self.total_steps - self.warmup_steps
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, span) / span))
        return self.lr

    @classmethod
    def make(cls, owner: str, lr, schedule="constant", step_every=None, gamma=0.1,
             total_steps=None, warmup_steps=0) -> LearningRate:
        """A checked schedule; InputErrors name the option, the rule and the value."""
        lr = _number(owner, "lr", lr, 0.0, low_open=True)
        if schedule not in SCHEDULES:
            raise InputError(f"{owner}: option 'schedule' must be one of {list(SCHEDULES)}; "
                             f"received {schedule!r}.")
        warmup_steps = _count(owner, "warmup_steps", warmup_steps, 0)
        if schedule == "step":
            if step_every is None:
                raise InputError(f"{owner}: schedule 'step' needs option 'step_every' (steps "
                                 f"between decays), an integer >= 1; received none.")
            step_every = _count(owner, "step_every", step_every, 1)
            gamma = _number(owner, "gamma", gamma, 0.0, 1.0, low_open=True, high_open=False)
        if schedule == "cosine":
            if total_steps is None:
                raise InputError(f"{owner}: schedule 'cosine' needs option 'total_steps', an "
                                 f"integer > warmup_steps={warmup_steps}; received none.")
            total_steps = _count(owner, "total_steps", total_steps, warmup_steps + 1)
        return cls(lr, schedule, step_every or 0, float(gamma), total_steps or 0, warmup_steps)


class Optimizer:
    """A training step's parameter update, as generated kernels.

    Subclasses set ``name``, ``options`` (the keyword options they take, with defaults),
    ``state_names`` (their state buffers), ``hyper`` (the hyper entries) and implement
    ``_calls`` and ``_hyper(step, lr)``."""

    name = "?"
    uses_grads = True
    options: dict = {}
    state_names: tuple[str, ...] = ()
    hyper: tuple[str, ...] = ()

    def __init__(self, n_params: int, n_decayed: int, l2: float, lr: LearningRate,
                 target: Target):
        self.n_params, self.n_decayed, self.l2 = n_params, n_decayed, l2
        self.lr, self.target = lr, target
        self.last_step = 0
        self._layouts = kernels.layouts(n_params, target, self.state_names, len(self.hyper))
        self.buffers = {name: np.zeros(layout.size(1), np.float32)
                        for name, layout in self._layouts.items() if name.startswith("opt:")}
        self._kernels = None

    def calls(self) -> list[Call]:
        """The kernel calls of one update (run after ``set_step``)."""
        return self._calls()

    def layouts(self) -> dict[str, Flat]:
        """``{buffer name: Flat}`` of "params", "grads" and every "opt:*" buffer."""
        return dict(self._layouts)

    def set_step(self, step: int) -> None:
        """Prepare update number ``step`` (0 for the first): fill ``opt:hyper``."""
        self.last_step = _count(self.name, "step", step, 0)
        self.buffers[kernels.HYPER][...] = self._hyper(self.last_step, self.lr(self.last_step))

    def compile(self, cache: KernelCache | None = None) -> None:
        """Load the kernels of ``calls()`` from ``cache`` (default: the default kernel
        cache), compiling those it lacks."""
        calls = self.calls()
        cache = cache or KernelCache()
        loaded = cache.load_all([(c.kernel.name(self.target), c.kernel.source(self.target))
                                 for c in calls], self.target)
        self._kernels = list(zip(calls, loaded))

    def step(self, params, step: int, cache: KernelCache | None = None) -> None:
        """Update number ``step`` of ``params.flat`` from ``params.grads`` (a runtime
        ``Parameters``: float32 arrays of at least n_params entries), in place. The first
        call loads the kernels (``compile(cache)``) unless ``compile`` ran."""
        for name in ("flat", "grads"):
            a = getattr(params, name, None)
            if not (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.ndim == 1
                    and a.flags.c_contiguous and a.size >= self.n_params):
                got = (f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray)
                       else type(a).__name__)
                raise InputError(f"{self.name}: params.{name} must be a contiguous float32 "
                                 f"vector of at least {self.n_params} values; received {got}.")
        if self._kernels is None:
            self.compile(cache)
        self.set_step(step)
        arrays = {kernels.PARAMS: params.flat, kernels.GRADS: params.grads, **self.buffers}
        for call, kernel in self._kernels:
            args = [arrays[a.name] for a in call.args] + [UNUSED] * (MAX_ARGS - len(call.args))
            tasks = kernel.task_count(1)
            run = launch_parallel if worth_parallel(call, tasks, self.target.cores) else run_serial
            run(kernel.fn.address, tasks, 1, *args)

    def lr_at(self, step: int) -> float:
        return self.lr(step)

    def l2_term(self) -> float:
        """0.5 * l2 * the sum of the decayed parameters squared, as the last update read
        them (the weights the step's forward pass used)."""
        return 0.5 * self.l2 * float(self.buffers[kernels.SUMSQ].sum(dtype=np.float64))

    def state(self) -> dict:
        """The state to checkpoint: ``{"step": the last update's number, <state buffer>:
        float32 array}``."""
        return {"step": self.last_step,
                **{name: self.buffers[name].copy() for name in self.state_names}}

    def load_state(self, state: Mapping) -> None:
        """Restore ``state()``'s result (in place: bound buffers see it)."""
        wanted = {"step", *self.state_names}
        if not isinstance(state, Mapping) or set(state) != wanted:
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise InputError(f"{self.name}: optimizer state must have the keys "
                             f"{sorted(wanted)}; received {got}.")
        for name in self.state_names:
            value = np.asarray(state[name])
            if value.shape != (self.n_params,):
                raise InputError(f"{self.name}: optimizer state {name!r} must have shape "
                                 f"({self.n_params},); received {value.shape}.")
        step = state["step"]
        if isinstance(step, np.ndarray) and step.ndim == 0:      # an int saved as an array
            step = step[()]
        self.last_step = _count(self.name, "step", step, 0)
        for name in self.state_names:
            self.buffers[name][...] = state[name]

    def _calls(self) -> list[Call]:
        raise NotImplementedError

    def _hyper(self, step: int, lr: float) -> list[float]:
        raise NotImplementedError


class SGD(Optimizer):
    """torch.optim.SGD (dampening 0): plain, with momentum, or Nesterov."""

    name = "sgd"
    options = {"momentum": 0.0, "nesterov": False}
    hyper = kernels.SGD_HYPER

    def __init__(self, n_params, n_decayed, l2, lr, target, momentum=0.0, nesterov=False):
        self.momentum = _number(self.name, "momentum", momentum, 0.0, 1.0)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise InputError(f"{self.name}: option 'nesterov' must be True or False; "
                             f"received {nesterov!r}.")
        if nesterov and self.momentum == 0:
            raise InputError(f"{self.name}: option 'nesterov' needs a momentum in (0, 1); "
                             f"received momentum={momentum!r}.")
        self.nesterov = bool(nesterov)
        self.state_names = ("opt:momentum",) if self.momentum else ()
        super().__init__(n_params, n_decayed, l2, lr, target)

    def _calls(self):
        return kernels.lower_sgd(self.n_params, self.n_decayed, self.target,
                                 bool(self.momentum), self.nesterov)

    def _hyper(self, step, lr):
        return [lr, self.l2, self.momentum]


class Adam(Optimizer):
    """torch.optim.Adam (the spec's l2 as its coupled weight decay)."""

    name = "adam"
    options = {"betas": (0.9, 0.999), "eps": 1e-8}
    state_names = ("opt:m", "opt:v")
    hyper = kernels.ADAM_HYPER

    def __init__(self, n_params, n_decayed, l2, lr, target, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.0):
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise InputError(f"{self.name}: option 'betas' must be two numbers in [0, 1); "
                             f"received {betas!r}.")
        self.betas = tuple(_number(self.name, f"betas[{i}]", b, 0.0, 1.0)
                           for i, b in enumerate(betas))
        self.eps = _number(self.name, "eps", eps, 0.0, low_open=True)
        self.weight_decay = _number(self.name, "weight_decay", weight_decay, 0.0)
        super().__init__(n_params, n_decayed, l2, lr, target)

    def _calls(self):
        return kernels.lower_adam(self.n_params, self.n_decayed, self.target)

    def _hyper(self, step, lr):
        t = step + 1
        b1, b2 = self.betas
        c1, c2 = 1.0 - b1 ** t, 1.0 - b2 ** t
        return [lr / c1, self.l2, b1, b2, self.eps, 1.0 / math.sqrt(c2),
                1.0 - lr * self.weight_decay, 1.0 - b1, 1.0 - b2]


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay on the decayed entries."""

    name = "adamw"
    options = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}

    def __init__(self, n_params, n_decayed, l2, lr, target, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.01):
        super().__init__(n_params, n_decayed, l2, lr, target, betas, eps, weight_decay)


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW}
SCHEDULE_OPTIONS = ("schedule", "step_every", "gamma", "total_steps", "warmup_steps")


def make_optimizer(name: str, n_params: int, n_decayed: int, l2: float, lr: float,
                   target: Target | str = "cpu", **options) -> Optimizer:
    """The optimizer ``name`` ("sgd", "adam", "adamw") over ``n_params`` parameters, the
    first ``n_decayed`` of which take the L2 term ``l2`` (the spec's loss l2).

    Options: sgd ``momentum=0.0, nesterov=False``; adam ``betas=(0.9, 0.999), eps=1e-8``;
    adamw those and ``weight_decay=0.01``; every optimizer the learning-rate schedule
    ``schedule="constant" | "step" | "cosine", step_every, gamma=0.1, total_steps,
    warmup_steps=0`` (see ``LearningRate``)."""
    kind = OPTIMIZERS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise InputError(f"optimizer: expected one of {sorted(OPTIMIZERS)}; received {name!r}.")
    n_params = _count(name, "n_params", n_params, 1)
    n_decayed = _count(name, "n_decayed", n_decayed, 0)
    if n_decayed > n_params:
        raise InputError(f"{name}: n_decayed must be at most n_params={n_params}; "
                         f"received {n_decayed}.")
    l2 = _number(name, "l2", l2, 0.0)
    unknown = sorted(set(options) - set(kind.options) - set(SCHEDULE_OPTIONS))
    if unknown:
        hint = (" Use the loss's l2 for coupled weight decay, or optimizer 'adamw'."
                if "weight_decay" in unknown else "")
        raise InputError(f"{name}: unknown option {unknown[0]!r}; expected one of "
                         f"{sorted(kind.options) + list(SCHEDULE_OPTIONS)}.{hint}")
    schedule = LearningRate.make(name, lr, **{k: options.pop(k) for k in SCHEDULE_OPTIONS
                                              if k in options})
    if isinstance(target, str):
        target = resolve(target)
    return kind(n_params, n_decayed, l2, schedule, target, **options)
