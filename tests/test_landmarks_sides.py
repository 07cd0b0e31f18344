"""Which leg is measured: mirrored training samples, the detector's side handling on a real simulated
bilateral film, the model-based non-limb check on the real RG1 chest film of pydicom-data, and the
low-confidence threshold fit."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from appliance.errors import InputError
from appliance.ingest.presentation import bone_bright_unit
from appliance.landmarks import LOW_CONFIDENCE
from appliance.landmarks.detector import (
    DEFAULT_MODELS_DIR,
    WHOLE_MODEL,
    Detection,
    LandmarkDetector,
    normalise_side,
)
from appliance.landmarks.limb_check import check_lower_limb, require_lower_limb
from engines.config import EngineConfig
from export.datasets.landmark_samples import CaseData, load_case, mirrors, whole_film_sample
from export.evaluation.landmark_confidence import fit_low_confidence, flag_rates
from export.models.landmark_net import WHOLE_GEOMETRY
from export.simulator.case import CaseOptions, generate_case

EVAL_SEED = 500952  # evaluation range; a bilateral film (the simulator's default)
OPTS = CaseOptions(
    views=("longleg",),
    write_ct=False,
    longleg_pitch=1.0,
    leg_spacing=2.0,
    knee_spacing=1.0,
    contralateral=True,
    preview_max_px=200,
)
shipped = pytest.mark.skipif(
    not (DEFAULT_MODELS_DIR / WHOLE_MODEL).is_file(), reason="no shipped landmark models in models/"
)


@pytest.fixture(scope="module")
def bilateral(tmp_path_factory: pytest.TempPathFactory) -> CaseData:
    root = tmp_path_factory.mktemp("lm_bilateral")
    generate_case(EVAL_SEED, root, OPTS)
    return load_case(root / f"case_{EVAL_SEED}")


@pytest.fixture(scope="module")
def detector() -> LandmarkDetector:
    return LandmarkDetector(config=EngineConfig(backend="ort-cpu"))


def _mm(case: CaseData, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    s_row, s_col = case.film.spacing_mm
    d = np.asarray(a) - np.asarray(b)
    return np.asarray(np.hypot(d[..., 0] * s_col, d[..., 1] * s_row))


def test_side_names_normalise() -> None:
    assert [normalise_side(s) for s in ("R", "left", " Right ", "l", "", None, "both")] == [
        "R",
        "L",
        "R",
        "L",
        None,
        None,
        None,
    ]
    assert mirrors("left", "R") and not mirrors("right", "R") and not mirrors("left", None)
    with pytest.raises(InputError):
        mirrors("unknown", "R")


def test_mirrored_sample_is_the_flipped_film_with_the_same_landmarks(bilateral: CaseData) -> None:
    g = WHOLE_GEOMETRY
    other = "L" if normalise_side(bilateral.side) == "R" else "R"
    plain = whole_film_sample(bilateral, mm_per_px=g.mm_per_px, shape=g.shape)
    mirrored = whole_film_sample(bilateral, mm_per_px=g.mm_per_px, shape=g.shape, canonical_side=other)
    np.testing.assert_allclose(mirrored.image, plain.image[:, ::-1], atol=1e-5)
    np.testing.assert_allclose(mirrored.landmarks[:, 0], g.cols - 1 - plain.landmarks[:, 0], atol=1e-9)
    # both frames map their landmarks back onto the film truth
    for s in (plain, mirrored):
        back = np.c_[s.landmarks, np.ones(len(s.landmarks))] @ s.affine_to_film.T
        np.testing.assert_allclose(back[:, :2], bilateral.landmarks, atol=1e-6)


@shipped
def test_detector_measures_the_leg_it_is_asked_for_on_a_bilateral_film(
    bilateral: CaseData, detector: LandmarkDetector
) -> None:
    assert detector.canonical_side == "R"
    side = normalise_side(bilateral.side)
    assert side is not None
    other = "L" if side == "R" else "R"
    img, sp = bilateral.film.image, bilateral.film.spacing_mm
    own = detector.detect(img, sp, bilateral.side)
    wrong = detector.detect(img, sp, other)
    assert own.side == side and wrong.side == other
    err = _mm(bilateral, own.points, bilateral.landmarks)
    assert np.median(err) < 10.0, err  # the case's own leg (1 mm pixels in this test film)
    # the other side's hip and ankle are on the contralateral leg, well away from this leg's
    far = _mm(bilateral, wrong.points, bilateral.landmarks)
    assert far[0] > 80.0 and far[-1] > 80.0, far
    legs = detector.detect_legs(img, sp)
    assert set(legs) == {"R", "L"}
    np.testing.assert_allclose(legs[side].points, own.points, atol=1e-6)
    assert detector.detect(img, sp).side in {"R", "L"}


@shipped
def test_asking_for_the_left_leg_is_measuring_the_mirrored_film(
    bilateral: CaseData, detector: LandmarkDetector
) -> None:
    img, sp = bilateral.film.image, bilateral.film.spacing_mm
    left = detector.detect(img, sp, "L")
    right_of_flipped = detector.detect(np.ascontiguousarray(img[:, ::-1]), sp, "R")
    cols = img.shape[1]
    np.testing.assert_allclose(left.points[:, 0], cols - 1 - right_of_flipped.points[:, 0], atol=0.05)
    np.testing.assert_allclose(left.points[:, 1], right_of_flipped.points[:, 1], atol=0.05)
    np.testing.assert_allclose(left.confidence, right_of_flipped.confidence, atol=1e-3)


@shipped
@pytest.mark.parametrize("spacing", [0.15, 0.35, 0.7])
def test_real_chest_film_is_not_taken_for_a_lower_limb(detector: LandmarkDetector, spacing: float) -> None:
    """RG1 (a real chest CR) at spacings from CR-like to a long-leg film's: the models find no leg."""
    ds = pydicom.dcmread(str(get_testdata_file("RG1_UNCR.dcm", download=False)))
    img = bone_bright_unit(ds, ds.pixel_array)
    det = detector.detect(img, spacing, "R")
    verdict = check_lower_limb(det, spacing)
    assert not verdict.is_lower_limb
    with pytest.raises(InputError) as info:
        require_lower_limb(det, spacing)
    assert info.value.reason == "not_lower_limb"


