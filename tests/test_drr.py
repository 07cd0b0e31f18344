"""DRR projector against closed forms: spheres, cylinders, boxes, and the projection matrix."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy.special import erfc

from appliance.errors import GeometryError, InputError
from appliance.geometry.drr import line_integrals, line_integrals_multi, render_with_stats
from appliance.geometry.projection import ProjectionGeometry, centred_geometry
from appliance.geometry.volume import Volume, axis_aligned_affine

Array = NDArray[np.float64]


# --- helpers --------------------------------------------------------------------------------------
def rotation(ax: float, ay: float, az: float) -> Array:
    """Rotation about x, then y, then z (radians)."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def grid_around(
    centre: Array, half_extent_mm: float, spacing: Array, rot: Array
) -> tuple[tuple[int, ...], Array]:
    """Shape and affine of a (possibly rotated, anisotropic) grid covering a cube around ``centre``."""
    shape = tuple(int(np.ceil(2 * half_extent_mm / s)) + 1 for s in spacing)
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(spacing)
    aff[:3, 3] = centre - aff[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return shape, aff


def smooth_occupancy(
    shape: tuple[int, ...], aff: Array, signed_distance: Callable[[Array], Array]
) -> NDArray[np.float32]:
    """Fractional occupancy of a solid blurred by a Gaussian of half the largest voxel size.

    Near a locally flat surface the Gaussian-weighted fraction inside is erfc(sd / (sqrt(2) sigma)) / 2;
    it keeps the surface where it is (symmetric profile) and is smooth enough not to alias on the grid.
    Its curvature bias on the chord is ~ sigma_total^2 / 2 * (c'' + c'/d) (a 2D Laplacian of the
    projection), about 0.2 % at d = 0.9 R for the sizes below."""
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1)
    centres = idx.reshape(-1, 3) @ aff[:3, :3].T + aff[:3, 3]
    sigma = 0.5 * float(np.linalg.norm(aff[:3, :3], axis=0).max())
    occ = 0.5 * erfc(signed_distance(centres) / (np.sqrt(2.0) * sigma))
    return occ.reshape(shape).astype(np.float32)


def pixel_rays(geo: ProjectionGeometry) -> tuple[Array, Array]:
    """Source and (rows, cols, 3) pixel centres in mm."""
    rows, cols = np.mgrid[0 : geo.rows, 0 : geo.columns]
    return geo.source, geo.pixel_to_mm(cols, rows)


def line_distance(src: Array, pix: Array, point: Array) -> Array:
    d = pix - src
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    w = point - src
    along = w @ np.moveaxis(d, -1, 0).reshape(3, -1)
    perp = w[None, :] - along[:, None] * d.reshape(-1, 3)
    return np.linalg.norm(perp, axis=-1).reshape(pix.shape[:-1])


def geometry_towards(
    centre: Array, beam: Array, up: Array, *, sid: float, sod: float, n: int, pitch: float
) -> ProjectionGeometry:
    return centred_geometry(
        name="test",
        isocenter_mm=centre,
        beam_dir=beam,
        u_dir=up,
        sid_mm=sid,
        sod_mm=sod,
        width_mm=n * pitch,
        height_mm=n * pitch,
        pitch_mm=pitch,
    )


# --- (a) sphere ------------------------------------------------------------------------------------
SPHERE_CASES = [
    # (rotation, spacing, beam, sid, sod): an axis-aligned grid, an oblique anisotropic grid seen
    # obliquely, and a strongly diverging beam along a grid axis.
    ((0.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.0, 1.0, 0.0), 1000.0, 800.0),
    ((0.3, -0.5, 0.8), (0.5, 0.56, 0.52), (1.0, 0.3, -0.2), 1100.0, 700.0),
    ((0.0, 0.0, 0.0), (0.42, 0.56, 0.49), (0.0, 0.0, 1.0), 400.0, 200.0),
]


