"""VGG (Simonyan and Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015), configurations A, B, D and E (VGG-11/13/16/19) in
torchvision's layout: 3x3 convs with padding 1 and ReLU, 2x2 max-pools, and a
4096-4096-classes classifier with dropout 0.5 after each hidden dense layer.

torchvision puts ``AdaptiveAvgPool2d(7)`` before the classifier; at 224x224 the map is
already 7x7 so it is the identity and is left out here. At other input sizes the first
dense layer reads whatever map the features produce (512*1*1 at 32x32).
"""
from __future__ import annotations

from ..spec import Builder
from .blocks import classifier_4096

POOL = "M"
# Filters of each conv, with POOL for a 2x2 max-pool (the paper's Table 1).
CONFIGS = {
    11: (64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
    13: (64, 64, POOL, 128, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
    16: (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL,
         512, 512, 512, POOL),
    19: (64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL, 512, 512, 512, 512, POOL,
         512, 512, 512, 512, POOL),
}


def vgg(depth: int, num_classes: int = 1000, input_size: int = 224,
        in_channels: int = 3) -> dict:
    """The VGG-``depth`` spec, ``depth`` in (11, 13, 16, 19). ``input_size`` must be at
    least 32 (five 2x2 pools)."""
    b = Builder(f"vgg{depth}", (in_channels, input_size, input_size),
                description=f"VGG-{depth} (Simonyan & Zisserman 2015), torchvision layout")
    block, conv, pool = 1, 1, 1
    for item in CONFIGS[depth]:
        if item == POOL:
            b.maxpool2d(f"pool{pool}", size=2)
            block, conv, pool = block + 1, 1, pool + 1
        else:
            b.conv2d(f"conv{block}_{conv}", filters=item, kernel=3, padding=1,
                     activation="relu")
            conv += 1
    return classifier_4096(b, num_classes)


def vgg11(num_classes: int = 1000, input_size: int = 224, in_channels: int = 3) -> dict:
    """VGG-11 (configuration A): 132,863,336 parameters at 224x224, 1000 classes."""
    return vgg(11, num_classes, input_size, in_channels)


def vgg13(num_classes: int = 1000, input_size: int = 224, in_channels: int = 3) -> dict:
    """VGG-13 (configuration B): 133,047,848 parameters at 224x224, 1000 classes."""
    return vgg(13, num_classes, input_size, in_channels)


def vgg16(num_classes: int = 1000, input_size: int = 224, in_channels: int = 3) -> dict:
    """VGG-16 (configuration D): 138,357,544 parameters at 224x224, 1000 classes."""
    return vgg(16, num_classes, input_size, in_channels)


def vgg19(num_classes: int = 1000, input_size: int = 224, in_channels: int = 3) -> dict:
    """VGG-19 (configuration E): 143,667,240 parameters at 224x224, 1000 classes."""
    return vgg(19, num_classes, input_size, in_channels)
