"""GoogLeNet / Inception v1 (Szegedy et al., "Going Deeper with Convolutions", CVPR
2015) in torchvision's layout, without the two auxiliary classifiers (they only exist
in training and torchvision's published count leaves them out).

Every conv is torchvision's ``BasicConv2d``: conv without bias, batchnorm (eps 1e-3),
ReLU. The batch norm is torchvision's addition (the paper predates it), as are the
``ceil_mode`` max-pools. An inception module concatenates four branches:

    1x1 conv | 1x1 reduce -> 3x3 | 1x1 reduce -> "5x5" | 3x3/1 max-pool -> 1x1 proj

torchvision's "5x5" branch uses a 3x3 kernel (a known bug kept for its pretrained
weights: https://github.com/pytorch/vision/issues/906), and the published 6,624,904
parameters count it so. ``wide_kernel=5`` gives the paper's 5x5 kernels (7,005,832).
"""
from __future__ import annotations

from ..spec import Builder
from .blocks import conv_bn

BN_EPS = 1e-3


def basic_conv(b: Builder, name: str, filters: int, kernel: int, stride: int = 1,
               padding: int = 0, inputs: str | None = None) -> str:
    """torchvision's BasicConv2d (conv, batchnorm eps 1e-3, ReLU); returns its last layer."""
    return conv_bn(b, name, filters, kernel, stride, padding, eps=BN_EPS, inputs=inputs)


def inception(b: Builder, name: str, x: str, c_1x1: int, c_3x3_reduce: int, c_3x3: int,
              c_wide_reduce: int, c_wide: int, c_pool_proj: int, wide_kernel: int) -> str:
    """Append one inception module reading ``x``; returns the name of its concat."""
    branch1 = basic_conv(b, f"{name}_branch1", c_1x1, 1, inputs=x)
    basic_conv(b, f"{name}_branch2_reduce", c_3x3_reduce, 1, inputs=x)
    branch2 = basic_conv(b, f"{name}_branch2", c_3x3, 3, padding=1)
    basic_conv(b, f"{name}_branch3_reduce", c_wide_reduce, 1, inputs=x)
    branch3 = basic_conv(b, f"{name}_branch3", c_wide, wide_kernel,
                         padding=(wide_kernel - 1) // 2)
    b.maxpool2d(f"{name}_branch4_pool", inputs=x, size=3, stride=1, padding=1,
                ceil_mode=True)
    branch4 = basic_conv(b, f"{name}_branch4", c_pool_proj, 1)
    return b.concat(name, inputs=[branch1, branch2, branch3, branch4])


def googlenet(num_classes: int = 1000, input_size: int = 224, in_channels: int = 3,
              wide_kernel: int = 3) -> dict:
    """The GoogLeNet spec: 6,624,904 parameters at 1000 classes with the default
    ``wide_kernel=3`` (torchvision). ``input_size`` must be at least 31, so that each of
    the four stride-2 max-pools gets a map at least as large as its window."""
    b = Builder("googlenet", (in_channels, input_size, input_size),
                description="GoogLeNet / Inception v1 (Szegedy et al. 2015), torchvision "
                            "layout without auxiliary heads")
    basic_conv(b, "conv1", 64, 7, stride=2, padding=3)
    b.maxpool2d("maxpool1", size=3, stride=2, ceil_mode=True)
    basic_conv(b, "conv2", 64, 1)
    basic_conv(b, "conv3", 192, 3, padding=1)
    x = b.maxpool2d("maxpool2", size=3, stride=2, ceil_mode=True)
    # name, 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool proj (the paper's Table 1)
    x = inception(b, "inception3a", x, 64, 96, 128, 16, 32, 32, wide_kernel)
    x = inception(b, "inception3b", x, 128, 128, 192, 32, 96, 64, wide_kernel)
    x = b.maxpool2d("maxpool3", inputs=x, size=3, stride=2, ceil_mode=True)
    x = inception(b, "inception4a", x, 192, 96, 208, 16, 48, 64, wide_kernel)
    x = inception(b, "inception4b", x, 160, 112, 224, 24, 64, 64, wide_kernel)
    x = inception(b, "inception4c", x, 128, 128, 256, 24, 64, 64, wide_kernel)
    x = inception(b, "inception4d", x, 112, 144, 288, 32, 64, 64, wide_kernel)
    x = inception(b, "inception4e", x, 256, 160, 320, 32, 128, 128, wide_kernel)
    x = b.maxpool2d("maxpool4", inputs=x, size=2, stride=2, ceil_mode=True)
    x = inception(b, "inception5a", x, 256, 160, 320, 32, 128, 128, wide_kernel)
    inception(b, "inception5b", x, 384, 192, 384, 48, 128, 128, wide_kernel)
    b.global_avgpool("avgpool")
    b.dropout("dropout", rate=0.2)
    b.dense("fc", units=num_classes)
    b.loss("softmax_cross_entropy")
    return b.spec()
