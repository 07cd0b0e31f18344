"""Fuzzing the DICOM ingest (hypothesis): mutations of real DICOM bytes go through the real intake
(``intake_file``: read, classify, quarantine, SQLite store) and must end as an accepted film or a
quarantine with a specific reason (never ``internal_error``), never as an exception.

The seeds are real radiographs: RG3 (a real lower-leg CR of pydicom-data) reduced to 256 x 256 so an
example takes milliseconds, in five encodings (explicit and implicit little endian, RLE, JPEG 2000,
JPEG-LS). Mutations: truncation, byte flips, a corrupted VR or length of a real element, a transfer
syntax that lies about the encoding, and huge or zero image dimensions. The default run is short
(``max_examples`` 60 per test); ``-m slow`` runs the same properties with many more examples.
"""

from __future__ import annotations

import io
import struct
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    JPEG2000,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from appliance.config import Settings, settings_from_mapping
from appliance.ingest.errors import REASONS
from appliance.ingest.quarantine import read_records
from appliance.jobs.intake import ACCEPTED, QUARANTINED, intake_file
from appliance.jobs.store import JobStore

ENCODINGS = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless, JPEGLSLossless)
LIES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    RLELossless,
    JPEG2000,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    "1.2.840.10008.1.2.4.70",
    "1.2.3.4.5.6.7",
    "",
)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _seed_files() -> dict[str, bytes]:
    src = get_testdata_file("RG3_UNCR.dcm", download=False)
    if src is None:
        pytest.skip("pydicom-data does not provide RG3_UNCR.dcm")
    out: dict[str, bytes] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = pydicom.dcmread(str(src))
        small = full.pixel_array[::7, ::7][:256, :256].copy()  # real content, fuzz-sized
        for ts in ENCODINGS:
            ds = pydicom.dcmread(str(src))
            ds.SOPInstanceUID = generate_uid()
            ds.ImagerPixelSpacing = [1.4, 1.4]
            ds.Rows, ds.Columns = small.shape
            if ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
                ds.PixelData = small.astype(np.uint16).tobytes()
                ds.file_meta.TransferSyntaxUID = ts
            else:
                ds.PixelData = small.astype(np.uint16).tobytes()
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                ds.compress(ts, small.astype(np.uint16))
            buf = io.BytesIO()
            ds.save_as(
                buf, implicit_vr=ts == ImplicitVRLittleEndian, little_endian=True, enforce_file_format=True
            )
            out[str(ts)] = buf.getvalue()
    return out


SEEDS: dict[str, bytes] = {}


def _seeds() -> dict[str, bytes]:
    if not SEEDS:
        SEEDS.update(_seed_files())
    return SEEDS


def _settings(root: Path) -> Settings:
    return settings_from_mapping(
        {"ingest": {"incomplete_grace_seconds": 0.0}},
        base_dir=root,
        overrides={"inbox": root / "in", "outbox": root / "out", "state": root / "state"},
    )


def _meta_end(raw: bytes) -> int:
    """Offset of the dataset after the file meta group (group length of (0002,0000))."""
    assert raw[128:132] == b"DICM"
    (group_len,) = struct.unpack("<I", raw[140:144])
    return 144 + group_len


def _element_offset(raw: bytes, tag: tuple[int, int], start: int) -> int | None:
    i = raw.find(struct.pack("<HH", *tag), start)
    return None if i < 0 else i


