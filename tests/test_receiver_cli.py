"""`xr3d watch` run the way systemd runs it: a real subprocess with $NOTIFY_SOCKET and $WATCHDOG_USEC
pointing at a real datagram socket, the DICOM receiver enabled in the TOML config, a real SCU sending a
real radiograph with patient data, SIGTERM to stop. Checks the notify protocol (READY=1 only once the
receiver listens, WATCHDOG=1 while running, STOPPING=1 last), that the film is taken in, the exit code,
and that the process's log output at DEBUG (what the journal would keep) carries no patient data.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

ROOT = Path(__file__).resolve().parents[1]
PHI = ("Dulcinea^Aldonza", "PIDCLI4410", "19340629")
DEADLINE_S = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _film(dst: Path) -> Path:
    src = get_testdata_file("RG3_UNCR.dcm", download=False)
    if src is None:
        pytest.skip("pydicom-data does not provide RG3_UNCR.dcm")
    ds = pydicom.dcmread(str(src))
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PHI
    ds.SOPInstanceUID = generate_uid()
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.save_as(dst)
    return dst


def test_xr3d_watch_under_a_notify_socket_receives_and_stops_cleanly(tmp_path: Path) -> None:
    port = _free_port()
    cfg = tmp_path / "xr3d.toml"
    cfg.write_text(
        '[paths]\ninbox = "in"\noutbox = "out"\nstate = "state"\n'
        "[watch]\ntick_seconds = 0.2\n"
        f'[receiver]\nenabled = true\nport = {port}\nallowed_calling_aets = ["CR1"]\n'
        'allowed_peers = ["127.0.0.1"]\n',
        encoding="utf-8",
    )
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(0.5)
    env = {
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
        "WATCHDOG_USEC": "1000000",
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    film = _film(tmp_path / "film.dcm")
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli.main", "-vv", "watch", "--config", str(cfg)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    messages: list[str] = []

    def collect(until: float) -> None:
        while time.monotonic() < until:
            try:
                messages.append(notify.recv(4096).decode())
            except TimeoutError:
                return

    try:
        deadline = time.monotonic() + DEADLINE_S
        while not any(m.startswith("READY=1") for m in messages) and time.monotonic() < deadline:
            assert proc.poll() is None, "xr3d watch exited before READY=1"
            collect(time.monotonic() + 0.5)
        assert any(m.startswith("READY=1") for m in messages)

        ae = AE(ae_title="CR1")
        ae.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title="XR3D")
        assert assoc.is_established  # READY=1 means the receiver already listens
        assert int(assoc.send_c_store(film).Status) == 0x0000
        assoc.release()

        store = tmp_path / "state" / "store"
        while time.monotonic() < deadline and not any(store.glob("*.dcm")):
            collect(time.monotonic() + 0.5)
        assert any(store.glob("*.dcm"))  # received, renamed in, taken in
        collect(time.monotonic() + 1.5)  # at least one more watchdog period
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=DEADLINE_S)
        collect(time.monotonic() + 1.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
    assert proc.returncode == 0
    assert "WATCHDOG=1" in messages
    assert messages[-1].startswith("STOPPING=1")
    assert "accepted" in out and "DICOM receiver" in out  # the log did record the work
    for value in PHI:
        assert value not in out
