"""The model zoo: published parameter and multiply-add counts, hand-derived counts,
structure, a small forward pass per family, and the registry."""
from pathlib import Path

import numpy as np
import pytest

import cnngen
from cnngen import zoo
from cnngen.errors import SpecError
from cnngen.zoo.efficientnet import make_divisible

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# Trainable parameters at the default input size and 1000 classes, as published in
# torchvision's weight metadata (``num_params``); LeNet-5's is the classic figure.
PUBLISHED_PARAMS = {
    "lenet5": 61_706,
    "alexnet": 61_100_840,
    "vgg11": 132_863_336,
    "vgg13": 133_047_848,
    "vgg16": 138_357_544,
    "vgg19": 143_667_240,
    "googlenet": 6_624_904,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "efficientnet_b0": 5_288_548,
    "efficientnet_b1": 7_794_184,
    "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232,
    "efficientnet_b4": 19_341_616,
    "efficientnet_b5": 30_389_784,
    "efficientnet_b6": 43_040_704,
    "efficientnet_b7": 66_347_960,
}

# Multiply-adds per sample in billions, as torchvision publishes them (``_ops``, three
# decimals, at the 224x224 crop for these models).
PUBLISHED_GMACS = {
    "alexnet": 0.714,
    "vgg16": 15.47,
    "googlenet": 1.498,
    "resnet18": 1.814,
    "resnet50": 4.089,
    "efficientnet_b0": 0.386,
}


@pytest.mark.parametrize("name", PUBLISHED_PARAMS)
def test_published_parameter_count(name):
    assert cnngen.check(zoo.get(name)).params == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("name", PUBLISHED_GMACS)
def test_published_multiply_adds(name):
    assert round(cnngen.check(zoo.get(name)).macs / 1e9, 3) == PUBLISHED_GMACS[name]


def test_every_model_has_a_published_or_hand_count():
    assert set(zoo.MODELS) == set(PUBLISHED_PARAMS) | {"zfnet", "mnist1d_cnn"}


def test_mnist1d_cnn_counts_by_hand():
    # lengths 40 -> (40 + 2 - 5) // 2 + 1 = 19 -> (19 + 2 - 3) // 2 + 1 = 10 -> 5; 25 * 5 = 125
    params = (25 * 1 * 5 + 25) + 2 * (25 * 25 * 3 + 25) + (125 * 10 + 10)
    macs = 25 * 19 * 5 + 25 * 10 * 25 * 3 + 25 * 5 * 25 * 3 + 125 * 10
    summary = cnngen.check(zoo.mnist1d_cnn())
    assert (summary.params, summary.macs) == (params, macs) == (5_210, 31_750)


def test_zfnet_parameter_count_from_the_paper_table():
    # Zeiler & Fergus, Figure 3: weights (c_out * c_in * k * k) + biases (c_out) per layer.
    conv1 = 96 * 3 * 7 * 7 + 96           # 14,208
    conv2 = 256 * 96 * 5 * 5 + 256        # 614,656
    conv3 = 384 * 256 * 3 * 3 + 384       # 885,120
    conv4 = 384 * 384 * 3 * 3 + 384       # 1,327,488
    conv5 = 256 * 384 * 3 * 3 + 256       # 884,992
    fc6 = 4096 * (256 * 6 * 6) + 4096     # 37,752,832 (the 6x6x256 pool5 map, flattened)
    fc7 = 4096 * 4096 + 4096              # 16,781,312
    fc8 = 1000 * 4096 + 1000              # 4,097,000
    total = conv1 + conv2 + conv3 + conv4 + conv5 + fc6 + fc7 + fc8
    assert total == 62_357_608
    assert cnngen.check(zoo.zfnet()).params == total


def test_zfnet_map_sizes_follow_the_paper():
    graph = cnngen.check(zoo.zfnet()).graph
    sizes = [n.out.shape[1] for n in graph.nodes if n.op in ("conv2d", "maxpool2d")]
    # conv1, pool1, conv2, pool2, conv3, conv4, conv5, pool5
    assert sizes == [110, 55, 26, 13, 13, 13, 13, 6]


def test_lenet5_multiply_adds_by_hand():
    c1 = 28 * 28 * 6 * (1 * 5 * 5)       # 117,600: 28x28x6 outputs, 25 taps each
    c3 = 10 * 10 * 16 * (6 * 5 * 5)      # 240,000: 10x10x16 outputs, 150 taps each
    f5 = 120 * 16 * 5 * 5                # 48,000
    f6 = 84 * 120                        # 10,080
    out = 10 * 84                        # 840
    assert c1 + c3 + f5 + f6 + out == 416_520
    assert cnngen.check(zoo.lenet5()).macs == 416_520


def test_lenet5_is_the_example_spec():
    ours = cnngen.check(zoo.lenet5()).graph
    example = cnngen.check(EXAMPLES / "lenet5.yaml").graph
    assert [(n.name, n.op, n.attrs, n.out) for n in ours.nodes] == \
           [(n.name, n.op, n.attrs, n.out) for n in example.nodes]
    assert (ours.input, ours.loss) == (example.input, example.loss)


