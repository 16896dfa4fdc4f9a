"""Checks on a plan's buffers after a run, shared by the kernel tests."""
import numpy as np


def assert_buffers_sound(plan):
    """Every halo still zero (no kernel wrote it) and every value finite."""
    for name, layout in plan.layouts.items():
        view = layout.view(plan.buffers[name], plan.n_batch)
        top, bottom, left, right = layout.halo
        assert np.isfinite(view).all(), f"{name}: non-finite values"
        for part in (view[:, :, :top], view[:, :, layout.rows - bottom:],
                     view[:, :, :, :left], view[:, :, :, layout.cols - right:]):
            assert not part.any(), f"{name}: halo {layout.halo} was written"
