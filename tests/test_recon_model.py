"""Reconstruction model: geometry of the film frames, ray-bound decoding, ONNX parity, runtime inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from appliance.errors import InputError  # noqa: E402
from appliance.geometry.projection import centred_geometry  # noqa: E402
from appliance.recon.infer import (  # noqa: E402
    CUBE_VOXELS,
    FILM_PX,
    Reconstructor,
    cube_affine,
    cube_to_film_matrix,
    estimate_centre,
    film_frame,
)
from export.recon import losses as L  # noqa: E402
from export.recon.data import rotate_geometry  # noqa: E402
from export.recon.model import ReconNet  # noqa: E402
from export.recon.onnx_io import PARITY_TOL, export_recon  # noqa: E402

KNEE = np.array([-60.0, 10.0, -380.0])


def _geoms(centre: np.ndarray = KNEE) -> dict:
    ap = centred_geometry(
        name="knee_ap",
        isocenter_mm=centre,
        beam_dir=(0, 1, 0),
        u_dir=(1, 0, 0),
        sid_mm=1100.0,
        sod_mm=1010.0,
        width_mm=240.0,
        height_mm=300.0,
        pitch_mm=0.5,
    )
    lat = centred_geometry(
        name="knee_lat",
        isocenter_mm=centre,
        beam_dir=(-1, 0, 0),
        u_dir=(0, 1, 0),
        sid_mm=1150.0,
        sod_mm=1060.0,
        width_mm=240.0,
        height_mm=300.0,
        pitch_mm=0.5,
    )
    return {"knee_ap": ap, "knee_lat": lat}


def _to_frame_px(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    h = np.c_[pts, np.ones(len(pts))] @ m.T
    return h[:, :2] / h[:, 2:]


def test_centre_is_where_the_central_rays_cross() -> None:
    g = _geoms()
    assert np.allclose(estimate_centre(g), KNEE, atol=1e-6)
    ap_only = estimate_centre({"knee_ap": g["knee_ap"]})
    # AP alone: on the AP central ray (same x, z), at a typical depth in front of the detector.
    assert np.allclose(ap_only[[0, 2]], KNEE[[0, 2]], atol=1e-6)
    with pytest.raises(InputError):
        estimate_centre({"knee_lat": g["knee_lat"]})


def test_frame_matrix_agrees_with_the_film_geometry() -> None:
    g = _geoms()["knee_ap"]
    rng = np.random.default_rng(0)
    pts = KNEE + rng.uniform(-60, 60, (20, 3))
    film = np.zeros((g.rows, g.columns), np.float32)
    # A bright dot where one point projects must appear where the frame matrix puts that point.
    c, r = np.rint(g.project(pts[:1])[0]).astype(int)
    film[r - 3 : r + 4, c - 3 : c + 4] = 1.0
    fr = film_frame(film, g, KNEE)
    assert fr.image.shape == (FILM_PX, FILM_PX)
    px = _to_frame_px(fr.matrix, pts)
    # frame pixel -> film pixel is an axis-aligned scaling: compare with the film projection
    film_px = g.project(pts)
    scale = 0.75 / g.pitch_u_mm
    assert np.allclose(np.diff(film_px, axis=0), np.diff(px, axis=0) * scale, atol=1e-6)
    rows, cols = np.indices(fr.image.shape)
    w = fr.image / fr.image.sum()
    # centroid vs projection: the dot was placed at the rounded film pixel (<= 0.5 film px = 0.33 frame px)
    assert abs((w * cols).sum() - px[0, 0]) < 0.5 and abs((w * rows).sum() - px[0, 1]) < 0.5
    # the frame's own geometry projects like its matrix
    assert np.allclose(fr.geometry.project(pts), px, atol=1e-6)


def test_normalised_matrix_maps_cube_corners_consistently() -> None:
    g = _geoms()["knee_lat"]
    fr = film_frame(np.zeros((g.rows, g.columns), np.float32), g, KNEE)
    aff = cube_affine(KNEE)
    m = cube_to_film_matrix(fr.matrix, aff).astype(np.float64)
    corner_idx = np.array([[0, 0, 0], [CUBE_VOXELS - 1, 0, CUBE_VOXELS - 1]], float)
    lps = corner_idx @ aff[:3, :3].T + aff[:3, 3]
    norm = corner_idx * 2.0 / (CUBE_VOXELS - 1) - 1.0
    expect = _to_frame_px(fr.matrix, lps) * 2.0 / (FILM_PX - 1) - 1.0
    assert np.allclose(_to_frame_px(m, norm), expect, atol=1e-4)


def test_rotating_the_setup_is_rotating_the_patient_back() -> None:
    g = _geoms()["knee_ap"]
    a = np.radians(7.0)
    r = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    pts = KNEE + np.random.default_rng(1).uniform(-50, 50, (10, 3))
    moved = (pts - KNEE) @ r.T + KNEE
    assert np.allclose(rotate_geometry(g, r, KNEE).project(moved), g.project(pts), atol=1e-6)


def test_projection_rays_project_onto_their_pixel() -> None:
    g = _geoms()["knee_ap"]
    fr = film_frame(np.zeros((g.rows, g.columns), np.float32), g, KNEE)
    m = torch.from_numpy(cube_to_film_matrix(fr.matrix, cube_affine(KNEE)))
    pix = torch.tensor([[0.1, -0.2], [-0.3, 0.25]])
    pts, ok, step = L.ray_points(m, pix, 16, jitter=False)
    assert bool(ok.all()) and bool((step > 0).all())
    h = torch.cat([pts, torch.ones_like(pts[..., :1])], -1) @ m.T
    uv = h[..., :2] / h[..., 2:]
    assert torch.allclose(uv, pix[:, None, :].expand_as(uv), atol=1e-4)


def test_decoder_sees_a_film_only_along_the_ray() -> None:
    torch.manual_seed(0)
    net = ReconNet().eval()
    g = _geoms()
    aff = cube_affine(KNEE)
    films = torch.rand(1, 2, FILM_PX, FILM_PX)
    mats = torch.from_numpy(
        np.stack(
            [
                cube_to_film_matrix(film_frame(np.zeros((x.rows, x.columns)), x, KNEE).matrix, aff)
                for x in g.values()
            ]
        )
    )[None]
    pts = torch.tensor([[[0.0, 0.0, 0.0]]])
    present = torch.ones(1, 2)
    with torch.no_grad():
        hu0, lg0 = net.decoder(net.encode(films), mats, present, pts)
        far = films.clone()
        far[:, :, :40, :40] = 0.0  # a corner far (> 3 sigma of the widest filter) from the centre's rays
        hu1, lg1 = net.decoder(net.encode(far), mats, present, pts)
        near = films.clone()
        near[:, 0, 120:136, 120:136] = 1.0 - near[:, 0, 120:136, 120:136]  # around the centre's AP ray
        hu2, _ = net.decoder(net.encode(near), mats, present, pts)
    assert torch.allclose(hu0, hu1) and torch.allclose(lg0, lg1)
    assert not torch.allclose(hu0, hu2)


def test_onnx_export_parity(tmp_path: Path) -> None:
    torch.manual_seed(4)
    paths, parity = export_recon(ReconNet(), tmp_path, seed=4, cfg={})
    assert [p.name for p in paths] == ["recon_encoder.onnx", "recon_decoder.onnx"]
    assert max(parity.values()) < PARITY_TOL


@pytest.mark.slow
def test_onnx_parity_and_runtime_reconstruction(tmp_path: Path) -> None:
    torch.manual_seed(3)
    net = ReconNet()
    paths, parity = export_recon(net, tmp_path, seed=3, cfg={})
    assert all(p.is_file() for p in paths)
    assert max(parity.values()) < PARITY_TOL
    g = _geoms()
    rng = np.random.default_rng(5)
    films = {k: (rng.random((x.rows, x.columns)).astype(np.float32), x) for k, x in g.items()}
    with Reconstructor(tmp_path) as r:
        a = r.reconstruct(films)
        b = r.reconstruct(films)
        ap = r.reconstruct({"knee_ap": films["knee_ap"]})
    assert a.hu.shape == (CUBE_VOXELS,) * 3 and a.labels.data.dtype == np.uint8
    assert a.labels.data.max() <= 4
    assert np.allclose(a.centre_mm, KNEE, atol=1e-6)
    assert np.allclose(a.hu.affine, cube_affine(KNEE))
    assert a.hu.spacing_mm == (1.0, 1.0, 1.0)
    # deterministic for the same input
    assert np.array_equal(a.hu.data, b.hu.data) and np.array_equal(a.labels.data, b.labels.data)
    assert a.views_used == ("knee_ap", "knee_lat") and ap.views_used == ("knee_ap",)
    assert not np.array_equal(a.hu.data, ap.hu.data)
    # The ONNX output at the voxel centres equals PyTorch at the same points (coarse grid points).
    with torch.no_grad():
        frames = [film_frame(films[k][0], films[k][1], KNEE) for k in ("knee_ap", "knee_lat")]
        mats = torch.from_numpy(np.stack([cube_to_film_matrix(f.matrix, a.hu.affine) for f in frames]))[None]
        imgs = torch.from_numpy(np.stack([f.image for f in frames]))[None]
        idx = np.array([[0, 0, 0], [70, 72, 10], [142, 2, 96]])
        pts = torch.from_numpy((idx * 2.0 / (CUBE_VOXELS - 1) - 1.0).astype(np.float32))[None]
        hu_t, _ = net.decoder(net.encode(imgs), mats, torch.ones(1, 2), pts)
    got = a.hu.data[idx[:, 0], idx[:, 1], idx[:, 2]] / 1000.0
    assert np.allclose(got, hu_t.numpy()[0], atol=PARITY_TOL)


def test_missing_models_are_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        Reconstructor(tmp_path)
