"""systemd/xr3d.service and systemd/install.sh, without touching the real system: the unit's directives,
``systemd-analyze verify`` (when available), ``bash -n``, the installer's dry run, and a real install
into a staging root (``--root``: no user, no chown, no systemctl) run twice to show it is idempotent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import load_settings

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "xr3d.service"
INSTALL = ROOT / "systemd" / "install.sh"
EXAMPLE = ROOT / "systemd" / "xr3d.toml.example"


def _directives(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file (keys may repeat), comments and sections dropped."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_has_the_required_directives() -> None:
    d = _directives(UNIT.read_text(encoding="utf-8"))
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "2",  # invalid config: do not loop
        "User": "xr3d",
        "Group": "xr3d",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateNetwork": "yes",
        "DevicePolicy": "closed",
        "StandardError": "journal",
    }
    for key, value in expected.items():
        assert d.get(key) == [value], key
    assert d["ExecStart"] == ["/opt/xr3d/bin/xr3d -v watch --config /etc/xr3d/xr3d.toml"]
    assert any("nvidia" in v for v in d["DeviceAllow"])
    assert d["WatchdogSec"] and d["MemoryMax"] and d["ReadWritePaths"]


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify insists that ExecStart exists: point it at this checkout's xr3d, everything else as shipped
    xr3d = Path(sys.executable).with_name("xr3d")
    if not xr3d.exists():
        pytest.skip("no xr3d entry point next to the interpreter")
    unit = tmp_path / "xr3d.service"
    unit.write_text(
        UNIT.read_text(encoding="utf-8").replace("/opt/xr3d/bin/xr3d", str(xr3d)), encoding="utf-8"
    )
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "xr3d.service" not in proc.stderr  # no warning about our unit either


def test_install_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(INSTALL)], check=True, timeout=30)


def test_example_config_is_valid() -> None:
    s = load_settings(EXAMPLE)
    assert not s.receiver.enabled and not s.pacs.enabled


def _install(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        ["bash", str(INSTALL), "--python", sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def _config(tmp: Path, receiver: bool, port: int = 11112) -> Path:
    cfg = tmp / "xr3d.toml"
    text = f'[paths]\ninbox = "{tmp}/srv/in"\noutbox = "{tmp}/srv/out"\nstate = "{tmp}/var/state"\n'
    if receiver:
        text += (
            f"[receiver]\nenabled = true\nport = {port}\n"
            'allowed_calling_aets = ["CR1"]\nallowed_peers = ["192.168.1.0/24"]\n'
        )
    cfg.write_text(text, encoding="utf-8")
    return cfg


def test_dry_run_shows_every_step_and_changes_nothing(tmp_path: Path) -> None:
    cfg = _config(tmp_path, receiver=False)
    proc = _install("--dry-run", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for step in (
        "python3 -m venv /opt/xr3d",
        "pip install --upgrade",
        "systemctl enable xr3d.service",
        "write /etc/systemd/system/xr3d.service",
        f"ReadWritePaths={tmp_path}/srv/in",
    ):
        assert step in out, step
    assert "PrivateNetwork=no" not in out  # no receiver, no PACS: the unit's PrivateNetwork=yes stands
    assert "xr3d" not in {p.name for p in tmp_path.iterdir()}
    assert not (tmp_path / "srv").exists()  # nothing created


def test_dry_run_with_the_receiver_turns_the_network_on(tmp_path: Path) -> None:
    proc = _install("--dry-run", "--config", str(_config(tmp_path, receiver=True, port=104)))
    assert proc.returncode == 0, proc.stderr
    assert "PrivateNetwork=no" in proc.stdout
    assert "CAP_NET_BIND_SERVICE" in proc.stdout  # port 104 is privileged


def test_invalid_config_stops_the_installer_with_the_reason(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        '[paths]\ninbox = "a"\noutbox = "b"\nstate = "c"\n[receiver]\nenabled = true\n', encoding="utf-8"
    )
    proc = _install("--check-config", "--config", str(cfg))
    assert proc.returncode != 0
    assert "config_missing_key" in proc.stderr


def test_staged_install_writes_everything_and_is_idempotent(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    args = ("--root", str(stage), "--no-venv", "--config", "/etc/xr3d/xr3d.toml")
    first = _install(*args)
    assert first.returncode == 0, first.stderr
    cfg = stage / "etc" / "xr3d" / "xr3d.toml"
    assert cfg.read_text(encoding="utf-8") == EXAMPLE.read_text(encoding="utf-8")
    unit = stage / "etc" / "systemd" / "system" / "xr3d.service"
    assert unit.read_text(encoding="utf-8") == UNIT.read_text(encoding="utf-8")
    paths = (unit.parent / "xr3d.service.d" / "10-paths.conf").read_text(encoding="utf-8")
    assert "ReadWritePaths=/srv/xr3d/inbox /srv/xr3d/outbox /var/lib/xr3d /var/lib/xr3d/quarantine" in paths
    for d in ("srv/xr3d/inbox", "srv/xr3d/outbox", "var/lib/xr3d/quarantine"):
        assert (stage / d).is_dir()
    assert not (unit.parent / "xr3d.service.d" / "20-network.conf").exists()

    # the clinic edits its config (turns the receiver on); a second run keeps the edit and follows it
    edited = (
        cfg.read_text(encoding="utf-8")
        .replace("enabled = false                    # true: receive", "enabled = true  # receive")
        .replace("allowed_calling_aets = []", 'allowed_calling_aets = ["CR1"]')
        .replace("allowed_peers = []", 'allowed_peers = ["10.0.0.7"]')
    )
    cfg.write_text(edited, encoding="utf-8")
    snapshot = {p: p.read_bytes() for p in stage.rglob("*") if p.is_file()}
    second = _install(*args)
    assert second.returncode == 0, second.stderr
    assert cfg.read_text(encoding="utf-8") == edited
    assert "unchanged: " in second.stdout
    network = unit.parent / "xr3d.service.d" / "20-network.conf"
    assert "PrivateNetwork=no" in network.read_text(encoding="utf-8")
    changed = {p for p in snapshot if p.read_bytes() != snapshot[p]}
    assert changed == set()  # only the new drop-in appeared; nothing else was rewritten
    third = _install(*args)
    assert third.returncode == 0 and "wrote:" not in third.stdout  # nothing left to do
