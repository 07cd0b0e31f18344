"""The small exception family xr3d raises.

Every error that reaches a user or the quarantine carries a machine-readable ``reason`` code, so the
quarantine record, the log line and the CLI message all name the same problem.
"""

from __future__ import annotations


class Xr3dError(Exception):
    """Base of every error xr3d raises on purpose."""

    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    def __str__(self) -> str:
        return f"[{self.reason}] {super().__str__()}"


class InputError(Xr3dError):
    """The input (a file, a volume, an argument) cannot be used; ``reason`` says why."""

    reason = "bad_input"


class GeometryError(Xr3dError):
    """A projection geometry or coordinate frame is inconsistent."""

    reason = "bad_geometry"


class MissingLandmarksError(Xr3dError):
    """A measurement needs landmarks that are not present."""

    reason = "missing_landmarks"

    def __init__(self, missing: list[str], needed_for: str) -> None:
        self.missing = sorted(missing)
        super().__init__(f"{needed_for} needs landmarks {', '.join(self.missing)}")