@pytest.mark.parametrize("case", SPHERE_CASES)
def test_sphere_chords_match_closed_form(case: tuple) -> None:
    angles, spacing, beam, sid, sod = case
    centre = np.array([12.0, -30.0, 55.0])
    radius, mu = 30.0, 0.021  # mu ~ water at 60 keV, 1/mm (NIST XCOM: 0.206 cm^2/g)
    shape, aff = grid_around(centre, radius + 4.0, np.array(spacing), rotation(*angles))
    occ = smooth_occupancy(shape, aff, lambda p: np.linalg.norm(p - centre, axis=-1) - radius)
    vol = Volume(data=occ * np.float32(mu), affine=aff)
    geo = geometry_towards(
        centre, np.array(beam), np.array([0.3, 0.0, 1.0]), sid=sid, sod=sod, n=40, pitch=2.0
    )
    img = line_integrals(vol, geo)
    src, pix = pixel_rays(geo)
    d = line_distance(src, pix, centre)
    expected = 2.0 * np.sqrt(np.clip(radius**2 - d**2, 0, None)) * mu
    sel = d < 0.9 * radius
    assert sel.sum() > 100
    rel = np.abs(img[sel] - expected[sel]) / expected[sel]
    assert rel.max() < 0.005, f"max relative error {rel.max():.4f}"
    # Rays that clear the sphere by two voxels see nothing.
    outside = d > radius + 4 * max(spacing)
    assert np.abs(img[outside]).max(initial=0.0) < 1e-6


# --- (b) cylinder ----------------------------------------------------------------------------------
def cylinder_chord(
    src: Array, pix: Array, c: Array, axis: Array, r: float, h: float
) -> tuple[Array, Array, Array]:
    """Exact chord (mm) through a finite cylinder, plus entry and exit points, for rays src -> pix."""
    d = (pix - src).reshape(-1, 3)
    w = src - c
    da = d @ axis
    wa = w @ axis
    dp = d - da[:, None] * axis
    wp = w - wa * axis
    qa = np.einsum("ij,ij->i", dp, dp)
    qb = 2 * dp @ wp
    qc = wp @ wp - r * r
    disc = qb * qb - 4 * qa * qc
    hit = disc > 0
    sq = np.sqrt(np.where(hit, disc, 0))
    t_side0 = (-qb - sq) / (2 * qa)
    t_side1 = (-qb + sq) / (2 * qa)
    with np.errstate(divide="ignore"):
        tc0 = (-h - wa) / da
        tc1 = (h - wa) / da
    t_cap0, t_cap1 = np.minimum(tc0, tc1), np.maximum(tc0, tc1)
    t0 = np.maximum(np.maximum(t_side0, t_cap0), 0.0)
    t1 = np.minimum(np.minimum(t_side1, t_cap1), 1.0)
    length = np.linalg.norm(d, axis=1)
    chord = np.where(hit & (t1 > t0), (t1 - t0) * length, 0.0)
    return chord.reshape(pix.shape[:-1]), (src + t0[:, None] * d), (src + t1[:, None] * d)


def rim_distance(p: Array, c: Array, axis: Array, r: float, h: float) -> Array:
    """Distance of points from the two rim circles of a finite cylinder."""
    w = p - c
    a = w @ axis
    radial = np.linalg.norm(w - a[:, None] * axis, axis=1)
    return np.minimum(np.hypot(radial - r, a - h), np.hypot(radial - r, a + h))


def incidence_cos(p: Array, direction: Array, c: Array, axis: Array, h: float) -> Array:
    """|cos| between rays and the cylinder's surface normal at points p on its surface."""
    w = p - c
    a = w @ axis
    radial = w - a[:, None] * axis
    normal = radial / np.linalg.norm(radial, axis=1, keepdims=True)
    on_cap = np.abs(np.abs(a) - h) < 1e-6
    normal[on_cap] = axis
    return np.abs(np.einsum("ij,ij->i", normal, direction))


