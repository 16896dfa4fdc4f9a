"""Shared tables of test workloads: one small spec per op and attribute variant, with odd
sizes (7x7, 5x9, channel counts that are not powers of two, stride 2, dilation 2).

Each case is ``(id, spec, batch, train)``. Later kernel tests compare generated code
against the reference on these same cases.
"""
from cnngen.spec import Builder


def single(op, input_shape, inputs=None, **attrs):
    """A spec with one layer of ``op`` on the input."""
    b = Builder(f"t_{op}", input_shape)
    b.layer(op, "y", inputs=inputs, **attrs)
    return b.spec()


def two_branch(op, shape_a, shape_b=None, **attrs):
    """``op`` over two branches of the input: tanh(x) and sigmoid(x) (or pooled for b)."""
    b = Builder(f"t_{op}", shape_a)
    b.tanh("a")
    if shape_b is None:
        b.sigmoid("b", inputs="input")
    else:
        b.global_avgpool("b", inputs="input", keepdims=True)
    b.layer(op, "y", inputs=["a", "b"], **attrs)
    return b.spec()


def unpool(shape, **pool):
    b = Builder("t_unpool", shape)
    b.maxpool2d("p", return_switches=True, **pool)
    b.tanh("t")
    b.max_unpool("y", switches="p")
    return b.spec()


def concat3(shape):
    b = Builder("t_concat", shape)
    b.conv2d("a", filters=2, kernel=1)
    b.conv2d("c", filters=3, kernel=3, padding=1, inputs="input")
    b.maxpool2d("m", size=3, stride=1, padding=1, inputs="input")
    b.concat("y", inputs=["a", "c", "m"])
    return b.spec()


OP_CASES = [
    ("conv2d_3x3_pad1_relu", single("conv2d", (3, 7, 7), filters=4, kernel=3, padding=1, activation="relu"), 2, False),
    ("conv2d_stride2_asym_pad", single("conv2d", (2, 7, 9), filters=3, kernel=3, stride=2, padding=[[1, 0], [0, 2]]), 2, False),
    ("conv2d_dilation2", single("conv2d", (2, 9, 9), filters=3, kernel=3, dilation=2, padding=2), 1, False),
    ("conv2d_groups2", single("conv2d", (4, 6, 5), filters=6, kernel=3, groups=2, activation="tanh"), 2, False),
    ("conv2d_depthwise_same_s2", single("conv2d", (3, 7, 7), filters=3, kernel=3, groups=3, stride=2, padding="same"), 2, False),
    ("conv2d_1x1_nobias", single("conv2d", (5, 4, 4), filters=3, kernel=1, bias=False), 2, False),
    ("conv2d_rect_c1", single("conv2d", (1, 6, 5), filters=2, kernel=[3, 1], stride=[1, 2]), 2, False),
    ("conv1d_k5_pad2", single("conv1d", (3, 11), filters=4, kernel=5, padding=2, activation="silu"), 2, False),
    ("conv1d_s2_d2_groups", single("conv1d", (4, 13), filters=2, kernel=3, stride=2, dilation=2, groups=2), 2, False),
    ("conv_transpose2d_s2_op1", single("conv_transpose2d", (3, 4, 5), filters=2, kernel=3, stride=2, padding=1, output_padding=1), 2, False),
    ("conv_transpose2d_groups_dil", single("conv_transpose2d", (4, 3, 3), filters=6, kernel=2, groups=2, dilation=2), 1, False),
    ("conv_transpose1d_s3", single("conv_transpose1d", (2, 5), filters=3, kernel=4, stride=3, padding=[[2, 1]]), 2, False),
    ("maxpool2d_2", single("maxpool2d", (3, 6, 6), size=2), 2, False),
    ("maxpool2d_3s2_pad_ceil", single("maxpool2d", (2, 7, 8), size=3, stride=2, padding=1, ceil_mode=True), 2, False),
    ("maxpool1d_3s2", single("maxpool1d", (2, 9), size=3, stride=2), 2, False),
    ("avgpool2d_2", single("avgpool2d", (3, 6, 6), size=2), 2, False),
    ("avgpool2d_exclude_pad_ceil", single("avgpool2d", (2, 7, 7), size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False), 2, False),
    ("avgpool2d_include_pad", single("avgpool2d", (2, 5, 5), size=3, stride=2, padding=1), 2, False),
    ("avgpool1d_same", single("avgpool1d", (2, 9), size=2, padding="same", stride=1), 2, False),
    ("global_avgpool", single("global_avgpool", (3, 5, 4)), 2, False),
    ("global_maxpool_keepdims", single("global_maxpool", (3, 5, 4), keepdims=True), 2, False),
    ("global_avgpool_1d", single("global_avgpool", (3, 7)), 2, False),
    ("max_unpool", unpool((2, 6, 6), size=2), 2, False),
    ("max_unpool_odd", unpool((2, 7, 5), size=3, stride=2, padding=1), 2, False),
    ("batchnorm_eval", single("batchnorm", (3, 4, 5)), 2, False),
    ("batchnorm_train", single("batchnorm", (3, 4, 5)), 3, True),
    ("batchnorm_train_flat", single("batchnorm", (5,), eps=1e-3), 4, True),
    ("batchnorm_train_1d", single("batchnorm", (3, 6)), 2, True),
    ("dropout_train", single("dropout", (3, 4, 4), rate=0.3), 2, True),
    ("dropout_train_scale_at_test", single("dropout", (6,), rate=0.5, mode="scale_at_test"), 3, True),
    ("dropout_eval_scale_at_test", single("dropout", (6,), rate=0.25, mode="scale_at_test"), 3, False),
    ("relu", single("relu", (3, 4, 4)), 2, False),
    ("leaky_relu", single("leaky_relu", (3, 4, 4), alpha=0.2), 2, False),
    ("sigmoid", single("sigmoid", (3, 4)), 2, False),
    ("tanh", single("tanh", (5,)), 2, False),
    ("swish", single("swish", (3, 4, 4)), 2, False),
    ("silu", single("silu", (3, 4)), 2, False),
    ("hardswish", single("hardswish", (3, 4, 4)), 2, False),
    ("identity", single("identity", (3, 4)), 2, False),
    ("softmax", single("softmax", (5,)), 3, False),
    ("softmax_spatial", single("softmax", (4, 3, 2)), 2, False),
    ("dense", single("dense", (7,), units=5, activation="sigmoid"), 3, False),
    ("dense_nobias", single("dense", (7,), units=4, bias=False), 3, False),
    ("flatten", single("flatten", (2, 3, 4)), 2, False),
    ("reshape", single("reshape", (12,), shape=[3, -1, 2]), 2, False),
    ("add_relu", two_branch("add", (3, 4, 4), activation="relu"), 2, False),
    ("concat", concat3((3, 5, 5)), 2, False),
    ("multiply_broadcast", two_branch("multiply", (3, 4, 5), (3, 1, 1)), 2, False),
    ("multiply_same", two_branch("multiply", (3, 4)), 2, False),
]


