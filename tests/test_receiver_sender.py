"""The PACS sender against our own C-STORE SCP (real pynetdicom on both sides, real files, real SQLite):
what is published in ``outbox/<study>/dicom/`` arrives once, a republished object again, a PACS that is
down is retried later, and the service's once-run sends what it published.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from appliance.config import PacsSettings, ReceiverSettings, settings_from_mapping
from appliance.jobs.service import Service
from appliance.receiver.scp import RADIOGRAPH_SOP_CLASSES, RECEIVED_FOLDER, DicomReceiver
from appliance.receiver.sender import PacsSender, outbox_objects

PACS_AET = "TESTPACS"
OUR_AET = "XR3D"


def _secondary_capture(path: Path) -> Path:
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = 16, 24
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.arange(16 * 24, dtype=np.uint8).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _real_film(dst: Path) -> Path:
    src = get_testdata_file("RG3_UNCR.dcm", download=False)
    if src is None:
        pytest.skip("pydicom-data does not provide RG3_UNCR.dcm")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(str(src), dst)
    return dst


def _pacs(tmp: Path) -> DicomReceiver:
    """Our own SCP playing the PACS: takes secondary captures too, and objects without pixels."""
    settings = ReceiverSettings(
        enabled=True,
        ae_title=PACS_AET,
        bind_address="127.0.0.1",
        port=0,
        allowed_calling_aets=(OUR_AET,),
        allowed_peers=("127.0.0.1",),
    )
    return DicomReceiver(
        settings,
        tmp / "pacs",
        sop_classes=(*RADIOGRAPH_SOP_CLASSES, SecondaryCaptureImageStorage),
        require_pixels=False,
    )


def _sender_settings(port: int, **kw: float) -> PacsSettings:
    return PacsSettings(
        enabled=True, host="127.0.0.1", port=port, called_aet=PACS_AET, calling_aet=OUR_AET, **kw
    )


def _arrived(tmp: Path) -> list[str]:
    folder = tmp / "pacs" / RECEIVED_FOLDER
    if not folder.is_dir():
        return []
    return sorted(str(pydicom.dcmread(p).SOPInstanceUID) for p in folder.iterdir())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_published_objects_are_sent_once_and_again_when_republished(tmp_path: Path) -> None:
    outbox = tmp_path / "out"
    sc = _secondary_capture(outbox / "study1" / "dicom" / "overlay_sc.dcm")
    film = _real_film(outbox / "study1" / "dicom" / "films" / "film.dcm")
    _secondary_capture(outbox / ".tmp-study2-x" / "dicom" / "overlay_sc.dcm")  # unfinished: skipped
    (outbox / "study1" / "result.json").write_text("{}")
    assert sorted(outbox_objects(outbox)) == sorted([film, sc])

    with _pacs(tmp_path) as pacs:
        sender = PacsSender(_sender_settings(pacs.port), outbox, tmp_path / "state")
        try:
            first = sender.send_pending()
            assert (first.sent, first.failed) == (2, 0)
            expected = sorted(
                [str(pydicom.dcmread(sc).SOPInstanceUID), str(pydicom.dcmread(film).SOPInstanceUID)]
            )
            assert _arrived(tmp_path) == expected
            assert sender.send_pending().sent == 0  # nothing new: nothing sent
            _secondary_capture(sc)  # the study was processed again: new bytes at the same path
            assert sender.send_pending().sent == 1
        finally:
            sender.close()
        assert len(_arrived(tmp_path)) == 3
        # a new sender on the same state (a restart) knows what was sent
        again = PacsSender(_sender_settings(pacs.port), outbox, tmp_path / "state")
        try:
            assert again.send_pending().sent == 0
        finally:
            again.close()


def test_a_pacs_that_is_down_is_retried_after_the_delay(tmp_path: Path) -> None:
    outbox = tmp_path / "out"
    _secondary_capture(outbox / "s" / "dicom" / "a.dcm")
    pacs = _pacs(tmp_path)
    port = _free_port()  # nobody listens there yet
    sender = PacsSender(
        _sender_settings(port, retry_seconds=300.0, timeout_seconds=5.0), outbox, tmp_path / "st"
    )
    try:
        down = sender.send_pending(now=1000.0)
        assert (down.sent, down.failed) == (0, 1)
        pacs.settings = dataclasses.replace(pacs.settings, port=port)
        with pacs:
            assert sender.send_pending(now=1100.0).waiting == 1  # not due yet
            retried = sender.send_pending(now=1301.0)
            assert (retried.sent, retried.failed) == (1, 0)
    finally:
        sender.close()
    assert len(_arrived(tmp_path)) == 1


def test_the_service_sends_its_outbox_when_the_pacs_is_configured(tmp_path: Path) -> None:
    with _pacs(tmp_path) as pacs:
        settings = settings_from_mapping(
            {"pacs": {"enabled": True, "host": "127.0.0.1", "port": pacs.port, "called_aet": PACS_AET}},
            base_dir=tmp_path,
            overrides={"inbox": tmp_path / "in", "outbox": tmp_path / "out", "state": tmp_path / "st"},
        )
        sc = _secondary_capture(tmp_path / "out" / "k" / "dicom" / "sr_like.dcm")
        Service(settings).run(once=True)
    assert _arrived(tmp_path) == [str(pydicom.dcmread(sc).SOPInstanceUID)]


def test_an_unreadable_object_does_not_stop_the_others(tmp_path: Path) -> None:
    outbox = tmp_path / "out"
    good = _secondary_capture(outbox / "s" / "dicom" / "a.dcm")
    (outbox / "s" / "dicom" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    with _pacs(tmp_path) as pacs:
        sender = PacsSender(_sender_settings(pacs.port), outbox, tmp_path / "st")
        try:
            summary = sender.send_pending()
        finally:
            sender.close()
    assert (summary.sent, summary.failed) == (1, 1)
    assert _arrived(tmp_path) == [str(pydicom.dcmread(good).SOPInstanceUID)]


def test_the_rle_overlay_reaches_a_pacs_that_takes_only_uncompressed(tmp_path: Path) -> None:
    """The overlay SC is stored RLE Lossless; a PACS that accepts only Explicit VR Little Endian still gets
    the identical pixels (pynetdicom decompresses for the accepted context)."""
    from pynetdicom import AE, evt

    from appliance.outputs.secondary_capture import write_overlay_sc
    from tests.outputs_support import STUDY_DIR, source_film

    outbox = tmp_path / "out"
    sc_path = write_overlay_sc(
        outbox / "s" / "dicom" / "overlay_sc.dcm", STUDY_DIR / "overlay.png", source_film(), key="k"
    )
    received: list[Dataset] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.dataset)
        received[-1].file_meta = event.file_meta
        return 0x0000

    pacs = AE(ae_title=PACS_AET)
    pacs.add_supported_context(SecondaryCaptureImageStorage, [ExplicitVRLittleEndian])
    server = pacs.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        port = int(server.server_address[1])
        sender = PacsSender(_sender_settings(port), outbox, tmp_path / "st")
        try:
            summary = sender.send_pending()
        finally:
            sender.close()
    finally:
        server.shutdown()
    assert (summary.sent, summary.failed) == (1, 0)
    assert len(received) == 1
    assert received[0].file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(received[0].pixel_array, pydicom.dcmread(sc_path).pixel_array)