def test_googlenet_wide_kernel_5_counts_the_papers_5x5_convs():
    # Each "5x5" branch conv has c_reduce * c * k * k weights; k = 5 instead of 3 adds
    # c_reduce * c * 16 per module. (c_reduce, c) for 3a, 3b, 4a-4e, 5a, 5b:
    pairs = [(16, 32), (32, 96), (16, 48), (24, 64), (24, 64), (32, 64), (32, 128),
             (32, 128), (48, 128)]
    extra = sum(r * c * (25 - 9) for r, c in pairs)   # 16 * 23,808 = 380,928
    assert cnngen.check(zoo.googlenet(wide_kernel=5)).params == 6_624_904 + extra


def op_counts(spec) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in cnngen.check(spec).graph.nodes:
        counts[node.op] = counts.get(node.op, 0) + 1
    return counts


@pytest.mark.parametrize("name, adds, downsamples", [
    ("resnet18", 8, 3),     # 2+2+2+2 blocks; stages 2-4 change stride and width
    ("resnet50", 16, 4),    # 3+4+6+3 blocks; stage 1 also widens 64 -> 256
])
def test_resnet_residual_structure(name, adds, downsamples):
    spec = zoo.get(name)
    names = [layer["name"] for layer in spec["layers"]]
    assert op_counts(spec)["add"] == adds
    assert sum(n.endswith("_downsample") for n in names) == downsamples
    assert all(layer["activation"] == "relu" for layer in spec["layers"]
               if layer["op"] == "add")


def test_efficientnet_b0_blocks():
    counts = op_counts(zoo.efficientnet_b0())
    # 16 MBConv blocks, each with one squeeze-excitation gate; a residual add wherever
    # stride is 1 and channels are unchanged: 0+1+1+2+2+3+0 over the seven stages.
    assert counts["multiply"] == 16
    assert counts["add"] == 9
    assert counts["silu"] == 1 + 15 + 16 + 1   # stem, 15 expansions, 16 depthwise, head


@pytest.mark.parametrize("name, eps, momentum", [("efficientnet_b0", 1e-5, 0.1),
                                                 ("efficientnet_b5", 1e-3, 0.01)])
def test_efficientnet_batchnorm_settings_follow_torchvision(name, eps, momentum):
    norms = [layer for layer in zoo.get(name)["layers"] if layer["op"] == "batchnorm"]
    assert {(layer["eps"], layer["momentum"]) for layer in norms} == {(eps, momentum)}


@pytest.mark.parametrize("value, expected", [(32 * 1.1, 32), (16 * 1.1, 16),
                                             (320 * 1.1, 352), (40 * 1.4, 56), (4, 8),
                                             (44, 48)])
def test_make_divisible(value, expected):
    assert make_divisible(value) == expected


# name, input size, batch input shape: one member of each family, at a small size.
FORWARD_CASES = [
    ("lenet5", 32, (2, 1, 32, 32)),
    ("alexnet", 64, (2, 3, 64, 64)),
    ("zfnet", 64, (2, 3, 64, 64)),
    ("vgg11", 32, (2, 3, 32, 32)),
    ("googlenet", 32, (2, 3, 32, 32)),
    ("resnet18", 32, (2, 3, 32, 32)),
    ("resnet50", 32, (1, 3, 32, 32)),
    ("efficientnet_b0", 32, (2, 3, 32, 32)),
]


@pytest.mark.parametrize("name, size, shape", FORWARD_CASES,
                         ids=[case[0] for case in FORWARD_CASES])
def test_forward_at_small_input(name, size, shape):
    spec = zoo.get(name, num_classes=7, input_size=size)
    x = np.random.default_rng(0).standard_normal(shape)
    out = cnngen.ReferenceExecutor(spec, seed=0).forward(x).out
    assert out.shape == (shape[0], 7)
    assert np.isfinite(out).all()


# The smallest input each docstring allows; one pixel less must fail shape inference.
MINIMUM_SIZES = {"lenet5": 16, "alexnet": 63, "zfnet": 63, "vgg16": 32, "googlenet": 31}


@pytest.mark.parametrize("name", MINIMUM_SIZES)
def test_documented_minimum_input_size(name):
    size = MINIMUM_SIZES[name]
    assert cnngen.check(zoo.get(name, input_size=size)).graph.output.out.shape[0] > 0
    with pytest.raises(SpecError, match="would be"):
        cnngen.check(zoo.get(name, input_size=size - 1))


@pytest.mark.parametrize("name", ["resnet152", "efficientnet_b7"])
def test_global_pool_heads_take_any_size(name):
    assert cnngen.check(zoo.get(name, input_size=1, num_classes=3)).graph.output.out.shape \
        == (3,)


def test_in_channels_and_classes_reach_the_spec():
    spec = zoo.get("resnet18", num_classes=5, input_size=48, in_channels=1)
    assert spec["input"]["shape"] == [1, 48, 48]
    assert cnngen.check(spec).graph.output.out.shape == (5,)


def test_get_known_and_unknown_names():
    assert zoo.get("resnet18")["name"] == "resnet18"
    with pytest.raises(SpecError, match=r"unknown model 'resnet81'.*Did you mean 'resnet18'"):
        zoo.get("resnet81")


def test_every_model_builds_a_named_spec_with_a_loss():
    for name, build in zoo.MODELS.items():
        spec = build()
        assert spec["name"] == name
        assert spec["loss"]["op"] == "softmax_cross_entropy"
