"""2D/3D registration: a femur put back where the films show it (analytic phantom, known perturbation).

Slow (a few seconds each since the registration's speed-up, but kept with the slow tests): `make test-slow`.
"""

from __future__ import annotations

import numpy as np
import pytest

from appliance.recon.register import RegistrationSettings, register_bones, rigid_matrix, rms_displacement_mm
from appliance.recon.types import FEMUR
from tests.test_recon_checks_phantom import build_phantom, film_of, knee_geometries, moved_bone


@pytest.mark.slow
def test_registration_recovers_a_known_femur_displacement() -> None:
    ph = build_phantom()
    films = [film_of(ph.recon, g, seed=i) for i, g in enumerate(knee_geometries(pitch_mm=1.0).values())]
    lab = np.asarray(ph.recon.labels.data)
    pts = ph.recon.labels.index_to_mm(np.argwhere(lab == FEMUR))
    centre = pts.mean(axis=0)
    # The reconstruction puts the femur 3 deg / 3 deg / 2 deg and (2, -3, 2) mm away from the truth.
    wrong = rigid_matrix(np.radians([3.0, -3.0, 2.0]), np.array([2.0, -3.0, 2.0]), centre)
    start_error = rms_displacement_mm(wrong, pts)
    assert start_error > 3.0
    recon = moved_bone(ph.recon, FEMUR, wrong)

    result = register_bones(recon, films, RegistrationSettings(bones=(FEMUR,)))
    pose = result.poses["femur"]
    # Correction composed with the perturbation: close to the identity on the femur's voxels.
    remaining = rms_displacement_mm(pose.matrix @ wrong, pts)
    assert remaining < 1.0, (start_error, remaining)
    assert pose.similarity_after > pose.similarity_before
    # The residual reports how far the bone had to move: about the perturbation.
    assert result.residual_mm == pytest.approx(start_error, abs=1.0)
    R = (pose.matrix @ wrong)[:3, :3]
    angle = np.degrees(np.arccos(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)))
    assert angle < 1.0
    # A displaced bone is searched, not waved through by the first coarse look.
    assert pose.evaluations > 2 * 6 + 3


@pytest.mark.slow
def test_registration_leaves_a_correct_bone_in_place() -> None:
    ph = build_phantom()
    films = [film_of(ph.recon, g, seed=i) for i, g in enumerate(knee_geometries(pitch_mm=1.0).values())]
    result = register_bones(ph.recon, films, RegistrationSettings(bones=(FEMUR,)))
    assert result.residual_mm is not None and result.residual_mm < 1.0
    # The bone already fits: the +-step probes gain nothing, so no search follows them
    # (start on the fine and the coarse grid, 12 probes, the check of the final pose).
    assert result.poses["femur"].evaluations <= 2 * 6 + 3
