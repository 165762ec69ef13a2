"""systemd's notification protocol (sd_notify), spoken directly: one datagram per message to
the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket).

Without ``$NOTIFY_SOCKET`` (not under systemd, or ``Type=`` other than notify) every call is
a no-op, so the daemon runs the same everywhere.
"""

from __future__ import annotations

import os
import socket
import time

import structlog


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.log = structlog.get_logger().bind(component="sd_notify")
        self._socket: socket.socket | None = None
        if self.address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, *fields: str) -> bool:
        """``send("READY=1", "STATUS=listening")``: one datagram, newline-separated fields."""
        if self._socket is None:
            return False
        try:
            self._socket.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            if not self._failed:  # once: a vanished socket must not flood the log
                self.log.warning("sd_notify failed", error=str(exc))
                self._failed = True
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd tell this reload from an older one (systemd 253+).
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval_s() -> float | None:
    """Half of systemd's ``WatchdogSec`` (``$WATCHDOG_USEC``), as sd_watchdog_enabled advises;
    None when no watchdog is asked for this process."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2e6
