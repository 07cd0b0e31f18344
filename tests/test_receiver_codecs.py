"""Real radiographs in the compressed transfer syntaxes a clinic sends, through the real receiver and the
real intake: RG3 (a real lower-leg CR of pydicom-data, MONOCHROME1, 10 bit, no pixel spacing) re-encoded
here as JPEG-LS lossless / near-lossless (pyjpegls), RLE (pydicom) and 8-bit JPEG baseline (Pillow), and
RG1 (a real chest CR) as JPEG 2000. Every file must get its right outcome: the leg accepted with the
configured default spacing and flagged, the chest rejected as not a lower limb; a syntax without a
decoder is quarantined with a reason that says so.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE

from appliance.config import ReceiverSettings, Settings, settings_from_mapping
from appliance.ingest.errors import IngestError
from appliance.ingest.quarantine import read_records
from appliance.ingest.reader import read_film
from appliance.jobs.service import Service
from appliance.receiver.scp import SUCCESS, TRANSFER_SYNTAXES, DicomReceiver

CALLER = "CRSTATION"


def _real(name: str) -> Path:
    path = get_testdata_file(name, download=False)  # shipped in pydicom-data / pydicom: no network
    if path is None:
        pytest.skip(f"{name} is not installed")
    return Path(str(path))


def _reencoded(tmp: Path, syntax: str) -> Path:
    """RG3 with a new SOP instance UID, re-encoded in ``syntax``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(_real("RG3_UNCR.dcm"))
    pixels = ds.pixel_array
    ds.SOPInstanceUID = generate_uid()
    if syntax == JPEGBaseline8Bit:
        eight = (pixels >> 2).astype(np.uint8)  # 10 bit -> 8 bit
        buf = io.BytesIO()
        Image.fromarray(eight).save(buf, format="JPEG", quality=92)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    elif syntax == JPEGLSNearLossless:
        ds.compress(syntax, pixels, jls_error=2)
    else:
        ds.compress(syntax, pixels)
    path = tmp / f"rg3-{syntax}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[DicomReceiver]:
    settings = ReceiverSettings(
        enabled=True,
        bind_address="127.0.0.1",
        port=0,
        allowed_calling_aets=(CALLER,),
        allowed_peers=("127.0.0.0/8",),
    )
    with DicomReceiver(settings, tmp_path / "in") as rx:
        yield rx


def _send(port: int, paths: list[Path]) -> list[int]:
    ae = AE(ae_title=CALLER)
    for ts in TRANSFER_SYNTAXES:
        ae.add_requested_context(ComputedRadiographyImageStorage, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title="XR3D")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(pydicom.dcmread(p)).Status) for p in paths]
    finally:
        assoc.release()


def _settings(tmp: Path, missing_spacing: str) -> Settings:
    return settings_from_mapping(
        {"ingest": {"missing_spacing": missing_spacing, "default_spacing_mm": 0.2}},
        base_dir=tmp,
        overrides={"inbox": tmp / "in", "outbox": tmp / "out", "state": tmp / "state"},
    )


@pytest.mark.parametrize("syntax", [JPEGLSLossless, JPEGLSNearLossless, RLELossless, JPEGBaseline8Bit])
def test_compressed_real_leg_is_received_and_accepted_with_default_spacing(
    tmp_path: Path, receiver: DicomReceiver, syntax: str
) -> None:
    src = _reencoded(tmp_path, syntax)
    assert _send(receiver.port, [src]) == [SUCCESS]
    received = sorted((tmp_path / "in" / "received").iterdir())
    assert len(received) == 1
    assert pydicom.dcmread(received[0]).file_meta.TransferSyntaxUID == syntax  # stored as sent
    film = read_film(received[0], _settings(tmp_path, "default"))
    assert (film.view, film.side, film.spacing_flag) == ("knee_ap", "R", "default_spacing")
    assert film.photometric == "MONOCHROME1" and film.transfer_syntax == syntax
    summary = Service(_settings(tmp_path, "default")).run(once=True)
    assert summary.files.get("accepted") == 1


def test_received_leg_without_spacing_and_chest_are_quarantined_with_their_reasons(
    tmp_path: Path, receiver: DicomReceiver
) -> None:
    leg = _reencoded(tmp_path, JPEGLSLossless)
    chest = _real("RG1_J2KR.dcm")
    assert pydicom.dcmread(chest).file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert _send(receiver.port, [leg, chest]) == [SUCCESS, SUCCESS]
    summary = Service(_settings(tmp_path, "quarantine")).run(once=True)
    assert summary.files.get("quarantined") == 2
    reasons = sorted(str(r["reason"]) for r in read_records(tmp_path / "state" / "quarantine"))
    assert reasons == ["no_spacing", "not_lower_limb"]


def test_a_syntax_without_a_permissive_decoder_is_quarantined_as_such(tmp_path: Path) -> None:
    # JPEG lossless process 14: only GPL (pylibjpeg-libjpeg) or GDCM decoders exist; neither ships.
    src = _real("JPGLosslessP14SV1_1s_1f_8b.dcm")
    ds = pydicom.dcmread(src)
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "KNEE", "AP"
    ds.ImagerPixelSpacing = [0.2, 0.2]
    path = tmp_path / "p14.dcm"
    ds.save_as(path)
    assert ds.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian
    with pytest.raises(IngestError) as info:
        read_film(path, _settings(tmp_path, "quarantine"))
    assert info.value.reason == "unsupported_transfer_syntax"
