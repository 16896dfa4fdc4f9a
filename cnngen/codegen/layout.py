"""The channel-blocked activation layout and its conversions from and to NCHW.

A tensor (N, C, H, W) lives in a flat float32 buffer as

    (N, ceil(C/V), top + H + bottom, left + W + right, V)

Channel c is lane c % V of block c // V. The halo (top, bottom, left, right) is zero and
as wide as the widest padding any reader needs, so convolutions read their padded window
without testing borders. Lanes past C (the last block's padding) hold finite values that
every reader ignores or multiplies by zero weights. 1-D tensors (N, C, L) use H = 1;
vectors (N, C) use H = W = 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import TensorType


@dataclass(frozen=True)
class Blocked:
    channels: int
    height: int
    width: int
    vector: int
    halo: tuple[int, int, int, int] = (0, 0, 0, 0)
    # A view of channel blocks [block_offset, block_offset + blocks) of a wider tensor of
    # buffer_blocks blocks (a concat's input written in place); 0 means a tensor of its own.
    buffer_blocks: int = 0
    block_offset: int = 0

    @classmethod
    def of(cls, t: TensorType, vector: int, halo=(0, 0, 0, 0)) -> Blocked:
        spatial = (1,) * (2 - len(t.spatial)) + t.spatial
        if len(spatial) != 2:
            raise ValueError(f"no blocked layout for rank-{len(t.shape)} tensor {t}")
        return cls(t.channels, spatial[0], spatial[1], vector, tuple(halo))

    @property
    def blocks(self) -> int:
        return -(-self.channels // self.vector)

    @property
    def rows(self) -> int:
        return self.halo[0] + self.height + self.halo[1]

    @property
    def cols(self) -> int:
        return self.halo[2] + self.width + self.halo[3]

    @property
    def row_stride(self) -> int:
        return self.cols * self.vector

    @property
    def block_stride(self) -> int:
        return self.rows * self.row_stride

    @property
    def batch_stride(self) -> int:
        return (self.buffer_blocks or self.blocks) * self.block_stride

    @property
    def origin(self) -> int:
        """Offset of pixel (0, 0) of channel block 0 inside one image."""
        return (self.block_offset * self.block_stride + self.halo[0] * self.row_stride
                + self.halo[2] * self.vector)

    def channel_view(self, channels: int, channel_offset: int) -> Blocked:
        """The layout of ``channels`` channels from ``channel_offset`` (a whole number of
        blocks) of this tensor, in its buffer."""
        if channel_offset % self.vector or self.buffer_blocks:
            raise ValueError(f"no view at channel {channel_offset} of {self}")
        return Blocked(channels, self.height, self.width, self.vector, self.halo,
                       self.blocks, channel_offset // self.vector)

    def size(self, n_batch: int) -> int:
        return n_batch * self.batch_stride

    def strides(self, prefix: str) -> dict[str, int]:
        """Template values ``<prefix>_batch, _block, _row, _origin``."""
        return {f"{prefix}_batch": self.batch_stride, f"{prefix}_block": self.block_stride,
                f"{prefix}_row": self.row_stride, f"{prefix}_origin": self.origin}

    def window_origin(self, pad_top: int, pad_left: int) -> int:
        """Offset of the first element a reader with this padding touches.

        Negative padding (a crop, from conv_transpose lowering) moves the origin inwards.
        """
        top, left = self.halo[0] - pad_top, self.halo[2] - pad_left
        if top < 0 or left < 0:
            raise ValueError(f"halo {self.halo} is narrower than padding ({pad_top}, {pad_left})")
        return self.block_offset * self.block_stride + top * self.row_stride + left * self.vector

    def view(self, buffer: np.ndarray, n_batch: int) -> np.ndarray:
        """(N, blocks, rows, cols, V) view of a flat buffer."""
        whole = buffer[:self.size(n_batch)].reshape(n_batch, self.buffer_blocks or self.blocks,
                                                    self.rows, self.cols, self.vector)
        return whole[:, self.block_offset:self.block_offset + self.blocks]

    def interior(self, buffer: np.ndarray, n_batch: int) -> np.ndarray:
        top, _, left, _ = self.halo
        return self.view(buffer, n_batch)[:, :, top:top + self.height, left:left + self.width]

    def to_nchw(self, buffer: np.ndarray, n_batch: int) -> np.ndarray:
        """Reference conversion (numpy): the tensor as (N, C, H, W)."""
        inner = self.interior(buffer, n_batch).transpose(0, 1, 4, 2, 3)
        return inner.reshape(n_batch, self.blocks * self.vector, self.height,
                             self.width)[:, :self.channels]


@dataclass(frozen=True)
class FlatView:
    """A flatten of a blocked tensor that its readers (dense layers) read in place, in the
    source's memory order: feature slot ``i`` of a sample is float ``i`` of the sample's
    span of the source buffer, halo included. ``slot(c, h, w)`` maps a C-order feature."""

    source: Blocked

    @property
    def channels(self) -> int:
        s = self.source
        return s.channels * s.height * s.width

    @property
    def slots(self) -> int:
        """Floats per sample the reader spans: every block of the source, halo included."""
        return self.source.blocks * self.source.block_stride

    def slot_of_features(self) -> np.ndarray:
        """For each C-order feature (c, h, w), its slot in the sample's span."""
        s = self.source
        c, h, w = np.meshgrid(np.arange(s.channels), np.arange(s.height), np.arange(s.width),
                              indexing="ij")
        return ((c // s.vector) * s.block_stride + (h + s.halo[0]) * s.row_stride
                + (w + s.halo[2]) * s.vector + c % s.vector).ravel()

    def size(self, n_batch: int) -> int:
        return self.source.size(n_batch)

    def to_nchw(self, buffer: np.ndarray, n_batch: int) -> np.ndarray:
        return self.source.to_nchw(buffer, n_batch).reshape(n_batch, -1)


@dataclass(frozen=True)
class Flat:
    """A plain float32 buffer of ``count`` values, or ``count`` per sample when
    ``per_sample``: per-channel statistics, labels, per-sample losses, optimizer state."""

    count: int
    per_sample: bool = False

    def size(self, n_batch: int) -> int:
        return self.count * (n_batch if self.per_sample else 1)

    def to_nchw(self, buffer: np.ndarray, n_batch: int) -> np.ndarray:
        """The values (N, count) per sample, else (count,)."""
        values = buffer[:self.size(n_batch)]
        return values.reshape(n_batch, self.count) if self.per_sample else values
