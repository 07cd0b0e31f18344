"""Ingest of single files: real radiographs from pydicom-data, simulated films, damaged files, PNG.

Every file goes through the real reader (pydicom with the installed decoders, Pillow for PNG).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.data import get_testdata_file

from appliance.config import Settings, settings_from_mapping
from appliance.ingest.classify import FilmFacts, classify, edge_anisotropy
from appliance.ingest.errors import REASONS, IngestError
from appliance.ingest.reader import load_pixels, read_film
from export.simulator.case import CaseOptions, generate_case

SEED = 900900


def _settings(tmp: Path, **sections: dict[str, object]) -> Settings:
    return settings_from_mapping(
        dict(sections),
        base_dir=tmp,
        overrides={"inbox": tmp / "in", "outbox": tmp / "out", "state": tmp / "state"},
    )


def _real(name: str) -> Path:
    # download=False: the files ship inside the pydicom-data package; tests never touch the network.
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom-data does not provide {name}")
    return Path(str(path))


@pytest.fixture(scope="session")
def sim_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    opts = CaseOptions(
        views=("longleg", "knee-ap", "knee-lat"),
        write_ct=False,
        longleg_pitch=1.0,
        knee_pitch=0.8,
        leg_spacing=2.5,
        knee_spacing=1.25,
    )
    return generate_case(SEED, tmp_path_factory.mktemp("sim"), opts)


@pytest.mark.parametrize("name", ["RG3_UNCR.dcm", "RG3_UNCI.dcm", "RG3_J2KR.dcm", "RG3_J2KI.dcm"])
def test_real_lower_leg_without_spacing_is_quarantined_by_default(tmp_path: Path, name: str) -> None:
    with pytest.raises(IngestError) as info:
        read_film(_real(name), _settings(tmp_path))
    assert info.value.reason == "no_spacing"


@pytest.mark.parametrize("name", ["RG3_UNCR.dcm", "RG3_J2KR.dcm", "RG3_J2KI.dcm"])
def test_real_lower_leg_with_default_spacing_is_accepted_and_flagged(tmp_path: Path, name: str) -> None:
    s = _settings(tmp_path, ingest={"missing_spacing": "default", "default_spacing_mm": 0.2})
    film = read_film(_real(name), s)
    assert film.view == "knee_ap"  # AP, EXTREMITY, square: the knee AP rule
    assert film.side == "R"  # from (0020,0060) Laterality: RG3 has no ImageLaterality
    assert film.spacing_mm == (0.2, 0.2)
    assert film.spacing_flag == "default_spacing"
    assert film.photometric == "MONOCHROME1"
    assert (film.rows, film.columns, film.bits_stored) == (1760, 1760, 10)


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG1_J2KI.dcm"])
def test_real_chest_is_not_a_lower_limb(tmp_path: Path, name: str) -> None:
    s = _settings(tmp_path, ingest={"missing_spacing": "default"})
    with pytest.raises(IngestError) as info:
        read_film(_real(name), s)
    assert info.value.reason == "not_lower_limb"


def test_real_chest_without_tags_is_rejected_by_the_image_check(tmp_path: Path) -> None:
    """With BodyPartExamined and descriptions removed and the view rules matching anything, only the
    image check is left to reject the chest film; the real lower leg still passes it."""
    ds = pydicom.dcmread(_real("RG1_UNCR.dcm"))
    for kw in ("BodyPartExamined", "StudyDescription", "SeriesDescription", "ProtocolName"):
        if kw in ds:
            delattr(ds, kw)
    ds.ImagerPixelSpacing = [0.15, 0.15]
    path = tmp_path / "chest_untagged.dcm"
    ds.save_as(path)
    s = _settings(tmp_path, classify={"rules": [{"view": "knee_ap"}]})
    with pytest.raises(IngestError) as info:
        read_film(path, s)
    assert info.value.reason == "not_lower_limb"
    assert "anisotropy" in str(info.value)
    leg = pydicom.dcmread(_real("RG3_UNCR.dcm"))
    assert edge_anisotropy(leg.pixel_array) > 2.0


def test_simulated_study_views_sides_and_spacing(tmp_path: Path, sim_case: Path) -> None:
    s = _settings(tmp_path)
    got = {}
    for name in ("longleg_ap", "knee_ap", "knee_lat"):
        film = read_film(sim_case / f"{name}.dcm", s)
        ds = pydicom.dcmread(sim_case / f"{name}.dcm")
        mag = float(ds.EstimatedRadiographicMagnificationFactor)
        assert film.spacing_mm[0] == pytest.approx(float(ds.ImagerPixelSpacing[0]) / mag)
        assert film.spacing_flag == ""
        got[name] = (film.view, film.side)
    assert got == {
        "longleg_ap": ("longleg_ap", "R"),
        "knee_ap": ("knee_ap", "R"),
        "knee_lat": ("knee_lat", "R"),
    }


def test_calibrated_pixel_spacing_wins_and_monochrome1_8bit_compressed(
    tmp_path: Path, sim_case: Path
) -> None:
    """A knee AP rewritten as 8-bit MONOCHROME1, PixelSpacing calibrated, JPEG 2000 lossless."""
    from pydicom.uid import JPEG2000Lossless

    ds = pydicom.dcmread(sim_case / "knee_ap.dcm")
    px = ds.pixel_array.astype(np.float64)
    px8 = (255 - np.round(255 * (px - px.min()) / (np.ptp(px) or 1))).astype(np.uint8)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = px8.tobytes()
    ds.PixelSpacing = [0.5, 0.5]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    try:
        ds.compress(JPEG2000Lossless, px8)
    except Exception as exc:  # no encoder installed: the decoder is what matters; keep native
        pytest.skip(f"no JPEG 2000 encoder: {exc}")
    path = tmp_path / "knee_j2k.dcm"
    ds.save_as(path)
    film = read_film(path, _settings(tmp_path))
    assert film.view == "knee_ap"
    assert film.spacing_mm == (0.5, 0.5)
    assert film.spacing_source.startswith("PixelSpacing")
    assert (film.photometric, film.bits_stored) == ("MONOCHROME1", 8)
    assert film.transfer_syntax == JPEG2000Lossless


@pytest.mark.parametrize(
    ("cut", "reason"),
    [(0, "truncated"), (60, "not_dicom"), (2000, "truncated"), (0.5, "truncated"), (-10, "truncated")],
)
def test_truncated_files(tmp_path: Path, sim_case: Path, cut: float, reason: str) -> None:
    data = (sim_case / "knee_ap.dcm").read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else (cut if cut >= 0 else len(data) + cut)
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[:n])
    with pytest.raises(IngestError) as info:
        read_film(path, _settings(tmp_path))
    assert info.value.reason == reason


def test_not_dicom_and_non_image_dicom(tmp_path: Path, sim_case: Path) -> None:
    txt = tmp_path / "notes.txt"
    txt.write_text("not a film")
    with pytest.raises(IngestError) as info:
        read_film(txt, _settings(tmp_path))
    assert info.value.reason == "not_dicom"
    ds = pydicom.dcmread(sim_case / "knee_ap.dcm")
    del ds.PixelData
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"  # an SR has no pixels
    path = tmp_path / "sr.dcm"
    ds.save_as(path)
    with pytest.raises(IngestError) as info:
        read_film(path, _settings(tmp_path))
    assert info.value.reason == "no_pixel_data"


def test_png_with_sidecar(tmp_path: Path, sim_case: Path) -> None:
    arr = pydicom.dcmread(sim_case / "longleg_ap.dcm").pixel_array
    png = tmp_path / "leg.png"
    Image.fromarray((arr >> 8).astype(np.uint8)).save(png)
    s = _settings(tmp_path)
    with pytest.raises(IngestError) as info:
        read_film(png, s)
    assert info.value.reason == "bad_sidecar"
    (tmp_path / "leg.png.json").write_text(json.dumps({"view": "longleg_ap", "side": "L", "study": "s1"}))
    with pytest.raises(IngestError) as info:
        read_film(png, s)
    assert info.value.reason == "no_spacing"
    (tmp_path / "leg.png.json").write_text(
        json.dumps({"view": "longleg_ap", "side": "L", "study": "s1", "spacing_mm": [1.0, 1.0]})
    )
    film = read_film(png, s)
    assert (film.view, film.side, film.spacing_mm, film.bits_stored) == ("longleg_ap", "L", (1.0, 1.0), 8)


def test_jpeg_with_sidecar_is_read_as_shown(tmp_path: Path, sim_case: Path) -> None:
    """8-bit JPEG exports are accepted; a JPEG stored turned with an EXIF orientation is read as shown."""
    arr = (pydicom.dcmread(sim_case / "longleg_ap.dcm").pixel_array >> 8).astype(np.uint8)
    s = _settings(tmp_path)
    side = {"view": "longleg_ap", "side": "R", "spacing_mm": 1.8}
    plain = tmp_path / "leg.jpg"
    Image.fromarray(arr).save(plain, quality=90)
    (tmp_path / "leg.json").write_text(json.dumps(side))
    film = read_film(plain, s)
    assert (film.kind, film.rows, film.columns, film.spacing_mm) == ("image", *arr.shape, (1.8, 1.8))
    turned = tmp_path / "turned.jpeg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to show": the stored pixels are the picture turned 90 CCW
    Image.fromarray(np.rot90(arr)).save(turned, quality=90, exif=exif)
    (tmp_path / "turned.json").write_text(json.dumps(side))
    film = read_film(turned, s)
    assert (film.rows, film.columns) == arr.shape
    shown = load_pixels(turned)
    assert np.abs(shown - load_pixels(plain)).mean() < 3.0  # the same picture, up to JPEG noise


def test_rules_are_data(tmp_path: Path) -> None:
    """The same film changes view when only the config's rules change."""
    facts = FilmFacts("DX", "KNEE", "AP", "L", 2000, 1000, 0.2)  # 400 mm tall, aspect 2
    s = _settings(tmp_path)
    assert classify(facts, s.classify) == "knee_ap"
    custom = _settings(
        tmp_path,
        classify={"rules": [{"view": "longleg_ap", "body_part": ["KNEE"], "min_height_mm": 300.0}]},
    )
    assert classify(facts, custom.classify) == "longleg_ap"
    with pytest.raises(IngestError) as info:
        classify(FilmFacts("MR", "KNEE", "AP", "L", 256, 256, 1.0), s.classify)
    assert info.value.reason == "unsupported_view"
    with pytest.raises(IngestError) as info:
        classify(FilmFacts("CR", "CHEST", "PA", "", 2000, 2000, 0.2), s.classify)
    assert info.value.reason == "not_lower_limb"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_dicom_never_raises_anything_but_ingest_error(
    tmp_path: Path, sim_case: Path, data: st.DataObject
) -> None:
    raw = bytearray((sim_case / "knee_lat.dcm").read_bytes()[:4000])
    for _ in range(data.draw(st.integers(1, 20))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    path = tmp_path / "fuzz.dcm"
    path.write_bytes(bytes(raw[:cut]))
    try:
        read_film(path, _settings(tmp_path))
    except IngestError as exc:
        assert exc.reason in REASONS


def test_strong_straight_borders_do_not_outvote_the_leg() -> None:
    """A leg-like picture: faint vertical bone edges on soft tissue that darkens from thigh to ankle, with
    bright padding above and below the collimated field. Summed gradient magnitudes (the first version of
    the check) read it as 1.17, below the threshold; counting strong-edge pixels reads it as vertical. The
    same picture turned by 90 degrees, and rib-like horizontal bands, are not."""
    img = np.zeros((1200, 400), dtype=np.float32)
    img[100:1100, 60:340] = np.linspace(1.0, 0.1, 1000, dtype=np.float32)[:, None] ** 2
    img[100:1100, 150:180] += 0.05  # two long bones
    img[100:1100, 220:240] += 0.05
    img[1100:, :] = img[:100, :] = 1.0
    assert edge_anisotropy(img) > 2.0
    assert edge_anisotropy(np.rot90(img).copy()) < 1.0
    ribs = np.zeros((800, 800), dtype=np.float32)
    for r in range(60, 760, 70):
        ribs[r : r + 25, 100:700] = 0.8
    assert edge_anisotropy(ribs) < 1.2
