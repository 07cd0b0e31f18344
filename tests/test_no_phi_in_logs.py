"""No patient data in the logs: real DICOM files carrying a distinctive PatientName / PatientID /
PatientBirthDate (also in their file names, and once as a malformed value that pydicom would complain
about) go through the real receiver, intake, quarantine and processing, with every logger at DEBUG and
Python warnings routed into logging. No log record (message, arguments, traceback) and no quarantine
record may contain any of them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from appliance.config import ReceiverSettings, Settings, settings_from_mapping
from appliance.ingest.quarantine import RECORD_NAME
from appliance.jobs.service import Service
from appliance.receiver.scp import SUCCESS, DicomReceiver

NAME, PID, BIRTH = "Panza^Teresa^Cascajo", "PHIX80417", "19290317"
# What must never appear: each value, and the parts a formatter might print on their own.
FORBIDDEN = (NAME, "Panza", "Cascajo", PID, BIRTH, "1929-03-17")


class Everything(logging.Handler):
    """Keeps every record of every logger, formatted as a journal line would be (with tracebacks)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def captured() -> Iterator[Everything]:
    handler = Everything()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    touched = {}
    for name in list(logging.root.manager.loggerDict):  # loggers that set their own level
        lg = logging.getLogger(name)
        touched[name] = (lg.level, lg.disabled)
        lg.setLevel(logging.DEBUG)
        lg.disabled = False
    logging.captureWarnings(True)
    try:
        yield handler
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.setLevel(old_level)
        for name, (level, disabled) in touched.items():
            logging.getLogger(name).setLevel(level)
            logging.getLogger(name).disabled = disabled


def _real(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom-data does not provide {name}")
    return Path(str(path))


def _with_phi(src: Path, dst: Path, *, spacing: bool = False, bad_date: bool = False) -> Path:
    ds = pydicom.dcmread(src)
    ds.PatientName, ds.PatientID = NAME, PID
    ds.PatientBirthDate = f"{BIRTH}X" if bad_date else BIRTH  # invalid DA: pydicom would warn with it
    ds.OtherPatientIDs = PID
    ds.StudyInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if spacing:
        ds.ImagerPixelSpacing = [0.2, 0.2]
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst)
    return dst


def _settings(tmp: Path) -> Settings:
    return settings_from_mapping(
        {"jobs": {"quiet_seconds": 0.0}, "ingest": {"incomplete_grace_seconds": 0.0}},
        base_dir=tmp,
        overrides={"inbox": tmp / "in", "outbox": tmp / "out", "state": tmp / "state"},
    )


def _assert_clean(texts: list[str]) -> None:
    for text in texts:
        for value in FORBIDDEN:
            assert value not in text, f"patient data {value!r} in: {text[:300]}"


@pytest.fixture
def phi_files(tmp_path: Path) -> Path:
    """The inbox's files and the one to send over DICOM, written before the log capture starts (the
    malformed birth date makes pydicom warn when *the test* writes it; that is not the product)."""
    inbox = tmp_path / "in"
    staging = tmp_path / "staging"
    # accepted and processed (spacing given), file named after the patient
    _with_phi(_real("RG3_UNCR.dcm"), inbox / f"{NAME.replace('^', '_')}_{PID}.dcm", spacing=True)
    # quarantined: no spacing (J2K, so the decoder runs too), and a malformed birth date
    _with_phi(_real("RG3_J2KR.dcm"), inbox / f"{PID}_{BIRTH}.dcm", bad_date=True)
    # quarantined: a chest film
    _with_phi(_real("RG1_UNCR.dcm"), inbox / "chest" / f"{BIRTH}.dcm", spacing=True)
    # quarantined: cut short in the pixel data
    whole = _with_phi(_real("RG3_UNCR.dcm"), staging / "cut.dcm", spacing=True).read_bytes()
    (inbox / f"Panza_cut_{PID}.dcm").write_bytes(whole[: len(whole) // 2])
    # not DICOM at all, but holding the name
    (inbox / f"{NAME}.dcm").write_bytes(b"Patient: " + NAME.encode() + b"\n" * 200)
    # a fifth film, to arrive over DICOM (with the malformed date too)
    return _with_phi(_real("RG3_UNCI.dcm"), staging / "rx.dcm", spacing=True, bad_date=True)


def test_no_patient_data_in_logs_or_quarantine_records(
    tmp_path: Path, phi_files: Path, captured: Everything
) -> None:
    inbox = tmp_path / "in"
    rx_settings = ReceiverSettings(
        enabled=True,
        bind_address="127.0.0.1",
        port=0,
        allowed_calling_aets=("CR1",),
        allowed_peers=("127.0.0.1",),
    )
    with DicomReceiver(rx_settings, inbox) as rx:
        ae = AE(ae_title="CR1")
        ae.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", rx.port, ae_title="XR3D")
        assert assoc.is_established
        assert int(assoc.send_c_store(phi_files).Status) == SUCCESS
        assoc.release()

    summary = Service(_settings(tmp_path)).run(once=True)
    assert summary.files.get("accepted") == 2  # the RG3 with spacing, dropped and received
    assert summary.files.get("quarantined") == 4
    assert sum(summary.studies.values()) >= 2

    records = sorted((tmp_path / "state" / "quarantine").glob(f"*/{RECORD_NAME}"))
    assert len(records) == 4
    reasons = sorted(json.loads(r.read_text(encoding="utf-8"))["reason"] for r in records)
    assert reasons == sorted(["no_spacing", "not_lower_limb", "truncated", "not_dicom"])
    _assert_clean([r.read_text(encoding="utf-8") for r in records])
    _assert_clean([str(p.relative_to(tmp_path / "state" / "quarantine").parent) for p in records])

    assert len(captured.lines) > 20  # the capture really saw the pipeline's logging
    assert any("quarantined" in line for line in captured.lines)
    _assert_clean(captured.lines)


def test_the_capture_would_see_patient_data(captured: Everything) -> None:
    # the check above can fail: a record that carries a name is caught
    logging.getLogger("appliance.test").debug("file of %s", NAME)
    with pytest.raises(AssertionError):
        _assert_clean(captured.lines)
