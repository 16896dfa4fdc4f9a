"""Trainer: a spec trained on generated kernels, then served by the same weights.

    trainer = cnngen.Trainer("lenet5.yaml", optimizer="adam", lr=1e-3, batch_size=64, seed=0)
    history = trainer.fit("digits", epochs=10)         # or "mnist1d", an .npz, a dict
    trainer.evaluate(x, y)                              # {"loss": ..., "accuracy": ...}
    trainer.net(x)                                      # the inference net, trained weights
    trainer.save("run.ckpt"); trainer = cnngen.Trainer.resume("run.ckpt")

``init="pytorch"`` starts from PyTorch's default initialisation instead of He-normal (as
published PyTorch recipes assume). Transfer learning: ``weights=`` takes another net's weights (a dict, or an npz path) by
layer name, keeping the initial weights where a layer is missing or its shapes differ
(``trainer.transfer_report`` says which); ``freeze=["c*", "f5"]`` fixes the layers whose
names match those glob patterns, so their gradients are never computed.

Every step is deterministic under ``seed``: the batch order and augmentation follow
(seed, epoch), dropout masks (seed, step), and the kernels' reductions have a fixed order.
A run resumed from a checkpoint therefore ends with the same weights, bit for bit, as one
that was never interrupted.
"""
from __future__ import annotations

import fnmatch
import time
from pathlib import Path

import numpy as np

from .. import target as targets
from ..codegen.cache import KernelCache
from ..errors import InputError, TrainingError
from ..files import write_atomic
from ..ops import loss as losses
from ..spec import build_graph, load_spec
from ..suggest import did_you_mean
from ..weights import init_weights, transfer
from . import checkpoint as checkpoints
from .compiled import CompiledNet, as_batch
from .augment import Augment, as_augment
from .batches import Batches
from .data import load_dataset
from .evolution import Evolution, batch_fitness, population_fitness
from .optimizers import make_optimizer
from .parameters import Parameters
from .training import TrainPlan

# Names that select the gradient-free evolution strategy.
EVOLUTION = ("evolution", "es")
# Training plans kept, one per batch size a caller of train_step used (fit uses one).
MAX_TRAIN_PLANS = 3


def frozen_layers(graph, patterns) -> set[str]:
    """The layers with parameters whose names match any glob in ``patterns``."""
    if isinstance(patterns, str):
        patterns = [patterns]
    names = [n.name for n in graph.nodes if n.params]
    frozen = set()
    for pattern in patterns:
        hits = fnmatch.filter(names, pattern)
        if not hits:
            raise InputError(f"freeze: {pattern!r} matches no layer with parameters in "
                             f"{graph.name!r}; they are {', '.join(names)}."
                             f"{did_you_mean(pattern, names)}")
        frozen.update(hits)
    return frozen


