"""The knee detector's geometry on real ONNX Runtime sessions: the network (random weights, seeded) is
exported to ONNX here, so these checks do not depend on how well the shipped model is trained.
Mirroring by side, by PatientOrientation and of the stored image must all give the same landmarks
mapped exactly back to the stored film's pixels."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance.errors import InputError
from appliance.landmarks.knee_detector import KNEE_MODEL, KneeLandmarkDetector
from appliance.landmarks.knee_views import KNEE_AP, KNEE_LANDMARKS, KNEE_LAT
from engines.config import EngineConfig

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.models.knee_landmark_net import KNEE_GEOMETRY, KneeLandmarkNet
    from export.training.knee_landmarks import MODEL_VERSION, export_knee_model

    d = tmp_path_factory.mktemp("knee_models")
    torch.manual_seed(3)
    net = KneeLandmarkNet()
    g = KNEE_GEOMETRY
    ex = torch.rand((1, 1, g.rows, g.cols), generator=torch.Generator().manual_seed(1))
    meta = {
        "version": MODEL_VERSION,
        "training_seed": 3,
        "input_geometry": g.to_dict(),
        "channels": [f"{p}.{n}" for v, p in ((KNEE_AP, "ap"), (KNEE_LAT, "lat")) for n in KNEE_LANDMARKS[v]],
        "views": {v: list(KNEE_LANDMARKS[v]) for v in (KNEE_AP, KNEE_LAT)},
        "canonical_side": "R",
    }
    worst = export_knee_model(net, d / KNEE_MODEL, meta, ex)
    assert worst <= 1e-3
    return d


@pytest.fixture(scope="module")
def detector(models: Path) -> Iterator[KneeLandmarkDetector]:
    with KneeLandmarkDetector(models, EngineConfig(cpu_threads=1)) as det:
        yield det


def _film(seed: int = 0, shape: tuple[int, int] = (300, 240)) -> np.ndarray:
    """An asymmetric smooth test image (bone-bright blobs), so a mirror is not the same image."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]]
    img = np.zeros(shape, np.float32)
    for _ in range(6):
        r0, c0, s = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(10, 40)
        img += np.exp(-((rr - r0) ** 2 + (cc - c0) ** 2) / (2 * s * s)).astype(np.float32)
    return np.clip(img / img.max(), 0, 1)


def _unmirror(points: np.ndarray, cols: int) -> np.ndarray:
    q = points.copy()
    q[:, 0] = cols - 1 - q[:, 0]
    return q


@pytest.mark.parametrize("view", [KNEE_AP, KNEE_LAT])
def test_left_knee_equals_mirrored_right_knee(detector: KneeLandmarkDetector, view: str) -> None:
    img = _film(1)
    left = detector.detect(img, 1.0, view, side="L")
    right_of_mirror = detector.detect(img[:, ::-1].copy(), 1.0, view, side="R")
    assert left.names == KNEE_LANDMARKS[view] and left.orientation.mirror
    assert not right_of_mirror.orientation.mirror
    np.testing.assert_allclose(left.points, _unmirror(right_of_mirror.points, img.shape[1]), atol=1e-4)
    np.testing.assert_allclose(left.confidence, right_of_mirror.confidence, atol=1e-6)
    assert np.all((left.confidence >= 0) & (left.confidence <= 1))


def test_patient_orientation_mirrored_ap_film(detector: KneeLandmarkDetector) -> None:
    img = _film(2)
    stored_mirrored = img[:, ::-1].copy()
    ref = detector.detect(img, 1.0, KNEE_AP, side="R", patient_orientation=["L", "F"])
    got = detector.detect(stored_mirrored, 1.0, KNEE_AP, side="R", patient_orientation=["R", "F"])
    assert got.orientation.display_mirrored is True and got.orientation.mirror
    assert ref.orientation.display_mirrored is False and not ref.orientation.mirror
    # Landmarks come back in the stored (mirrored) film's pixels.
    np.testing.assert_allclose(got.points, _unmirror(ref.points, img.shape[1]), atol=1e-4)


def test_lateral_orientation_overrides_side(detector: KneeLandmarkDetector) -> None:
    img = _film(3)
    a = detector.detect(img, 1.0, KNEE_LAT, side="R", patient_orientation=["A", "F"])
    b = detector.detect(img, 1.0, KNEE_LAT, side="L")
    assert a.orientation.mirror and b.orientation.mirror
    np.testing.assert_allclose(a.points, b.points, atol=1e-9)


def test_ap_without_side_picks_the_more_confident_orientation(detector: KneeLandmarkDetector) -> None:
    img = _film(4)
    auto = detector.detect(img, 1.0, KNEE_AP)
    both = [detector.detect(img, 1.0, KNEE_AP, side=s) for s in ("R", "L")]
    best = max(both, key=lambda d: d.mean_confidence)
    assert auto.orientation.basis == "image"
    np.testing.assert_allclose(auto.points, best.points, atol=1e-9)


def test_spacing_scales_the_input(detector: KneeLandmarkDetector) -> None:
    # The same anatomy at half the pixel size (image upsampled x2) gives the same points x2.
    img = _film(5, (200, 160))
    fine = np.kron(img, np.ones((2, 2), np.float32))
    a = detector.detect(img, 1.0, KNEE_AP, side="R")
    b = detector.detect(fine, 0.5, KNEE_AP, side="R")
    assert a.passes >= 1 and b.passes >= 1
    # Not bit-equal (different resampling paths), but the same frame: within a pixel of the coarse film.
    assert np.median(np.abs(b.points / 2.0 - a.points - 0.25)) < 1.5


def test_bad_inputs(models: Path, detector: KneeLandmarkDetector, tmp_path: Path) -> None:
    with pytest.raises(InputError) as e:
        KneeLandmarkDetector(tmp_path)
    assert e.value.reason == "model_missing" and "train knee-landmarks" in str(e.value)
    with pytest.raises(InputError):
        detector.detect(np.zeros((10,), np.float32), 1.0, KNEE_AP)
    with pytest.raises(InputError):
        detector.detect(_film(), (0.0, 1.0), KNEE_AP)
    with pytest.raises(InputError):
        detector.detect(_film(), 1.0, "longleg_ap")