@pytest.mark.parametrize(
    ("beam", "angles"),
    [((1.0, 0.0, 0.0), (0.0, 0.0, 0.0)), ((0.4, 1.0, 0.6), (0.2, 0.4, -0.3))],
)
def test_cylinder_chords_match_closed_form(beam: tuple, angles: tuple) -> None:
    c = np.array([-5.0, 8.0, 20.0])
    axis = np.array([0.2, 0.5, 1.0])
    axis /= np.linalg.norm(axis)
    r, h, mu = 24.0, 30.0, 0.05  # mu ~ cortical bone, 1/mm (order of magnitude, NIST XCOM)

    def signed_distance(p: Array) -> Array:
        w = p - c
        a = w @ axis
        radial = np.linalg.norm(w - a[:, None] * axis, axis=1)
        return np.maximum(radial - r, np.abs(a) - h)

    shape, aff = grid_around(c, np.hypot(r, h) + 3.0, np.array([0.5, 0.45, 0.55]), rotation(*angles))
    vol = Volume(data=smooth_occupancy(shape, aff, signed_distance) * np.float32(mu), affine=aff)
    geo = geometry_towards(c, np.array(beam), np.array([0.0, 0.2, 1.0]), sid=1000, sod=750, n=48, pitch=2.0)
    img = line_integrals(vol, geo)
    src, pix = pixel_rays(geo)
    chord, p_in, p_out = cylinder_chord(src, pix, c, axis, r, h)
    # Like d < 0.9 R for the sphere: keep rays that cross the surface at least ~26 degrees from
    # tangent (|cos| >= 0.436) where they enter and leave, and that stay clear of the rim edges.
    # Near-tangent crossings magnify any sub-voxel edge error by 1 / |cos|.
    direction = (pix - src).reshape(-1, 3)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    sel = (
        (chord.ravel() > 10.0)
        & (incidence_cos(p_in, direction, c, axis, h) > 0.436)
        & (incidence_cos(p_out, direction, c, axis, h) > 0.436)
        & (rim_distance(p_in, c, axis, r, h) > 3.0)
        & (rim_distance(p_out, c, axis, r, h) > 3.0)
    )
    assert sel.sum() > 100
    expected = chord.ravel()[sel] * mu
    rel = np.abs(img.ravel()[sel] - expected) / expected
    assert rel.max() < 0.005, f"max relative error {rel.max():.4f}"
    clear, _, _ = cylinder_chord(src, pix, c, axis, r + 2.0, h + 2.0)  # misses by > 2 mm
    assert (clear == 0).sum() > 100
    assert np.abs(img[clear == 0]).max() < 1e-6


# --- (c) projection matrix agrees with the renderer ------------------------------------------------
def test_blob_centroids_land_on_projected_points() -> None:
    rot = rotation(0.2, -0.3, 0.5)
    spacing = np.array([0.5, 0.45, 0.55])
    centre = np.array([20.0, 10.0, -40.0])
    shape, aff = grid_around(centre, 16.0, spacing, rot)
    geo = geometry_towards(
        centre, np.array([0.3, 1.0, -0.2]), np.array([1.0, 0.0, 0.1]), sid=600, sod=400, n=400, pitch=0.12
    )
    # Offsets (along u, along v, towards the source) keep the blob images apart on the detector.
    offsets = np.array([[-8.3, -7.1, 5.2], [7.7, -6.4, -4.9], [6.2, 8.9, 3.1], [-5.5, 7.3, -8.8]])
    blobs = centre + offsets @ np.vstack([geo.u, geo.v, geo.normal])
    sigma = 0.9  # mm: about two voxels, so the sampled Gaussian keeps its centre exactly
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1)
    pts = idx @ aff[:3, :3].T + aff[:3, 3]
    data = np.zeros(shape)
    for b in blobs:
        data += np.exp(-np.sum((pts - b) ** 2, axis=-1) / (2 * sigma**2))
    vol = Volume(data=data.astype(np.float32), affine=aff)
    img = line_integrals(vol, geo).astype(np.float64)
    expected = geo.project(blobs)
    sig_px = sigma * geo.magnification_at(centre) / geo.pitch_u_mm
    half = int(5 * sig_px)
    for col, row in expected:
        c0, r0 = round(col), round(row)
        win = img[r0 - half : r0 + half + 1, c0 - half : c0 + half + 1]
        rr, cc = np.mgrid[r0 - half : r0 + half + 1, c0 - half : c0 + half + 1]
        total = win.sum()
        got = np.array([(win * cc).sum() / total, (win * rr).sum() / total])
        assert np.hypot(*(got - (col, row))) < 0.1, f"centroid {got} vs projected {(col, row)}"


# --- (d) constant volume: path length through the voxel box ----------------------------------------
def box_path_length(src: Array, pix: Array, aff: Array, shape: tuple[int, ...]) -> Array:
    """Cyrus-Beck clip of segments src -> pix against the voxel box, done in mm with face planes."""
    lin, t = aff[:3, :3], aff[:3, 3]
    lo = lin @ np.full(3, -0.5) + t
    hi = lin @ (np.array(shape) - 0.5) + t
    d = (pix - src).reshape(-1, 3)
    t0 = np.zeros(len(d))
    t1 = np.ones(len(d))
    for a in range(3):
        e1, e2 = lin[:, (a + 1) % 3], lin[:, (a + 2) % 3]
        normal = np.cross(e1, e2)
        normal *= np.sign(normal @ lin[:, a])  # outward at the 'hi' face
        for point, sign in ((hi, 1.0), (lo, -1.0)):
            n = sign * normal
            num = (point - src) @ n
            den = d @ n
            with np.errstate(divide="ignore", invalid="ignore"):
                tt = num / den
            t1 = np.where(den > 0, np.minimum(t1, tt), t1)
            t0 = np.where(den < 0, np.maximum(t0, tt), t0)
            t1 = np.where((den == 0) & (num < 0), -1.0, t1)
    return (np.clip(t1 - t0, 0, None) * np.linalg.norm(d, axis=1)).reshape(pix.shape[:-1])


