"""Units the zoo networks share: the conv -> batch-norm -> activation unit
(torchvision's ``Conv2dNormActivation``, GoogLeNet's ``BasicConv2d``) and the
4096-4096 classifier head of VGG and ZF Net."""
from __future__ import annotations

from ..spec import Builder


def conv_bn(b: Builder, name: str, filters: int, kernel: int, stride: int = 1,
            padding: int = 0, groups: int = 1, activation: str | None = "relu",
            eps: float = 1e-5, momentum: float = 0.1, inputs: str | None = None) -> str:
    """Append a bias-free conv, a batchnorm and an optional activation; returns the name
    of the last layer appended.

    The layers are named ``name`` (the conv), ``name_bn`` and ``name_<activation>``. The
    conv has no bias because the batchnorm's beta takes its place. ``inputs`` defaults to
    the previous layer."""
    attrs = {"filters": filters, "kernel": kernel, "bias": False}
    if stride != 1:
        attrs["stride"] = stride
    if padding:
        attrs["padding"] = padding
    if groups != 1:
        attrs["groups"] = groups
    b.conv2d(name, inputs=inputs, **attrs)
    b.batchnorm(f"{name}_bn", eps=eps, momentum=momentum)
    if activation is None:
        return b.last
    return b.layer(activation, f"{name}_{activation}")


def classifier_4096(b: Builder, num_classes: int) -> dict:
    """Append flatten, fc6/fc7 (4096, ReLU, each followed by dropout 0.5), fc8 and a
    softmax cross-entropy loss; returns the finished spec."""
    b.flatten("flat")
    b.dense("fc6", units=4096, activation="relu")
    b.dropout("drop6", rate=0.5)
    b.dense("fc7", units=4096, activation="relu")
    b.dropout("drop7", rate=0.5)
    b.dense("fc8", units=num_classes)
    b.loss("softmax_cross_entropy")
    return b.spec()
