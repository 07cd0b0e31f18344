"""Heatmap targets: encode then decode recovers sub-pixel landmark positions."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.analytics.landmarks import LANDMARKS_2D
from appliance.errors import InputError
from export.datasets.heatmaps import (
    decode_heatmaps,
    encode_heatmaps,
    heatmap_shape,
    to_input,
    to_output,
)


def test_stride_frames_are_inverse_and_centre_on_blocks() -> None:
    p = np.array([[1.5, 5.5], [10.25, 0.0]])
    np.testing.assert_allclose(to_input(to_output(p, 4), 4), p)
    # Output pixel 0 of stride 4 is the centre of input pixels 0..3.
    np.testing.assert_allclose(to_input(np.zeros((1, 2)), 4), [[1.5, 1.5]])
    assert heatmap_shape((672, 224), 4) == (168, 56)
    assert heatmap_shape((130, 97), 4) == (33, 25)


@pytest.mark.parametrize("stride,sigma", [(1, 1.5), (2, 2.0), (4, 1.0), (4, 2.5), (8, 3.0)])
def test_round_trip_recovers_sub_pixel_positions(stride: int, sigma: float) -> None:
    rng = np.random.default_rng(stride * 10 + int(sigma * 10))
    shape = (512, 384)
    n = len(LANDMARKS_2D)
    margin = 3 * stride
    pts = np.column_stack(
        [rng.uniform(margin, shape[1] - margin, n), rng.uniform(margin, shape[0] - margin, n)]
    )
    t = encode_heatmaps(pts, None, shape, stride=stride, sigma=sigma, names=LANDMARKS_2D)
    assert t.heatmaps.shape == (n, *heatmap_shape(shape, stride)) and t.heatmaps.dtype == np.float32
    assert t.mask.all() and t.names == LANDMARKS_2D
    d = decode_heatmaps(t.heatmaps, stride, method="quadratic")
    err_out = np.abs(to_output(d.points, stride) - to_output(pts, stride))
    assert err_out.max() < 0.05, err_out.max()
    assert np.all(d.confidence > 0.75) and np.all(d.confidence <= 1.0)
    # Soft-argmax needs its window inside the map (a clipped window biases it toward the interior).
    window = int(np.ceil(5 * sigma))
    q = to_output(pts, stride)
    rows, cols = t.heatmaps.shape[1:]
    inner = (
        (q[:, 0] > window + 1)
        & (q[:, 0] < cols - window - 2)
        & (q[:, 1] > window + 1)
        & (q[:, 1] < rows - window - 2)
    )
    assert inner.any()
    s = decode_heatmaps(t.heatmaps, stride, method="softargmax", window=window)
    assert np.abs(to_output(s.points, stride) - q)[inner].max() < 0.05


def test_quadratic_decoding_is_exact_for_gaussians_where_argmax_alone_is_not() -> None:
    pts = np.array([[40.37, 21.81]])
    t = encode_heatmaps(pts, None, (64, 96), stride=4, sigma=1.5)
    d = decode_heatmaps(t.heatmaps, 4)
    np.testing.assert_allclose(d.points, pts, atol=1e-4)
    r, c = np.unravel_index(int(np.argmax(t.heatmaps[0])), t.heatmaps[0].shape)
    assert np.abs(to_input(np.array([[c, r]], float), 4) - pts).max() > 0.5  # integer peak is off


def test_hidden_and_missing_landmarks_are_masked() -> None:
    pts = np.array([[10.0, 10.0], [20.0, 30.0], [np.nan, np.nan]])
    t = encode_heatmaps(pts, [True, False, True], (64, 64), stride=2, sigma=2.0)
    assert list(t.mask) == [True, False, False]
    assert t.heatmaps[1].max() == 0.0 and t.heatmaps[2].max() == 0.0
    d = decode_heatmaps(t.heatmaps, 2)
    assert d.confidence[0] > 0.9 and d.confidence[1] == 0.0 and np.isnan(d.points[1]).all()


def test_confidence_follows_peak_height_and_position_does_not() -> None:
    pts = np.array([[33.3, 44.4]])
    t = encode_heatmaps(pts, None, (96, 96), stride=4, sigma=2.0)
    full = decode_heatmaps(t.heatmaps, 4)
    weak = decode_heatmaps(0.3 * t.heatmaps, 4)
    assert weak.confidence[0] == pytest.approx(0.3 * full.confidence[0], rel=1e-5)
    np.testing.assert_allclose(weak.points, full.points, atol=1e-6)


def test_peak_on_the_border_decodes_without_error() -> None:
    t = encode_heatmaps(np.array([[0.0, 0.0]]), None, (32, 32), stride=1, sigma=1.0)
    d = decode_heatmaps(t.heatmaps, 1)
    np.testing.assert_allclose(d.points, [[0.0, 0.0]], atol=1e-9)


def test_bad_arguments_raise() -> None:
    with pytest.raises(InputError):
        encode_heatmaps(np.zeros((2, 2)), [True], (8, 8), stride=1, sigma=1.0)
    with pytest.raises(InputError):
        encode_heatmaps(np.zeros((2, 2)), None, (8, 8), stride=1, sigma=0.0)
    with pytest.raises(InputError):
        decode_heatmaps(np.zeros((8, 8)), 1)
