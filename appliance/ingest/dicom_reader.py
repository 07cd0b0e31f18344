"""One DICOM file -> :class:`~appliance.ingest.film.Film`, or :class:`IngestError` with the reason.

Accepted: single-frame greyscale projection radiographs (CR, DX for presentation or for processing,
or anything the view rules accept by Modality), 8-16 bits stored, MONOCHROME1 or MONOCHROME2, any
transfer syntax pydicom can decode with the installed plugins: native, RLE (pydicom), JPEG baseline
and extended (Pillow), JPEG 2000 (pylibjpeg-openjpeg), JPEG-LS lossless and near-lossless (pyjpegls,
MIT / CharLS BSD-3). JPEG lossless (process 14) has no permissively licensed decoder among the
dependencies (pylibjpeg-libjpeg is GPL-3; python-gdcm could be installed on a box) and is quarantined
as ``unsupported_transfer_syntax``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from appliance.config import Settings
from appliance.dicomio.uids import is_valid_uid
from appliance.ingest.classify import FilmFacts, check_image, classify
from appliance.ingest.errors import IngestError
from appliance.ingest.film import Film
from appliance.ingest.spacing import spacing_of

log = logging.getLogger(__name__)

_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")
MAX_PIXELS = 100_000_000
MIN_EDGE_PX = 64  # below this no landmark can be found (and the image check has nothing to measure)
"""A stitched full-length film (43 x 129 cm at 0.1 mm) has about 55 megapixels."""
_DESCRIPTION_KEYWORDS = (
    "StudyDescription",
    "SeriesDescription",
    "ProtocolName",
    "RequestedProcedureDescription",
)
_RADIOGRAPH_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.1",  # CR
        "1.2.840.10008.5.1.4.1.1.1.1",  # DX for presentation
        "1.2.840.10008.5.1.4.1.1.1.1.1",  # DX for processing
    }
)


def looks_like_dicom(path: Path) -> bool:
    """True when the file has the DICM magic of a Part 10 file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _parse(path: Path) -> Dataset:
    if path.stat().st_size == 0:
        raise IngestError("empty file", reason="truncated")
    try:
        with warnings.catch_warnings():
            # pydicom warns (with the file path) about damaged elements; the reason code says it.
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, force=False)
    except InvalidDicomError as exc:
        if looks_like_dicom(path):
            raise IngestError("DICOM header is damaged or cut short", reason="truncated") from exc
        raise IngestError("not a DICOM Part 10 file", reason="not_dicom") from exc
    except MemoryError:
        raise
    except Exception as exc:
        # pydicom raises many types on damaged headers (EOFError, ValueError, struct.error, its own
        # BytesLengthException for a value of the wrong length, ...): all mean a damaged or cut file.
        reason = "truncated" if looks_like_dicom(path) else "not_dicom"
        raise IngestError(f"DICOM parsing failed ({type(exc).__name__})", reason=reason) from exc


def _text(ds: Dataset, keyword: str) -> str:
    try:
        with warnings.catch_warnings():
            # pydicom's value warnings quote the value, which may be patient data.
            warnings.simplefilter("ignore")
            value = ds.get(keyword)
    except Exception:  # a damaged element raises on access
        return ""
    return "" if value is None else str(value).strip()


def _check_image_module(ds: Dataset) -> tuple[str, int]:
    if "PixelData" not in ds:
        if any(k in ds for k in ("FloatPixelData", "DoubleFloatPixelData")):
            raise IngestError("float pixel data is not a radiograph", reason="not_image")
        sop_class = _text(ds, "SOPClassUID")
        if sop_class in _RADIOGRAPH_SOP_CLASSES:
            # Pixel data is Type 1 in these IODs: a file without it was cut short (pydicom drops a
            # PixelData element whose value runs past the end of the file).
            raise IngestError("radiograph without pixel data: file cut short", reason="truncated")
        raise IngestError("no PixelData element", reason="no_pixel_data")
    try:
        samples = int(ds.get("SamplesPerPixel", 1))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.get("BitsStored", 0))
        rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    except Exception as exc:  # not numbers, or values of the wrong length (pydicom parses lazily)
        raise IngestError(
            f"image pixel module values are damaged or not numbers ({type(exc).__name__})",
            reason="unsupported_image",
        ) from exc
    if rows < MIN_EDGE_PX or cols < MIN_EDGE_PX:
        raise IngestError(
            f"image of {rows} x {cols} pixels is too small to be a film", reason="unsupported_image"
        )
    if rows * cols > MAX_PIXELS:
        # checked before decoding: a damaged or hostile header must not make us allocate gigabytes
        raise IngestError(f"image of {rows} x {cols} pixels is larger than any film", reason="too_large")
    photometric = _text(ds, "PhotometricInterpretation").upper()
    if samples != 1 or photometric not in _PHOTOMETRIC:
        raise IngestError(
            f"not greyscale ({samples} samples, {photometric or 'no photometric interpretation'})",
            reason="unsupported_image",
        )
    if frames != 1:
        raise IngestError(f"{frames} frames; one film per file is expected", reason="unsupported_image")
    if not 8 <= bits <= 16:
        raise IngestError(f"BitsStored {bits} outside 8-16", reason="unsupported_image")
    return photometric, bits


def _undecodable(exc: BaseException) -> str:
    return f"pixel data cannot be decoded ({type(exc).__name__})"


