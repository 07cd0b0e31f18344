"""A PNG, JPEG or TIFF film with a sidecar JSON -> :class:`~appliance.ingest.film.Film`.

Exported films carry no header, so a sidecar ``<file name>.json`` or ``<stem>.json`` next to the image
must say what the image is::

    {"view": "longleg_ap", "spacing_mm": 0.5, "side": "R", "study": "any study key"}

``spacing_mm`` is one number or [row, column] in the patient plane (mm per pixel); ``view`` one of
longleg_ap, knee_ap, knee_lat; ``side`` L or R (optional); ``study`` groups the films of one study
(optional; without it each image is its own study). The view in the sidecar is trusted (the rules
work on DICOM tags), but the image check for a lower limb still runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from appliance.config import VIEWS, Settings
from appliance.dicomio.uids import uid_from
from appliance.ingest.classify import check_image
from appliance.ingest.errors import IngestError
from appliance.ingest.film import Film

# JPEG: PACS and research exports of long-leg films are often 8-bit JPEG (issue 4, "real films").
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def sidecar_of(path: Path) -> Path | None:
    """The sidecar JSON of ``path`` if one exists."""
    for candidate in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if candidate.is_file():
            return candidate
    return None


def _load_sidecar(path: Path) -> dict[str, Any]:
    side = sidecar_of(path)
    if side is None:
        raise IngestError("no sidecar JSON next to the image", reason="bad_sidecar")
    try:
        doc = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IngestError("sidecar JSON cannot be read", reason="bad_sidecar") from exc
    if not isinstance(doc, dict):
        raise IngestError("sidecar JSON must be an object", reason="bad_sidecar")
    return doc


def _spacing(value: Any) -> tuple[float, float]:
    items = value if isinstance(value, list) else [value, value]
    try:
        pair = (float(items[0]), float(items[1]))
    except (TypeError, ValueError, IndexError) as exc:
        raise IngestError("sidecar spacing_mm must be a number or [row, col]", reason="no_spacing") from exc
    if len(items) != 2 or not all(math.isfinite(v) and 0 < v <= 5 for v in pair):
        raise IngestError("sidecar spacing_mm must be in (0, 5] mm", reason="no_spacing")
    return pair


def _pixels(path: Path) -> tuple[NDArray[np.generic], int]:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            opened.load()
            # A JPEG may store its pixels turned and say so in EXIF; the sidecar describes the picture as
            # shown, so read it as shown (no-op for PNG/TIFF without that tag).
            im = ImageOps.exif_transpose(opened)
            if im.mode in ("L", "I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im)
            else:
                arr = np.asarray(im.convert("L"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = "truncated" if isinstance(exc, OSError) and "truncat" in str(exc).lower() else "not_dicom"
        raise IngestError(f"image cannot be read ({type(exc).__name__})", reason=reason) from exc
    if arr.ndim != 2 or arr.size == 0:
        raise IngestError(f"image has shape {arr.shape}", reason="unsupported_image")
    bits = 8 if arr.dtype == np.uint8 else 16
    return arr, bits


def read_image_film(path: Path, sha256: str, settings: Settings) -> Film:
    doc = _load_sidecar(path)
    view = doc.get("view")
    if view not in VIEWS:
        raise IngestError(f"sidecar view must be one of {', '.join(VIEWS)}", reason="unsupported_view")
    if "spacing_mm" not in doc:
        if settings.ingest.missing_spacing != "default":
            raise IngestError("sidecar has no spacing_mm", reason="no_spacing")
        spacing = (settings.ingest.default_spacing_mm,) * 2
        source, flag = "configured default", "default_spacing"
    else:
        spacing, source, flag = _spacing(doc["spacing_mm"]), "sidecar", ""
    side = str(doc.get("side", "")).upper()
    if side not in ("L", "R", ""):
        raise IngestError("sidecar side must be L or R", reason="bad_sidecar")
    pixels, bits = _pixels(path)
    check_image(pixels, settings.classify)
    study = doc.get("study")
    study_uid = uid_from("xr3d sidecar study", str(study)) if study else uid_from("xr3d image study", sha256)
    return Film(
        sha256=sha256,
        kind="image",
        study_uid=study_uid,
        series_uid=uid_from("xr3d image series", study_uid, str(view)),
        sop_uid=uid_from("xr3d image instance", sha256),
        view=str(view),
        side=side,
        rows=int(pixels.shape[0]),
        columns=int(pixels.shape[1]),
        spacing_mm=(float(spacing[0]), float(spacing[1])),
        spacing_source=source,
        spacing_flag=flag,
        magnification=None,
        modality="OT",
        body_part="",
        view_position="",
        photometric="MONOCHROME2",
        bits_stored=bits,
        transfer_syntax="",
    )


def load_image_pixels(path: Path) -> NDArray[np.float32]:
    return _pixels(path)[0].astype(np.float32)
