"""Mini-batches of one epoch, streamed from a prefetch thread.

    ds = load_dataset("digits", seed=0, validation=0.1)
    with Batches(ds.x_train, ds.y_train, 64, seed=0, epoch=3, augment="flip_h") as batches:
        for x, y in batches:                                  # x: float32, C-contiguous
            ...

The random streams (batch order, augmentation) are tagged in data.py beside the data
splits' own, so that equal seeds never draw the same numbers for two purposes.
"""
from __future__ import annotations

import math
import queue
import threading
import weakref

import numpy as np

from ..errors import InputError
from .augment import as_augment
from .data import AUGMENT_STREAM, ORDER_STREAM, check_seed


class Batches:
    """Mini-batches ``(x float32 C-contiguous, y)`` of one epoch, made by a prefetch thread.

    The order is a permutation drawn from (seed, epoch) (or the data order when ``shuffle``
    is False); batch b is augmented with a generator seeded by (seed, epoch, b), so a run
    resumed at batch ``start`` sees exactly the batches an uninterrupted one would. The
    thread keeps up to ``prefetch`` batches ready in a queue. It stops when the batches run
    out, on ``close()`` or leaving a ``with`` block, or when the object is garbage-collected
    (a ``for`` loop over ``Batches(...)`` that breaks), and never holds up interpreter exit.
    An error in the thread (say in ``augment``) is raised in the consumer. ``len()`` is the
    number of batches this object yields; ``n_batches`` the number in the whole epoch.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool = True,
                 seed: int = 0, epoch: int = 0, augment=None, drop_last: bool = False,
                 prefetch: int = 2, start: int = 0):
        n = len(x)
        if len(y) != n:
            raise InputError(f"Batches: x and y must have the same length; received {n} "
                             f"samples and {len(y)} targets.")
        for name, value, low in (("batch_size", batch_size, 1), ("prefetch", prefetch, 1),
                                 ("epoch", epoch, 0), ("start", start, 0)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise InputError(f"Batches: {name} must be an integer >= {low}; received "
                                 f"{value!r}.")
        seed = check_seed(seed)
        self.n_batches = n // batch_size if drop_last else math.ceil(n / batch_size)
        if self.n_batches == 0:
            raise InputError(f"Batches: {n} sample(s) with batch_size={batch_size} and "
                             f"drop_last={drop_last} make no batch.")
        if start > self.n_batches:
            raise InputError(f"Batches: start={start} is past the epoch's {self.n_batches} "
                             f"batches.")
        augment = as_augment(augment)
        if hasattr(augment, "check"):
            augment.check(np.shape(x))
        order = (np.random.default_rng([ORDER_STREAM, seed, int(epoch), 0]).permutation(n)
                 if shuffle else np.arange(n))
        self.start = int(start)
        self._queue: queue.Queue = queue.Queue(maxsize=int(prefetch))
        self._stop = threading.Event()
        self._done = False
        # The thread gets no reference to self, so an abandoned Batches can be collected,
        # and its finalizer then stops the thread.
        self._thread = threading.Thread(
            target=_produce, name="cnngen-batches", daemon=True,
            args=(x, y, order, int(batch_size), range(self.start, self.n_batches), augment,
                  (seed, int(epoch)), self._queue, self._stop))
        self._thread.start()
        self._finalizer = weakref.finalize(self, _shutdown, self._stop, self._queue, self._thread)

    def __len__(self) -> int:
        return self.n_batches - self.start

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        if self._done:
            raise StopIteration
        while True:
            try:
                item = self._queue.get(timeout=0.5)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self.close()
                    raise RuntimeError("Batches: the prefetch thread ended without a batch or "
                                       "an error") from None
        if item is _END:
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        return item

    def close(self) -> None:
        """Stop the prefetch thread and wait for it; further ``next()`` raises StopIteration."""
        self._done = True
        self._finalizer()

    def __enter__(self) -> Batches:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


def _produce(x, y, order, batch_size, batches, augment, seeds, out: queue.Queue,
             stop: threading.Event) -> None:
    """Put batches ``batches`` (then _END, or a _Failure) on ``out`` until ``stop``."""
    try:
        for b in batches:
            index = order[b * batch_size:(b + 1) * batch_size]
            x_batch = np.ascontiguousarray(np.take(x, index, axis=0), dtype=np.float32)
            y_batch = np.take(y, index, axis=0)
            if augment is not None:
                rng = np.random.default_rng([AUGMENT_STREAM, *seeds, b])
                x_new = augment(x_batch, rng)
                if not isinstance(x_new, np.ndarray) or x_new.shape != x_batch.shape:
                    raise InputError(f"augment {augment!r}: must return an array of the batch's "
                                     f"shape {x_batch.shape}; received "
                                     f"{getattr(x_new, 'shape', type(x_new).__name__)}.")
                x_batch = np.ascontiguousarray(x_new, dtype=np.float32)
            if not _put(out, (x_batch, y_batch), stop):
                return
        _put(out, _END, stop)
    except BaseException as e:  # handed to the consumer, which raises it
        _put(out, _Failure(e), stop)


def _put(out: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` once there is room; False if ``stop`` was set first."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.05)
            return True
        except queue.Full:
            pass
    return False


def _shutdown(stop: threading.Event, out: queue.Queue, thread: threading.Thread) -> None:
    stop.set()
    while True:  # drop the queued batches: their memory goes now, not with the object
        try:
            out.get_nowait()
        except queue.Empty:
            break
    if thread is not threading.current_thread():
        thread.join()