def decode_pixels(ds: Dataset) -> NDArray[np.generic]:
    """``ds.pixel_array`` with decoder failures mapped to reason codes."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = ds.pixel_array
    except NotImplementedError as exc:
        raise IngestError(
            f"no decoder for transfer syntax {ds.file_meta.get('TransferSyntaxUID', '?')}",
            reason="unsupported_transfer_syntax",
        ) from exc
    except (ValueError, EOFError) as exc:
        msg = str(exc).lower()
        if any(w in msg for w in ("less than expected", "length", "truncat", "end of")) or isinstance(
            exc, EOFError
        ):
            raise IngestError("pixel data is shorter than the image needs", reason="truncated") from exc
        raise IngestError(
            f"pixel data cannot be decoded ({type(exc).__name__})", reason="pixel_decode_failed"
        ) from exc
    except RuntimeError as exc:
        msg = str(exc).lower()
        reason = (
            "unsupported_transfer_syntax" if "plugin" in msg or "decoder" in msg else "pixel_decode_failed"
        )
        raise IngestError(f"pixel data cannot be decoded ({type(exc).__name__})", reason=reason) from exc
    except Exception as exc:  # decoders raise many types on corrupt streams
        raise IngestError(
            f"pixel data cannot be decoded ({type(exc).__name__})", reason="pixel_decode_failed"
        ) from exc
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:
        # Rust-backed decoders (pylibjpeg-rle) panic on some corrupt streams with pyo3's PanicException,
        # which derives from BaseException: left alone it would stop the watcher instead of one file.
        raise IngestError(
            f"pixel data decoder crashed ({type(exc).__name__})", reason="pixel_decode_failed"
        ) from exc
    if pixels.ndim != 2 or pixels.size == 0:
        raise IngestError(f"pixel array has shape {pixels.shape}", reason="unsupported_image")
    return pixels


def _read_all_elements(ds: Dataset) -> None:
    """Convert every element now (pydicom converts lazily, on first access), so a damaged one is found
    here with its tag instead of raising an arbitrary exception wherever it is first used."""
    tag = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for elem in ds.iterall():
                tag = elem.tag
    except MemoryError:
        raise
    except Exception as exc:
        after = "" if tag is None else f" after {tag}"
        raise IngestError(
            f"a DICOM element{after} cannot be read ({type(exc).__name__})", reason="damaged_element"
        ) from exc


def read_dicom_film(path: Path, sha256: str, settings: Settings) -> Film:
    ds = _parse(path)
    _read_all_elements(ds)
    photometric, bits = _check_image_module(ds)
    study_uid, sop_uid = _text(ds, "StudyInstanceUID"), _text(ds, "SOPInstanceUID")
    series_uid = _text(ds, "SeriesInstanceUID")
    if not (is_valid_uid(study_uid) and is_valid_uid(sop_uid)):
        raise IngestError("StudyInstanceUID or SOPInstanceUID missing or invalid", reason="missing_uid")
    pixels = decode_pixels(ds)
    rows, cols = int(pixels.shape[0]), int(pixels.shape[1])
    ingest = settings.ingest
    spacing = spacing_of(ds, correct_magnification=ingest.correct_magnification)
    facts = FilmFacts(
        modality=_text(ds, "Modality").upper(),
        body_part=_text(ds, "BodyPartExamined").upper(),
        view_position=_text(ds, "ViewPosition").upper(),
        laterality=(_text(ds, "ImageLaterality") or _text(ds, "Laterality")).upper(),
        rows=rows,
        columns=cols,
        row_spacing_mm=None if spacing is None else spacing.row_mm,
        descriptions=" ".join(
            _text(ds, k)
            for k in (
                "StudyDescription",
                "SeriesDescription",
                "ProtocolName",
                "RequestedProcedureDescription",
            )
        ),
    )
    view = classify(facts, settings.classify)
    check_image(pixels, settings.classify)
    flag = ""
    if spacing is None:
        if ingest.missing_spacing != "default":
            raise IngestError("no usable PixelSpacing or ImagerPixelSpacing", reason="no_spacing")
        row_mm = col_mm = ingest.default_spacing_mm
        source, flag, mag = "configured default", "default_spacing", None
    else:
        row_mm, col_mm, source, mag = spacing.row_mm, spacing.col_mm, spacing.source, spacing.magnification
    side = facts.laterality if facts.laterality in ("L", "R") else ""
    return Film(
        sha256=sha256,
        kind="dicom",
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        view=view,
        side=side,
        rows=rows,
        columns=cols,
        spacing_mm=(row_mm, col_mm),
        spacing_source=source,
        spacing_flag=flag,
        magnification=mag,
        modality=facts.modality,
        body_part=facts.body_part,
        view_position=facts.view_position,
        photometric=photometric,
        bits_stored=bits,
        transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
    )


def load_dicom_pixels(path: Path) -> NDArray[np.float32]:
    """The film's pixels as float32 with bone bright (MONOCHROME1 inverted), for processors."""
    ds = pydicom.dcmread(path)
    pixels = decode_pixels(ds).astype(np.float32)
    if _text(ds, "PhotometricInterpretation").upper() == "MONOCHROME1":
        bits = int(ds.get("BitsStored", 16))
        pixels = float(2**bits - 1) - pixels
    return pixels