def _intake(raw: bytes) -> tuple[str, str | None]:
    """Run the real intake on ``raw`` (final: no waiting for more data); (outcome, quarantine reason)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        s = _settings(root)
        for d in (s.paths.inbox, s.paths.store, s.paths.quarantine):
            d.mkdir(parents=True, exist_ok=True)
        path = s.paths.inbox / "film.dcm"
        path.write_bytes(raw)
        store = JobStore(s.paths.database)
        try:
            outcome = intake_file(path, s, store, final=True)
        finally:
            store.close()
        records = read_records(s.paths.quarantine)
        reason = str(records[0]["reason"]) if records else None
        return outcome, reason


def _check(raw: bytes) -> None:
    outcome, reason = _intake(raw)
    assert outcome in (ACCEPTED, QUARANTINED), outcome
    if outcome == QUARANTINED:
        assert reason in REASONS
        assert reason != "internal_error", "an unexpected exception: the reader needs a specific reason"


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    seeds = _seeds()
    raw = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
    start = _meta_end(bytes(raw))
    kind = draw(st.sampled_from(["truncate", "flip", "vr", "length", "syntax", "dims", "mixed"]))
    if kind in ("flip", "mixed"):
        for _ in range(draw(st.integers(1, 40))):
            pos = draw(st.integers(0, len(raw) - 1))
            raw[pos] = draw(st.integers(0, 255))
    if kind in ("vr", "length", "mixed"):
        tag = draw(
            st.sampled_from(
                [
                    (0x0028, 0x0010),
                    (0x0028, 0x0011),
                    (0x0028, 0x0100),
                    (0x0028, 0x0101),
                    (0x0028, 0x0004),
                    (0x0008, 0x0016),
                    (0x0020, 0x000D),
                    (0x7FE0, 0x0010),
                    (0x0018, 0x1164),
                    (0x0010, 0x0010),
                ]
            )
        )
        i = _element_offset(bytes(raw), tag, start)
        if i is not None and i + 12 <= len(raw):
            if kind == "vr":
                raw[i + 4 : i + 6] = draw(st.binary(min_size=2, max_size=2))
            else:
                raw[i + 4 : i + 8] = draw(st.binary(min_size=4, max_size=4))
    if kind == "dims":
        for tag in ((0x0028, 0x0010), (0x0028, 0x0011)):
            i = _element_offset(bytes(raw), tag, start)
            if i is None:
                continue
            value = draw(st.sampled_from([0, 1, 65535, 40000, 257]))
            # explicit VR US: tag(4) VR(2) len(2) value(2); implicit: tag(4) len(4) value(2)
            off = i + 8
            raw[off : off + 2] = struct.pack("<H", value)
    if kind == "syntax":
        meta = FileMetaDataset()
        old = pydicom.dcmread(io.BytesIO(bytes(raw)), stop_before_pixels=True).file_meta
        for elem in old:
            if elem.tag != 0x00020010:
                meta.add(elem)
        lie = draw(st.sampled_from(LIES))
        if lie:
            meta.TransferSyntaxUID = lie
        buf = io.BytesIO()
        buf.write(b"\0" * 128 + b"DICM")
        # no transfer syntax at all cannot be written the standard way: write the elements as they are
        write_file_meta_info(buf, meta, enforce_standard=bool(lie))
        raw = bytearray(buf.getvalue() + bytes(raw[start:]))
    if kind in ("truncate", "mixed"):
        raw = raw[: draw(st.integers(0, len(raw)))]
    return bytes(raw)


def test_unmutated_seeds_are_accepted() -> None:
    # the starting points are good films: a quarantine below is the mutation's doing
    for ts, raw in _seeds().items():
        assert _intake(raw) == (ACCEPTED, None), ts


@FAST
@given(raw=mutated())
def test_fuzzed_dicom_is_accepted_or_quarantined_with_a_specific_reason(raw: bytes) -> None:
    _check(raw)


@FAST
@given(raw=st.binary(max_size=4096), dicm=st.booleans())
def test_arbitrary_bytes_are_quarantined(raw: bytes, dicm: bool) -> None:
    _check((b"\0" * 128 + b"DICM" + raw) if dicm else raw)


@pytest.mark.slow
@SLOW
@given(raw=mutated())
def test_fuzzed_dicom_long_run(raw: bytes) -> None:
    _check(raw)


@pytest.mark.parametrize(
    ("rows", "cols", "reason"),
    [(1, 256, "unsupported_image"), (256, 0, "unsupported_image"), (65535, 65535, "too_large")],
)
def test_dimensions_are_judged_before_decoding(rows: int, cols: int, reason: str) -> None:
    # found by the fuzzer: a 1-row image had no vertical gradient, so the image check passed it
    raw = bytearray(_seeds()[str(ExplicitVRLittleEndian)])
    start = _meta_end(bytes(raw))
    for tag, value in (((0x0028, 0x0010), rows), ((0x0028, 0x0011), cols)):
        i = _element_offset(bytes(raw), tag, start)
        assert i is not None
        raw[i + 8 : i + 10] = struct.pack("<H", value)
    assert _intake(bytes(raw)) == (QUARANTINED, reason)


def test_a_panicking_rle_decoder_is_a_decode_failure() -> None:
    # Found by the fuzzer: pylibjpeg-rle panics on this 16-bit frame (its second segment starts inside
    # the first) with pyo3's PanicException, a BaseException that "except Exception" let through.
    from pydicom.encaps import encapsulate

    from appliance.ingest.dicom_reader import decode_pixels
    from appliance.ingest.errors import IngestError

    header = struct.pack("<16I", 2, 64, 66, *([0] * 13))
    frame = header + bytes.fromhex("439ced34e939c50e28")
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.Rows, ds.Columns = 2, 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = encapsulate([frame])
    with pytest.raises(IngestError) as e:
        decode_pixels(ds)
    assert e.value.reason == "pixel_decode_failed"


def test_a_native_panic_anywhere_in_intake_quarantines_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-file guard also catches BaseException subclasses other than exit/interrupt (a Rust
    extension's panic), so one file cannot stop the watcher."""
    import appliance.jobs.intake as intake

    class Panic(BaseException):  # stands in for pyo3_runtime.PanicException (not importable by name)
        pass

    def boom(*_: object, **__: object) -> None:
        raise Panic("index out of bounds")

    monkeypatch.setattr(intake, "read_film", boom)
    assert _intake(_seeds()[str(ExplicitVRLittleEndian)]) == (QUARANTINED, "internal_error")
