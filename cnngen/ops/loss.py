"""Training losses on the network output, averaged over the batch, plus L2 weight decay.

mse:                   L = mean((y - t)**2)                      over every element
softmax_cross_entropy: L = mean_n(-log softmax(y)[n, t_n])       class axis 1; targets are
                       integer labels (N, *spatial) or probabilities of y's shape
l2:                    L += 0.5 * l2 * sum ||w||^2               over conv and dense weights
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..ir import TensorType
from .base import Invalid

NAMES = ("mse", "softmax_cross_entropy")
DECAYED = "w"


def check_output(name: str, out: TensorType) -> None:
    if name == "softmax_cross_entropy" and out.channels < 2:
        raise Invalid(f"softmax_cross_entropy needs at least 2 classes on the channel axis; "
                      f"the output is {out}.")


def value_and_grad(name: str, y: np.ndarray, target) -> tuple[float, np.ndarray]:
    """The loss and dL/dy for a batch output ``y``."""
    target = np.asarray(target)
    if name == "mse":
        if target.shape != y.shape:
            raise InputError(f"mse: target shape must equal the output shape {y.shape}; "
                             f"received {target.shape}.")
        diff = y - target
        return float(np.mean(diff * diff)), 2.0 * diff / diff.size
    z = y - y.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    count = y.size // y.shape[1]
    if np.issubdtype(target.dtype, np.integer):
        label_shape = (y.shape[0], *y.shape[2:])
        if target.shape != label_shape:
            raise InputError(f"softmax_cross_entropy: integer labels must have shape "
                             f"{label_shape}; received {target.shape}.")
        if target.size and (target.min() < 0 or target.max() >= y.shape[1]):
            raise InputError(f"softmax_cross_entropy: labels must be in [0, {y.shape[1]}); "
                             f"received values from {target.min()} to {target.max()}.")
        probs = np.moveaxis(np.eye(y.shape[1])[target], -1, 1)
    elif target.shape == y.shape:
        probs = target.astype(np.float64)
    else:
        raise InputError(f"softmax_cross_entropy: targets must be integer labels of shape "
                         f"{(y.shape[0], *y.shape[2:])} or probabilities of shape {y.shape}; "
                         f"received {target.dtype} {target.shape}.")
    loss = -float((probs * log_p).sum()) / count
    return loss, (np.exp(log_p) * probs.sum(axis=1, keepdims=True) - probs) / count
