"""Cross-view check (appliance/recon/cross_view.py): the knee AP and lateral films must show one knee.

Films of the analytic knee phantom (tests/test_recon_checks_phantom.py) through real perspective
geometries and the numba DRR; a second "patient" is the same kind of phantom with other heights (patella,
condyles, plateau), placed so that its knee sits exactly where the first one's does."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from appliance.geometry.projection import ProjectionGeometry, centred_geometry
from appliance.geometry.volume import Volume, axis_aligned_affine
from appliance.recon.consistency import ConsistencySettings, judge, score_views
from appliance.recon.cross_view import (
    CrossViewResult,
    CrossViewSettings,
    cross_view_check,
    height_profile,
    plane_axes,
)
from appliance.recon.study import ReconSettings, reconstruct_study
from appliance.recon.types import FilmView, Reconstruction
from tests.test_recon_checks_phantom import Phantom, build_phantom, film_of, knee_geometries

THRESHOLD = ConsistencySettings().cross_view_threshold
CENTRE = np.zeros(3)


def _regions(
    recon: Reconstruction, films: dict[str, FilmView]
) -> list[tuple[str, np.ndarray, ProjectionGeometry]]:
    _, images = score_views(recon, list(films.values()))
    return [(vi.view, vi.region, vi.geometry) for vi in images]


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return build_phantom()


@pytest.fixture(scope="module")
def other() -> Phantom:
    # Another knee: smaller condyles sitting lower, a steeper plateau, the patella 12 mm higher.
    p = build_phantom(condyle_radius=11.0, condyle_drop_mm=-1.0, plateau_tilt_deg=-2.0)
    data = np.asarray(p.recon.volume.data).copy()
    labels = np.asarray(p.recon.labels.data).copy()
    patella = labels == 4
    shifted = np.roll(patella, 12, axis=2)
    data[patella] = 40.0
    labels[patella] = 0
    data[shifted] = 900.0
    labels[shifted] = 4
    aff = p.recon.volume.affine
    return Phantom(Reconstruction(Volume(data, aff), Volume(labels, aff), "other"), p.landmarks)


@pytest.fixture(scope="module")
def films(phantom: Phantom) -> dict[str, FilmView]:
    return {v: film_of(phantom.recon, g, seed=i) for i, (v, g) in enumerate(knee_geometries().items())}


def test_matched_films_pass_and_a_mismatched_lateral_fails(
    phantom: Phantom, other: Phantom, films: dict[str, FilmView]
) -> None:
    good = cross_view_check(films, _regions(phantom.recon, films), CENTRE, THRESHOLD)
    assert good is not None and good.consistent
    assert good.score >= THRESHOLD
    assert good.heights_used >= CrossViewSettings().min_heights

    lat_other = film_of(other.recon, knee_geometries()["knee_lat"], seed=5)
    mixed = {"knee_ap": films["knee_ap"], "knee_lat": lat_other}
    # The bone region as a reconstruction from the mixed pair would give it: each film's own bones.
    regions = [_regions(phantom.recon, films)[0], _regions(other.recon, {"knee_lat": lat_other})[0]]
    bad = cross_view_check(mixed, regions, CENTRE, THRESHOLD)
    assert bad is not None and not bad.consistent
    assert bad.score < good.score - 0.1


def test_lateral_film_shifted_in_height_fails(phantom: Phantom, films: dict[str, FilmView]) -> None:
    """The heights are fixed by the geometry: a lateral set-up recorded 6 mm too high is a mismatch."""
    g = films["knee_lat"].geometry
    sx, sy, sz = g.source_mm
    ox, oy, oz = g.detector_origin_mm
    wrong = replace(g, source_mm=(sx, sy, sz + 6.0), detector_origin_mm=(ox, oy, oz + 6.0))
    moved = {"knee_ap": films["knee_ap"], "knee_lat": FilmView("knee_lat", films["knee_lat"].image, wrong)}
    res = cross_view_check(moved, _regions(phantom.recon, moved), CENTRE, THRESHOLD)
    assert res is not None and not res.consistent


def test_profiles_put_a_horizontal_edge_at_its_height_in_both_views() -> None:
    """A slab of bone with its top at z = 17 mm, seen through two different perspective set-ups: the
    strongest edge (positive: the film gets brighter going down into bone) lies at 17 mm in both
    profiles."""
    n = 100
    aff = axis_aligned_affine((-49.5, -49.5, -49.5), (1.0, 1.0, 1.0))
    z = np.arange(n) - 49.5
    hu = np.full((n, n, n), 40.0, dtype=np.float32)
    labels = np.zeros((n, n, n), dtype=np.uint8)
    slab = np.zeros((n, n, n), dtype=bool)
    slab[25:75, 25:75, :] = (z < 17.0)[None, None, :]
    hu[slab] = 1200.0
    labels[slab] = 2
    recon = Reconstruction(Volume(hu, aff), Volume(labels, aff))
    geoms = {
        "knee_ap": centred_geometry(
            name="knee_ap",
            isocenter_mm=(0, 0, 0),
            beam_dir=(0, 1, 0),
            u_dir=(1, 0, 0),
            sid_mm=1000.0,
            sod_mm=900.0,
            width_mm=150.0,
            height_mm=150.0,
            pitch_mm=0.4,
        ),
        "knee_lat": centred_geometry(
            name="knee_lat",
            isocenter_mm=(0, 0, 0),
            beam_dir=(-1, 0, 0),
            u_dir=(0, -1, 0),
            sid_mm=1200.0,
            sod_mm=1000.0,
            width_mm=150.0,
            height_mm=150.0,
            pitch_mm=0.5,
        ),
    }
    films = {v: film_of(recon, g) for v, g in geoms.items()}
    for view, region, rgeom in _regions(recon, films):
        p = height_profile(films[view], region, rgeom, CENTRE)
        assert p is not None
        inside = p.bone_mm > 10.0
        edge_at = float(p.heights_mm[inside][np.argmax(p.values[inside])])
        assert edge_at == pytest.approx(17.0, abs=1.0), view


def test_verdict_joins_the_cross_view_check(phantom: Phantom, films: dict[str, FilmView]) -> None:
    per_view, _ = score_views(phantom.recon, list(films.values()))
    passing = CrossViewResult(score=0.95, threshold=THRESHOLD, heights_used=200, consistent=True)
    failing = CrossViewResult(score=0.40, threshold=THRESHOLD, heights_used=200, consistent=False)
    assert judge(per_view, 0.0, cross_view=passing).consistent
    res = judge(per_view, 0.0, cross_view=failing)
    assert res.score >= res.threshold  # the re-projection alone would have passed
    assert not res.consistent
    d = res.to_dict()
    assert d["cross_view"] == {"score": 0.4, "threshold": THRESHOLD, "heights_used": 200, "consistent": False}
    # Without a cross-view result (AP only) the object keeps exactly its old keys.
    assert "cross_view" not in judge(per_view, 0.0).to_dict()


def test_needs_both_views_and_a_horizontal_beam(phantom: Phantom, films: dict[str, FilmView]) -> None:
    regions = _regions(phantom.recon, films)
    assert cross_view_check({"knee_ap": films["knee_ap"]}, regions, CENTRE, THRESHOLD) is None
    down = centred_geometry(
        name="knee_ap",
        isocenter_mm=(0, 0, 0),
        beam_dir=(0, 0, -1),
        u_dir=(1, 0, 0),
        sid_mm=1100.0,
        sod_mm=1000.0,
        width_mm=150.0,
        height_mm=150.0,
        pitch_mm=0.5,
    )
    assert plane_axes(down) is None
    assert plane_axes(films["knee_lat"].geometry) is not None


def test_study_stores_the_cross_view_score_and_flags_a_mismatch(
    phantom: Phantom, other: Phantom, films: dict[str, FilmView], tmp_path: Path
) -> None:
    def reconstructor(views: object) -> Reconstruction:
        return phantom.recon

    settings = ReconSettings(register=False)
    out = reconstruct_study(
        films, tmp_path / "good", side="R", reconstructor=reconstructor, settings=settings
    )
    doc = json.loads(json.dumps(out.to_json()))
    cons = doc["reconstruction"]["consistency"]
    assert cons["consistent"] is True
    assert cons["cross_view"]["consistent"] is True
    assert cons["cross_view"]["threshold"] == THRESHOLD
    assert "cross_view" in out.timings_s

    # Another knee's lateral film: the reconstruction still re-projects well onto the AP film, but the two
    # films disagree on the heights; the verdict is "not consistent with the films".
    mixed = {"knee_ap": films["knee_ap"], "knee_lat": film_of(other.recon, knee_geometries()["knee_lat"], 3)}
    both = Reconstruction(
        Volume(
            np.maximum(np.asarray(phantom.recon.volume.data), np.asarray(other.recon.volume.data)),
            phantom.recon.volume.affine,
        ),
        Volume(
            np.maximum(np.asarray(phantom.recon.labels.data), np.asarray(other.recon.labels.data)),
            phantom.recon.labels.affine,
        ),
    )
    loose = ReconSettings(register=False, consistency=ConsistencySettings(threshold=-1.0))
    bad = reconstruct_study(mixed, tmp_path / "bad", side="R", reconstructor=lambda v: both, settings=loose)
    bdoc = json.loads(json.dumps(bad.to_json()))["reconstruction"]["consistency"]
    assert bdoc["cross_view"]["consistent"] is False
    assert bdoc["consistent"] is False
