"""The ingest entry point: one inbox file -> :class:`Film`, or :class:`IngestError` naming why not.

:func:`read_film` never lets another exception escape: anything unexpected becomes
``internal_error`` (and is logged with its traceback, which holds no tag values), so one bad file can
never stop the service.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from appliance.config import Settings
from appliance.ingest.dicom_reader import load_dicom_pixels, read_dicom_film
from appliance.ingest.errors import IngestError
from appliance.ingest.film import Film
from appliance.ingest.image_reader import IMAGE_SUFFIXES, load_image_pixels, read_image_film

log = logging.getLogger(__name__)

# Reasons that may only mean "still being written": retried within ingest.incomplete_grace_seconds.
# A damaged element may be one cut mid-value by a writer that paused.
MAYBE_INCOMPLETE = frozenset({"truncated", "no_pixel_data", "bad_sidecar", "not_dicom", "damaged_element"})


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def read_film(path: Path, settings: Settings, sha256: str | None = None) -> Film:
    """Read and classify one file. Raises :class:`IngestError` (only) when it cannot be accepted."""
    try:
        size = path.stat().st_size
        if size > settings.ingest.max_file_mb * 1024 * 1024:
            raise IngestError(f"file is {size / 1e6:.0f} MB", reason="too_large")
        digest = sha256 or file_sha256(path)
        if is_image_file(path):
            return read_image_film(path, digest, settings)
        return read_dicom_film(path, digest, settings)
    except IngestError:
        raise
    except MemoryError as exc:
        raise IngestError("file too large to decode in memory", reason="too_large") from exc
    except Exception as exc:
        log.exception("unexpected error reading an inbox file")
        raise IngestError(f"unexpected {type(exc).__name__} while reading", reason="internal_error") from exc


def load_pixels(path: Path) -> NDArray[np.float32]:
    """Pixels of an accepted (stored) film, bone bright, float32."""
    if is_image_file(path):
        return load_image_pixels(path)
    return load_dicom_pixels(path)
