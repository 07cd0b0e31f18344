"""Real-film artefacts: records, deterministic application, the calibration-sphere chord."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

from appliance.errors import GeometryError, InputError
from appliance.geometry.projection import centred_geometry
from export.simulator.film_artifacts import (
    STEEL_IN_COCR_BASIS,
    CollimationRecord,
    FilmArtifacts,
    FilmRecipe,
    GridRecord,
    MarkerRecord,
    PaddingRecord,
    RulerRecord,
    StitchRecord,
    TextRecord,
    apply_display_artifacts,
    apply_path_artifacts,
    field_mask,
    grid_profile,
    padded_geometry,
    render_recipe,
    render_with_artifacts,
    sample_artifacts,
    sample_recipe,
    shift_points,
    shift_zones,
    sphere_chord_mm,
    steel_ball_metal_path,
)
from export.simulator.film_text import text_mask
from export.simulator.physics import KINDS, ExposureParams, sample_exposure


def _exposure(**overrides: object) -> ExposureParams:
    base = sample_exposure(np.random.default_rng(0), "longleg")
    quiet = {
        "heel_strength": 0.0,
        "fluence_per_mm2": 1e8,
        "electronic_noise_quanta": 0.0,
        "line_noise_quanta": 0.0,
        "flat_field_corrected": True,
        "fine_gain": 0.0,
        "mid_gain": 0.0,
        "drc_strength": 0.0,
        "photometric": "MONOCHROME2",
    }
    return dataclasses.replace(base, **{**quiet, **overrides})  # type: ignore[arg-type]


def _slab(rows: int = 300, cols: int = 40, water: float = 100.0) -> np.ndarray:
    p = np.zeros((3, rows, cols), np.float32)
    p[0] = water
    # A thin bone strip gives the console's latitude something to span.
    p[1, :, cols // 2 - 3 : cols // 2 + 3] = 20.0
    return p


# --- sphere chord ----------------------------------------------------------------------------------------
def _geometry(pitch: float = 0.5):
    return centred_geometry(
        name="test",
        isocenter_mm=(0.0, 0.0, 0.0),
        beam_dir=(0.0, 1.0, 0.0),
        u_dir=(1.0, 0.0, 0.0),
        sid_mm=1200.0,
        sod_mm=1000.0,
        width_mm=80.0,
        height_mm=80.0,
        pitch_mm=pitch,
    )


def test_sphere_chord_matches_closed_form_on_the_central_ray_and_by_marching() -> None:
    g = _geometry()
    centre = np.array([5.0, 10.0, -3.0])
    chord = sphere_chord_mm(g, centre, 12.5)
    assert chord.shape == (g.rows, g.columns)
    col, row = g.project(centre[None])[0]
    # The ray through the projected centre passes through the sphere's centre: chord = diameter.
    exact = sphere_chord_mm(g, centre, 12.5)[round(row), round(col)]
    assert exact == pytest.approx(25.0, abs=0.05)
    # Independent check: march along a few rays and count the length inside the sphere.
    rng = np.random.default_rng(0)
    src = g.source
    for _ in range(6):
        c, r = int(rng.integers(0, g.columns)), int(rng.integers(0, g.rows))
        d = g.pixel_to_mm(c, r) - src
        ts = np.linspace(0.0, 1.0, 400001)
        pts = src + ts[:, None] * d
        inside = np.linalg.norm(pts - centre, axis=1) <= 12.5
        marched = inside.sum() * (ts[1] - ts[0]) * np.linalg.norm(d)
        assert chord[r, c] == pytest.approx(marched, abs=0.02)


def test_sphere_chord_integrates_to_the_magnified_volume() -> None:
    g = _geometry(pitch=0.25)
    centre = np.array([0.0, 50.0, 0.0])
    radius = 12.5
    chord = sphere_chord_mm(g, centre, radius)
    mag = g.magnification_at(centre)
    volume = 4.0 / 3.0 * np.pi * radius**3
    assert float(chord.sum()) * 0.25**2 == pytest.approx(volume * mag**2, rel=0.01)
    ball = steel_ball_metal_path(g, centre.tolist())
    assert float(ball.max()) == pytest.approx(25.0 * STEEL_IN_COCR_BASIS, rel=0.01)


def test_sphere_outside_view_or_behind_source() -> None:
    g = _geometry()
    assert float(sphere_chord_mm(g, (500.0, 0.0, 0.0), 10.0).max()) == 0.0
    with pytest.raises(GeometryError):
        sphere_chord_mm(g, (0.0, -1100.0, 0.0), 10.0)
    with pytest.raises(GeometryError):
        sphere_chord_mm(g, (0.0, 0.0, 0.0), 0.0)


# --- records ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_every_sampled_record_round_trips_through_json(kind: str) -> None:
    rng = np.random.default_rng(3)
    for _ in range(25):
        ex = sample_exposure(rng, kind)
        art = sample_artifacts(rng, kind, 2000, 800, 0.2, ex)
        back = FilmArtifacts.from_dict(json.loads(json.dumps(art.to_dict())))
        assert back == art
    with pytest.raises(InputError):
        FilmArtifacts.from_dict({"bogus": None})


def test_long_leg_films_show_more_artefacts_than_knee_films() -> None:
    rng = np.random.default_rng(9)
    counts = {"longleg": 0, "knee_ap": 0}
    for kind in counts:
        for _ in range(40):
            art = sample_artifacts(rng, kind, 2000, 800, 0.2, sample_exposure(rng, kind))
            counts[kind] += (art.stitch is not None) + (art.ruler is not None)
    assert counts["longleg"] > 2 * counts["knee_ap"]


# --- application -----------------------------------------------------------------------------------------
def test_seams_appear_at_the_recorded_rows() -> None:
    stitch = StitchRecord(
        seam_rows=(100, 200),
        zone_gains=(1.0, 1.15, 0.9),
        zone_shifts=((0, 0), (0, 0), (0, 0)),
        seam_width_px=2,
        seam_gain=1.3,
    )
    film = render_with_artifacts(_slab(), 1.0, _exposure(), FilmArtifacts(stitch=stitch), seed=1)
    prof = film.presentation[:, :10].mean(axis=1)
    z0, z1, z2 = prof[20:90].mean(), prof[110:190].mean(), prof[210:290].mean()
    # More signal reads as less attenuation: the brighter-exposed zone is darker on the film.
    assert z1 < z0 < z2
    steps = np.abs(np.diff(prof))
    top = np.argsort(steps)[-6:].tolist()
    # The six largest row-to-row steps lie at the seams (spread a few rows by the detector blur tail),
    # and each seam has one.
    assert all(any(abs(t - s) <= 5 for s in stitch.seam_rows) for t in top)
    assert all(any(abs(t - s) <= 2 for t in top) for s in stitch.seam_rows)


def test_zone_shift_moves_content_below_the_seam_only() -> None:
    img = np.tile(np.arange(50, dtype=np.float32)[None, :], (60, 1))
    s = StitchRecord((30,), (1.0, 1.0), ((0, 0), (0, 3)), 1, 1.0)
    out = shift_zones(img, s)
    np.testing.assert_array_equal(out[:30], img[:30])
    np.testing.assert_array_equal(out[30:, 10], img[30:, 7])


@pytest.mark.parametrize(
    ("point", "shifts"),
    [((20.0, 10.0), ((0, 0), (2, -3))), ((20.0, 45.0), ((0, 0), (2, -3))), ((33.0, 29.0), ((0, 0), (4, 5)))],
)
def test_points_follow_the_zone_shift_of_the_content(
    point: tuple[float, float], shifts: tuple[tuple[int, int], ...]
) -> None:
    """A bright dot drawn on the film ends up where ``shift_points`` says (the truth follows the image)."""
    img = np.zeros((60, 50), np.float32)
    img[int(point[1]), int(point[0])] = 1.0
    s = StitchRecord((30,), (1.0, 1.0), shifts, 1, 1.0)
    out = shift_zones(img, s)
    row, col = np.unravel_index(int(np.argmax(out)), out.shape)
    (moved,) = shift_points(np.array([point]), 60, s)
    assert (col, row) == (int(moved[0]), int(moved[1]))


def test_collimation_and_shutter() -> None:
    coll = CollimationRecord(0.1, 0.1, 0.2, 0.2, 0.0, 0.01, 1.0, "none")
    m = field_mask((200, 100), 1.0, coll)
    assert m[100, 50] == pytest.approx(1.0, abs=1e-3)
    assert m[5, 5] == pytest.approx(0.01, abs=1e-3)
    ex = _exposure()
    open_film = render_with_artifacts(
        _slab(200, 100, water=30.0), 1.0, ex, FilmArtifacts(collimation=coll), 0
    )
    # Behind the blades the detector sees only blade leakage and scatter: it reads as dense (bright).
    assert open_film.presentation[3:15, 3:15].mean() > open_film.presentation[90:110, 30:40].mean()
    black = dataclasses.replace(coll, shutter="black")
    shut = render_with_artifacts(_slab(200, 100, water=30.0), 1.0, ex, FilmArtifacts(collimation=black), 0)
    assert int(shut.pixels[3:15, 3:15].max()) == 0  # MONOCHROME2: stored black


def test_ruler_ticks_sit_at_the_recorded_spacing() -> None:
    ruler = RulerRecord(
        col=10,
        row_start=5,
        row_end=495,
        tick_spacing_px=20.0,
        width_px=40,
        tick_px=2,
        metal_mm=0.8,
        plastic_mm=3.0,
        first_cm=0,
        descending=False,
        number_height_px=12,
    )
    paths = apply_path_artifacts(np.zeros((3, 500, 100), np.float32), FilmArtifacts(ruler=ruler))
    assert float(paths[0, 100, 20]) == pytest.approx(3.0)  # plastic body
    tick_rows = np.flatnonzero(paths[2, :, 11] > 0)
    starts = tick_rows[np.diff(tick_rows, prepend=-10) > 1]
    np.testing.assert_array_equal(starts, 5 + 20 * np.arange(len(starts)))
    assert len(starts) == 25
    # Every 10 cm a number is printed next to the long tick (metal beyond the tick's length).
    assert float(paths[2, 195:215, 35:60].max()) > 0.0


def test_marker_adds_metal_letters_in_a_plastic_holder() -> None:
    mk = MarkerRecord("R", row=20, col=30, height_px=16, metal_mm=5.0)
    paths = apply_path_artifacts(np.zeros((3, 100, 100), np.float32), FilmArtifacts(markers=(mk,)))
    assert float(paths[2, 20:40, 30:50].max()) > 4.0
    assert float(paths[2, 60:, :].max()) == 0.0
    assert float(paths[0, 25, 32]) == pytest.approx(5.0)


def test_grid_shadow_mean_and_aperture_averaging() -> None:
    g = GridRecord(lines_per_mm=4.0, vertical=True, amplitude=0.04, phase=0.3)
    prof = grid_profile(4000, 0.15, g)
    assert float(prof.mean()) == pytest.approx(0.98, abs=2e-3)
    assert float(prof.min()) >= 0.96 - 1e-6
    # A grid at exactly the pixel frequency is averaged away by the pixel aperture.
    flat = grid_profile(500, 0.25, dataclasses.replace(g, lines_per_mm=4.0))
    assert float(np.ptp(flat)) < 1e-6


def test_text_burned_in_and_padding_shifts_content() -> None:
    bright = np.full((120, 200), 0.3, np.float32)
    txt = TextRecord("LONG LEG AP", row=10, col=10, height_px=12, value=1.0, boxed=True)
    pad = PaddingRecord(top=0, bottom=0, left=15, right=5, value=0.0)
    art = FilmArtifacts(texts=(txt,), padding=pad)
    out = apply_display_artifacts(bright, None, art)
    assert out.shape == (120, 220)
    assert art.pixel_offset() == (15, 0)
    region = out[10:22, 25:150]
    assert float(region.max()) > 0.95 and float(region.min()) < 0.05  # glyphs on a black box
    assert float(out[60, :15].max()) == 0.0
    assert float(out[100, 100]) == pytest.approx(0.3)


def test_padded_geometry_projects_onto_the_shifted_pixels() -> None:
    g = _geometry()
    pad = PaddingRecord(top=7, bottom=3, left=11, right=0, value=0.0)
    pg = padded_geometry(g, pad)
    assert (pg.rows, pg.columns) == (g.rows + 10, g.columns + 11)
    pts = np.array([[3.0, 20.0, -7.0], [-15.0, -30.0, 12.0]])
    np.testing.assert_allclose(pg.project(pts), g.project(pts) + np.array([11.0, 7.0]), atol=1e-9)
    assert padded_geometry(g, None) is g


def test_text_mask_height_and_empty() -> None:
    m = text_mask("12", 22)
    assert 20 <= m.shape[0] <= 26  # digits are cap height; the mask is cropped to the ink
    assert text_mask("A\nB", 22).shape[0] > 2 * 20
    assert float(m.min()) >= 0.0 and float(m.max()) > 0.9
    with pytest.raises(InputError):
        text_mask("x", 2)


def test_recipe_replays_the_same_film_from_json() -> None:
    recipe = sample_recipe(np.random.default_rng(8), "knee_ap", 300, 120, 1.0)
    again = FilmRecipe.from_dict(json.loads(json.dumps(recipe.to_dict())))
    assert again == recipe
    a = render_recipe(_slab(300, 120), 1.0, recipe)
    b = render_recipe(_slab(300, 120), 1.0, again)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    with pytest.raises(InputError):
        FilmRecipe.from_dict({"exposure": recipe.exposure.to_dict()})


def test_render_with_sampled_artifacts_is_deterministic() -> None:
    rng = np.random.default_rng(21)
    ex = sample_exposure(rng, "longleg")
    art = sample_artifacts(rng, "longleg", 400, 160, 1.0, ex)
    a = render_with_artifacts(_slab(400, 160), 1.0, ex, art, seed=4)
    b = render_with_artifacts(
        _slab(400, 160), 1.0, ex, FilmArtifacts.from_dict(json.loads(json.dumps(art.to_dict()))), seed=4
    )
    np.testing.assert_array_equal(a.pixels, b.pixels)


def _two_legs(pitch: float, height_mm: float = 1200.0, width_mm: float = 420.0) -> np.ndarray:
    """Water cylinders (thigh 70 mm -> ankle 35 mm radius) around hollow bone cylinders with a joint gap."""
    rows, cols = int(height_mm / pitch), int(width_mm / pitch)
    y = np.arange(rows)[:, None] * pitch
    x = np.arange(cols)[None, :] * pitch
    p = np.zeros((3, rows, cols), np.float32)
    knee = 0.52 * height_mm
    for cx in (width_mm / 2 - 95, width_mm / 2 + 95):
        dx = x - cx
        r_soft = np.interp(y, [0, 0.4 * height_mm, knee, 0.9 * height_mm], [75, 62, 52, 35])
        r_bone = np.interp(
            y,
            [0, 0.4 * height_mm, knee - 10, knee + 10, 0.6 * height_mm, height_mm],
            [16, 14, 36, 36, 18, 12],
        )
        joint = np.abs(y - knee) > 6
        outer = 2 * np.sqrt(np.clip(r_bone**2 - dx**2, 0, None)) * joint
        inner = 2 * np.sqrt(np.clip((0.6 * r_bone) ** 2 - dx**2, 0, None)) * joint
        p[0] += 2 * np.sqrt(np.clip(r_soft**2 - dx**2, 0, None)) - outer + 0.8 * inner
        p[1] += outer - 0.8 * inner
    p[0] = np.clip(p[0], 0, None)
    return p


@pytest.mark.slow
def test_preview_png(tmp_path: Path) -> None:
    """Render three example films to one PNG for eyeballing (XR3D_PREVIEW_DIR=docs/physics to keep it)."""
    from PIL import Image

    pitch = 0.4
    legs = _two_legs(pitch)
    tiles = []
    for i, kind in enumerate(("longleg", "longleg", "knee_ap")):
        rng = np.random.default_rng(1000 + i)
        ex = sample_exposure(rng, kind)
        paths = legs if kind == "longleg" else legs[:, int(0.35 * legs.shape[1]) : int(0.7 * legs.shape[1])]
        art = sample_artifacts(rng, kind, paths.shape[1], paths.shape[2], pitch, ex)
        film = render_with_artifacts(paths, pitch, ex, art, seed=i)
        assert film.pixels.shape[0] >= paths.shape[1]
        img = Image.fromarray((film.presentation * 255).astype(np.uint8))
        tiles.append(img.resize((img.width * 700 // img.height, 700), Image.Resampling.LANCZOS))
    sheet = Image.new("L", (sum(t.width for t in tiles) + 10 * len(tiles), 700), 128)
    x = 0
    for t in tiles:
        sheet.paste(t, (x, 0))
        x += t.width + 10
    out = Path(os.environ.get("XR3D_PREVIEW_DIR", tmp_path)) / "films_preview.png"
    sheet.save(out, optimize=True)
    assert out.stat().st_size < 300_000