# Real convolution layers from the zoo (smaller maps where the full size only costs time),
# plus odd channel counts: (id, spec, batch).
CONV_LAYERS = [
    ("lenet_c1", single("conv2d", (1, 32, 32), filters=6, kernel=5, activation="relu"), 3),
    ("lenet_c2", single("conv2d", (6, 14, 14), filters=16, kernel=5, activation="relu"), 2),
    ("resnet_stem", single("conv2d", (3, 40, 37), filters=64, kernel=7, stride=2, padding=3), 1),
    ("resnet_l1", single("conv2d", (64, 20, 20), filters=64, kernel=3, padding=1, activation="relu"), 1),
    ("resnet_l3_s2", single("conv2d", (128, 14, 14), filters=256, kernel=3, stride=2, padding=1), 2),
    ("resnet_l4_7x7", single("conv2d", (512, 7, 7), filters=512, kernel=3, padding=1), 1),
    ("resnet_downsample_1x1", single("conv2d", (64, 13, 13), filters=128, kernel=1, stride=2, bias=False), 1),
    ("nin_1x1", single("conv2d", (256, 13, 13), filters=64, kernel=1), 1),
    ("vgg_c2", single("conv2d", (64, 28, 28), filters=128, kernel=3, padding=1, activation="relu"), 1),
    ("effnet_dw", single("conv2d", (144, 13, 13), filters=144, kernel=3, padding=1, groups=144, activation="swish"), 2),
    ("effnet_dw_s2_k5", single("conv2d", (40, 15, 15), filters=40, kernel=5, stride=2, padding=2, groups=40), 1),
    ("effnet_expand_c17", single("conv2d", (17, 9, 9), filters=40, kernel=1, activation="sigmoid"), 2),
    ("grouped_aligned", single("conv2d", (64, 9, 9), filters=64, kernel=3, groups=2, padding=1), 1),
    ("grouped_misaligned", single("conv2d", (12, 9, 8), filters=20, kernel=3, groups=4, padding="same", activation="leaky_relu"), 2),
    ("mnist1d_c1", single("conv1d", (1, 40), filters=32, kernel=5, padding=2, activation="relu"), 4),
    ("ts_c64", single("conv1d", (64, 67), filters=64, kernel=3, padding=1), 2),
    ("deconv_s2", single("conv_transpose2d", (32, 7, 7), filters=16, kernel=4, stride=2, padding=1, activation="relu"), 1),
    ("deconv_crop", single("conv_transpose2d", (16, 5, 6), filters=17, kernel=3, stride=3, padding=3, output_padding=2), 2),
]
