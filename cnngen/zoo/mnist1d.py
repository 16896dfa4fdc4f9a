"""The MNIST-1D CNN (Greydanus and Kobak, "Scaling down deep learning with MNIST-1D",
ICML 2024): three stride-2 1-D convolutions of 25 channels and a linear classifier, the
model of the paper's figure of benchmark accuracies (about 94% on MNIST-1D).
"""
from __future__ import annotations

from ..spec import Builder


def mnist1d_cnn(num_classes: int = 10, input_size: int = 40, in_channels: int = 1,
                channels: int = 25) -> dict:
    """The MNIST-1D CNN spec: 5,210 parameters at length 40 with 10 classes.

    conv1d ``channels`` k5 s2 p1 -> conv1d k3 s2 p1 -> conv1d k3 s2 p1 (ReLU after each)
    -> flatten -> dense ``num_classes``; softmax cross-entropy, no L2 (the paper's recipe:
    Adam, lr 1e-2, batch 100, 8000 steps)."""
    b = Builder("mnist1d_cnn", (in_channels, input_size),
                description="MNIST-1D CNN (Greydanus and Kobak 2024)")
    b.conv1d("c1", filters=channels, kernel=5, stride=2, padding=1, activation="relu")
    b.conv1d("c2", filters=channels, kernel=3, stride=2, padding=1, activation="relu")
    b.conv1d("c3", filters=channels, kernel=3, stride=2, padding=1, activation="relu")
    b.flatten("flat")
    b.dense("out", units=num_classes)
    b.loss("softmax_cross_entropy")
    return b.spec()
