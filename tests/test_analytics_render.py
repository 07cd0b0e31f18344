"""Overlay and CPAK chart: files are written, sized as promised, drawn where expected, reproducible."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from appliance.analytics.angles2d import measure_2d
from appliance.analytics.cpak_chart import render_cpak_chart
from appliance.analytics.overlay import render_overlay, write_png
from appliance.analytics.synthetic import LegSpec, film_2d, synthetic_film
from appliance.errors import InputError

SHAPE = (900, 360)  # rows, cols: a small long-leg film at 1 mm/px


def _case(side: str = "L") -> tuple[np.ndarray, dict[str, list[float]]]:
    lm = film_2d(LegSpec(mldfa=88, mpta=85, jlca=1.0), side, (1.0, 1.0), origin_px=(180.0, 40.0))
    return synthetic_film(lm, SHAPE, pixel_spacing_mm=1.0), lm


def test_overlay_size_preview_and_determinism(tmp_path: Path) -> None:
    img, lm = _case()
    angles = measure_2d(lm, 1.0)
    a, b, prev = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "p.png"
    render_overlay(img, lm, angles, a, preview_png=prev, preview_max_px=400)
    render_overlay(img, lm, angles, b)
    assert a.read_bytes() == b.read_bytes()
    with Image.open(a) as im:
        assert im.size == (SHAPE[1], SHAPE[0])
        rgb = np.asarray(im.convert("RGB")).astype(int)
    with Image.open(prev) as pv:
        assert max(pv.size) <= 400 and max(pv.size) >= 390
    # The femoral axis (cyan) runs between FHC and FKC: sample half-way down it.
    mid = (np.asarray(lm["FHC"]) + np.asarray(lm["FKC"])) / 2
    patch = rgb[int(mid[1]) - 2 : int(mid[1]) + 3, int(mid[0]) - 3 : int(mid[0]) + 4]
    cyan = (patch[..., 0] < 80) & (patch[..., 1] > 180) & (patch[..., 2] > 200)
    assert cyan.any()
    # The landmark dots are red.
    fhc = np.asarray(lm["FHC"]).round().astype(int)
    dot = rgb[fhc[1], fhc[0]]
    assert dot[0] > 200 and dot[1] < 90 and dot[2] < 90


def _red(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] > 200) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)


def test_preview_is_drawn_at_its_own_scale(tmp_path: Path) -> None:
    img, lm = _case()
    angles = measure_2d(lm, 1.0)
    full, prev = tmp_path / "full.png", tmp_path / "prev.png"
    render_overlay(img, lm, angles, full, preview_png=prev, preview_max_px=450)
    with Image.open(prev) as pv:
        small = np.asarray(pv.convert("RGB")).astype(int)
    scale = small.shape[0] / SHAPE[0]
    assert small.shape[:2] == (450, int(SHAPE[1] * 450 / SHAPE[0]))
    # Every landmark dot is red at its scaled position (pixel centres: (x + 0.5) * s - 0.5).
    for name in ("FHC", "AC", "MTP", "LDFC"):
        x, y = ((np.asarray(lm[name]) + 0.5) * scale - 0.5).round().astype(int)
        assert _red(small[y - 1 : y + 2, x - 1 : x + 2]).any(), name
    # The tibial axis (magenta) is drawn half-way between TKC and AC, and nowhere far from it.
    mid = ((np.asarray(lm["TKC"]) + np.asarray(lm["AC"])) / 2 + 0.5) * scale - 0.5
    x, y = mid.round().astype(int)
    magenta = (small[..., 0] > 200) & (small[..., 1] < 140) & (small[..., 2] > 170)
    assert magenta[y - 2 : y + 3, x - 3 : x + 4].any()
    assert not magenta[y - 2 : y + 3, : max(0, x - 40)].any()


def test_parallel_renders_give_the_same_bytes(tmp_path: Path) -> None:
    # The service renders studies in parallel threads: no shared state may leak between them.
    img, lm = _case()
    angles = measure_2d(lm, 1.0)
    render_overlay(img, lm, angles, tmp_path / "ref.png", preview_png=tmp_path / "ref_p.png")
    names = [f"t{i}" for i in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(
            pool.map(
                lambda n: render_overlay(img, lm, angles, tmp_path / f"{n}.png", tmp_path / f"{n}_p.png"),
                names,
            )
        )
    for n in names:
        assert (tmp_path / f"{n}.png").read_bytes() == (tmp_path / "ref.png").read_bytes()
        assert (tmp_path / f"{n}_p.png").read_bytes() == (tmp_path / "ref_p.png").read_bytes()


def test_write_png_round_trips_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(900002)
    px = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    px[10:20] = px[9]  # repeated rows: the "up" filter gives zeros there
    write_png(tmp_path / "x.png", px)
    with Image.open(tmp_path / "x.png") as im:
        assert im.mode == "RGB" and im.size == (53, 37)
        assert np.array_equal(np.asarray(im), px)
    with pytest.raises(ValueError):
        write_png(tmp_path / "y.png", np.zeros((4, 4), dtype=np.uint8))


def test_overlay_changes_with_the_numbers(tmp_path: Path) -> None:
    img, lm = _case()
    angles = measure_2d(lm, 1.0)
    render_overlay(img, lm, angles, tmp_path / "a.png")
    other = dict(angles.to_dict(), mHKA=-9.0)
    render_overlay(img, lm, other, tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()


def test_overlay_accepts_rgb_uint16_and_missing(tmp_path: Path) -> None:
    img, lm = _case("R")
    lm16 = {k: v for k, v in lm.items() if k != "AC"}
    angles = measure_2d(lm16, 1.0)
    render_overlay((img * 4095).astype(np.uint16), lm16, angles, tmp_path / "g.png")
    rgb = (np.stack([img] * 3, axis=-1) * 255).astype(np.uint8)
    render_overlay(rgb, lm16, angles, tmp_path / "c.png")
    for name in ("g.png", "c.png"):
        with Image.open(tmp_path / name) as im:
            assert im.size == (SHAPE[1], SHAPE[0])


def test_overlay_rejects_bad_image(tmp_path: Path) -> None:
    _, lm = _case()
    with pytest.raises(InputError):
        render_overlay(np.zeros((2, 3, 5, 7)), lm, {}, tmp_path / "x.png")
    with pytest.raises(InputError):
        render_overlay(np.full((20, 20), np.nan), lm, {}, tmp_path / "x.png")


def test_cpak_chart_deterministic_and_marks_the_cell(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    render_cpak_chart(-4.0, 174.0, a)
    render_cpak_chart(-4.0, 174.0, b)
    render_cpak_chart(4.0, 186.0, c)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    with Image.open(a) as im:
        assert im.size == (800, 800)
        rgb = np.asarray(im.convert("RGB")).astype(int)
    red = (rgb[..., 0] > 180) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)
    rows, cols = np.nonzero(red)
    # Type I is the top-left cell: the red highlight sits in the upper-left part of the plot.
    assert cols.mean() < 400 and rows.mean() < 400


def test_cpak_chart_outside_range_and_bad_values(tmp_path: Path) -> None:
    render_cpak_chart(25.0, 160.0, tmp_path / "far.png")
    assert (tmp_path / "far.png").stat().st_size > 1000
    with pytest.raises(InputError):
        render_cpak_chart(float("nan"), 180.0, tmp_path / "nan.png")


@pytest.mark.slow
def test_examples_render_deterministically(tmp_path: Path) -> None:
    from appliance.analytics.examples import write_examples

    first = {p.name: p.read_bytes() for p in write_examples(tmp_path / "a")}
    second = {p.name: p.read_bytes() for p in write_examples(tmp_path / "b")}
    assert first == second and len(first) == 7
