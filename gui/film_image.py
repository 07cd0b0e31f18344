"""Film pixels for display: the one film-to-[0,1] conversion of the runtime, then window/level.

The film is brought to [0, 1] bone bright by ``appliance.ingest.presentation.bone_bright_unit`` (DICOM
rescale, first VOI window, MONOCHROME1 inverted), the same conversion the landmark models saw. It is
then quantised once to 12 bits so each window/level change is one table lookup, not float arithmetic
over millions of pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import pydicom
from numpy.typing import NDArray

from appliance.ingest.dicom_reader import decode_pixels
from appliance.ingest.presentation import bone_bright_unit
from appliance.ingest.reader import is_image_file, load_pixels

LEVELS: Final = 4096


@dataclass(frozen=True)
class WindowLevel:
    """Window centre and width on the film's [0, 1] scale."""

    level: float = 0.5
    window: float = 1.0

    def clamped(self) -> WindowLevel:
        return WindowLevel(min(max(self.level, 0.0), 1.0), min(max(self.window, 0.01), 2.0))


def load_unit_image(path: Path) -> NDArray[np.float32]:
    """A film's pixels in [0, 1], bone bright."""
    if is_image_file(path):
        x = np.asarray(load_pixels(path), dtype=np.float32)
        if x.ndim == 3:
            x = x[..., :3].mean(axis=2)
        lo, hi = float(x.min()), float(x.max())
        return np.clip((x - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)
    ds = pydicom.dcmread(path)
    return bone_bright_unit(ds, decode_pixels(ds))


def quantise(unit: NDArray[np.floating]) -> NDArray[np.uint16]:
    return np.clip(np.rint(np.asarray(unit) * (LEVELS - 1)), 0, LEVELS - 1).astype(np.uint16)


def window_lut(wl: WindowLevel) -> NDArray[np.uint8]:
    """Lookup table: quantised value -> displayed grey for the window ``wl``."""
    wl = wl.clamped()
    x = np.arange(LEVELS, dtype=np.float32) / (LEVELS - 1)
    y = (x - (wl.level - wl.window / 2.0)) / wl.window
    return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)


def apply_window(q: NDArray[np.uint16], wl: WindowLevel) -> NDArray[np.uint8]:
    """Displayed 8-bit image of a quantised film under ``wl`` (C-contiguous, for QImage)."""
    return np.ascontiguousarray(window_lut(wl)[q])
