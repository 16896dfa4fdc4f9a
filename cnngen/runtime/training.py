"""A training step at one batch size: forward in training mode, loss, backward, all kernels.

    plan = TrainPlan(graph, n_batch, target, params, frozen)
    plan.compile(cache)            # load or compile every kernel
    plan.run(x, labels)            # forward, loss and every gradient into params.grads
    plan.loss(), plan.correct()    # the batch's mean loss (without L2), and its hits

The forward lowers the training graph (``passes.training``: batch norm -> activation -> max
pool fused into one pass, nothing folded) with each op's training-mode lowering where it
has one (``TRAIN``: batch statistics, dropout masks, max-pool switches), else its inference
one; every other activation stays in its own buffer for the backward. The backward follows
``passes.autodiff``: each layer's ``BACKWARD`` lowering, and an add kernel where several
readers' gradient contributions meet. Parameter gradients land in ``params.grads`` (PyTorch
layouts); after the optimizer changes ``params.flat``, ``repack()`` refreshes the packed
copies the kernels read.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..codegen.cache import KernelCache
from ..codegen.cpu import (BACKWARD, GRAD_HALO, GRAD_SPACE, LEAKY_ALPHA, LOWER, TRAIN,
                           GradLowering, Lowering, grad_name)
from ..codegen.cpu.elementwise_grad import activation_grad
from ..codegen.cpu.norm_grad import (statistics_in_conv, step_seed, update_running_stats,
                                     values_per_channel)
from ..codegen.cpu.edges import to_blocked
from ..codegen.cpu.loss import LOSS, LossLowering, target_layout
from ..codegen.kernel import Buffer, Call, Const, ParamGrad
from ..codegen.layout import Blocked, Flat
from ..codegen.parallel import MAX_ARGS
from ..errors import InputError
from ..ir import Graph, Node
from ..passes.autodiff import differentiate
from ..passes.training import block_parts, for_training
from ..schedule import Schedule
from ..target import Target
from .compiled import tuning_records
from .constants import PackedConstants
from .parameters import Parameters
from .plan import MAX_SPILL_RETRIES, UNUSED, Step, check_fits, plan_layouts, worth_parallel

LOSS_VALUES, LOSS_CORRECT, LOSS_TARGET = "loss:values", "loss:correct", "loss:target"


def sum_node(tensor: str, graph: Graph, parts: list[str]) -> Node:
    """An add node that sums the gradient contributions ``parts`` of ``tensor``."""
    t = graph.type_of(tensor)
    return Node(grad_name(tensor), "add", tuple(parts), {"activation": "identity"},
                (t,) * len(parts), t, {}, {}, 0)


def check_supported(graph: Graph, nodes, ops: dict, what: str) -> None:
    """InputError naming every layer whose op has no ``what`` lowering in ``ops``."""
    missing = [f"{n.name} ({n.op})" for n in nodes if n.op not in ops]
    if missing:
        raise InputError(f"network {graph.name!r}: cnngen has no generated {what} for "
                         f"{', '.join(missing)}.")


def backward_calls(g: GradLowering) -> list[Call]:
    """The backward of ``g.node``; a conv's or dense layer's fused activation's derivative
    (from the layer's output, which ``split_activations`` guarantees) is applied to dY in
    place first (add and a fused batch norm apply their own)."""
    node = g.node
    act = node.attrs.get("activation", "identity")
    if node.op in ("add", "batchnorm") or act == "identity":
        return BACKWARD[node.op](g)
    derivative = activation_grad(node.name, act, (g.grad_output, g.d_out), (g.output, g.out),
                                 [(g.grad_output, g.d_out)], g.n_batch,
                                 node.attrs.get("alpha", LEAKY_ALPHA))
    g.node = replace(node, attrs={**node.attrs, "activation": "identity"})
    return [derivative, *BACKWARD[node.op](g)]


class TrainPlan:
    def __init__(self, graph: Graph, n_batch: int, target: Target, params: Parameters,
                 frozen: set[str] = frozenset()):
        graph = for_training(graph)
        if graph.loss is None:
            raise InputError(f"network {graph.name!r} has no loss; add 'loss: {{op: "
                             f"softmax_cross_entropy}}' or 'loss: {{op: mse}}' to train it.")
        self.graph, self.n_batch, self.target, self.params = graph, n_batch, target, params
        v = target.vector
        self.backward = differentiate(graph, frozen)
        check_supported(graph, graph.nodes, {**LOWER, **TRAIN}, "training forward")
        check_supported(graph, [s.node for s in self.backward.steps], BACKWARD, "backward")
        self.layouts: dict[str, Blocked | Flat] = dict(plan_layouts(graph, v))
        out = graph.output
        self.calls: list[Call] = [to_blocked(graph.input_name, self.layouts[graph.input_name], n_batch)]
        for node in graph.nodes:
            low = Lowering(node, tuple(self.layouts[i] for i in node.inputs), self.layouts[node.name],
                           n_batch, target, None, tuple(self.layouts[r] for r in node.refs),
                           self.layouts)
            self.calls += TRAIN.get(node.op, LOWER[node.op])(low)
        self.calls = statistics_in_conv(self.calls, self.layouts)
        self.layouts[LOSS_TARGET] = target_layout(graph.loss.op, out.out, v)
        # each gradient with the halo its producer's backward reads it with
        self.grad_layouts = {node.name: Blocked.of(node.out, v, GRAD_HALO[node.op](node)
                                                   if node.op in GRAD_HALO else (0, 0, 0, 0))
                             for node in graph.nodes}
        self.layouts[grad_name(out.name)] = self.grad_layouts[out.name]
        self.layouts[LOSS_VALUES] = self.layouts[LOSS_CORRECT] = Flat(1, per_sample=True)
        self.calls += LOSS[graph.loss.op](LossLowering(graph.loss.op, out.name, self.layouts[out.name],
                                                        n_batch, target,
                                                        d_out=self.layouts[grad_name(out.name)]))
        self.n_scored = len(self.calls)         # forward and loss; the backward follows
        self.aliases: dict[str, str] = {}
        self.grad_lowerings: dict[str, GradLowering] = {}
        for step in self.backward.steps:
            node = step.node
            self.calls += self._gather(node.name)
            d_ins = tuple(self.grad_layouts[i] if wanted else None
                          for i, wanted in zip(node.inputs, step.input_grads))
            for i, d in enumerate(d_ins):
                if d is not None:
                    self.layouts[f"{node.name}:grad_in{i}"] = d
            g = GradLowering(node, tuple(self.layouts[i] for i in node.inputs), self.layouts[node.name],
                             self.layouts[grad_name(node.name)], d_ins, step.weight_grads, n_batch,
                             target, None, tuple(self.layouts[r] for r in node.refs), self.layouts)
            self.grad_lowerings[node.name] = replace(g)      # compile() may lower it again
            self.calls += backward_calls(g)
        self._allocate()

    def _gather(self, tensor: str) -> list[Call]:
        """Make ``grad_name(tensor)`` hold the sum of its readers' contributions (an alias
        of the only one, a kernel adding several, or zeros where none reaches it)."""
        name = grad_name(tensor)
        if name in self.layouts:          # the network output: the loss writes it
            return []
        parts = [f"{reader}:grad_in{i}" for reader, i in self.backward.sums[tensor]]
        layout = self.grad_layouts[tensor]
        self.layouts[name] = layout
        if len(parts) == 1:
            self.aliases[name] = parts[0]
            return []
        if not parts:
            return []
        node = sum_node(tensor, self.graph, parts)
        return LOWER["add"](Lowering(node, (layout,) * len(parts), layout, self.n_batch, self.target))

    def _allocate(self) -> None:
        n = self.n_batch
        names = {a.name for c in self.calls for a in c.args if isinstance(a, Buffer)}
        own = {name for name in names if name not in self.aliases}
        edge = f"{self.graph.input_name}:nchw"
        own.discard(edge)
        sizes = {name: self.layouts[name].size(n) for name in own}
        check_fits(self.graph, n, 4 * (sum(sizes.values()) + n * self.graph.input.size))
        self.buffers = {name: np.zeros(size, np.float32) for name, size in sizes.items()}
        self.buffers[edge] = np.zeros(n * self.graph.input.size, np.float32)
        for alias, name in self.aliases.items():
            self.buffers[alias] = self.buffers[name]
        self.constants = PackedConstants(self.calls, self.params)
        self.buffers.update(self.constants.buffers())
        self.steps: list[Step] = []
        self.gather: Step | None = None

    def compile(self, cache: KernelCache, schedules: dict[str, Schedule] | None = None,
                tuning_db=None) -> None:
        """Load (compile, or read from the cache) every kernel and bind the steps.

        A layer's backward takes its schedule from ``schedules`` (by layer name), else from
        a record of ``tuning_db`` (a path; None: the database beside the kernel cache;
        False: none), else the heuristic (``grad_schedule_sources`` says which). A heuristic
        schedule whose kernel spills in its reduction loops is replaced by the next-best
        one, at most MAX_SPILL_RETRIES times per layer (``spill_fallbacks`` says which)."""
        records = tuning_records(tuning_db, cache, self.target)
        try:
            self.grad_schedule_sources = self._choose_grad_schedules(schedules or {}, records)
        finally:
            if records is not None:
                records.close()
        self.spill_fallbacks: dict[str, list[str]] = {}
        avoid: dict[str, set[Schedule]] = {}

        def replaceable(call: Call) -> bool:
            """A backward call whose schedule the heuristic chose and that is not avoided yet."""
            g = self.grad_lowerings.get(call.layer)
            return g is not None and call.kernel.schedule not in (
                None, g.schedule, *avoid.get(call.layer, ()))

        for retry in range(MAX_SPILL_RETRIES + 1):
            gather = self.constants.gather_call()
            calls = self.calls + ([gather] if gather else [])
            kernels = cache.load_all([(c.kernel.name(self.target), c.kernel.source(self.target))
                                      for c in calls], self.target)
            spilled = [(call, kernel) for call, kernel in zip(calls[self.n_scored:len(self.calls)],
                                                              kernels[self.n_scored:])
                       if kernel.spills and replaceable(call)]
            if not spilled or retry == MAX_SPILL_RETRIES:
                break
            for call, kernel in spilled:
                avoid.setdefault(call.layer, set()).add(call.kernel.schedule)
                self.spill_fallbacks.setdefault(call.layer, []).append(
                    f"{call.kernel.schedule} spilled {kernel.spills}")
            for layer in dict.fromkeys(call.layer for call, _ in spilled):
                self._lower_backward(layer, self.grad_lowerings[layer].schedule,
                                     frozenset(avoid[layer]))
            self._allocate()
        steps = []
        for call, kernel in zip(calls, kernels):
            n = self.constants.count if call is gather else self.n_batch
            tasks = kernel.task_count(n)
            args = [self._arg(a) for a in call.args]
            args += [UNUSED] * (MAX_ARGS - len(args))
            steps.append(Step(call, kernel, args, n, tasks,
                              worth_parallel(call, tasks, self.target.cores)))
        self.steps = steps[:len(self.calls)]
        self.gather = steps[-1] if gather else None

    def _choose_grad_schedules(self, schedules: dict[str, Schedule], records) -> dict[str, str]:
        """Lower again each backward whose schedule is explicit or a tuning record; where each
        layer's backward schedule comes from."""
        unknown = sorted(set(schedules) - set(self.grad_lowerings))
        if unknown:
            raise InputError(f"schedules: {unknown} name no layer with a backward in this plan; "
                             f"expected some of {sorted(self.grad_lowerings)}.")
        sources = {layer: "heuristic" for layer in self.grad_lowerings}
        for layer, g in self.grad_lowerings.items():
            if layer in schedules:
                self._lower_backward(layer, schedules[layer])
                sources[layer] = f"explicit (schedules[{layer!r}])"
            elif records is not None and g.node.op in GRAD_SPACE and g.weight_grads:
                schedule, sources[layer] = records.grad_schedule_for(g.node, self.n_batch)
                try:
                    if schedule is not None:
                        self._lower_backward(layer, schedule)
                except InputError as error:     # a record that no longer fits (rare)
                    self._lower_backward(layer, None)
                    sources[layer] = f"heuristic (the tuning record does not fit: {error})"
        if any(self.grad_lowerings[layer].schedule is not None for layer in sources):
            self._allocate()                    # the temps may have changed
        return sources

    def _lower_backward(self, layer: str, schedule: Schedule | None,
                        avoid: frozenset[Schedule] = frozenset()) -> None:
        """Replace the calls of ``layer``'s backward with those ``schedule`` (None: the
        heuristic, keeping clear of ``avoid``) gives; InputError if no call takes it."""
        g = replace(self.grad_lowerings[layer], schedule=schedule, avoid=avoid)
        self.grad_lowerings[layer] = replace(g)
        calls = backward_calls(g)
        if schedule is not None and schedule not in {c.kernel.schedule for c in calls}:
            space = (GRAD_SPACE[g.node.op](g) if g.node.op in GRAD_SPACE and g.weight_grads
                     else [])
            takes = (f"takes a {type(space[0]).__name__}" if space else
                     "takes no schedule (it computes no weight gradient in this plan)")
            raise InputError(f"schedules[{layer!r}]: the backward of layer {layer!r} "
                             f"({g.node.op}) {takes}; received {type(schedule).__name__} "
                             f"{schedule}.")
        where = [i for i, c in enumerate(self.calls) if i >= self.n_scored and c.layer == layer]
        if where:
            self.calls[where[0]:where[-1] + 1] = calls

    def _arg(self, arg) -> np.ndarray:
        if isinstance(arg, Const):
            return self.constants.arrays[arg]
        if isinstance(arg, ParamGrad):
            return self.params.grad_views[arg.layer][arg.param]
        return self.buffers[arg.name]

    def repack(self) -> None:
        """Refresh the packed constants of the trainable layers from the parameters."""
        if self.gather is not None:
            self.gather()
        self.constants.repack_numpy()

    def run(self, x: np.ndarray, labels: np.ndarray, backward: bool = True) -> None:
        """Forward, loss and (if ``backward``) backward on the checked float32 batch ``x``
        and its targets."""
        self.buffers[LOSS_TARGET][...] = np.asarray(labels, np.float32).reshape(-1) \
            if isinstance(self.layouts[LOSS_TARGET], Flat) else self._blocked_target(labels)
        first, *rest = self.steps if backward else self.steps[:self.n_scored]
        first.run_on(0, x.reshape(-1))
        for step in rest:
            step()

    def _blocked_target(self, y: np.ndarray) -> np.ndarray:
        layout = self.layouts[LOSS_TARGET]
        buffer = np.zeros(layout.size(self.n_batch), np.float32)
        padded = np.zeros((self.n_batch, layout.blocks * layout.vector, layout.height, layout.width),
                          np.float32)
        padded[:, :layout.channels] = y.reshape(self.n_batch, layout.channels, layout.height,
                                                layout.width)
        layout.interior(buffer, self.n_batch)[...] = padded.reshape(
            self.n_batch, layout.blocks, layout.vector, layout.height, layout.width
        ).transpose(0, 1, 3, 4, 2)
        return buffer

    def set_dropout_seeds(self, seed: int, step: int) -> None:
        """Draw this step's dropout masks from (seed, step); each layer salts its own."""
        for node in self.graph.nodes:
            if node.op == "dropout":
                self.buffers[f"{node.name}:seed"][...] = step_seed(seed, step)

    def update_running_stats(self) -> None:
        """Move each batch norm's running statistics toward this batch's (PyTorch's rule)."""
        for node in self.graph.nodes:
            if node.op == "batchnorm":
                update_running_stats(self.params.fixed[block_parts(node)[0].name],
                                     self.buffers[f"{node.name}:mean"],
                                     self.buffers[f"{node.name}:var"],
                                     values_per_channel(self.layouts[node.inputs[0]], self.n_batch),
                                     node.attrs["momentum"])

    def loss(self) -> float:
        """The last batch's loss (mean over the batch, without the L2 term)."""
        return float(np.mean(self.buffers[LOSS_VALUES][:self.n_batch], dtype=np.float64))

    def correct(self) -> int:
        """How many of the last batch's samples were classified right (0 for MSE)."""
        hits = self.buffers.get(LOSS_CORRECT)
        return 0 if hits is None else int(round(float(hits.sum(dtype=np.float64))))

    def tensor(self, name: str) -> np.ndarray:
        """A forward activation or gradient buffer of the last run, as (N, C, ...)."""
        return self.layouts[name].to_nchw(self.buffers[name], self.n_batch)

    def first_non_finite(self) -> str | None:
        """The first layer, in run order, whose output or gradient holds a NaN or an Inf."""
        for node in self.graph.nodes:
            if not np.isfinite(self.tensor(node.name)).all():
                return f"layer {node.name!r} ({node.op}): its output"
        for step in self.backward.steps:
            name = grad_name(step.node.name)
            if name in self.buffers and not np.isfinite(self.tensor(name)).all():
                return f"layer {step.node.name!r} ({step.node.op}): the gradient of its output"
            for param, grad in self.params.grad_views.get(step.node.name, {}).items():
                if not np.isfinite(grad).all():
                    return f"layer {step.node.name!r} ({step.node.op}): the gradient of {param}"
        return None
