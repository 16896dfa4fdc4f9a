"""LeNet-5 (LeCun, Bottou, Bengio and Haffner, "Gradient-based learning applied to
document recognition", Proc. IEEE 1998), in the modern form: ReLU and max-pooling
instead of scaled tanh and trainable sub-sampling, and full C3 connectivity instead of
the paper's partial connection table. The layers match ``examples/lenet5.yaml``.
"""
from __future__ import annotations

from ..spec import Builder


def lenet5(num_classes: int = 10, input_size: int = 32, in_channels: int = 1) -> dict:
    """The LeNet-5 spec: 61,706 parameters at 32x32x1 with 10 classes.

    conv 6 5x5 -> maxpool 2 -> conv 16 5x5 -> maxpool 2 -> dense 120 -> dense 84 ->
    dense ``num_classes``, ReLU after every hidden layer; softmax cross-entropy with
    l2 = 5e-4. ``input_size`` must be at least 16 (the two conv/pool pairs)."""
    b = Builder("lenet5", (in_channels, input_size, input_size),
                description="LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling")
    b.conv2d("c1", filters=6, kernel=5, activation="relu")
    b.maxpool2d("s2", size=2)
    b.conv2d("c3", filters=16, kernel=5, activation="relu")
    b.maxpool2d("s4", size=2)
    b.flatten("flat")
    b.dense("f5", units=120, activation="relu")
    b.dense("f6", units=84, activation="relu")
    b.dense("out", units=num_classes)
    b.loss("softmax_cross_entropy", l2=5e-4)
    return b.spec()
