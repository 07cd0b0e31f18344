"""Shared test helper: a reference network exported to ONNX (the engines tests' real model)."""

from __future__ import annotations

from pathlib import Path

from export.onnx_export import export_onnx
from export.reference_models import build_reference


def export_reference(folder: Path, kind: str, *, fp16: bool = False) -> Path:
    """Export the reference model ``kind`` ("landmark2d" | "volume3d") to ``folder/ref-<kind>.onnx``."""
    ref = build_reference(kind)
    path = folder / f"ref-{kind}.onnx"
    export_onnx(
        ref.module,
        ref.example,
        path,
        input_names=ref.input_names,
        output_names=ref.output_names,
        metadata=ref.metadata,
        name=ref.name,
        fp16=fp16,
    )
    return path
