"""The long-leg overlay (landmarks, axes, values drawn on the film) as a Secondary Capture Image.

``build_overlay_sc(png_path, source, key=..., created=...)`` returns an SC Image Storage Dataset:
RGB, 8 bits, the PNG's own size (the overlay is drawn at the film's size, so its pixels line up with the
source film's), patient/study copied from the source film, a new series, ImageType DERIVED\\SECONDARY,
SourceImageSequence naming the film, BurnedInAnnotation YES (values are drawn into the pixels).
Pixels are stored RLE Lossless (:func:`compress_rle`). ``write_overlay_sc(path, ...)`` saves it.
"""

from __future__ import annotations

import importlib.util
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless, SecondaryCaptureImageStorage

from appliance.errors import InputError
from appliance.outputs.common import (
    DEFAULT_EQUIPMENT,
    Equipment,
    base_dataset,
    dicom_date_time,
    output_uid,
    referenced_image_item,
    require_source,
    save,
)

log = logging.getLogger(__name__)

__all__ = ["SC_SERIES_NUMBER", "build_overlay_sc", "compress_rle", "load_rgb", "write_overlay_sc"]

SC_SERIES_NUMBER: Final = 9002
SC_SERIES_DESCRIPTION: Final = "xr3d alignment overlay"


def load_rgb(png_path: Path) -> NDArray[np.uint8]:
    """The picture as (rows, columns, 3) uint8 RGB (alpha dropped over white, palette expanded)."""
    try:
        with Image.open(png_path) as opened:
            opened.load()
            im: Image.Image = opened
            if im.mode in ("RGBA", "LA", "P"):
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, rgba)
            # The overlay is already 8-bit RGB: no convert() copy of its ~14 MB (one copy fewer).
            rgb = np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{Path(png_path).name}: not a readable picture ({exc})", reason="bad_picture"
        ) from exc
    return np.ascontiguousarray(rgb)


def compress_rle(ds: Dataset) -> None:
    """Re-encode ``ds``'s pixels as RLE Lossless, in place (transfer syntax and file meta follow).

    A long-leg overlay is ~14 MB of uncompressed RGB; RLE Lossless makes it ~2.3x smaller and, unlike
    JPEG-LS (2.4 MB but not accepted by every PACS), is part of every archive's baseline and decodable by
    pydicom with no plugin. pylibjpeg-rle encodes it in ~0.2 s; pydicom's own encoder (~2 s) is the
    fallback where that wheel is missing.
    """
    plugin = "pylibjpeg" if importlib.util.find_spec("rle") is not None else "pydicom"
    ds.compress(RLELossless, encoding_plugin=plugin)


def build_overlay_sc(
    png_path: Path,
    source: Dataset,
    *,
    key: str,
    created: datetime | None = None,
    equipment: Equipment = DEFAULT_EQUIPMENT,
    series_number: int = SC_SERIES_NUMBER,
    description: str = SC_SERIES_DESCRIPTION,
    kind: str = "overlay",
) -> Dataset:
    """The SC Image of ``png_path`` (module docstring); ``key`` seeds the UIDs (with ``kind``)."""
    ref = require_source(source, "source film")
    rgb = load_rgb(Path(png_path))
    when = created or datetime.now(UTC)
    ds = base_dataset(
        source,
        sop_class_uid=SecondaryCaptureImageStorage,
        sop_instance_uid=output_uid(key, f"{kind}.instance"),
        series_uid=output_uid(key, f"{kind}.series"),
        series_number=series_number,
        series_description=description,
        modality="OT",
        created=when,
        equipment=equipment,
    )
    # SC Equipment: WSD = "workstation", the overlay was drawn by software.
    ds.ConversionType = "WSD"
    ds.SecondaryCaptureDeviceManufacturer = equipment.manufacturer
    ds.SecondaryCaptureDeviceManufacturerModelName = equipment.model_name
    ds.SecondaryCaptureDeviceSoftwareVersions = equipment.software_versions
    ds.DateOfSecondaryCapture, ds.TimeOfSecondaryCapture = dicom_date_time(when)
    # General Image
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.PatientOrientation = list(source.get("PatientOrientation") or [])
    lat = source.get("ImageLaterality") or source.get("Laterality")
    if lat in ("L", "R"):
        ds.ImageLaterality = lat
    ds.BurnedInAnnotation = "YES"
    ds.DerivationDescription = "Landmarks, mechanical axes and alignment values drawn over the film by xr3d"
    src_item = referenced_image_item(ref)
    ds.SourceImageSequence = [src_item]
    # Image Pixel
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = int(rgb.shape[0]), int(rgb.shape[1])
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "00"
    ds.PixelData = rgb.tobytes()
    compress_rle(ds)
    log.info("overlay SC built: %d x %d RGB, RLE Lossless", ds.Columns, ds.Rows)
    return ds


def write_overlay_sc(path: Path, png_path: Path, source: Dataset, **kwargs: Any) -> Path:
    """``build_overlay_sc(png_path, source, **kwargs)`` saved to ``path``."""
    return save(build_overlay_sc(png_path, source, **kwargs), Path(path))
