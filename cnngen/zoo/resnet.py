"""ResNet (He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition",
CVPR 2016) in torchvision's layout, "ResNet v1.5": in a bottleneck block the stride
sits on the 3x3 conv rather than the first 1x1.

Every conv is bias-free and followed by a batchnorm. A block's shortcut is the identity,
or a 1x1 conv with the block's stride plus a batchnorm where the stride or the channel
count changes (the paper's option B). The ReLU after the residual sum is the add's
``activation``.
"""
from __future__ import annotations

from ..spec import Builder
from .blocks import conv_bn

# depth -> (block kind, blocks per stage); stage widths are 64, 128, 256, 512.
LAYOUTS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
EXPANSION = {"basic": 1, "bottleneck": 4}


def shortcut(b: Builder, name: str, x: str, c_in: int, c_out: int, stride: int) -> str:
    """The block's shortcut: ``x`` itself, or a strided 1x1 conv + batchnorm of it."""
    if stride == 1 and c_in == c_out:
        return x
    return conv_bn(b, f"{name}_downsample", c_out, 1, stride, activation=None, inputs=x)


def basic_block(b: Builder, name: str, x: str, c_in: int, width: int, stride: int) -> str:
    """Append relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut); returns the add's name."""
    conv_bn(b, f"{name}_conv1", width, 3, stride, 1, inputs=x)
    y = conv_bn(b, f"{name}_conv2", width, 3, 1, 1, activation=None)
    return b.add(f"{name}_add", inputs=[y, shortcut(b, name, x, c_in, width, stride)],
                 activation="relu")


def bottleneck_block(b: Builder, name: str, x: str, c_in: int, width: int,
                     stride: int) -> str:
    """Append the 1x1 -> 3x3 (strided) -> 1x1 (4*width) bottleneck plus shortcut, ReLU
    after the sum; returns the add's name."""
    conv_bn(b, f"{name}_conv1", width, 1, inputs=x)
    conv_bn(b, f"{name}_conv2", width, 3, stride, 1)
    y = conv_bn(b, f"{name}_conv3", 4 * width, 1, activation=None)
    return b.add(f"{name}_add", inputs=[y, shortcut(b, name, x, c_in, 4 * width, stride)],
                 activation="relu")


BLOCKS = {"basic": basic_block, "bottleneck": bottleneck_block}


def resnet(depth: int, num_classes: int = 1000, input_size: int = 224,
           in_channels: int = 3) -> dict:
    """The ResNet-``depth`` spec, ``depth`` in (18, 34, 50, 101, 152). Any ``input_size``
    of at least 1 works: the head is a global average pool."""
    kind, counts = LAYOUTS[depth]
    b = Builder(f"resnet{depth}", (in_channels, input_size, input_size),
                description=f"ResNet-{depth} (He et al. 2016), torchvision v1.5 layout")
    conv_bn(b, "conv1", 64, 7, stride=2, padding=3)
    x = b.maxpool2d("maxpool", size=3, stride=2, padding=1)
    c_in = 64
    for stage, (n_blocks, width) in enumerate(zip(counts, (64, 128, 256, 512)), start=1):
        for i in range(n_blocks):
            stride = 2 if stage > 1 and i == 0 else 1
            x = BLOCKS[kind](b, f"layer{stage}_{i}", x, c_in, width, stride)
            c_in = width * EXPANSION[kind]
    b.global_avgpool("avgpool", inputs=x)
    b.dense("fc", units=num_classes)
    b.loss("softmax_cross_entropy")
    return b.spec()


def resnet18(num_classes: int = 1000, input_size: int = 224, in_channels: int = 3) -> dict:
    """ResNet-18: 11,689,512 parameters at 1000 classes."""
    return resnet(18, num_classes, input_size, in_channels)


def resnet34(num_classes: int = 1000, input_size: int = 224, in_channels: int = 3) -> dict:
    """ResNet-34: 21,797,672 parameters at 1000 classes."""
    return resnet(34, num_classes, input_size, in_channels)


def resnet50(num_classes: int = 1000, input_size: int = 224, in_channels: int = 3) -> dict:
    """ResNet-50: 25,557,032 parameters at 1000 classes."""
    return resnet(50, num_classes, input_size, in_channels)


def resnet101(num_classes: int = 1000, input_size: int = 224, in_channels: int = 3) -> dict:
    """ResNet-101: 44,549,160 parameters at 1000 classes."""
    return resnet(101, num_classes, input_size, in_channels)


def resnet152(num_classes: int = 1000, input_size: int = 224, in_channels: int = 3) -> dict:
    """ResNet-152: 60,192,808 parameters at 1000 classes."""
    return resnet(152, num_classes, input_size, in_channels)
