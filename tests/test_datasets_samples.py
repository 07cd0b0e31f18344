"""Landmark samples built from a real (small) simulated case: frames, masks, crops and the seed guard."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from appliance.analytics.landmarks import LANDMARKS_2D
from appliance.errors import InputError
from export.datasets import augment as A
from export.datasets.heatmaps import decode_heatmaps, encode_heatmaps
from export.datasets.landmark_samples import (
    REGIONS,
    CaseData,
    CropSpec,
    SeedRangeError,
    build_index,
    check_seeds,
    crop_sample,
    frame_geometry,
    load_bone_labels,
    load_case,
    read_film,
    sample_crop_specs,
    whole_film_sample,
)
from export.simulator.case import CaseOptions, generate_case

SEED = 4242  # training range


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    opts = CaseOptions(
        views=("longleg",),
        write_ct=True,
        longleg_pitch=1.0,
        leg_spacing=2.0,
        knee_spacing=1.0,
        contralateral=False,
        preview_max_px=300,
    )
    return generate_case(SEED, out, opts)


@pytest.fixture(scope="module")
def case(case_dir: Path) -> CaseData:
    return load_case(case_dir)


def _at(img: np.ndarray, p: np.ndarray) -> float:
    c, r = np.rint(p).astype(int)
    return float(img[r, c])


def test_case_loads_bone_bright(case: CaseData, case_dir: Path) -> None:
    truth = json.loads((case_dir / "truth.json").read_text())
    assert case.seed == SEED and case.names == LANDMARKS_2D
    assert case.film.image.dtype == np.float32 and case.film.image.min() >= 0 and case.film.image.max() <= 1
    assert case.film.spacing_mm == (1.0, 1.0)
    assert case.labels_path is not None
    np.testing.assert_allclose(case.landmarks[0], truth["films"]["longleg_ap"]["landmarks_2d"]["FHC"])
    # Bone is bright whatever the stored photometric: the femoral head outshines the air beside the leg.
    img = case.film.image
    fhc = case.landmarks[0]
    assert _at(img, fhc) > 0.5
    r = round(fhc[1])
    row = img[r]
    assert _at(img, fhc) > np.percentile(row, 10) + 0.3


def test_read_film_undoes_monochrome1(case_dir: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(case_dir / "longleg_ap.dcm")
    maxv = 2 ** int(ds.BitsStored) - 1
    flipped = ds.copy()
    flipped.PixelData = (maxv - ds.pixel_array.astype(np.int64)).astype(np.uint16).tobytes()
    flipped.PhotometricInterpretation = (
        "MONOCHROME2" if ds.PhotometricInterpretation == "MONOCHROME1" else "MONOCHROME1"
    )
    flipped.WindowCenter = maxv - float(ds.WindowCenter)
    flipped.save_as(tmp_path / "flipped.dcm")
    a = read_film(case_dir / "longleg_ap.dcm").image
    b = read_film(tmp_path / "flipped.dcm").image
    assert np.abs(a - b).max() < 1e-5
    assert a.std() > 0.1


def test_whole_film_sample_frame_masks_and_mapping(case: CaseData) -> None:
    labels = load_bone_labels(case.labels_path) if case.labels_path else None
    s = whole_film_sample(case, mm_per_px=2.0, shape=(672, 256), labels=labels)
    assert s.image.shape == (672, 256) and s.mm_per_px == 2.0
    assert s.visible.all() and s.masks_available
    assert s.femur_mask is not None and s.tibia_mask is not None
    # Landmarks map back to film pixels exactly through the recorded affine.
    np.testing.assert_allclose(A.transform_points(s.affine_to_film, s.landmarks), case.landmarks, atol=1e-9)
    # The frame's projection geometry projects the 3D head centre onto the sample's FHC.
    truth = json.loads((case.folder / "truth.json").read_text())
    g = frame_geometry(case.geometry, s.affine_to_film, s.image.shape)
    np.testing.assert_allclose(g.project([truth["landmarks_3d"]["FHC"]])[0], s.landmarks[0], atol=1e-3)
    # Landmarks land on the bone: FHC in the femur mask, TKC in the tibia mask, and bone is bright.
    i = {n: k for k, n in enumerate(s.names)}
    assert _at(s.femur_mask, s.landmarks[i["FHC"]]) and not _at(s.tibia_mask, s.landmarks[i["FHC"]])
    assert _at(s.tibia_mask, s.landmarks[i["TKC"]])
    bone = s.femur_mask | s.tibia_mask
    far = ~ndimage.binary_dilation(bone, iterations=20)
    assert s.image[bone].mean() > np.median(s.image[far]) + 0.2
    # Masks are plausible: a femur around 40 cm long at ~1.1x magnification, 2 mm pixels.
    rows = np.flatnonzero(s.femur_mask.any(axis=1))
    assert 180 < rows[-1] - rows[0] < 300
    # The image sits in the frame where the affine says: sample pixel -> film pixel values agree.
    q = np.array([[100.0, 300.0], [60.0, 200.0], [150.0, 500.0]])
    film_pts = A.transform_points(s.affine_to_film, q)
    film_vals = ndimage.map_coordinates(
        ndimage.gaussian_filter(case.film.image, 0.5, mode="nearest"), film_pts[:, ::-1].T, order=1
    )
    np.testing.assert_allclose(s.image[q[:, 1].astype(int), q[:, 0].astype(int)], film_vals, atol=1e-4)


def test_crops_hold_their_landmarks_and_replay(case: CaseData) -> None:
    labels = load_bone_labels(case.labels_path) if case.labels_path else None
    specs = sample_crop_specs(np.random.default_rng(3), case, jitter_mm=10.0)
    assert [s.region for s in specs] == ["hip", "knee", "ankle"]
    assert specs == sample_crop_specs(np.random.default_rng(3), case, jitter_mm=10.0)
    for spec in specs:
        assert CropSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
        c = crop_sample(case, spec, labels=labels)
        assert c.image.shape == (spec.rows, spec.cols)
        idx = [c.names.index(n) for n in REGIONS[spec.region]]
        assert c.visible[idx].all(), spec.region
        # Jittered, so the target is not at the centre, but within jitter / pixel size of it.
        centre = np.array([(spec.cols - 1) / 2, (spec.rows - 1) / 2])
        mean = c.landmarks[idx].mean(axis=0)
        assert np.abs(mean - centre).max() <= 10.0 / 0.5 + 1e-6
        np.testing.assert_allclose(
            A.transform_points(c.affine_to_film, c.landmarks), case.landmarks, atol=1e-9
        )
        # Upsampled crop (0.5 mm from 1 mm pixels): bilinear film values at the mapped positions.
        q = np.array([[10.0, 20.0], [64.0, 64.0], [100.0, 90.0]])
        fp = A.transform_points(c.affine_to_film, q)
        want = ndimage.map_coordinates(case.film.image, fp[:, ::-1].T, order=1)
        np.testing.assert_allclose(c.image[q[:, 1].astype(int), q[:, 0].astype(int)], want, atol=1e-5)
        again = crop_sample(case, spec, labels=labels)
        assert np.array_equal(again.image, c.image)
        assert c.femur_mask is not None and c.tibia_mask is not None
    hip = crop_sample(case, specs[0], labels=labels)
    assert hip.femur_mask is not None and _at(hip.femur_mask, hip.landmarks[0])
    assert _at(hip.image, hip.landmarks[0]) > np.percentile(hip.image, 25)


def test_sample_augment_heatmap_pipeline_round_trip(case: CaseData) -> None:
    s = whole_film_sample(case)
    rec = A.sample_augmentation(
        np.random.default_rng(11), s.image.shape, s.landmarks, pixel_mm=s.mm_per_px, out_shape=(512, 192)
    )
    out = A.apply(s.image, s.landmarks, rec, s.visible)
    t = encode_heatmaps(out.landmarks, out.visible, out.image.shape, stride=4, sigma=2.0, names=s.names)
    d = decode_heatmaps(t.heatmaps, 4)
    ok = t.mask
    assert ok.sum() >= 6
    np.testing.assert_allclose(d.points[ok], out.landmarks[ok], atol=0.2)
    # Back to film pixels: undo the augmentation, then the sample frame.
    m, _ = rec.matrix(s.image.shape)
    film = A.transform_points(s.affine_to_film @ np.linalg.inv(m), d.points[ok])
    np.testing.assert_allclose(film, case.landmarks[ok], atol=2.0)


def test_masks_missing_without_label_volume(case_dir: Path, tmp_path: Path) -> None:
    bare = tmp_path / f"case_{SEED}"
    bare.mkdir()
    for name in ("truth.json", "longleg_ap.dcm"):
        shutil.copy(case_dir / name, bare / name)
    c = load_case(bare)
    assert c.labels_path is None
    s = whole_film_sample(c)
    assert not s.masks_available and s.femur_mask is None
    crop = crop_sample(c, sample_crop_specs(np.random.default_rng(0), c)[0])
    assert not crop.masks_available


def _fake_case(root: Path, seed: int) -> None:
    d = root / f"case_{seed}"
    d.mkdir(parents=True)
    (d / "truth.json").write_text(json.dumps({"seed": seed}))


def test_seed_range_guard(tmp_path: Path) -> None:
    check_seeds([0, 499_999], "train")
    check_seeds([500_000, 899_999], "eval")
    with pytest.raises(SeedRangeError, match="eval"):
        check_seeds([12, 600_000], "train")
    with pytest.raises(SeedRangeError, match="train"):
        check_seeds([500_001, 3], "eval")
    with pytest.raises(InputError):
        check_seeds([1], "validation")

    train_root, eval_root, mixed = tmp_path / "train", tmp_path / "eval", tmp_path / "mixed"
    for s in (5, 17, 499_999):
        _fake_case(train_root, s)
    for s in (500_000, 700_123):
        _fake_case(eval_root, s)
    _fake_case(mixed, 8)
    _fake_case(mixed, 650_000)
    (train_root / "case_99").mkdir()  # half-written: no truth.json, skipped
    idx = build_index(train_root, "train")
    assert idx.seeds == (5, 17, 499_999) and len(idx) == 3
    assert idx.folder(17) == train_root / "case_17"
    with pytest.raises(InputError):
        idx.folder(18)
    assert build_index(eval_root, "eval").seeds == (500_000, 700_123)
    with pytest.raises(SeedRangeError) as err:
        build_index(eval_root, "train")
    assert err.value.reason == "seed_range" and "500000" in str(err.value)
    with pytest.raises(SeedRangeError):
        build_index(train_root, "eval")
    with pytest.raises(SeedRangeError):
        build_index(mixed, "train")
    assert build_index(mixed, "train", seeds=[8]).seeds == (8,)
    with pytest.raises(InputError):
        build_index(train_root, "train", seeds=[6])  # no such case folder


def test_augmented_crops_keep_their_targets(case: CaseData) -> None:
    rng = np.random.default_rng(5)
    kept = 0
    total = 0
    for spec in sample_crop_specs(rng, case):
        c = crop_sample(case, spec)
        idx = [c.names.index(n) for n in c.targets]
        for _ in range(4):
            rec = A.sample_augmentation(
                rng,
                c.image.shape,
                c.landmarks,
                pixel_mm=spec.mm_per_px,
                config=A.crop_stage_config(),
                out_shape=c.image.shape,
            )
            assert "crop" not in [t.kind for t in rec.transforms]
            out = A.apply(c.image, c.landmarks, rec, c.visible)
            assert out.image.shape == c.image.shape
            np.testing.assert_allclose(
                out.landmarks, A.transform_points(rec.matrix(c.image.shape)[0], c.landmarks)
            )
            kept += int(out.visible[idx].sum())
            total += len(idx)
    assert kept >= 0.7 * total  # small rotations and shifts keep most targets in the crop


def test_film_truth_follows_the_stitching_and_prefers_the_recorded_field() -> None:
    """Targets are where the film shows a landmark: a stitched zone's registration error moves it; a
    truth that records ``landmarks_film`` is taken as written."""
    from export.datasets.landmark_samples import entry_film_points, film_landmarks

    entry = {
        "rows": 100,
        "artifacts": {
            "stitch": {"seam_rows": [50], "zone_shifts": [[0, 0], [2, -3]], "zone_gains": [1, 1]},
            "padding": {"top": 4, "left": 5, "bottom": 0},
        },
        "landmarks_2d": {"A": [20.0, 10.0], "B": [20.0, 80.0]},
    }
    moved = film_landmarks(entry, [[20.0, 10.0], [20.0, 80.0]])
    np.testing.assert_allclose(moved, [[20.0, 10.0], [17.0, 82.0]])
    np.testing.assert_allclose(entry_film_points(entry, ["A", "B"]), moved)
    unstitched = {**entry, "artifacts": {}}
    np.testing.assert_allclose(film_landmarks(unstitched, [[20.0, 80.0]]), [[20.0, 80.0]])
    recorded = {**entry, "landmarks_film": {"A": [1.0, 2.0], "B": [3.0, 4.0]}}
    np.testing.assert_allclose(entry_film_points(recorded, ["A", "B"]), [[1.0, 2.0], [3.0, 4.0]])
