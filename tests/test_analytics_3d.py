"""3D measurement in each bone's own coronal plane: known answers, flexion, rigid motion, mirror."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.analytics.angles2d import measure_2d
from appliance.analytics.angles3d import measure_3d
from appliance.analytics.flexion_axis import fit_circle, fit_flexion_axis
from appliance.analytics.landmarks import LANDMARKS_2D
from appliance.analytics.synthetic import LegSpec, condyle_surface_points, leg_3d, rotation_matrix
from appliance.errors import GeometryError, InputError, MissingLandmarksError

CORONAL = ("mHKA", "mLDFA", "MPTA", "JLCA", "aHKA", "JLO", "MAD_mm")


def _as_lists(pts: dict[str, np.ndarray]) -> dict[str, list[float]]:
    return {k: [float(x) for x in v] for k, v in pts.items()}


def _close(a: dict[str, float | None], b: dict[str, float | None], tol: float = 1e-9) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] is None) == (b[k] is None), k
        if a[k] is not None:
            assert a[k] == pytest.approx(b[k], abs=tol), k


# By hand, left leg in LPS (lateral +x, posterior +y, superior +z), femur and tibia vertical.
# The plateau points sit at different AP depths (MTP 10 mm anterior, LTP 10 mm posterior): a
# straight 3D angle would see a tilted plateau, the tibial coronal plane does not.
HAND_LEFT = {
    "FHC": [0.0, 0.0, 800.0],
    "FKC": [0.0, 0.0, 400.0],
    "MDFC": [-25.0, 0.0, 400.0],
    "LDFC": [25.0, 0.0, 395.0],  # lateral condyle 5 mm more distal: mLDFA = 90 + atan(0.1)
    "MPC": [-25.0, 25.0, 410.0],
    "LPC": [25.0, 25.0, 410.0],
    "MEC": [-40.0, 5.0, 420.0],
    "LEC": [40.0, 5.0, 420.0],
    "TKC": [0.0, 0.0, 392.0],
    "MTP": [-25.0, -10.0, 392.0],
    "LTP": [25.0, 10.0, 392.0],
    "MTPA": [-15.0, -20.0, 392.0],
    "MTPP": [-15.0, 20.0, 392.0 - 40.0 * math.tan(math.radians(8.0))],
    "AC": [0.0, 0.0, 0.0],
}


def test_hand_worked_left_leg() -> None:
    r = measure_3d(HAND_LEFT)
    t = math.degrees(math.atan(0.1))
    assert r.ml_reference == "PCA"
    assert r.mldfa == pytest.approx(90.0 + t, abs=1e-12)
    assert r.mpta == pytest.approx(90.0, abs=1e-12)  # AP offset of MTP/LTP does not tilt the plateau
    assert r.mhka == pytest.approx(0.0, abs=1e-12)
    assert r.jlca == pytest.approx(-t, abs=1e-12)  # from the identity
    assert r.condylar_twist_deg == pytest.approx(0.0, abs=1e-12)  # TEA parallel to PCA
    assert r.tibial_slope_deg == pytest.approx(8.0, abs=1e-12)
    assert r.knee_flexion_deg == pytest.approx(0.0, abs=1e-12)
    assert r.mad_mm == pytest.approx(0.0, abs=1e-12)
    assert r.femoral_mech_axis_mm == pytest.approx(400.0)
    assert r.tibial_mech_axis_mm == pytest.approx(392.0)
    assert r.side_from_landmarks == "L"
    assert r.missing == {}


def test_hand_worked_twist_sign() -> None:
    # Lateral epicondyle moved 4 mm posterior, medial 4 mm anterior over 80 mm: TEA externally
    # rotated by atan(8/80) relative to the PCA -> positive.
    lm = dict(HAND_LEFT, MEC=[-40.0, 1.0, 420.0], LEC=[40.0, 9.0, 420.0])
    r = measure_3d(lm)
    assert r.condylar_twist_deg == pytest.approx(math.degrees(math.atan(8 / 80)), abs=1e-12)


@pytest.mark.parametrize("side", ["L", "R"])
@pytest.mark.parametrize(("mldfa", "mpta", "jlca"), [(90, 90, 0), (88, 85, 1.5), (84, 91, -1), (93, 86, 3)])
def test_standing_leg_matches_construction_and_2d(side: str, mldfa: float, mpta: float, jlca: float) -> None:
    spec = LegSpec(mldfa=mldfa, mpta=mpta, jlca=jlca)
    pts = leg_3d(spec, side)
    r = measure_3d(_as_lists(pts))
    assert r.mldfa == pytest.approx(mldfa, abs=1e-9)
    assert r.mpta == pytest.approx(mpta, abs=1e-9)
    assert r.jlca == pytest.approx(jlca, abs=1e-9)
    assert r.mhka == pytest.approx(spec.mhka, abs=1e-9)
    assert r.side_from_landmarks == side
    # Standing with patellae forward, a straight AP projection (drop y) measures the same.
    r2 = measure_2d({k: [float(pts[k][0]), float(-pts[k][2])] for k in LANDMARKS_2D})
    for key in CORONAL:
        assert r.value(key) == pytest.approx(r2.value(key), abs=1e-9), key


def test_neutral_leg_twist_and_slope_exact() -> None:
    for side in "LR":
        r = measure_3d(_as_lists(leg_3d(LegSpec(mldfa=90, mpta=90), side, twist_deg=3.0, slope_deg=7.0)))
        assert r.condylar_twist_deg == pytest.approx(3.0, abs=1e-9)
        assert r.tibial_slope_deg == pytest.approx(7.0, abs=1e-9)


@pytest.mark.parametrize("flexion", [10.0, 30.0, 60.0, -5.0])
def test_flexion_leaves_bone_angles_alone(flexion: float) -> None:
    spec = LegSpec(mldfa=90.0, mpta=86.0, jlca=0.0)  # tibia 4 deg varus
    straight = measure_3d(_as_lists(leg_3d(spec, "R")))
    bent = measure_3d(_as_lists(leg_3d(spec, "R", flexion_deg=flexion)))
    assert bent.knee_flexion_deg == pytest.approx(flexion, abs=1e-9)
    assert bent.mldfa == pytest.approx(straight.mldfa, abs=1e-9)
    assert bent.mpta == pytest.approx(straight.mpta, abs=1e-9)
    assert bent.tibial_slope_deg == pytest.approx(straight.tibial_slope_deg, abs=1e-9)
    # The tibial axis projected on the femoral plane is foreshortened in AP only, so its coronal
    # lean grows as tan(lean) / cos(flexion).
    expected = -math.degrees(math.atan(math.tan(math.radians(4.0)) / math.cos(math.radians(flexion))))
    assert bent.mhka == pytest.approx(expected, abs=1e-9)
    assert bent.mhka == pytest.approx(bent.mpta - bent.mldfa - bent.jlca, abs=1e-12)


def _quat_rotation(q: tuple[float, float, float, float]) -> np.ndarray:
    w, x, y, z = np.asarray(q) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _condyles(pts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    post = pts["MPC"] - pts["MEC"]
    return condyle_surface_points(
        pts["MEC"] + 0.6 * (pts["MPC"] - pts["MEC"]),
        pts["LEC"] + 0.6 * (pts["LPC"] - pts["LEC"]),
        21.0,
        19.5,
        post,
        pts["FKC"] - pts["FHC"],
    )


@given(
    q=st.tuples(*[st.floats(-1, 1)] * 4).filter(lambda q: sum(v * v for v in q) > 0.05),
    shift=st.tuples(*[st.floats(-1000, 1000)] * 3),
    flexion=st.floats(-10, 90),
    twist=st.floats(-8, 8),
    side=st.sampled_from(["L", "R"]),
)
@settings(max_examples=60, deadline=None)
def test_invariant_to_rigid_motion(
    q: tuple[float, float, float, float],
    shift: tuple[float, float, float],
    flexion: float,
    twist: float,
    side: str,
) -> None:
    spec = LegSpec(mldfa=88.0, mpta=85.0, jlca=1.0)
    pts = leg_3d(spec, side, twist_deg=twist, flexion_deg=flexion)
    cond = _condyles(pts)
    base = measure_3d(_as_lists(pts), posterior_condyle_points=cond)
    rot = _quat_rotation(q)
    t = np.asarray(shift)
    moved_pts = {k: rot @ v + t for k, v in pts.items()}
    moved_cond = {k: v @ rot.T + t for k, v in cond.items()}
    moved = measure_3d(_as_lists(moved_pts), posterior_condyle_points=moved_cond)
    _close(base.to_dict(), moved.to_dict(), tol=1e-7)
    assert moved.side_from_landmarks == side
    assert base.flexion_axis is not None and moved.flexion_axis is not None
    assert moved.flexion_axis.medial_radius_mm == pytest.approx(base.flexion_axis.medial_radius_mm, abs=1e-7)
    assert moved.flexion_axis.angle_to_tea_deg == pytest.approx(base.flexion_axis.angle_to_tea_deg, abs=1e-6)
    assert np.allclose(rot @ np.array(base.flexion_axis.direction), moved.flexion_axis.direction, atol=1e-8)


@pytest.mark.parametrize("flexion", [0.0, 25.0])
def test_mirror_x_gives_identical_numbers(flexion: float) -> None:
    pts = leg_3d(LegSpec(mldfa=87.0, mpta=84.0, jlca=2.0), "L", twist_deg=4.0, flexion_deg=flexion)
    cond = _condyles(pts)
    flip = np.array([-1.0, 1.0, 1.0])
    a = measure_3d(_as_lists(pts), posterior_condyle_points=cond)
    b = measure_3d(
        _as_lists({k: v * flip for k, v in pts.items()}),
        posterior_condyle_points={k: v * flip for k, v in cond.items()},
    )
    _close(a.to_dict(), b.to_dict(), tol=1e-12)
    assert (a.side_from_landmarks, b.side_from_landmarks) == ("L", "R")
    assert a.flexion_axis is not None and b.flexion_axis is not None
    assert a.flexion_axis.lateral_radius_mm == pytest.approx(b.flexion_axis.lateral_radius_mm, abs=1e-9)


def test_rotated_leg_2d_drifts_3d_does_not() -> None:
    # External rotation of a flexed knee reads as varus on an AP film (alignment.md, "Why 3D matters").
    spec = LegSpec(mldfa=88.0, mpta=86.0, jlca=0.0)
    pts = leg_3d(spec, "L", flexion_deg=15.0)
    ref = measure_3d(_as_lists(pts))
    # External rotation of a left leg about the vertical: lateral (+x) end turns posterior (+y).
    rot = rotation_matrix(np.array([0.0, 0.0, 1.0]), 20.0)
    turned = {k: rot @ v for k, v in pts.items()}
    assert (rot @ np.array([1.0, 0.0, 0.0]))[1] > 0
    r3 = measure_3d(_as_lists(turned))
    _close(ref.to_dict(), r3.to_dict(), tol=1e-9)
    names = ("FHC", "FKC", "MDFC", "LDFC", "MTP", "LTP", "TKC", "AC")
    film = {k: [float(turned[k][0]), float(-turned[k][2])] for k in names}
    straight = {k: [float(pts[k][0]), float(-pts[k][2])] for k in names}
    drift = measure_2d(film).mhka - measure_2d(straight).mhka  # type: ignore[operator]
    assert drift < -1.0  # reads more varus


def test_ml_reference_fallbacks_and_side_handedness() -> None:
    base = {k: v for k, v in HAND_LEFT.items() if k not in ("MPC", "LPC")}
    assert measure_3d(base).ml_reference == "TEA"
    no_tea = {k: v for k, v in base.items() if k not in ("MEC", "LEC")}
    r = measure_3d(no_tea)
    assert r.ml_reference == "MDFC-LDFC"
    assert r.condylar_twist_deg is None and r.missing["condylar_twist_deg"] == ["LEC", "LPC", "MEC", "MPC"]
    assert r.knee_flexion_deg == pytest.approx(0.0)  # posterior still known from MTPA -> MTPP
    bare = {k: v for k, v in no_tea.items() if k not in ("MTPA", "MTPP")}
    r = measure_3d(bare)
    assert r.knee_flexion_deg is None and r.missing["knee_flexion_deg"] == ["MTPA", "MTPP"]
    assert r.side_from_landmarks is None
    r = measure_3d(bare, side="L")
    assert r.knee_flexion_deg == pytest.approx(0.0) and r.side_from_landmarks == "L"
    assert any("side label" in n for n in r.notes)


def test_side_disagreeing_with_landmarks_is_noted() -> None:
    r = measure_3d(HAND_LEFT, side="R")
    assert r.side_from_landmarks == "L" and any("mirrored" in n for n in r.notes)


def test_missing_and_strict() -> None:
    lm = {k: v for k, v in HAND_LEFT.items() if k != "TKC"}
    r = measure_3d(lm)
    assert r.mldfa is not None and r.mpta is None and r.jlca is None and r.cpak is None
    assert r.missing["MPTA"] == ["TKC"] and r.missing["tibial_slope_deg"] == ["TKC"]
    with pytest.raises(MissingLandmarksError) as exc:
        measure_3d(lm, strict=True)
    assert exc.value.missing == ["TKC"]


def test_unknown_name_and_bad_coordinates() -> None:
    with pytest.raises(InputError) as exc:
        measure_3d({**HAND_LEFT, "KNEE": [0.0, 0.0, 0.0]})
    assert exc.value.reason == "unknown_landmark"
    with pytest.raises(InputError) as exc:
        measure_3d({**HAND_LEFT, "AC": [0.0, 0.0]})
    assert exc.value.reason == "bad_coordinates"


def test_circle_fit_exact_and_on_short_arc() -> None:
    a = np.radians(np.linspace(10, 70, 15))
    xy = np.column_stack([3 + 20 * np.cos(a), -4 + 20 * np.sin(a)])
    c, r = fit_circle(xy)
    assert np.allclose(c, [3, -4], atol=1e-9) and r == pytest.approx(20.0, abs=1e-9)
    with pytest.raises(GeometryError):
        fit_circle(np.column_stack([np.arange(6.0), 2 * np.arange(6.0)]))


def test_flexion_axis_recovers_cylinders() -> None:
    cm, cl = np.array([22.0, 24.0, 8.0]), np.array([-21.0, 27.0, 12.0])
    pts = condyle_surface_points(cm, cl, 22.0, 19.0, np.array([0.0, 1, 0]), np.array([0.0, 0, -1]))
    fit = fit_flexion_axis(pts["medial"], pts["lateral"], tea=np.array([-1.0, 0, 0]))
    true = (cl - cm) / np.linalg.norm(cl - cm)
    assert np.allclose(fit.direction, true, atol=1e-9)
    assert fit.medial_radius_mm == pytest.approx(22.0, abs=1e-9)
    assert fit.lateral_radius_mm == pytest.approx(19.0, abs=1e-9)
    assert fit.rms_mm < 1e-9
    cos = abs(float(true @ np.array([-1.0, 0, 0])))
    assert fit.angle_to_tea_deg == pytest.approx(math.degrees(math.acos(cos)), abs=1e-7)
    rng = np.random.default_rng(7)
    noisy = fit_flexion_axis(*(p + rng.normal(0, 0.3, p.shape) for p in (pts["medial"], pts["lateral"])))
    assert math.degrees(math.acos(min(1.0, abs(float(np.dot(noisy.direction, true)))))) < 2.0
    assert noisy.medial_radius_mm == pytest.approx(22.0, abs=0.5)
    assert 0.15 < noisy.rms_mm < 0.45


def test_flexion_axis_input_errors() -> None:
    pts = condyle_surface_points(
        np.array([20.0, 0, 0]),
        np.array([-20.0, 0, 0]),
        20.0,
        20.0,
        np.array([0.0, 1, 0]),
        np.array([0.0, 0, -1]),
    )
    with pytest.raises(InputError) as exc:
        measure_3d(HAND_LEFT, posterior_condyle_points={"medial": pts["medial"]})
    assert exc.value.reason == "bad_condyle_points"
    with pytest.raises(InputError) as exc:
        fit_flexion_axis(pts["medial"][:3], pts["lateral"])
    assert exc.value.reason == "too_few_points"
    with pytest.raises(InputError):
        fit_flexion_axis(pts["medial"][:, :2], pts["lateral"])
    r = measure_3d(HAND_LEFT, posterior_condyle_points={"Medial": pts["medial"], "LATERAL": pts["lateral"]})
    assert r.flexion_axis is not None and r.flexion_axis.angle_to_pca_deg == pytest.approx(0.0, abs=1e-6)
