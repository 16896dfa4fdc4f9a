"""AlexNet (Krizhevsky, Sutskever and Hinton, "ImageNet Classification with Deep
Convolutional Neural Networks", NeurIPS 2012) in torchvision's single-tower layout
(from "One weird trick", Krizhevsky 2014): 64/192/384/256/256 filters, no grouping and
no local response normalisation. 61,100,840 parameters at 224x224 with 1000 classes.

torchvision puts ``AdaptiveAvgPool2d(6)`` before the classifier; at 224x224 the map is
already 6x6 so it is the identity and is left out here. At other input sizes the first
dense layer reads whatever map the features produce (256*1*1 at 64x64).
"""
from __future__ import annotations

from ..spec import Builder


def alexnet(num_classes: int = 1000, input_size: int = 224, in_channels: int = 3) -> dict:
    """The AlexNet spec (torchvision layout). ``input_size`` must be at least 63."""
    b = Builder("alexnet", (in_channels, input_size, input_size),
                description="AlexNet (Krizhevsky et al. 2012), torchvision layout")
    b.conv2d("conv1", filters=64, kernel=11, stride=4, padding=2, activation="relu")
    b.maxpool2d("pool1", size=3, stride=2)
    b.conv2d("conv2", filters=192, kernel=5, padding=2, activation="relu")
    b.maxpool2d("pool2", size=3, stride=2)
    b.conv2d("conv3", filters=384, kernel=3, padding=1, activation="relu")
    b.conv2d("conv4", filters=256, kernel=3, padding=1, activation="relu")
    b.conv2d("conv5", filters=256, kernel=3, padding=1, activation="relu")
    b.maxpool2d("pool5", size=3, stride=2)
    b.flatten("flat")
    b.dropout("drop6", rate=0.5)
    b.dense("fc6", units=4096, activation="relu")
    b.dropout("drop7", rate=0.5)
    b.dense("fc7", units=4096, activation="relu")
    b.dense("fc8", units=num_classes)
    b.loss("softmax_cross_entropy")
    return b.spec()
