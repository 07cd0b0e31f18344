"""Knee-film landmark definitions, display orientation and measurements (appliance/landmarks/knee_views.py).

Sign conventions are checked on constructed points, against ``measure_2d`` (JLCA) and against the
simulator's exact truth (projected lateral landmarks vs the 3D slope and flexion of the same case)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from service_films import cached_template

from appliance.analytics.angles2d import measure_2d
from appliance.errors import InputError
from appliance.landmarks.knee_views import (
    KNEE_AP,
    KNEE_LAT,
    flexion_2d_deg,
    jlca_2d_deg,
    measure_knee_film,
    mirror_decision,
    row_direction,
    slope_2d_deg,
)


def _mirror(points: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    return {n: (-p[0], p[1]) for n, p in points.items()}


def _lateral(
    slope_deg: float, flexion_deg: float, anterior_sign: float = -1.0
) -> dict[str, tuple[float, float]]:
    """A lateral film (rows distal): tibia turned by flexion toward posterior (= -anterior_sign)."""
    post = -anterior_sign
    f = math.radians(flexion_deg)
    distal_t = np.array([post * math.sin(f), math.cos(f)])  # tibial axis direction (col, row)
    across_t = np.array([post * math.cos(f), -math.sin(f)])  # toward posterior, perpendicular to it
    s = math.radians(slope_deg)
    tkc = np.array([10.0, 5.0])
    a = tkc - 20.0 * across_t
    p = tkc + 20.0 * across_t + 40.0 * math.tan(s) * distal_t  # 40 mm plateau dropping by tan(slope)
    return {
        "FKC": (10.0, 0.0),
        "FAX": (10.0, -80.0),
        "TKC": tuple(tkc),
        "TAX": tuple(tkc + 80.0 * distal_t),
        "MTPA": tuple(a),
        "MTPP": tuple(p),
    }


@pytest.mark.parametrize("slope", [-4.0, 0.0, 7.5, 14.0])
@pytest.mark.parametrize("flexion", [-5.0, 0.0, 12.0, 30.0])
def test_slope_and_flexion_signs_in_either_display(slope: float, flexion: float) -> None:
    for anterior in (-1.0, 1.0):  # anterior on the viewer's left (standard right knee) or right
        pts = _lateral(slope, flexion, anterior)
        assert slope_2d_deg(pts) == pytest.approx(slope, abs=1e-9)
        assert flexion_2d_deg(pts) == pytest.approx(flexion, abs=1e-9)
        assert slope_2d_deg(_mirror(pts)) == pytest.approx(slope, abs=1e-9)
        assert flexion_2d_deg(_mirror(pts)) == pytest.approx(flexion, abs=1e-9)


def test_missing_or_degenerate_points_give_none() -> None:
    pts = _lateral(8.0, 10.0)
    assert slope_2d_deg({k: v for k, v in pts.items() if k != "MTPA"}) is None
    assert flexion_2d_deg({**pts, "FAX": pts["FKC"]}) is None
    assert slope_2d_deg({**pts, "TAX": (float("nan"), 1.0)}) is None
    assert jlca_2d_deg({"MDFC": (0, 0), "LDFC": (0, 0), "MTP": (0, 0), "LTP": (0, 0)}) is None


@pytest.mark.parametrize("jlca", [-3.0, 0.0, 2.5, 6.0])
def test_jlca_equals_measure_2d_and_is_mirror_invariant(jlca: float) -> None:
    # A right knee in the standard display: lateral toward -col, distal +row; the tibial line tilted.
    t = math.radians(jlca)
    pts = {
        "MDFC": (40.0, 100.0),
        "LDFC": (-40.0, 101.0),
        "MTP": (42.0, 108.0),
        "LTP": (42.0 - 84.0 * math.cos(t), 108.0 + 84.0 * math.sin(t)),
    }
    ref = measure_2d({**pts, "FKC": (0.0, 99.0), "TKC": (0.0, 107.0)}, 1.0).jlca
    assert ref is not None
    assert jlca_2d_deg(pts) == pytest.approx(ref, abs=1e-9)
    assert jlca_2d_deg(_mirror(pts)) == pytest.approx(ref, abs=1e-9)
    # converging medially (+col here) is positive (alignment.md)
    assert np.sign(ref) == np.sign(jlca) or jlca == 0.0


def test_row_direction_parsing() -> None:
    assert row_direction(["L", "F"]) == "L"
    assert row_direction("P\\F") == "P"
    assert row_direction(["LP", "F"]) == "L"
    assert row_direction(None) is None and row_direction([]) is None and row_direction(["", "F"]) is None
    assert row_direction(["X", "F"]) is None


def test_mirror_decision_ap() -> None:
    assert not mirror_decision(KNEE_AP, "R", ["L", "F"]).mirror
    assert mirror_decision(KNEE_AP, "L", ["L", "F"]).mirror
    d = mirror_decision(KNEE_AP, "R", ["R", "F"])
    assert d.mirror and d.display_mirrored is True and d.basis == "side+patient_orientation"
    assert not mirror_decision(KNEE_AP, "left", ["R", "F"]).mirror  # a left knee stored mirrored
    assert mirror_decision(KNEE_AP, "L", None).mirror and mirror_decision(KNEE_AP, "L", None).basis == "side"
    assert mirror_decision(KNEE_AP, None, None).basis == "unknown"
    assert mirror_decision(KNEE_AP, None, ["R", "F"]).display_mirrored is True


def test_mirror_decision_lateral() -> None:
    # The simulator's (and the standard) lateral display: right knee "P", left knee "A".
    assert not mirror_decision(KNEE_LAT, "R", ["P", "F"]).mirror
    assert mirror_decision(KNEE_LAT, "L", ["A", "F"]).mirror
    assert mirror_decision(KNEE_LAT, "L", ["A", "F"]).display_mirrored is False
    d = mirror_decision(KNEE_LAT, "R", ["A", "F"])
    assert d.mirror and d.display_mirrored is True
    assert mirror_decision(KNEE_LAT, None, ["A", "F"]).mirror
    assert mirror_decision(KNEE_LAT, "L", None).mirror and not mirror_decision(KNEE_LAT, "R", None).mirror
    with pytest.raises(InputError):
        mirror_decision("longleg_ap", "R", None)


@pytest.fixture(scope="module")
def template(request: pytest.FixtureRequest) -> Path:
    return cached_template(request.config.cache.mkdir("xr3d_service_template"))


def test_truth_projections_measure_close_to_3d(template: Path) -> None:
    from export.datasets.knee_samples import knee_truth_points

    truth = json.loads((template / "truth.json").read_text())
    pts, ok = knee_truth_points(truth, KNEE_LAT)
    assert ok.all()
    names = ("FKC", "TKC", "MTPA", "MTPP", "FAX", "TAX")
    f = truth["films"][KNEE_LAT]
    v = measure_knee_film(KNEE_LAT, dict(zip(names, pts, strict=True)), tuple(f["pixel_spacing_mm"]))
    a3 = truth["angles_3d"]
    # A lateral film is a perspective projection of a possibly rotated knee: close to, not equal to, 3D.
    assert v["tibial_slope_deg"] == pytest.approx(a3["tibial_slope_deg"], abs=4.0)
    assert v["knee_flexion_deg"] == pytest.approx(a3["knee_flexion_deg"], abs=4.0)
    ap, ok_ap = knee_truth_points(truth, KNEE_AP)
    names_ap = ("FKC", "MDFC", "LDFC", "MTP", "LTP", "TKC")
    j = measure_knee_film(KNEE_AP, dict(zip(names_ap, ap, strict=True)), (1.0, 1.0))["JLCA"]
    assert ok_ap.all() and j is not None and abs(j - a3["JLCA"]) < 3.0
