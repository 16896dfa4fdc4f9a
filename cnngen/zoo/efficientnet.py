"""EfficientNet B0-B7 (Tan and Le, "EfficientNet: Rethinking Model Scaling for
Convolutional Neural Networks", ICML 2019) in torchvision's layout.

One builder, ``efficientnet``, scales the B0 stage table (the paper's Table 1) by a
width multiplier (channels -> ``make_divisible(c * width, 8)``) and a depth multiplier
(layers per stage -> ``ceil(n * depth)``); each variant fixes the two, its resolution
and its dropout (the paper's compound scaling).

Following torchvision: every conv is bias-free with a batchnorm after it; an MBConv
block is an optional 1x1 expansion (SiLU), a depthwise kxk conv (SiLU), squeeze-and-
excitation, and a 1x1 projection without activation, with an identity shortcut when
the stride is 1 and the channel count is unchanged. The SE bottleneck has
``max(1, c_in // 4)`` channels, c_in being the block's input (not expanded) channels.
B0-B4 use PyTorch's default batchnorm (eps 1e-5, momentum 0.1), B5-B7 eps 1e-3 and
momentum 0.01 (their weights come from the TensorFlow original). Stochastic depth,
which drops residual branches in training only, is left out: it has no parameters and
is the identity at inference.
"""
from __future__ import annotations

import math

from ..spec import Builder
from .blocks import conv_bn

# expand ratio, kernel, stride, c_in, c_out, layers: the B0 stages (the paper's Table 1).
STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
# variant -> width multiplier, depth multiplier, resolution, dropout (as torchvision).
COEFFICIENTS = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}
# variant -> batchnorm eps, momentum
BATCHNORM = {v: (1e-3, 0.01) if v in ("b5", "b6", "b7") else (1e-5, 0.1) for v in COEFFICIENTS}


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``),
    rounded up one more step if rounding lost more than 10%; as torchvision's
    ``_make_divisible``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def squeeze_excitation(b: Builder, name: str, x: str, channels: int, squeezed: int) -> str:
    """Append x * sigmoid(conv1x1(silu(conv1x1(global_avgpool(x))))); returns the
    multiply's name. Both 1x1 convs have a bias."""
    b.global_avgpool(f"{name}_pool", inputs=x, keepdims=True)
    b.conv2d(f"{name}_reduce", filters=squeezed, kernel=1, activation="silu")
    gate = b.conv2d(f"{name}_expand", filters=channels, kernel=1, activation="sigmoid")
    return b.multiply(name, inputs=[x, gate])


