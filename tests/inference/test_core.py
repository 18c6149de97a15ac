"""predict_probabilities: mirroring test-time augmentation by axes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transmed.inference.core import mirror_axes, predict_probabilities
from transmed.models.checkpoint import load_model


@pytest.mark.parametrize(
    "mirror,expected",
    [(False, ()), (True, (0, 1, 2)), ((), ()), ((0,), (0,)), ([2, 0], (0, 2)),
     ((0, 1, 2), (0, 1, 2))],
)  # fmt: skip
def test_mirror_axes(mirror, expected):
    assert mirror_axes(mirror) == expected


@pytest.mark.parametrize("bad", [(3,), (-1,), (0, 0), (1, 1, 2)])
def test_mirror_axes_refuses_other_axes(bad):
    with pytest.raises(ValueError, match="spatial axes"):
        mirror_axes(bad)


def test_left_right_mirroring_averages_exactly_the_plain_and_the_flipped_pass(tiny_checkpoint):
    torch.manual_seed(0)
    model = load_model(tiny_checkpoint).eval()
    image = np.random.default_rng(0).normal(size=(4, 16, 12, 8)).astype(np.float32)
    plain = predict_probabilities(model, image)
    flipped = predict_probabilities(model, np.ascontiguousarray(image[:, ::-1]))[:, ::-1]
    lr = predict_probabilities(model, image, mirror=(0,))
    np.testing.assert_allclose(lr, (plain + flipped) / 2, rtol=1e-5, atol=1e-6)
    # an untrained network is not mirror-symmetric, so the average is not the plain pass
    assert np.abs(lr - plain).max() > 1e-4
    # True keeps its meaning: the 8 mirrorings of the three axes
    every = predict_probabilities(model, image, mirror=True)
    np.testing.assert_allclose(every, predict_probabilities(model, image, mirror=(0, 1, 2)))
    assert np.abs(every - lr).max() > 1e-4
