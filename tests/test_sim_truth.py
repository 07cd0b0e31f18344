"""Simulator truth: exact construction, mirror symmetry, and the written truth agreeing with itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from appliance.analytics.angles2d import measure_2d
from appliance.analytics.angles3d import measure_3d
from appliance.geometry.projection import ProjectionGeometry
from export.simulator import truth
from export.simulator.assembly import build_limb
from export.simulator.case import CaseOptions, generate_case
from export.simulator.params import SamplingOptions, neutral_params, sample_params
from tests.dicom_validate import dciodvfy_errors

FAST = CaseOptions(
    write_ct=True,
    longleg_pitch=1.0,
    knee_pitch=0.6,
    leg_spacing=2.0,
    knee_spacing=1.0,
    preview_max_px=400,
)


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    return generate_case(900_123, out, FAST)


@pytest.mark.parametrize(
    ("mldfa", "mpta", "jlca"),
    [(87.5, 87.0, 1.0), (82.0, 93.0, -2.5), (95.0, 81.0, 5.5), (90.0, 90.0, 0.0)],
)
@pytest.mark.parametrize("side", ["left", "right"])
def test_requested_alignment_is_reproduced(side: str, mldfa: float, mpta: float, jlca: float) -> None:
    p = neutral_params(side, mLDFA=mldfa, MPTA=mpta, JLCA=jlca, rotation=0.0, flexion=0.0)
    limb = build_limb(p)
    a = measure_3d(
        truth.landmarks_3d(limb), side=side, posterior_condyle_points=truth.posterior_condyle_points(limb)
    )
    assert a.mldfa == pytest.approx(mldfa, abs=0.2)
    assert a.mpta == pytest.approx(mpta, abs=0.2)
    assert a.jlca == pytest.approx(jlca, abs=0.2)
    assert a.mhka == pytest.approx(mpta - mldfa - jlca, abs=0.2)


def test_condylar_twist_sign_matches_construction() -> None:
    p = neutral_params("right", condylar_twist=5.0)
    limb = build_limb(p)
    a = measure_3d(truth.landmarks_3d(limb), side="right")
    assert a.condylar_twist_deg == pytest.approx(5.0, abs=0.3)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_left_leg_is_the_mirror_of_the_right(seed: int) -> None:
    p = sample_params(np.random.default_rng(seed), SamplingOptions(side="right"))
    right = build_limb(p)
    left = build_limb(p.replace(side="left"))
    Lr, Ll = truth.landmarks_3d(right), truth.landmarks_3d(left)
    for name in Lr:
        np.testing.assert_allclose(Ll[name], Lr[name] * np.array([-1.0, 1.0, 1.0]), atol=1e-9)
    ar = measure_3d(Lr, side="right").to_dict()
    al = measure_3d(Ll, side="left").to_dict()
    for k, v in ar.items():
        if v is not None:
            assert al[k] == pytest.approx(v, abs=1e-6), k


def test_written_angles_match_recomputation(case_dir: Path) -> None:
    doc = json.loads((case_dir / "truth.json").read_text())
    L3 = {k: np.array(v) for k, v in doc["landmarks_3d"].items()}
    pcp = {k: np.array(v) for k, v in doc["posterior_condyle_points"].items()}
    a3 = measure_3d(L3, side=doc["side"], posterior_condyle_points=pcp).to_dict()
    for k, v in doc["angles_3d"].items():
        if v is not None:
            assert a3[k] == pytest.approx(v, abs=1e-3), k
    film = doc["films"]["longleg_ap"]
    geom = ProjectionGeometry.from_dict(film["geometry"])
    L2 = {k: np.array(v) for k, v in film["landmarks_2d"].items()}
    a2 = measure_2d(
        L2, pixel_spacing_mm=film["pixel_spacing_mm"][0], magnification=film["magnification"]
    ).to_dict()
    for k, v in film["angles_2d"].items():
        if v is not None:
            assert a2[k] == pytest.approx(v, abs=1e-2), k
    # The recorded matrix reproduces the written projections of the 3D landmarks.
    for name, p3 in L3.items():
        np.testing.assert_allclose(geom.project(p3)[0], film["landmarks_projected"][name], atol=1e-3)
    # Built alignment and truth agree (the case may be flexed or rotated; 3D angles are pose-free).
    assert doc["angles_3d"]["mLDFA"] == pytest.approx(doc["construction"]["mLDFA"], abs=0.2)
    assert doc["angles_3d"]["MPTA"] == pytest.approx(doc["construction"]["MPTA"], abs=0.2)


def test_film_landmarks_follow_the_stitching_registration_error(case_dir: Path) -> None:
    """``landmarks_film`` is ``landmarks_2d`` moved by its zone's recorded registration error (the image
    content moved; the geometric projection did not)."""
    doc = json.loads((case_dir / "truth.json").read_text())
    assert doc["films"]["longleg_ap"]["artifacts"].get("stitch"), "this seed's long-leg film is stitched"
    for film in doc["films"].values():
        st = film["artifacts"].get("stitch")
        top = (film["artifacts"].get("padding") or {}).get("top", 0)
        for name, p in film["landmarks_2d"].items():
            q = film["landmarks_film"][name]
            if not st:
                assert q == p
                continue
            bounds = [0, *st["seam_rows"], 10**9]
            zone = max(k for k in range(len(bounds) - 1) if bounds[k] - 0.5 <= p[1] - top + 0.0 or k == 0)
            dr, dc = st["zone_shifts"][zone]
            # Within a zone shift of a seam a point may belong to either side; elsewhere it is exact.
            if all(abs(p[1] - top - b) > 8 for b in st["seam_rows"]):
                assert q == pytest.approx([p[0] + dc, p[1] + dr], abs=1e-3), name


def test_case_files_are_complete_and_valid(case_dir: Path) -> None:
    doc = json.loads((case_dir / "truth.json").read_text())
    assert doc["side"] in ("left", "right")
    assert set(doc["films"]) == {"longleg_ap", "knee_ap", "knee_lat"}
    for name, film in doc["films"].items():
        dcm = case_dir / film["file"]
        assert dcm.is_file() and (case_dir / film["preview"]).is_file()
        assert dciodvfy_errors(dcm) == [], name
    for f in ("ct_leg.nii.gz", "labels_leg.nii.gz", "ct_knee.nii.gz", "labels_knee.nii.gz"):
        assert (case_dir / f).is_file()
    for key in ("FHC", "FKC", "MDFC", "LDFC", "MTP", "LTP", "TKC", "AC"):
        assert key in doc["landmarks_3d"] and key in doc["landmarks_2d"]
    assert 1 <= doc["cpak"]["type"] <= 9
    assert not list(case_dir.parent.glob(".case_*")), "temporary folder left behind"