@pytest.mark.parametrize(
    ("angles", "spacing", "sod"),
    [
        ((0, 0, 0), (1.0, 1.0, 1.0), 500.0),
        ((0.4, 0.1, -0.7), (0.6, 1.3, 0.9), 300.0),
        ((0.1, 0.2, 0.3), (1, 1, 1), 15.0),
    ],
)
def test_constant_volume_gives_box_path_length(angles: tuple, spacing: tuple, sod: float) -> None:
    # sod=15 puts the source inside the volume: the integral then starts at the source.
    shape = (23, 31, 17)
    centre = np.array([3.0, -7.0, 11.0])
    aff = np.eye(4)
    aff[:3, :3] = rotation(*angles) @ np.diag(spacing)
    aff[:3, 3] = centre - aff[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    vol = Volume(data=np.full(shape, 2.5, dtype=np.float32), affine=aff)
    geo = geometry_towards(
        centre, np.array([0.2, 1.0, 0.1]), np.array([1.0, 0, 0]), sid=700, sod=sod, n=60, pitch=1.5
    )
    src, pix = pixel_rays(geo)
    expected = 2.5 * box_path_length(src, pix, aff, shape)
    for step in (None, 0.4):
        img = line_integrals(vol, geo, step_mm=step)
        assert (expected > 0).sum() > 400
        np.testing.assert_allclose(img, expected, rtol=2e-5, atol=2e-4)


# --- integrators, layouts, channels ------------------------------------------------------------------
def smooth_random_volume(shape: tuple[int, ...], seed: int) -> NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    x = rng.random(shape)
    for _ in range(3):  # cheap low-pass so both integrators resolve the field
        for axis in range(3):
            x = (np.roll(x, 1, axis) + 2 * x + np.roll(x, -1, axis)) / 4
    return x.astype(np.float32)


def test_joseph_matches_fine_uniform_steps_on_smooth_data() -> None:
    shape = (40, 36, 44)
    aff = np.eye(4)
    aff[:3, :3] = rotation(0.3, 0.2, -0.4) @ np.diag([0.9, 1.1, 1.0])
    vol = Volume(data=smooth_random_volume(shape, 1), affine=aff)
    centre = vol.index_to_mm((np.array(shape) - 1) / 2)[0]
    geo = geometry_towards(
        centre, np.array([1.0, 0.5, 0.2]), np.array([0, 0, 1.0]), sid=500, sod=300, n=50, pitch=1.5
    )
    joseph = line_integrals(vol, geo)
    fine = line_integrals(vol, geo, step_mm=0.05)
    hit = fine > 1.0
    assert hit.sum() > 1000
    rel = np.abs(joseph[hit] - fine[hit]) / fine[hit]
    assert np.median(rel) < 1e-3 and rel.max() < 2e-2


def test_axis_order_and_memory_reordering_do_not_change_the_image() -> None:
    shape = (30, 26, 22)
    data = smooth_random_volume(shape, 2)
    aff = np.eye(4)
    aff[:3, :3] = rotation(0.1, 0.5, 0.2) @ np.diag([1.0, 0.8, 1.2])
    geo = geometry_towards(
        np.array([14.0, 10.0, 12.0]),
        np.array([0.1, 0.3, 1.0]),
        np.array([1.0, 0, 0]),
        sid=400,
        sod=250,
        n=40,
        pitch=1.2,
    )
    ref, _ = render_with_stats(data, aff, geo, reorder=False)
    again, _ = render_with_stats(data, aff, geo, reorder=True)
    np.testing.assert_allclose(again, ref, rtol=1e-5, atol=1e-5)
    perm = (2, 0, 1)
    aff_p = aff.copy()
    aff_p[:3, :3] = aff[:3, list(perm)]
    permuted = line_integrals(Volume(data=np.transpose(data, perm), affine=aff_p), geo)
    np.testing.assert_allclose(permuted, ref[0], rtol=1e-5, atol=1e-5)
    flipped_aff = aff.copy()  # reversing an index axis (negative spacing) describes the same volume
    flipped_aff[:3, 0] = -aff[:3, 0]
    flipped_aff[:3, 3] = aff[:3, 3] + aff[:3, 0] * (shape[0] - 1)
    flipped = line_integrals(Volume(data=data[::-1], affine=flipped_aff), geo)
    np.testing.assert_allclose(flipped, ref[0], rtol=1e-5, atol=1e-5)


def test_multi_channel_equals_separate_renders_and_is_linear() -> None:
    shape = (24, 28, 20)
    water, bone = smooth_random_volume(shape, 3), smooth_random_volume(shape, 4)
    aff = axis_aligned_affine((-10.0, -12.0, -9.0), (0.9, 0.9, 1.0))
    geo = geometry_towards(
        np.zeros(3), np.array([0, 1.0, 0]), np.array([1.0, 0, 0]), sid=300, sod=200, n=32, pitch=1.0
    )
    stacked = line_integrals_multi(np.stack([water, bone]), aff, geo)
    listed = line_integrals_multi([water, bone.astype(np.float64)], aff, geo)
    assert stacked.shape == (2, geo.rows, geo.columns) and stacked.dtype == np.float32
    np.testing.assert_array_equal(stacked, listed)
    np.testing.assert_allclose(stacked[0], line_integrals(Volume(water, aff), geo), rtol=1e-6)
    np.testing.assert_allclose(stacked[1], line_integrals(Volume(bone, aff), geo), rtol=1e-6)
    combo = line_integrals(Volume(2 * water - 3 * bone, aff), geo)
    np.testing.assert_allclose(combo, 2 * stacked[0] - 3 * stacked[1], rtol=1e-4, atol=1e-4)
    fine = line_integrals_multi([water, bone], aff, geo, step_mm=0.3, threads=1)
    assert fine.shape == stacked.shape


def test_single_thread_gives_the_same_image() -> None:
    shape = (20, 20, 20)
    vol = Volume(smooth_random_volume(shape, 5), axis_aligned_affine((0, 0, 0), (1, 1, 1)))
    geo = geometry_towards(
        np.full(3, 9.5), np.array([0, 1.0, 0]), np.array([1.0, 0, 0]), sid=200, sod=100, n=24, pitch=1.0
    )
    np.testing.assert_array_equal(line_integrals(vol, geo, threads=1), line_integrals(vol, geo))


def test_thin_volumes_and_missing_rays() -> None:
    # One voxel thick along the beam: the slab is 1 voxel (2 mm) deep, border values repeat in it.
    vol = Volume(np.ones((10, 1, 10), dtype=np.float32), axis_aligned_affine((0, 0, 0), (1, 2, 1)))
    geo = geometry_towards(
        np.array([4.5, 0, 4.5]),
        np.array([0, 1.0, 0]),
        np.array([1.0, 0, 0]),
        sid=2000,
        sod=1000,
        n=8,
        pitch=1.0,
    )
    img = line_integrals(vol, geo)
    np.testing.assert_allclose(img, 2.0, rtol=1e-5)
    away = geometry_towards(
        np.array([500.0, 0, 0]),
        np.array([0, 1.0, 0]),
        np.array([1.0, 0, 0]),
        sid=2000,
        sod=1000,
        n=8,
        pitch=1.0,
    )
    assert not line_integrals(vol, away).any()


def test_bad_inputs_raise_project_errors() -> None:
    aff = np.eye(4)
    geo = geometry_towards(
        np.zeros(3), np.array([0, 1.0, 0]), np.array([1.0, 0, 0]), sid=200, sod=100, n=4, pitch=1.0
    )
    data = np.ones((4, 4, 4), dtype=np.float32)
    with pytest.raises(InputError):
        line_integrals_multi(np.ones((4, 4)), aff, geo)
    with pytest.raises(InputError):
        line_integrals_multi([data, np.ones((4, 4, 5))], aff, geo)
    bad = data.copy()
    bad[1, 1, 1] = np.nan
    with pytest.raises(InputError):
        line_integrals_multi(bad, aff, geo)
    with pytest.raises(InputError):
        line_integrals(Volume(data, aff), geo, step_mm=0.0)
    with pytest.raises(InputError):
        line_integrals(Volume(data, aff), geo, threads=0)
    with pytest.raises(GeometryError):
        line_integrals_multi(data, np.zeros((4, 4)), geo)
