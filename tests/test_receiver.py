"""The DICOM receiver end to end: a real pynetdicom SCP on 127.0.0.1 (free port), a real pynetdicom SCU
sending a real simulated DX film (seed 900001, demo range) and damaged objects, then the real service
taking the received files in. No mocks.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pynetdicom._config
import pytest
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE

from appliance.config import ReceiverSettings, Settings, settings_from_mapping
from appliance.jobs.service import Service, Summary
from appliance.receiver.scp import (
    RECEIVED_FOLDER,
    SUCCESS,
    TEMP_FOLDER,
    DicomReceiver,
    ReceiverError,
    peer_allowed,
)
from export.simulator.case import CaseOptions, generate_case

SEED = 900001  # demo/docs range
CALLER = "MODALITY1"
PHI = {"PatientName": "Rocinante^Sancho", "PatientID": "PIDRX55821", "PatientBirthDate": "19370214"}


@pytest.fixture(scope="module")
def dx_film(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simulated knee AP, DX for presentation, with patient data filled in."""
    opts = CaseOptions(
        views=("knee-ap",), write_ct=False, contralateral=False, knee_pitch=0.8, knee_spacing=1.25
    )
    case = generate_case(SEED, tmp_path_factory.mktemp("sim"), opts)
    ds = pydicom.dcmread(case / "knee_ap.dcm")
    assert ds.SOPClassUID == DigitalXRayImageStorageForPresentation
    for kw, value in PHI.items():
        setattr(ds, kw, value)
    out = case / "knee_ap_phi.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def _settings(tmp: Path) -> Settings:
    return settings_from_mapping(
        {},
        base_dir=tmp,
        overrides={"inbox": tmp / "in", "outbox": tmp / "out", "state": tmp / "state"},
    )


def _receiver_settings(**changes: object) -> ReceiverSettings:
    base = ReceiverSettings(
        enabled=True,
        bind_address="127.0.0.1",
        port=0,
        allowed_calling_aets=(CALLER,),
        allowed_peers=("127.0.0.1",),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[DicomReceiver]:
    rx = DicomReceiver(_receiver_settings(), tmp_path / "in")
    rx.start()
    try:
        yield rx
    finally:
        rx.stop()


def _scu(caller: str = CALLER) -> AE:
    ae = AE(ae_title=caller)
    for sop_class in (DigitalXRayImageStorageForPresentation, ComputedRadiographyImageStorage):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    ae.add_requested_context("1.2.840.10008.1.1")
    return ae


def _send(port: int, *paths: Path, caller: str = CALLER) -> list[int]:
    assoc = _scu(caller).associate("127.0.0.1", port, ae_title="XR3D")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(p).Status) for p in paths]
    finally:
        assoc.release()


def _received(inbox: Path) -> list[Path]:
    folder = inbox / RECEIVED_FOLDER
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_a_real_dx_film_lands_complete_and_the_service_takes_it_in(
    tmp_path: Path, receiver: DicomReceiver, dx_film: Path
) -> None:
    assert _send(receiver.port, dx_film) == [SUCCESS]
    files = _received(tmp_path / "in")
    assert len(files) == 1
    assert list((tmp_path / "in" / TEMP_FOLDER).iterdir()) == []  # no temporary left behind
    sent, got = pydicom.dcmread(dx_film), pydicom.dcmread(files[0])
    assert got.SOPInstanceUID == sent.SOPInstanceUID
    assert got.PixelData == sent.PixelData  # the whole object arrived, byte for byte
    assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    # the file name says nothing about the patient or the study
    assert sent.SOPInstanceUID not in files[0].name and "Rocinante" not in files[0].name
    assert receiver.counts == (1, 0)

    summary = Service(_settings(tmp_path)).run(once=True)
    assert summary.files.get("accepted") == 1
    assert _received(tmp_path / "in") == []  # taken into the store


def test_calling_ae_title_not_allowed_is_rejected(receiver: DicomReceiver) -> None:
    assoc = _scu("STRANGER").associate("127.0.0.1", receiver.port, ae_title="XR3D")
    assert assoc.is_rejected and not assoc.is_established


def test_peer_address_not_allowed_is_rejected(tmp_path: Path, dx_film: Path) -> None:
    rx = DicomReceiver(_receiver_settings(allowed_peers=("10.20.30.0/24",)), tmp_path / "in")
    with rx:
        assoc = _scu().associate("127.0.0.1", rx.port, ae_title="XR3D")
        assert assoc.is_rejected and not assoc.is_established
    assert _received(tmp_path / "in") == []


def test_peer_matching() -> None:
    assert peer_allowed("192.168.1.7", ["192.168.1.0/24"])
    assert peer_allowed("::ffff:10.0.0.5", ["10.0.0.5"])
    assert not peer_allowed("192.168.2.7", ["192.168.1.0/24", "10.0.0.1"])
    assert not peer_allowed("not-an-ip", ["0.0.0.0/0"])


def test_echo_answers(receiver: DicomReceiver) -> None:
    assoc = _scu().associate("127.0.0.1", receiver.port, ae_title="XR3D")
    try:
        assert int(assoc.send_c_echo().Status) == SUCCESS
    finally:
        assoc.release()


def _with_meta(tmp: Path, name: str, body: bytes, sop_class: str) -> Path:
    """A Part 10 file with a valid meta header and ``body`` as its (possibly damaged) dataset."""
    meta = pydicom.Dataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    path = tmp / name
    ds.save_as(path, enforce_file_format=True)
    path.write_bytes(path.read_bytes() + body)
    return path