class Trainer:
    def __init__(self, spec, optimizer: str = "adam", lr: float = 1e-3, batch_size: int = 64,
                 seed: int = 0, augment=None, weights=None, freeze=(), target="cpu",
                 cache_dir=None, init: str = "he", **options):
        self.spec = load_spec(spec) if not isinstance(spec, dict) else spec
        self.graph = build_graph(self.spec)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size: expected an integer >= 1; received {batch_size!r}.")
        self.batch_size, self.seed = batch_size, seed
        self.augment = as_augment(augment)      # str | dict | Augment | callable | None
        self.target = targets.resolve(target)
        self.cache = KernelCache(cache_dir)
        self.frozen = frozen_layers(self.graph, freeze)
        if weights is None:
            start, self.transfer_report = init_weights(self.graph, seed, init), None
        else:
            start, self.transfer_report = transfer(self.graph, weights, seed, init)
            unloaded = [f"{layer}: {why}" for layer, why in self.transfer_report.skipped
                         if layer in self.frozen]
            if unloaded:
                raise InputError(f"freeze: {', '.join(u.split(':')[0] for u in unloaded)} would "
                                 f"stay at random initial weights, which the source does not "
                                 f"replace ({'; '.join(unloaded)}).")
        self.params = Parameters(self.graph, start, self.frozen)
        self.settings = {"optimizer": optimizer, "lr": lr, "batch_size": batch_size,
                         "seed": seed,
                         "augment": str(self.augment) if isinstance(self.augment, Augment) else None,
                         "freeze": sorted(self.frozen), "init": init, "options": options}
        l2 = self.graph.loss.l2 if self.graph.loss else 0.0
        if optimizer in EVOLUTION:
            self.optimizer = Evolution(self.params.size, lr, seed, self.params.n_decayed, l2,
                                       **options)
            self.population = population_fitness(self.graph, self.params,
                                                 self.optimizer.population, self.target,
                                                 self.cache.dir)
            self.frozen_in_plan = {n.name for n in self.graph.nodes}    # no backward at all
        else:
            self.optimizer = make_optimizer(optimizer, self.params.size, self.params.n_decayed,
                                            l2, lr, self.target, **options)
            self.frozen_in_plan = self.frozen
        # completed epochs, batches done in the current one, optimizer steps in all
        self.epoch, self.epoch_step, self.step_count, self.history = 0, 0, 0, []
        self._plans: dict[int, TrainPlan] = {}
        self._packed: dict[int, int] = {}          # plan batch -> the step its constants show
        self._net: CompiledNet | None = None
        self._net_step = -1

    # -- one step ------------------------------------------------------------------------

    def _plan(self, n_batch: int) -> TrainPlan:
        plan = self._plans.get(n_batch)
        if plan is None:
            plan = TrainPlan(self.graph, n_batch, self.target, self.params,
                             self.frozen_in_plan)
            plan.compile(self.cache)
            self._plans[n_batch] = plan
            while len(self._plans) > MAX_TRAIN_PLANS:
                self._plans.pop(next(iter(self._plans)))
        elif self._packed.get(n_batch) != self.step_count:
            plan.repack()
        self._packed[n_batch] = self.step_count
        return plan

    def train_step(self, x, y) -> tuple[float, int]:
        """One optimizer step on the batch ``(x, y)``: ``(loss, correct)`` of the batch
        (the loss without the L2 term, as the forward saw it)."""
        x = as_batch(self.graph, x)
        y = self._check_targets(np.asarray(y), len(x), "train_step")
        plan = self._plan(x.shape[0])
        plan.set_dropout_seeds(self.seed, self.step_count)
        if isinstance(self.optimizer, Evolution):
            return self._evolve(plan, x, y)
        plan.run(x, y)
        value = plan.loss()
        # one pass over the gradients: a NaN or Inf anywhere makes the sum non-finite
        if not (np.isfinite(value) and np.isfinite(np.sum(self.params.grads[:self.params.size]))):
            where = plan.first_non_finite() or "the loss"
            raise TrainingError(f"step {self.step_count} (epoch {self.epoch + 1}): the loss is "
                                f"{value}; the first non-finite value is in {where}. The weights "
                                f"before this step are kept; lower the learning rate "
                                f"(now {self.settings['lr']}) or check the data.")
        self.optimizer.step(self.params, self.step_count, self.cache)
        plan.update_running_stats()
        self.step_count += 1
        plan.repack()
        self._packed[x.shape[0]] = self.step_count
        return value, plan.correct()

    def _evolve(self, plan: TrainPlan, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        """One generation of the evolution strategy, its fitness the loss on the batch
        plus the L2 term."""
        fitness = batch_fitness(self.population, plan, self.params, x, y)
        value = self.optimizer.generation(self.params.flat, fitness)
        if not np.isfinite(value):
            raise TrainingError(f"generation {self.step_count}: a candidate's loss is not "
                                f"finite; lower sigma or the learning rate.")
        plan.repack()                      # the new centre's hits and batch statistics
        plan.run(x, y, backward=False)
        plan.update_running_stats()
        self.step_count += 1
        self._packed[x.shape[0]] = self.step_count
        return value, plan.correct()

    # -- serving and evaluation ----------------------------------------------------------

    @property
    def net(self) -> CompiledNet:
        """The inference net with the current weights (kernels compile once; later calls
        only repack the weights)."""
        if self._net is None:
            self._net = CompiledNet(self.graph, self.params.weights(), self.target,
                                    self.cache.dir, self.seed)
        elif self._net_step != self.step_count:
            self._net.weights = self.params.weights()
        self._net_step = self.step_count
        return self._net

    def evaluate(self, x, y, batch_size: int = 256) -> dict[str, float]:
        """``{"loss", "accuracy"}`` of the inference net on ``(x, y)`` (accuracy for
        classification only); the loss is the spec's, without the L2 term."""
        net = self.net
        x = as_batch(self.graph, x)
        y = self._check_targets(np.asarray(y), len(x), "evaluate")
        outs = np.concatenate([net(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
        value, _ = losses.value_and_grad(self.graph.loss.op, outs.astype(np.float64), y)
        result = {"loss": value}
        if self.graph.loss.op == "softmax_cross_entropy" and np.issubdtype(y.dtype, np.integer):
            result["accuracy"] = float(np.mean(outs.argmax(axis=1) == y))
        return result

    # -- the training loop ---------------------------------------------------------------

    def fit(self, data, epochs: int | None = None, steps: int | None = None,
            progress: bool = True, checkpoint=None, metrics=None, plot=None,
            validation: float = 0.0) -> list[dict]:
        """Train for ``epochs`` more epochs (or until ``steps`` optimizer steps in all), on a
        dataset name, an .npz path or a dict of arrays. Each epoch reshuffles and drops its
        last partial batch. After each epoch (or where ``steps`` ends inside one): evaluation
        on the validation split (or the test set), a record in ``history``, a checkpoint
        ``<checkpoint>/last.ckpt`` and the metrics file when asked. Returns ``history``."""
        from tqdm import tqdm

        if epochs is None and steps is None:
            raise InputError("fit: give epochs (how many more) or steps (the total).")
        dataset = load_dataset(data, seed=self.seed, validation=validation,
                               input_shape=self.graph.input.shape)
        self._check_data(dataset)
        x_eval, y_eval = ((dataset.x_val, dataset.y_val) if dataset.x_val is not None
                          and len(dataset.x_val) else (dataset.x_test, dataset.y_test))
        last_epoch = self.epoch + epochs if epochs is not None else None
        while (last_epoch is None or self.epoch < last_epoch) and (
                steps is None or self.step_count < steps):
            batches = Batches(dataset.x_train, dataset.y_train, self.batch_size, shuffle=True,
                              seed=self.seed, epoch=self.epoch, augment=self.augment,
                              drop_last=len(dataset.x_train) >= self.batch_size,
                              start=self.epoch_step)
            bar = tqdm(total=len(batches), desc=f"epoch {self.epoch + 1}", disable=not progress,
                       leave=False, unit="batch")
            start, seen, loss_sum, hits = time.perf_counter(), 0, 0.0, 0
            with batches, bar:      # stops the prefetch thread on break (steps=) or an error
                for x, y in batches:
                    value, correct = self.train_step(x, y)
                    seen += len(x)
                    loss_sum += value * len(x)
                    hits += correct
                    rate = seen / max(time.perf_counter() - start, 1e-9)
                    bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{hits / seen:.3f}",
                                    img_s=f"{rate:.0f}", refresh=False)
                    bar.update()
                    self.epoch_step += 1
                    if steps is not None and self.step_count >= steps:
                        break
            seconds = time.perf_counter() - start
            finished = self.epoch_step >= batches.n_batches
            if finished:
                self.epoch, self.epoch_step = self.epoch + 1, 0
            record = {"epoch": self.epoch if finished else self.epoch + 1, "step": self.step_count,
                      "loss": loss_sum / max(seen, 1), "seconds": seconds,
                      "images_per_s": seen / max(seconds, 1e-9)}
            if not finished:
                record["partial"] = True           # stopped by steps= inside the epoch
            if self._classifies(dataset):
                record["accuracy"] = hits / max(seen, 1)
            if x_eval is not None and len(x_eval):
                record.update({f"val_{k}": v for k, v in self.evaluate(x_eval, y_eval).items()})
            self.history.append(record)
            if progress:
                print(format_record(record), flush=True)
            if checkpoint is not None:
                Path(checkpoint).mkdir(parents=True, exist_ok=True)
                self.save(Path(checkpoint) / "last.ckpt")
            if metrics is not None:
                write_metrics(self.history, metrics)
        if plot is not None:
            plot_history(self.history, plot)
        return self.history

    def _check_targets(self, y: np.ndarray, n: int, where: str) -> np.ndarray:
        """``y`` as the loss takes it, or InputError saying what it expected."""
        out = self.graph.output.out
        if self.graph.loss is None:
            raise InputError(f"{where}: network {self.graph.name!r} has no loss; add 'loss: "
                             f"{{op: softmax_cross_entropy}}' or 'loss: {{op: mse}}' to train "
                             f"or evaluate it.")
        if len(y) != n:
            raise InputError(f"{where}: {n} samples and {len(y)} targets.")
        if self.graph.loss.op == "softmax_cross_entropy":
            if not np.issubdtype(y.dtype, np.integer):
                raise InputError(f"{where}: the loss softmax_cross_entropy takes integer class "
                                 f"labels; received {y.dtype} targets (for a regression, use "
                                 f"'loss: {{op: mse}}').")
            label_shape = (n, *out.spatial)
            if y.shape != label_shape:
                raise InputError(f"{where}: labels must have shape {label_shape}; received "
                                 f"{y.shape}.")
            if y.size and (y.min() < 0 or y.max() >= out.channels):
                raise InputError(f"{where}: labels must be in [0, {out.channels}) (the units of "
                                 f"{self.graph.output.name!r}); received {y.min()} to {y.max()}.")
            return y
        if y.shape == (n,) and out.shape == (1,):
            y = y.reshape(n, 1)
        if y.shape != (n, *out.shape):
            raise InputError(f"{where}: the loss mse takes targets of the output's shape "
                             f"{(n, *out.shape)}; received {y.shape}.")
        return y.astype(np.float32)

    def _classifies(self, dataset) -> bool:
        return self.graph.loss.op == "softmax_cross_entropy" and dataset.n_classes is not None

    def _check_data(self, dataset) -> None:
        self._check_targets(dataset.y_train[:1], 1, f"data {dataset.name!r}")
        classes = self.graph.output.out.channels
        if self._classifies(dataset) and dataset.n_classes > classes:
            raise InputError(f"data {dataset.name!r} has {dataset.n_classes} classes, and the "
                             f"output layer {self.graph.output.name!r} has {classes} units.")

    # -- checkpoints ---------------------------------------------------------------------

    def save(self, path) -> None:
        """Write a checkpoint (spec, weights, optimizer state, epoch, step, history)
        atomically: a kill during the save leaves the previous file intact."""
        if self.augment is not None and not isinstance(self.augment, Augment):
            raise InputError("save: a checkpoint cannot hold a Python callable as the "
                             "augmentation; give augment as a string such as 'flip_h,crop=4' "
                             "to save and resume the run.")
        checkpoints.save_checkpoint(
            path, spec=self.spec, weights=self.params.weights(),
            optimizer=self.optimizer.state(),
            meta={"epoch": self.epoch, "epoch_step": self.epoch_step, "step": self.step_count,
                  "history": self.history,
                  "settings": self.settings})

    @classmethod
    def resume(cls, path, cache_dir=None, target="cpu") -> Trainer:
        """The trainer a checkpoint was saved from, ready to go on training."""
        saved = checkpoints.load_checkpoint(path)
        s = saved.meta["settings"]
        trainer = cls(saved.spec, s["optimizer"], s["lr"], s["batch_size"], s["seed"],
                      s["augment"], saved.weights, s["freeze"], target, cache_dir, s["init"],
                      **s["options"])
        trainer.optimizer.load_state(saved.optimizer)
        trainer.epoch, trainer.step_count = saved.meta["epoch"], saved.meta["step"]
        trainer.epoch_step = saved.meta["epoch_step"]
        trainer.history = list(saved.meta["history"])
        return trainer


def format_record(record: dict) -> str:
    parts = [f"epoch {record['epoch']}", f"loss {record['loss']:.4f}"]
    parts += [f"{k} {record[k]:.4f}" for k in ("accuracy", "val_loss", "val_accuracy") if k in record]
    parts.append(f"{record['images_per_s']:.0f} images/s")
    return "  ".join(parts)


def write_metrics(history: list[dict], path) -> None:
    """The history as CSV (``.csv``) or JSON (anything else), written atomically."""
    import csv
    import io
    import json

    path = Path(path)
    if path.suffix == ".csv":
        text = io.StringIO()
        keys = list(dict.fromkeys(k for record in history for k in record))
        writer = csv.DictWriter(text, keys)
        writer.writeheader()
        writer.writerows(history)
        body = text.getvalue()
    else:
        body = json.dumps(history, indent=1)
    write_atomic(path, lambda f: f.write(body.encode("utf-8")))


def plot_history(history: list[dict], path) -> Path:
    """A PNG of the loss and accuracy curves per epoch (needs matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError('the training plot needs matplotlib: pip install "cnngen[plot]"') from None
    epochs = [r["epoch"] for r in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("loss", "val_loss"):
        if any(key in r for r in history):
            left.plot(epochs, [r.get(key, np.nan) for r in history], label=key)
    for key in ("accuracy", "val_accuracy"):
        if any(key in r for r in history):
            right.plot(epochs, [r.get(key, np.nan) for r in history], label=key)
    for axis, title in ((left, "loss"), (right, "accuracy")):
        axis.set_xlabel("epoch")
        axis.set_title(title)
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
