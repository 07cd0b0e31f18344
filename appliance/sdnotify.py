"""systemd's readiness protocol (``sd_notify``), written out so the service needs no extra package.

The protocol is one ``AF_UNIX`` datagram of newline-separated ``KEY=VALUE`` lines sent to the socket
named by ``$NOTIFY_SOCKET``: a file system path, or an abstract socket when it starts with ``@``
(the ``@`` stands for the leading NUL byte). ``xr3d.service`` is ``Type=notify`` with ``WatchdogSec``:
systemd waits for ``READY=1`` before counting the service as started, restarts it when ``WATCHDOG=1``
stops arriving for ``$WATCHDOG_USEC`` microseconds, and expects ``STOPPING=1`` on a clean stop.

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op, so the same code runs in a terminal.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


def socket_address(value: str) -> str | bytes | None:
    """The ``connect``/``sendto`` address for a ``$NOTIFY_SOCKET`` value; None when unusable."""
    if value.startswith("@"):
        # Linux abstract namespace: the name is the bytes after a NUL, not a file.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock (vsock:CID:PORT) and relative paths are not used by a plain service unit


def watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC`` (systemd's advice), or None.

    ``$WATCHDOG_PID``, when set, names the process the watchdog is meant for; a child that inherited
    the environment must not ping on its parent's behalf.
    """
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


class Notifier:
    """Sends state changes to systemd and paces the watchdog pings; inert without ``$NOTIFY_SOCKET``.

    Owned by the service loop's thread: :meth:`tick` is called every loop iteration and sends
    ``WATCHDOG=1`` when half the watchdog period has passed since the last ping.
    """

    def __init__(
        self, env: Mapping[str, str] | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        env = os.environ if env is None else env
        self._address = socket_address(env.get("NOTIFY_SOCKET", ""))
        self._interval = watchdog_interval(env) if self._address is not None else None
        self._clock = clock
        self._last_ping = float("-inf")
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_seconds(self) -> float | None:
        return self._interval

    def send(self, *lines: str) -> bool:
        """Send one datagram; False (logged once) when systemd cannot be reached. Never raises."""
        if self._address is None:
            return False
        payload = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(payload, self._address)
        except OSError as exc:
            if not self._warned:
                log.warning("cannot notify systemd (%s); carrying on without it", exc.strerror or exc)
                self._warned = True
            return False
        return True

    def ready(self, status: str = "") -> bool:
        sent = self.send("READY=1", *((f"STATUS={status}",) if status else ()))
        self._last_ping = self._clock()  # READY counts as a sign of life
        return sent

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def stopping(self, status: str = "") -> bool:
        return self.send("STOPPING=1", *((f"STATUS={status}",) if status else ()))

    def tick(self) -> bool:
        """Ping the watchdog if it is due; True when a ping was sent."""
        if self._interval is None:
            return False
        now = self._clock()
        if now - self._last_ping < self._interval:
            return False
        self._last_ping = now
        return self.send("WATCHDOG=1")
