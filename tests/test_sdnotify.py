"""sd_notify: a real AF_UNIX datagram socket stands in for systemd's; the real service loop talks to it."""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config import settings_from_mapping
from appliance.jobs.service import Service
from appliance.sdnotify import Notifier, socket_address, watchdog_interval


class Listener:
    """A datagram socket like systemd's notify socket, collecting what arrives."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)

    def messages(self, limit: int = 1000) -> list[str]:
        """What arrived, up to ``limit`` datagrams, returning at the first 0.2 s without one."""
        out: list[str] = []
        while len(out) < limit:
            try:
                out.append(self.sock.recv(4096).decode())
            except TimeoutError:
                break
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def path_listener(tmp_path: Path) -> Iterator[tuple[str, Listener]]:
    path = str(tmp_path / "notify.sock")
    listener = Listener(path)
    try:
        yield path, listener
    finally:
        listener.close()


def test_address_forms() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@xr3d/notify") == b"\0xr3d/notify"
    assert socket_address("") is None
    assert socket_address("vsock:2:1234") is None


def test_watchdog_interval_is_half_the_period_and_respects_watchdog_pid() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({}) is None


def test_notifier_over_a_path_socket_paces_the_watchdog(path_listener: tuple[str, Listener]) -> None:
    path, listener = path_listener
    now = [100.0]
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}, clock=lambda: now[0])
    assert n.enabled and n.watchdog_seconds == 1.0
    assert n.ready("up")
    assert not n.tick()  # READY counts as a sign of life
    now[0] += 1.0
    assert n.tick()
    assert not n.tick()  # not due again yet
    assert n.stopping()
    assert listener.messages() == ["READY=1\nSTATUS=up", "WATCHDOG=1", "STOPPING=1"]


def test_notifier_over_an_abstract_socket() -> None:
    name = f"xr3d-test-{secrets.token_hex(6)}"
    listener = Listener(b"\0" + name.encode())
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).status("hello")
        assert listener.messages() == ["STATUS=hello"]
    finally:
        listener.close()


def test_notifier_is_inert_outside_systemd_and_survives_a_vanished_socket(tmp_path: Path) -> None:
    assert not Notifier({}).ready()
    assert not Notifier({}).tick()
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock"), "WATCHDOG_USEC": "1"})
    assert not gone.ready()  # logged once, never raised
    assert not gone.tick()


def test_the_service_sends_ready_watchdog_and_stopping(
    tmp_path: Path, path_listener: tuple[str, Listener], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, listener = path_listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s at the latest
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    settings = settings_from_mapping(
        {"watch": {"tick_seconds": 0.05, "reconcile_seconds": 0.05}},
        base_dir=tmp_path,
        overrides={"inbox": tmp_path / "in", "outbox": tmp_path / "out", "state": tmp_path / "st"},
    )
    stop = threading.Event()
    service = Service(settings, stop=stop)
    worker = threading.Thread(target=service.run)
    worker.start()
    received: list[str] = []
    try:
        # wait (boundedly) until the service has pinged the watchdog at least twice
        for _ in range(200):
            received += listener.messages(limit=1)
            if sum(m == "WATCHDOG=1" for m in received) >= 2:
                break
    finally:
        stop.set()
        worker.join(timeout=60)
    assert not worker.is_alive()
    received += listener.messages()
    assert received[0].startswith("READY=1")
    assert received.count("WATCHDOG=1") >= 2
    assert received[-1].startswith("STOPPING=1")
    assert all(m.startswith(("READY=1", "WATCHDOG=1", "STOPPING=1", "STATUS=")) for m in received)
    assert any(m.startswith("STATUS=") and "inbox file(s) waiting" in m for m in received)


def test_a_once_run_sends_ready_and_stopping(
    tmp_path: Path, path_listener: tuple[str, Listener], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, listener = path_listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    settings = settings_from_mapping(
        {},
        base_dir=tmp_path,
        overrides={"inbox": tmp_path / "in", "outbox": tmp_path / "out", "state": tmp_path / "st"},
    )
    Service(settings).run(once=True)
    got = listener.messages()
    assert got[0].startswith("READY=1") and got[-1].startswith("STOPPING=1")