def mbconv(b: Builder, name: str, x: str, c_in: int, c_out: int, expand_ratio: int,
           kernel: int, stride: int, bn: dict) -> str:
    """Append one MBConv block reading ``x``; returns the name of its last layer."""
    expanded = make_divisible(c_in * expand_ratio)
    y = x
    if expanded != c_in:
        y = conv_bn(b, f"{name}_expand", expanded, 1, activation="silu", inputs=y, **bn)
    y = conv_bn(b, f"{name}_depthwise", expanded, kernel, stride, (kernel - 1) // 2,
                groups=expanded, activation="silu", inputs=y, **bn)
    y = squeeze_excitation(b, f"{name}_se", y, expanded, max(1, c_in // 4))
    y = conv_bn(b, f"{name}_project", c_out, 1, activation=None, **bn)
    if stride == 1 and c_in == c_out:
        return b.add(f"{name}_add", inputs=[y, x])
    return y


def efficientnet(width_mult: float, depth_mult: float, resolution: int, dropout: float,
                 num_classes: int = 1000, in_channels: int = 3, name: str = "efficientnet",
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1) -> dict:
    """The spec of an EfficientNet scaled from B0 by ``width_mult`` and ``depth_mult``,
    on ``resolution`` x ``resolution`` inputs. Any resolution of at least 1 works: the
    head is a global average pool."""
    bn = {"eps": bn_eps, "momentum": bn_momentum}
    b = Builder(name, (in_channels, resolution, resolution),
                description=f"EfficientNet (Tan & Le 2019), width {width_mult}, depth "
                            f"{depth_mult}, torchvision layout")
    x = conv_bn(b, "stem", make_divisible(STAGES[0][3] * width_mult), 3, 2, 1,
                activation="silu", **bn)
    for stage, (expand_ratio, kernel, stride, c_in, c_out, layers) in enumerate(STAGES, 1):
        c_in = make_divisible(c_in * width_mult)
        c_out = make_divisible(c_out * width_mult)
        for i in range(math.ceil(layers * depth_mult)):
            x = mbconv(b, f"stage{stage}_{i}", x, c_in if i == 0 else c_out, c_out,
                       expand_ratio, kernel, stride if i == 0 else 1, bn)
    conv_bn(b, "head", 4 * make_divisible(STAGES[-1][4] * width_mult), 1, activation="silu",
            inputs=x, **bn)
    b.global_avgpool("avgpool")
    b.dropout("dropout", rate=dropout)
    b.dense("fc", units=num_classes)
    b.loss("softmax_cross_entropy")
    return b.spec()


def variant(key: str, num_classes: int, input_size: int | None, in_channels: int) -> dict:
    """The spec of EfficientNet-``key`` (``"b0"``..``"b7"``); ``input_size`` None means the
    variant's own resolution."""
    width, depth, resolution, dropout = COEFFICIENTS[key]
    eps, momentum = BATCHNORM[key]
    size = resolution if input_size is None else input_size
    return efficientnet(width, depth, size, dropout, num_classes, in_channels,
                        f"efficientnet_{key}", eps, momentum)


def efficientnet_b0(num_classes: int = 1000, input_size: int | None = None,
                    in_channels: int = 3) -> dict:
    """EfficientNet-B0 (width 1.0, depth 1.0, 224x224): 5,288,548 parameters."""
    return variant("b0", num_classes, input_size, in_channels)


def efficientnet_b1(num_classes: int = 1000, input_size: int | None = None,
                    in_channels: int = 3) -> dict:
    """EfficientNet-B1 (width 1.0, depth 1.1, 240x240): 7,794,184 parameters."""
    return variant("b1", num_classes, input_size, in_channels)


def efficientnet_b2(num_classes: int = 1000, input_size: int | None = None,
                    in_channels: int = 3) -> dict:
    """EfficientNet-B2 (width 1.1, depth 1.2, 260x260): 9,109,994 parameters."""
    return variant("b2", num_classes, input_size, in_channels)


def efficientnet_b3(num_classes: int = 1000, input_size: int | None = None,
                    in_channels: int = 3) -> dict:
    """EfficientNet-B3 (width 1.2, depth 1.4, 300x300): 12,233,232 parameters."""
    return variant("b3", num_classes, input_size, in_channels)


def efficientnet_b4(num_classes: int = 1000, input_size: int | None = None,
                    in_channels: int = 3) -> dict:
    """EfficientNet-B4 (width 1.4, depth 1.8, 380x380): 19,341,616 parameters."""
    return variant("b4", num_classes, input_size, in_channels)


def efficientnet_b5(num_classes: int = 1000, input_size: int | None = None,
                    in_channels: int = 3) -> dict:
    """EfficientNet-B5 (width 1.6, depth 2.2, 456x456): 30,389,784 parameters."""
    return variant("b5", num_classes, input_size, in_channels)


def efficientnet_b6(num_classes: int = 1000, input_size: int | None = None,
                    in_channels: int = 3) -> dict:
    """EfficientNet-B6 (width 1.8, depth 2.6, 528x528): 43,040,704 parameters."""
    return variant("b6", num_classes, input_size, in_channels)


def efficientnet_b7(num_classes: int = 1000, input_size: int | None = None,
                    in_channels: int = 3) -> dict:
    """EfficientNet-B7 (width 2.0, depth 3.1, 600x600): 66,347,960 parameters."""
    return variant("b7", num_classes, input_size, in_channels)
