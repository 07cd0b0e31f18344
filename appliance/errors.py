"""The small exception family xr3d raises.

Every error that reaches a user or the quarantine carries a machine-readable ``reason`` code, so the
quarantine record, the log line and the CLI message all name the same problem.
"""

from __future__ import annotations

from engines.errors import EngineError, Xr3dError

__all__ = ["EngineError", "GeometryError", "InputError", "MissingLandmarksError", "Xr3dError"]


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
