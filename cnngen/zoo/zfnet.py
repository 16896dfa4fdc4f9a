"""ZFNet (Zeiler and Fergus, "Visualizing and Understanding Convolutional Networks",
ECCV 2014; arXiv 1311.2901, 2013), the network of the paper's Figure 3.

Feature maps at 224x224 follow the figure: 110 -> 55 -> 26 -> 13 -> 13 -> 13 -> 6. To
get them, conv1 pads by 1 and the max-pools use ``ceil_mode`` (Caffe's rounding); the
paper gives only kernel sizes and strides.

Not reproduced: the paper's local contrast normalisation across feature maps after
layers 1 and 2 (LRN is not in cnngen's op vocabulary), and its training-time filter
renormalisation (conv filters with RMS above 0.1 are rescaled). Dropout 0.5 is applied
to the outputs of fc6 and fc7, as in the paper.
"""
from __future__ import annotations

from ..spec import Builder
from .blocks import classifier_4096


def zfnet(num_classes: int = 1000, input_size: int = 224, in_channels: int = 3) -> dict:
    """The ZFNet spec. ``input_size`` must be at least 63."""
    b = Builder("zfnet", (in_channels, input_size, input_size),
                description="ZFNet (Zeiler & Fergus 2013) without LRN")
    b.conv2d("conv1", filters=96, kernel=7, stride=2, padding=1, activation="relu")
    b.maxpool2d("pool1", size=3, stride=2, ceil_mode=True)
    b.conv2d("conv2", filters=256, kernel=5, stride=2, activation="relu")
    b.maxpool2d("pool2", size=3, stride=2, ceil_mode=True)
    b.conv2d("conv3", filters=384, kernel=3, padding=1, activation="relu")
    b.conv2d("conv4", filters=384, kernel=3, padding=1, activation="relu")
    b.conv2d("conv5", filters=256, kernel=3, padding=1, activation="relu")
    b.maxpool2d("pool5", size=3, stride=2, ceil_mode=True)
    return classifier_4096(b, num_classes)
