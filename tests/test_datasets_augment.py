"""Augmentation records: image and landmarks move together, replay is exact, records survive JSON."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from appliance.errors import InputError
from export.datasets import augment as A

SHAPE = (120, 90)
LANDMARKS = np.array([[37.3, 61.7], [60.6, 25.2]])


def dot_image(
    shape: tuple[int, int], points: np.ndarray, sigma: float = 2.0, background: float = 0.1
) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    img = np.full(shape, background, np.float64)
    for c, r in points:
        img += 0.8 * np.exp(-((xx - c) ** 2 + (yy - r) ** 2) / (2 * sigma**2))
    return np.clip(img, 0, 1).astype(np.float32)


def centroid(img: np.ndarray, near: np.ndarray, radius: int = 9) -> np.ndarray:
    """Intensity centroid above the local background within ``radius`` of ``near`` (col, row)."""
    c0, r0 = np.rint(near).astype(int)
    rs = slice(max(0, r0 - radius), r0 + radius + 1)
    cs = slice(max(0, c0 - radius), c0 + radius + 1)
    win = img[rs, cs].astype(np.float64)
    w = np.clip(win - np.median(img), 0.0, None)
    yy, xx = np.mgrid[rs, cs]
    return np.array([(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()])


GEOMETRIC = [
    A.AffineRecord(angle_deg=7.5, scale=1.08, shift_col=3.2, shift_row=-4.1),
    A.AffineRecord(angle_deg=-10.0, scale=0.9, shift_col=-2.0, shift_row=1.5),
    A.FlipRecord(horizontal=True),
    A.CropRecord(top=10, left=5, height=80, width=70),
    A.PadRecord(top=4, bottom=6, left=8, right=2, value=0.0),
    A.LetterboxRecord(rows=64, cols=64),
    A.LetterboxRecord(rows=256, cols=160),
]


@pytest.mark.parametrize("record", GEOMETRIC, ids=lambda r: f"{r.kind}")
def test_geometric_transforms_move_the_dot_with_the_landmark(record: A.Record) -> None:
    img = dot_image(SHAPE, LANDMARKS, background=0.0)
    out = A.apply(img, LANDMARKS, record)
    m, shape = record.matrix(SHAPE)
    assert out.image.shape == shape
    np.testing.assert_allclose(out.landmarks, A.transform_points(m, LANDMARKS), atol=1e-12)
    assert out.visible.all()
    for k in range(len(LANDMARKS)):
        got = centroid(out.image, out.landmarks[k])
        assert np.linalg.norm(got - out.landmarks[k]) < 0.5, (record, k, got, out.landmarks[k])


def test_composed_geometric_chain_keeps_dot_and_landmark_together() -> None:
    off = {f.name: 0.0 for f in dataclasses.fields(A.AugmentConfig) if f.name.startswith("p_")}
    cfg = dataclasses.replace(
        A.AugmentConfig(**off), p_affine=1.0, p_flip=1.0, p_one_leg_crop=1.0, p_pad=1.0, max_texts=0
    )
    img = dot_image(SHAPE, LANDMARKS, background=0.0)  # the fill of crops / pads is 0 as well
    for seed in range(5):
        rec = A.sample_augmentation(
            np.random.default_rng(seed), SHAPE, LANDMARKS, pixel_mm=2.0, config=cfg, out_shape=(96, 96)
        )
        kinds = [t.kind for t in rec.transforms]
        assert kinds[:2] == ["affine", "flip"] and kinds[-1] == "letterbox"
        out = A.apply(img, LANDMARKS, rec)
        assert out.image.shape == (96, 96)
        np.testing.assert_allclose(out.landmarks, A.transform_points(rec.matrix(SHAPE)[0], LANDMARKS))
        for k in np.flatnonzero(out.visible):
            assert np.linalg.norm(centroid(out.image, out.landmarks[k], 7) - out.landmarks[k]) < 0.5


PIXEL = [
    A.WindowRecord(low=0.05, high=0.9),
    A.GammaRecord(gamma=0.7),
    A.SigmoidRecord(slope=5.0, centre=0.45),
    A.BlurRecord(sigma_px=1.2),
    A.UnsharpRecord(sigma_px=2.0, amount=0.8),
    A.QuantizeRecord(bits=8),
    A.JpegRecord(quality=60),
    A.LowResolutionRecord(factor=2.5),
    A.GaussianNoiseRecord(sigma=0.01, seed=3),
    A.PoissonNoiseRecord(photons=20000.0, attenuation=3.0, seed=4),
]


@pytest.mark.parametrize("record", PIXEL, ids=lambda r: r.kind)
def test_pixel_transforms_keep_landmarks_and_the_dot_in_place(record: A.Record) -> None:
    img = dot_image(SHAPE, LANDMARKS)
    out = A.apply(img, LANDMARKS, record)
    assert out.image.shape == SHAPE and out.image.dtype == np.float32
    assert out.image.min() >= 0.0 and out.image.max() <= 1.0
    np.testing.assert_array_equal(out.landmarks, LANDMARKS)
    assert not np.array_equal(out.image, img)  # the transform did something
    for k in range(len(LANDMARKS)):
        assert np.linalg.norm(centroid(out.image, LANDMARKS[k]) - LANDMARKS[k]) < 0.5


def test_inversion_and_quantisation_values() -> None:
    img = dot_image(SHAPE, LANDMARKS)
    inv = A.apply(img, LANDMARKS, A.InvertRecord()).image
    np.testing.assert_allclose(inv, 1.0 - img, atol=1e-7)
    q = A.apply(img, LANDMARKS, A.QuantizeRecord(8)).image
    np.testing.assert_allclose(q * 255.0, np.rint(q * 255.0), atol=1e-4)
    assert np.abs(q - img).max() <= 0.5 / 255 + 1e-6


def test_low_resolution_removes_fine_detail_but_keeps_coarse() -> None:
    yy, xx = np.mgrid[0:128, 0:128]
    fine = 0.5 + 0.4 * np.cos(np.pi * xx)  # Nyquist stripes
    coarse = 0.5 + 0.4 * np.cos(2 * np.pi * yy / 64.0)
    out_f = A.apply(fine.astype(np.float32), LANDMARKS, A.LowResolutionRecord(4.0)).image
    out_c = A.apply(coarse.astype(np.float32), LANDMARKS, A.LowResolutionRecord(4.0)).image
    assert out_f[8:-8, 8:-8].std() < 0.02
    assert np.abs(out_c - coarse)[8:-8, 8:-8].max() < 0.05


def test_clahe_and_equalisation() -> None:
    rng = np.random.default_rng(0)
    _yy, xx = np.mgrid[0:96, 0:80]
    img = (0.4 + 0.1 * xx / 80 + 0.02 * rng.standard_normal((96, 80))).astype(np.float32)
    # One tile and no effective clip: exactly global histogram equalisation.
    np.testing.assert_allclose(A.clahe(img, (1, 1), clip_limit=1e9), A.equalize(img), atol=1e-6)
    # The clip limit bounds the contrast gain: stronger limits stretch more.
    weak = A.clahe(img, (4, 4), clip_limit=1.0)
    strong = A.clahe(img, (4, 4), clip_limit=4.0)
    assert img.std() < weak.std() < strong.std()
    assert strong.std() > 2.0 * img.std()
    # Bilinear blending of tile mappings: no seams at tile borders.
    assert (
        np.abs(
            np.diff(
                A.clahe(np.tile(np.linspace(0.3, 0.6, 80, dtype=np.float32), (96, 1)), (4, 4), 3.0), axis=0
            )
        ).max()
        < 0.05
    )
    eq = A.equalize(img)
    hist = np.histogram(eq, bins=8, range=(0, 1))[0]
    assert hist.min() > 0.5 * hist.mean()


def test_poisson_noise_is_stronger_on_bone_than_on_soft_tissue() -> None:
    img = np.full((100, 100), 0.2, np.float32)
    img[:, 50:] = 0.9
    out = A.apply(img, LANDMARKS, A.PoissonNoiseRecord(photons=3000.0, attenuation=3.0, seed=1)).image
    assert out[:, 50:].std() > 2.0 * out[:, :50].std()
    assert abs(float(out[:, :50].mean()) - 0.2) < 0.01


def test_seam_and_grid_shapes() -> None:
    img = np.full((90, 40), 0.5, np.float32)
    seam = A.SeamRecord(
        seam_rows=(30, 60), gains=(1.0, 1.1, 0.9), offsets=(0.0, 0.02, -0.01), line_px=2, line_gain=1.2
    )
    out = A.apply(img, LANDMARKS, seam).image
    assert out[10, 5] == pytest.approx(0.5)
    assert out[45, 5] == pytest.approx(0.57)
    assert out[75, 5] == pytest.approx(0.44)
    assert out[30, 5] == pytest.approx(0.57 * 1.2)
    grid = A.apply(
        img, LANDMARKS, A.GridLinesRecord(period_px=4.0, vertical=True, amplitude=0.1, phase=0.0)
    ).image
    assert np.allclose(grid[0], grid[50])  # stripes run along the rows of a vertical grid
    assert grid[0].max() - grid[0].min() == pytest.approx(0.05, abs=1e-5)


def test_landmarks_leaving_or_covered_are_flagged_not_dropped() -> None:
    img = dot_image(SHAPE, LANDMARKS)
    crop = A.apply(img, LANDMARKS, A.CropRecord(top=0, left=45, height=120, width=45))
    assert crop.landmarks.shape == LANDMARKS.shape
    assert list(crop.visible) == [False, True]
    np.testing.assert_allclose(crop.landmarks[0], LANDMARKS[0] - [45, 0])
    border = A.apply(img, LANDMARKS, A.BorderRecord(top=0, bottom=0, left=40, right=0, value=1.0))
    assert list(border.visible) == [False, True]
    assert border.image[:, :40].min() == 1.0
    box = A.TextBoxRecord(text="STANDING AP", row=20, col=50, height_px=8, value=1.0, boxed=True)
    covered = A.apply(img, LANDMARKS, box)
    assert list(covered.visible) == [True, False]
    assert covered.image[20:28, 50:80].max() > 0.9 and covered.image[20:28, 50:80].min() < 0.05
    # Visibility given by the caller is kept (a landmark outside the simulated field stays hidden).
    out = A.apply(img, LANDMARKS, A.FlipRecord(True), visible=[True, False])
    assert list(out.visible) == [True, False]


ALL_RECORDS: list[A.Record] = [
    *GEOMETRIC,
    *PIXEL,
    A.InvertRecord(),
    A.ClaheRecord(tiles_rows=8, tiles_cols=4, clip_limit=2.5),
    A.EqualizeRecord(),
    A.BorderRecord(top=3, bottom=0, left=2, right=5, value=0.0),
    A.TextBoxRecord(text="L", row=5, col=5, height_px=10, value=1.0, boxed=False, bold=True),
    A.GridLinesRecord(period_px=3.3, vertical=False, amplitude=0.05, phase=1.0),
    A.SeamRecord(seam_rows=(40,), gains=(1.0, 1.05), offsets=(0.0, 0.01), line_px=1, line_gain=0.9),
]


def test_every_record_round_trips_through_json() -> None:
    kinds = {r.kind for r in ALL_RECORDS}
    assert kinds == set(A._RECORDS)  # every registered transform is covered here
    for r in ALL_RECORDS:
        back = A.record_from_dict(json.loads(json.dumps(r.to_dict())))
        assert back == r and type(back) is type(r)
    comp = A.Compose(tuple(ALL_RECORDS))
    assert A.Compose.from_dict(json.loads(json.dumps(comp.to_dict()))) == comp
    with pytest.raises(InputError):
        A.record_from_dict({"kind": "no_such_transform"})
    with pytest.raises(InputError):
        A.record_from_dict({"kind": "gamma", "gamma": 1.0, "extra": 2})


def test_sampled_chains_replay_bit_identically_from_json() -> None:
    on = {f.name: 1.0 for f in dataclasses.fields(A.AugmentConfig) if f.name.startswith("p_")}
    full = A.AugmentConfig(**on)
    img = dot_image(SHAPE, LANDMARKS)
    kinds: set[str] = set()
    for cfg in (A.AugmentConfig(p_one_leg_crop=0.5), full):
        for seed in range(6):
            rec = A.sample_augmentation(
                np.random.default_rng(seed), SHAPE, LANDMARKS, pixel_mm=0.7, config=cfg, out_shape=(64, 48)
            )
            again = A.sample_augmentation(
                np.random.default_rng(seed), SHAPE, LANDMARKS, pixel_mm=0.7, config=cfg, out_shape=(64, 48)
            )
            assert rec == again
            kinds |= {t.kind for t in rec.transforms}
            first = A.apply(img, LANDMARKS, rec)
            replay = A.apply(img, LANDMARKS, A.Compose.from_dict(json.loads(json.dumps(rec.to_dict()))))
            assert first.image.shape == (64, 48)
            assert np.array_equal(first.image, replay.image)
            assert np.array_equal(first.landmarks, replay.landmarks)
            assert np.array_equal(first.visible, replay.visible)
            assert np.isfinite(first.image).all() and first.image.min() >= 0 and first.image.max() <= 1
    assert kinds >= {
        "affine",
        "flip",
        "seam",
        "grid",
        "border",
        "text",
        "blur",
        "gaussian_noise",
        "clahe",
        "jpeg",
    }


def test_samplers_stay_in_their_documented_ranges() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        a = A.sample_affine(rng, SHAPE)
        assert abs(a.angle_deg) <= 10.0 and 0.9 <= a.scale <= 1.1
        assert 1.0 <= A.sample_low_resolution(rng, pixel_mm=0.5).factor <= 4.0
        assert 40 <= A.sample_jpeg(rng).quality <= 95
        g = A.sample_gamma(rng)
        assert 0.6 <= g.gamma <= 1.6
        crop = A.sample_one_leg_crop(rng, (672, 224), np.array([[60.0, 100.0], [70.0, 600.0]]))
        assert crop.left <= 60 and crop.left + crop.width >= 70 and crop.width < 224 * 0.75


def test_apply_rejects_bad_input() -> None:
    with pytest.raises(InputError):
        A.apply(np.zeros((3, 4, 5)), LANDMARKS, A.InvertRecord())
    with pytest.raises(InputError):
        A.warp_affine(np.zeros((4, 4)), np.eye(2), (4, 4))


def test_masks_follow_the_geometry_of_a_chain() -> None:
    img = dot_image(SHAPE, LANDMARKS, sigma=3.0, background=0.0)
    mask = img > 0.4
    rec = A.Compose(
        (
            A.AffineRecord(angle_deg=8.0, scale=1.05, shift_col=2.0, shift_row=-3.0),
            A.FlipRecord(True),
            A.GammaRecord(0.8),
            A.CropRecord(top=5, left=3, height=100, width=80),
            A.PadRecord(top=2, bottom=0, left=4, right=0),
        )
    )
    out = A.apply(img, LANDMARKS, rec)
    warped = A.warp_mask(mask, rec)
    assert warped.shape == out.image.shape
    for k in range(len(LANDMARKS)):
        c, r = np.rint(out.landmarks[k]).astype(int)
        assert warped[r, c]
    # Same area up to the resampling of the edge (the rotation keeps areas; scale 1.05^2).
    assert abs(warped.sum() - mask.sum() * 1.05**2) < 0.15 * mask.sum()