@shipped
def test_simulated_long_leg_film_passes_the_limb_check(
    bilateral: CaseData, detector: LandmarkDetector
) -> None:
    det = detector.detect(bilateral.film.image, bilateral.film.spacing_mm, bilateral.side)
    verdict = require_lower_limb(det, bilateral.film.spacing_mm)
    assert verdict.is_lower_limb and verdict.femur_mm is not None and verdict.femur_mm > 250


def test_limb_check_rejects_landmarks_out_of_head_to_foot_order() -> None:
    names = ("FHC", "FKC", "MDFC", "LDFC", "MTP", "LTP", "TKC", "AC")
    pts = np.array([[380, 650], [370, 1920], [430, 1930], [310, 1920], [460, 1950], [280, 1940]])
    pts = np.vstack([pts, [[370, 1940], [430, 3090]]]).astype(float)
    ones = np.ones(8)
    ok = Detection(names, pts, ones, pts, ones, np.ones(8, bool))
    assert check_lower_limb(ok, 0.35).is_lower_limb
    upside_down = pts.copy()
    upside_down[:, 1] = 4000 - upside_down[:, 1]
    bad = Detection(names, upside_down, ones, upside_down, ones, np.ones(8, bool))
    v = check_lower_limb(bad, 0.35)
    assert not v.is_lower_limb and any("order" in r for r in v.reasons)
    weak = Detection(names, pts, ones, pts, np.full(8, 0.05), np.ones(8, bool))
    assert not check_lower_limb(weak, 0.35).is_lower_limb


def test_confidence_fit_reaches_the_requested_sensitivity() -> None:
    rng = np.random.default_rng(0)
    err = np.r_[rng.uniform(0, 2.5, 200), rng.uniform(3.5, 20, 20)]
    conf = np.r_[rng.uniform(0.5, 1.0, 200), rng.uniform(0.1, 0.7, 20)]
    fit = fit_low_confidence(conf, err, error_mm=3.0, sensitivity=0.8)
    assert fit.n_bad == 20 and fit.n_good == 200
    assert fit.sensitivity >= 0.8
    # the smallest such threshold: one step lower loses a bad landmark
    lower, _ = flag_rates(conf, err, float(np.nextafter(fit.threshold, 0)), 3.0)
    assert lower < fit.sensitivity
    assert fit.flag_rate_good == flag_rates(conf, err, fit.threshold, 3.0)[1]
    assert 0.0 < LOW_CONFIDENCE < 1.0
    with pytest.raises(InputError):
        fit_low_confidence([], [])
