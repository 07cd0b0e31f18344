"""2D measurement on AP long-leg films: hand-worked answers, identity, mirror and invariance."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.analytics.angles2d import measure_2d
from appliance.analytics.landmarks import LANDMARKS_2D
from appliance.analytics.synthetic import LegSpec, film_2d
from appliance.errors import GeometryError, InputError, MissingLandmarksError

ANGLE_KEYS = ("mHKA", "mLDFA", "MPTA", "JLCA", "aHKA", "JLO")

# A left leg shown in radiological convention (lateral = +col, distal = +row), by hand:
# femur vertical, femoral joint line flat, medial plateau 10 px lower than lateral over 50 px,
# ankle 40 px medial over the 400 px tibia.
VARUS_LEFT = {
    "FHC": [100.0, 0.0],
    "FKC": [100.0, 400.0],
    "MDFC": [75.0, 400.0],
    "LDFC": [125.0, 400.0],
    "TKC": [100.0, 410.0],
    "MTP": [75.0, 415.0],
    "LTP": [125.0, 405.0],
    "AC": [60.0, 810.0],
}


def _close(a: dict[str, float | None], b: dict[str, float | None], tol: float = 1e-9) -> None:
    assert a.keys() == b.keys()
    for k in a:
        va, vb = a[k], b[k]
        assert (va is None) == (vb is None), k
        if va is not None and vb is not None:
            assert va == pytest.approx(vb, abs=tol), k


def test_hand_worked_varus_knee() -> None:
    r = measure_2d(VARUS_LEFT, pixel_spacing_mm=0.5, magnification=1.25)
    slope = math.degrees(math.atan(10 / 50))  # tibial joint line tilt, 11.31 deg
    tib = math.degrees(math.atan(40 / 400))  # tibial axis heads 5.71 deg medially
    assert r.mldfa == pytest.approx(90.0, abs=1e-12)
    # Both the axis leaning medially toward the ankle and the drooping medial plateau close the
    # medial angle: 90 - 11.31 - 5.71 = 72.98.
    assert r.mpta == pytest.approx(90.0 - slope - tib, abs=1e-12)
    assert r.jlca == pytest.approx(-slope, abs=1e-12)  # gap wider medially: converge laterally
    assert r.mhka == pytest.approx(-tib, abs=1e-12)  # negative = varus
    assert r.ahka == pytest.approx(r.mpta - 90.0, abs=1e-12)
    assert r.jlo == pytest.approx(r.mpta + 90.0, abs=1e-12)
    # Knee centre (100, 405) px; the hip-ankle line crosses row 405 at col 80: 20 px lateral,
    # times cos of the line's tilt; 0.5 mm/px divided by magnification 1.25.
    assert r.mad_mm == pytest.approx(20 * 810 / math.hypot(810, 40) * 0.5 / 1.25, abs=1e-12)
    assert r.mad_mm is not None and r.mad_mm > 0  # varus: the line passes medial to the knee
    assert r.femoral_mech_axis_mm == pytest.approx(400 * 0.4)
    assert r.tibial_mech_axis_mm == pytest.approx(math.hypot(40, 400) * 0.4)
    assert r.missing == {}
    assert r.apparent_side == "L"


def test_hand_worked_valgus_femur() -> None:
    # Lateral condyle 5 px higher (more proximal) over 50 px: mLDFA = 90 - atan(0.1), valgus femur.
    lm = dict(VARUS_LEFT, LDFC=[125.0, 395.0], AC=[100.0, 810.0], MTP=[75.0, 410.0], LTP=[125.0, 410.0])
    r = measure_2d(lm)
    assert r.mldfa == pytest.approx(90.0 - math.degrees(math.atan(0.1)), abs=1e-12)
    assert r.mpta == pytest.approx(90.0, abs=1e-12)
    assert r.mhka == pytest.approx(0.0, abs=1e-12)
    assert r.jlca == pytest.approx(math.degrees(math.atan(0.1)), abs=1e-12)  # gap wider laterally
    assert r.cpak is not None and r.cpak.ahka_category == "valgus"


def test_neutral_leg_is_type_v_and_zero() -> None:
    r = measure_2d(film_2d(LegSpec(mldfa=90, mpta=90, jlca=0)), (0.5, 0.5))
    assert r.mhka == pytest.approx(0.0, abs=1e-9)
    assert r.mad_mm == pytest.approx(0.0, abs=1e-9)
    assert r.cpak is not None and r.cpak.label == "V"


@pytest.mark.parametrize(
    ("mldfa", "mpta", "jlca"), [(87, 87, 0), (89, 84, 2.5), (84, 90, -1), (92, 86, 4), (85, 89, 0.5)]
)
def test_constructed_angles_measure_back(mldfa: float, mpta: float, jlca: float) -> None:
    spec = LegSpec(mldfa=mldfa, mpta=mpta, jlca=jlca, femoral_tilt_deg=2.0)
    r = measure_2d(film_2d(spec, "R", (0.14, 0.15), 1.15), (0.14, 0.15), 1.15)
    assert r.mldfa == pytest.approx(mldfa, abs=1e-9)
    assert r.mpta == pytest.approx(mpta, abs=1e-9)
    assert r.jlca == pytest.approx(jlca, abs=1e-9)
    assert r.mhka == pytest.approx(spec.mhka, abs=1e-9)
    assert r.femoral_mech_axis_mm == pytest.approx(spec.femur_mm, rel=1e-12)
    assert r.tibial_mech_axis_mm == pytest.approx(spec.tibia_mm, rel=1e-12)


@given(
    mldfa=st.floats(80, 100),
    mpta=st.floats(80, 100),
    jlca=st.floats(-8, 8),
    tilt=st.floats(-5, 5),
)
@settings(max_examples=60, deadline=None)
def test_identity_holds(mldfa: float, mpta: float, jlca: float, tilt: float) -> None:
    spec = LegSpec(mldfa=mldfa, mpta=mpta, jlca=jlca, femoral_tilt_deg=tilt)
    r = measure_2d(film_2d(spec), (0.5, 0.5))
    assert r.mhka is not None and r.mpta is not None and r.mldfa is not None and r.jlca is not None
    assert r.mhka == pytest.approx(r.mpta - r.mldfa - r.jlca, abs=1e-9)
    assert r.ahka == r.mpta - r.mldfa
    assert r.jlo == r.mpta + r.mldfa


def _mirror(lm: dict[str, list[float]], axis: int, size: float = 1000.0) -> dict[str, list[float]]:
    out = {}
    for k, v in lm.items():
        w = list(v)
        w[axis] = size - w[axis]
        out[k] = w
    return out


@pytest.mark.parametrize("axis", [0, 1])
def test_mirror_and_flip_give_identical_numbers(axis: int) -> None:
    base = measure_2d(VARUS_LEFT, 0.5)
    mirrored = measure_2d(_mirror(VARUS_LEFT, axis), 0.5)
    _close(base.to_dict(), mirrored.to_dict())
    assert mirrored.apparent_side == "R"  # a mirrored left leg looks like a right one


def test_mirror_x_to_minus_x_exact() -> None:
    lm = film_2d(LegSpec(mldfa=88, mpta=85, jlca=1.2))
    neg = {k: [-v[0], v[1]] for k, v in lm.items()}
    _close(measure_2d(lm, 0.5).to_dict(), measure_2d(neg, 0.5).to_dict(), tol=1e-12)


def test_right_and_left_legs_agree() -> None:
    spec = LegSpec(mldfa=86, mpta=88, jlca=1.0)
    left = measure_2d(film_2d(spec, "L"), 0.5, side="L")
    right = measure_2d(film_2d(spec, "R"), 0.5, side="R")
    _close(left.to_dict(), right.to_dict())
    assert left.notes == () and right.notes == ()
    assert (left.apparent_side, right.apparent_side) == ("L", "R")


def test_upside_down_film_same_numbers() -> None:
    rot = {k: [1000.0 - v[0], 2000.0 - v[1]] for k, v in VARUS_LEFT.items()}
    _close(measure_2d(VARUS_LEFT).to_dict(), measure_2d(rot).to_dict())
    assert measure_2d(rot).apparent_side == "L"  # a 180-degree turn is not a mirror


def test_side_mismatch_is_noted_not_fatal() -> None:
    r = measure_2d(VARUS_LEFT, side="right")
    assert r.side == "R" and r.apparent_side == "L"
    assert any("mirrored" in n for n in r.notes)
    assert r.mhka == pytest.approx(measure_2d(VARUS_LEFT).mhka)


def _rotate(lm: dict[str, list[float]], deg: float, shift: tuple[float, float], k: float) -> dict:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return {n: [k * (c * x - s * y) + shift[0], k * (s * x + c * y) + shift[1]] for n, (x, y) in lm.items()}


@given(
    deg=st.floats(-180, 180),
    dx=st.floats(-5000, 5000),
    dy=st.floats(-5000, 5000),
    k=st.floats(0.2, 5.0),
    mldfa=st.floats(82, 96),
    mpta=st.floats(82, 96),
    jlca=st.floats(-5, 5),
)
@settings(max_examples=80, deadline=None)
def test_invariant_to_rotation_translation_scale(
    deg: float, dx: float, dy: float, k: float, mldfa: float, mpta: float, jlca: float
) -> None:
    lm = film_2d(LegSpec(mldfa=mldfa, mpta=mpta, jlca=jlca))
    base = measure_2d(lm, 0.5)
    # Scaling the pixel coordinates by k and the spacing by 1/k describes the same patient.
    moved = measure_2d(_rotate(lm, deg, (dx, dy), k), 0.5 / k)
    _close(base.to_dict(), moved.to_dict(), tol=1e-7)
    assert base.cpak == moved.cpak


def test_anisotropic_pixels_converted_before_angles() -> None:
    spec = LegSpec(mldfa=85, mpta=89, jlca=2)
    r = measure_2d(film_2d(spec, "L", (0.2, 0.1)), (0.2, 0.1))
    assert r.mldfa == pytest.approx(85, abs=1e-9)
    wrong = measure_2d(film_2d(spec, "L", (0.2, 0.1)), 0.1)
    assert wrong.mldfa is not None and abs(wrong.mldfa - 85) > 1


def test_missing_landmarks_listed_per_angle() -> None:
    lm = {k: v for k, v in VARUS_LEFT.items() if k != "AC"}
    r = measure_2d(lm)
    assert r.mldfa == pytest.approx(90.0)
    assert r.jlca is not None
    assert r.mpta is None and r.mhka is None and r.mad_mm is None and r.cpak is None
    assert r.missing == {
        "mHKA": ["AC"],
        "MPTA": ["AC"],
        "aHKA": ["AC"],
        "JLO": ["AC"],
        "MAD_mm": ["AC"],
        "tibial_mech_axis_mm": ["AC"],
        "CPAK": ["AC"],
    }
    with pytest.raises(MissingLandmarksError) as exc:
        r.raise_for_missing("MPTA")
    assert exc.value.missing == ["AC"] and "MPTA" in str(exc.value)
    r.raise_for_missing("mLDFA")  # present: no error


def test_none_and_nan_count_as_missing() -> None:
    lm: dict[str, list[float] | None] = dict(VARUS_LEFT)
    lm["MDFC"] = None
    lm["LDFC"] = [math.nan, 3.0]
    r = measure_2d(lm)
    assert r.mldfa is None and r.missing["mLDFA"] == ["LDFC", "MDFC"]
    # The plateau pair still tells medial from lateral, so mHKA survives.
    assert r.mhka == pytest.approx(measure_2d(VARUS_LEFT).mhka)


def test_mhka_needs_a_medial_lateral_pair() -> None:
    lm = {k: VARUS_LEFT[k] for k in ("FHC", "FKC", "TKC", "AC")}
    r = measure_2d(lm)
    assert r.mhka is None
    assert r.missing["mHKA"] == ["LDFC", "LTP", "MDFC", "MTP"]
    assert r.femoral_mech_axis_mm == pytest.approx(400.0)


def test_knee_only_film_gives_jlca() -> None:
    lm = {k: VARUS_LEFT[k] for k in ("MDFC", "LDFC", "MTP", "LTP")}
    r = measure_2d(lm)
    assert r.jlca == pytest.approx(measure_2d(VARUS_LEFT).jlca)
    flipped = measure_2d(_mirror(lm, 0))
    assert flipped.jlca == pytest.approx(r.jlca)


def test_strict_mode_raises_naming_landmarks() -> None:
    lm = {k: v for k, v in VARUS_LEFT.items() if k not in ("FHC", "TKC")}
    with pytest.raises(MissingLandmarksError) as exc:
        measure_2d(lm, strict=True)
    assert exc.value.missing == ["FHC", "TKC"]
    measure_2d(VARUS_LEFT, strict=True)


def test_unknown_landmark_name_rejected() -> None:
    with pytest.raises(InputError) as exc:
        measure_2d({**VARUS_LEFT, "FHCX": [1.0, 2.0]})
    assert exc.value.reason == "unknown_landmark" and "FHCX" in str(exc.value)


def test_3d_only_names_ignored_in_2d() -> None:
    r = measure_2d({**VARUS_LEFT, "MEC": [1.0, 2.0]})
    assert r.mhka == pytest.approx(measure_2d(VARUS_LEFT).mhka)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"pixel_spacing_mm": 0.0}, "bad_spacing"),
        ({"pixel_spacing_mm": (0.1, -1.0)}, "bad_spacing"),
        ({"pixel_spacing_mm": (0.1, 0.1, 0.1)}, "bad_spacing"),
        ({"magnification": math.nan}, "bad_magnification"),
        ({"side": "middle"}, "bad_side"),
    ],
)
def test_bad_parameters(kwargs: dict, reason: str) -> None:
    with pytest.raises(InputError) as exc:
        measure_2d(VARUS_LEFT, **kwargs)
    assert exc.value.reason == reason


def test_bad_coordinates() -> None:
    with pytest.raises(InputError) as exc:
        measure_2d({**VARUS_LEFT, "AC": [1.0, 2.0, 3.0]})
    assert exc.value.reason == "bad_coordinates"


def test_swapped_medial_lateral_pair_detected() -> None:
    lm = dict(VARUS_LEFT, MTP=VARUS_LEFT["LTP"], LTP=VARUS_LEFT["MTP"])
    with pytest.raises(GeometryError) as exc:
        measure_2d(lm)
    assert exc.value.reason == "inconsistent_medial_lateral"


def test_coincident_landmarks_are_a_geometry_error() -> None:
    with pytest.raises(GeometryError):
        measure_2d(dict(VARUS_LEFT, FKC=VARUS_LEFT["FHC"]))


def test_to_dict_keys_and_values() -> None:
    r = measure_2d(VARUS_LEFT)
    d = r.to_dict()
    assert list(d)[:7] == ["mHKA", "mLDFA", "MPTA", "JLCA", "aHKA", "JLO", "MAD_mm"]
    assert all(d[k] == r.value(k) for k in d)
    assert set(LANDMARKS_2D) == set(VARUS_LEFT)
    assert np.isfinite([v for v in d.values() if v is not None]).all()
