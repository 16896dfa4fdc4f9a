"""Classic architectures as specs: each entry of ``MODELS`` returns the plain spec dict
that ``cnngen check``, the reference executor and the compiler take.

    spec = cnngen.zoo.get("resnet18", num_classes=10, input_size=32)

Every builder takes ``num_classes``, ``input_size`` (square inputs; the length of 1-D ones)
and ``in_channels``;
the layouts and parameter counts follow torchvision where it has the model.
"""
from __future__ import annotations

from typing import Callable

from ..errors import SpecError
from ..suggest import did_you_mean
from .alexnet import alexnet
from .efficientnet import (efficientnet, efficientnet_b0, efficientnet_b1, efficientnet_b2,
                           efficientnet_b3, efficientnet_b4, efficientnet_b5, efficientnet_b6,
                           efficientnet_b7)
from .googlenet import googlenet
from .lenet import lenet5
from .mnist1d import mnist1d_cnn
from .resnet import resnet18, resnet34, resnet50, resnet101, resnet152
from .vgg import vgg11, vgg13, vgg16, vgg19
from .zfnet import zfnet

MODELS: dict[str, Callable[..., dict]] = {f.__name__: f for f in (
    lenet5, mnist1d_cnn, alexnet, zfnet, vgg11, vgg13, vgg16, vgg19, googlenet,
    resnet18, resnet34, resnet50, resnet101, resnet152,
    efficientnet_b0, efficientnet_b1, efficientnet_b2, efficientnet_b3,
    efficientnet_b4, efficientnet_b5, efficientnet_b6, efficientnet_b7,
)}


def get(name: str, **kwargs) -> dict:
    """The spec dict of zoo model ``name``, built with ``kwargs`` (``num_classes``,
    ``input_size``, ``in_channels``); raises SpecError for an unknown name."""
    if name not in MODELS:
        raise SpecError(f"unknown model {name!r}.{did_you_mean(name, MODELS)} "
                        f"Known models: {', '.join(MODELS)}.")
    return MODELS[name](**kwargs)


__all__ = ["MODELS", "efficientnet", "get", *MODELS]
