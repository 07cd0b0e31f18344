"""The knee-canonical reconstruction frame (appliance/recon/orientation.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.errors import InputError
from appliance.geometry.projection import centred_geometry
from appliance.recon.infer import CUBE_VOXELS, cube_affine, cube_to_film_matrix, film_frame
from appliance.recon.orientation import (
    ap_yaw_deg,
    axial_rotation,
    plateau_axial_deg,
    rotate_mats,
    to_canonical,
)


def _plateau(deg: float, n: int = 64, a: float = 24.0, b: float = 15.0) -> np.ndarray:
    """Labels with an elliptic 'tibia' (label 2) whose long axis is turned ``deg`` from the first axis
    toward the second, under a round 'femur' (label 1) block."""
    lab = np.zeros((n, n, n), np.uint8)
    i, j = np.meshgrid(np.arange(n) - n / 2 + 0.5, np.arange(n) - n / 2 + 0.5, indexing="ij")
    t = np.radians(deg)
    u = i * np.cos(t) + j * np.sin(t)
    v = -i * np.sin(t) + j * np.cos(t)
    lab[(u / a) ** 2 + (v / b) ** 2 <= 1.0, :30] = 2
    lab[(i**2 + j**2) <= 18.0**2, 34:] = 1
    return lab


@settings(max_examples=12, deadline=None)
@given(st.floats(-60.0, 60.0))
def test_the_plateau_axis_is_found_at_any_turn(deg: float) -> None:
    assert plateau_axial_deg(_plateau(deg)) == pytest.approx(deg, abs=1.0)


def test_the_plateau_angle_ignores_which_way_the_axis_points() -> None:
    # The long axis has no sign: +80 and -100 deg are the same axis and must come out the same.
    assert plateau_axial_deg(_plateau(80.0)) == pytest.approx(80.0, abs=1.0)
    assert plateau_axial_deg(_plateau(-100.0)) == pytest.approx(80.0, abs=1.0)


def test_no_tibia_is_a_clear_error() -> None:
    lab = _plateau(0.0)
    lab[lab == 2] = 0
    with pytest.raises(InputError) as e:
        plateau_axial_deg(lab)
    assert e.value.reason == "recon_orientation"


@settings(max_examples=20, deadline=None)
@given(st.floats(-45.0, 45.0), st.integers(0, 2**31 - 1))
def test_the_turned_cube_projects_every_point_where_the_aligned_one_does(deg: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    mats = rng.normal(size=(2, 3, 4))
    mats[:, 2, 3] = 5.0  # points in front of the source
    pts = rng.uniform(-1.0, 1.0, (50, 3))
    R = axial_rotation(deg)

    def proj(m: np.ndarray, p: np.ndarray) -> np.ndarray:
        q = np.concatenate([p, np.ones((len(p), 1))], axis=1) @ m.T
        return q[:, :2] / q[:, 2:3]

    turned = rotate_mats(mats, R)
    canon = to_canonical(pts, R)
    for v in range(2):
        assert np.allclose(proj(turned[v].astype(np.float64), canon), proj(mats[v], pts), atol=1e-3)
    # The turn is about the third (S-I) axis only and keeps lengths.
    assert np.allclose(canon[:, 2], pts[:, 2], atol=1e-6)
    assert np.allclose(np.linalg.norm(canon, axis=1), np.linalg.norm(pts, axis=1), atol=1e-5)


@pytest.mark.parametrize("deg", [-12.0, -3.5, 0.0, 7.0, 15.0])
def test_the_ap_films_turn_is_read_from_its_cube_matrix(deg: float) -> None:
    # A real AP set-up turned about the vertical, through the runtime's own frame and matrix code.
    t = np.radians(deg)
    centre = np.array([10.0, -20.0, -400.0])
    g = centred_geometry(
        name="knee_ap",
        isocenter_mm=centre,
        beam_dir=(-np.sin(t), np.cos(t), 0.0),
        u_dir=(np.cos(t), np.sin(t), 0.0),
        sid_mm=1150.0,
        sod_mm=1100.0,
        width_mm=240.0,
        height_mm=300.0,
        pitch_mm=0.5,
    )
    frame = film_frame(np.zeros((g.rows, g.columns), np.float32), g, centre)
    m = cube_to_film_matrix(frame.matrix, cube_affine(centre))
    assert ap_yaw_deg(m) == pytest.approx(deg, abs=0.05)
    # A PA film (beam the other way) faces the same axis: also ``deg``.
    g_pa = centred_geometry(
        name="knee_ap",
        isocenter_mm=centre,
        beam_dir=(np.sin(t), -np.cos(t), 0.0),
        u_dir=(-np.cos(t), -np.sin(t), 0.0),
        sid_mm=1150.0,
        sod_mm=1100.0,
        width_mm=240.0,
        height_mm=300.0,
        pitch_mm=0.5,
    )
    frame_pa = film_frame(np.zeros((g_pa.rows, g_pa.columns), np.float32), g_pa, centre)
    assert ap_yaw_deg(cube_to_film_matrix(frame_pa.matrix, cube_affine(centre))) == pytest.approx(
        deg, abs=0.05
    )
    assert CUBE_VOXELS == 144  # the matrices above are for the runtime's cube


def test_a_matrix_without_a_horizontal_beam_is_refused() -> None:
    m = np.zeros((3, 4))
    m[2, 2] = 1.0  # a beam straight along S-I
    with pytest.raises(InputError) as e:
        ap_yaw_deg(m)
    assert e.value.reason == "recon_bad_geometry"