def test_damaged_datasets_get_failure_statuses_and_the_server_keeps_serving(
    tmp_path: Path,
    receiver: DicomReceiver,
    dx_film: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The SCU sends files as they are (meta header read, dataset bytes streamed undecoded), so a
    # damaged dataset really reaches the SCP: pynetdicom's own switch, in its config module.
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    # a sequence of undefined length that never ends: the dataset cannot be parsed
    unterminated = (
        b"\x08\x00\x16\x00UI\x04\x001.2\x00"
        + b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff"
        + b"\xfe\xff\x00\xe0\x10\x00\x00\x00\x01\x02"
    )
    garbage = _with_meta(tmp_path, "garbage.dcm", unterminated, ComputedRadiographyImageStorage)
    # a well-formed dataset of another SOP class than its request says (and without pixels)
    other = pydicom.Dataset()
    other.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture
    other.SOPInstanceUID = generate_uid()
    other.PatientName = PHI["PatientName"]
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, other)
    mismatch = _with_meta(tmp_path, "mismatch.dcm", buf.getvalue(), DigitalXRayImageStorageForPresentation)

    with caplog.at_level(logging.DEBUG):
        statuses = _send(receiver.port, garbage, mismatch, dx_film)
    assert statuses[0] != SUCCESS and 0xC000 <= statuses[0] <= 0xCFFF  # cannot understand
    assert 0xA900 <= statuses[1] <= 0xA9FF  # does not match SOP class
    assert statuses[2] == SUCCESS  # the same association goes on
    assert _send(receiver.port, dx_film) == [SUCCESS]  # and so does the server
    assert len(_received(tmp_path / "in")) == 2  # only the good ones were written
    assert receiver.counts == (2, 2)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "refused a received instance" in text
    for value in PHI.values():
        assert value not in text


def test_receiver_that_cannot_bind_says_so(tmp_path: Path, receiver: DicomReceiver) -> None:
    clash = DicomReceiver(_receiver_settings(port=receiver.port), tmp_path / "in2")
    with pytest.raises(ReceiverError) as info:
        clash.start()
    assert info.value.reason == "receiver_failed"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_running_service_listens_and_takes_received_films_in(tmp_path: Path, dx_film: Path) -> None:
    port = _free_port()
    settings = settings_from_mapping(
        {
            "receiver": {
                "enabled": True,
                "port": port,
                "allowed_calling_aets": [CALLER],
                "allowed_peers": ["127.0.0.1"],
            },
            "watch": {"tick_seconds": 0.1},
        },
        base_dir=tmp_path,
        overrides={"inbox": tmp_path / "in", "outbox": tmp_path / "out", "state": tmp_path / "state"},
    )
    stop = threading.Event()
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(Service(settings, stop=stop).run()))
    worker.start()
    try:
        statuses: list[int] = []
        for _ in range(600):  # the receiver starts after the first inbox scan: wait for it, boundedly
            assoc = _scu().associate("127.0.0.1", port, ae_title="XR3D")
            if assoc.is_established:
                statuses = [int(assoc.send_c_store(dx_film).Status)]
                assoc.release()
                break
            time.sleep(0.1)
        assert statuses == [SUCCESS]
        stored = settings.paths.store
        for _ in range(600):  # taken in: renamed in, read, stored, removed from the inbox
            if any(stored.glob("*.dcm")) and not _received(tmp_path / "in"):
                break
            time.sleep(0.1)
    finally:
        stop.set()
        worker.join(timeout=120)
    assert not worker.is_alive()
    summary = result[0]
    assert isinstance(summary, Summary) and summary.files.get("accepted") == 1
    with socket.socket() as s:  # and the port is free again: the receiver stopped with the service
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # closed connections linger in TIME_WAIT
        s.bind(("127.0.0.1", port))
        s.listen()


def _rg3() -> Path:
    path = get_testdata_file("RG3_UNCR.dcm", download=False)
    if path is None:
        pytest.skip("pydicom-data does not provide RG3_UNCR.dcm")
    return Path(str(path))


def test_a_watcher_never_sees_a_half_written_file(tmp_path: Path, receiver: DicomReceiver) -> None:
    """While real 6 MB radiographs arrive, a thread lists the inbox as fast as it can: every file it
    ever sees already has its final size (names appear only by the rename of a complete file)."""
    seen: dict[str, int] = {}
    done = threading.Event()
    folder = tmp_path / "in" / RECEIVED_FOLDER

    def watch() -> None:
        while not done.is_set():
            for p in folder.glob("*") if folder.is_dir() else []:
                seen.setdefault(p.name, p.stat().st_size)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        films = []
        for i in range(4):
            ds = pydicom.dcmread(_rg3())
            ds.SOPInstanceUID = generate_uid()
            films.append(tmp_path / f"leg{i}.dcm")
            ds.save_as(films[-1])
        assert _send(receiver.port, *films) == [SUCCESS] * 4
    finally:
        done.set()
        watcher.join()
    final = {p.name: p.stat().st_size for p in folder.iterdir()}
    assert len(final) == 4 and seen  # the watcher did see the files arrive
    assert all(seen[name] == final[name] for name in seen)


def test_a_write_failure_is_answered_and_the_server_keeps_serving(
    tmp_path: Path, receiver: DicomReceiver, dx_film: Path
) -> None:
    blocker = tmp_path / "in" / TEMP_FOLDER
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where the temporary folder should be")
    statuses = _send(receiver.port, dx_film)
    assert statuses[0] != SUCCESS and statuses[0] in (0x0110, 0xA700)
    assert _received(tmp_path / "in") == []
    blocker.unlink()
    assert _send(receiver.port, dx_film) == [SUCCESS]
    assert len(_received(tmp_path / "in")) == 1
