"""PyTorch -> ONNX export with metadata, a TensorRT op-support check and ORT parity.

``export_onnx`` writes a fixed-opset ONNX with named inputs/outputs, an optional dynamic batch axis
and the model's identity in ``metadata_props`` (``xr3d.model_name``, ``xr3d.model_version``,
``xr3d.training_seed``, ``xr3d.input_geometry`` as JSON, plus any other ``xr3d.*`` keys), writes U-Net
up-blocks in the exact transposed-convolution form (``export/onnx_upsample_form.py``), then runs
the check pass: ``onnx.checker`` (full check with shape inference) and
:func:`engines.opcheck.check_model` (TensorRT ONNX-parser support). ``ort_parity`` compares PyTorch
against ONNX Runtime on the CPU (max abs diff per output).

The TorchScript-based exporter (``dynamo=False``) is used: it needs no onnxscript and maps
``grid_sample`` / 3D conv / pooling directly to single ONNX ops at opset 17.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from appliance.errors import InputError
from engines.api import META_GEOMETRY, META_NAME, META_SEED, META_VERSION, ModelInfo, read_model_info
from engines.cache import sha256_file
from engines.config import EngineConfig
from engines.opcheck import OpCheckReport, check_model
from engines.ort_backend import OrtBackend
from export.onnx_upsample_form import rewrite_upsample_blocks

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
REQUIRED_METADATA = ("version", "training_seed", "input_geometry")


@dataclass(frozen=True)
class ExportResult:
    """An exported model: file, hash, what ONNX Runtime sees, and the TensorRT op-support report."""

    path: Path
    sha256: str
    opset: int
    info: ModelInfo
    opcheck: OpCheckReport
    fp16_path: Path | None = None


@dataclass(frozen=True)
class ParityResult:
    """PyTorch vs ONNX Runtime: max abs difference per output."""

    max_abs_diff: tuple[tuple[str, float], ...]
    tolerance: float

    @property
    def worst(self) -> float:
        return max((d for _, d in self.max_abs_diff), default=0.0)

    @property
    def ok(self) -> bool:
        return self.worst <= self.tolerance


def metadata_props(name: str, metadata: Mapping[str, Any]) -> dict[str, str]:
    """The ``metadata_props`` written into the ONNX; ``metadata`` must have version, seed, geometry."""
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise InputError(
            f"export metadata of {name} lacks {', '.join(missing)} (needs {', '.join(REQUIRED_METADATA)})",
            reason="bad_export_metadata",
        )
    seed = metadata["training_seed"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(
            f"training_seed of {name} must be an integer, got {seed!r}", reason="bad_export_metadata"
        )
    props = {
        META_NAME: name,
        META_VERSION: str(metadata["version"]),
        META_SEED: str(seed),
        META_GEOMETRY: json.dumps(metadata["input_geometry"], sort_keys=True),
    }
    for k, v in metadata.items():
        if k in REQUIRED_METADATA:
            continue
        props[f"xr3d.{k}"] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return props


def export_onnx(
    module: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor],
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_batch: bool = True,
    opset: int = DEFAULT_OPSET,
    metadata: Mapping[str, Any],
    name: str | None = None,
    fp16: bool = False,
    require_trt_support: bool = False,
    upsample_form: bool = True,
) -> ExportResult:
    """Export ``module`` to ``path`` and check it.

    Args:
        dynamic_batch: make axis 0 of every input and output a symbolic ``batch`` dimension.
        metadata: ``version``, ``training_seed``, ``input_geometry`` (JSON-able), extra keys allowed.
        name: model name in the metadata; defaults to the file stem.
        fp16: also write ``<stem>.fp16.onnx`` (strongly-typed fp16 internals, fp32 I/O) for TensorRT 11.
        require_trt_support: raise :class:`InputError` if the op-check finds unsupported items.
        upsample_form: write U-Net up-blocks (nearest x2 + concat + 3x3 conv) in the exact
            transposed-convolution form, faster on ONNX Runtime's CPU (``export/onnx_upsample_form.py``);
            graphs without such blocks are unaffected.
    """
    model_name = name or path.stem
    props = metadata_props(model_name, metadata)
    if len(input_names) != len(example_inputs):
        raise InputError(
            f"{model_name}: {len(input_names)} input names for {len(example_inputs)} example inputs",
            reason="bad_export_names",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic_axes = {n: {0: "batch"} for n in [*input_names, *output_names]} if dynamic_batch else None
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deprecated upstream
        torch.onnx.export(
            module,
            tuple(example_inputs),
            str(path),
            dynamo=False,
            input_names=list(input_names),
            output_names=list(output_names),
            opset_version=opset,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for k, v in sorted(props.items()):
        model.metadata_props.add(key=k, value=v)
    model.producer_name = "xr3d"
    model.doc_string = f"{model_name} {props[META_VERSION]}"
    if upsample_form:
        model = rewrite_upsample_blocks(model)
    onnx.save(model, str(path))
    report = check_onnx(path)
    log.info("%s", report.summary())
    if require_trt_support and not report.ok:
        raise InputError(report.summary(), reason="trt_unsupported_ops")
    fp16_path = None
    if fp16:
        from engines.fp16 import convert_file
        from engines.trt_build import fp16_sibling

        fp16_path = convert_file(path, fp16_sibling(path))
    return ExportResult(
        path=path,
        sha256=sha256_file(path),
        opset=opset,
        info=read_model_info(path),
        opcheck=report,
        fp16_path=fp16_path,
    )


def check_onnx(path: Path) -> OpCheckReport:
    """``onnx.checker`` (full, with shape inference) then the TensorRT op-support check."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise InputError(f"{path}: invalid ONNX: {exc}", reason="bad_onnx") from exc
    return check_model(onnx.load(str(path), load_external_data=False), name=path.name)


def ort_parity(
    module: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor],
    onnx_path: Path,
    *,
    tolerance: float = 1e-3,
    config: EngineConfig | None = None,
) -> ParityResult:
    """Run ``module`` in PyTorch and ``onnx_path`` in ONNX Runtime (CPU) on the same inputs."""
    module.eval()
    with torch.no_grad():
        ref = module(*example_inputs)
    refs = ref if isinstance(ref, tuple | list) else (ref,)
    backend = OrtBackend(onnx_path, config or EngineConfig(), device="cpu")
    try:
        feeds = {
            n: t.detach().cpu().numpy() for n, t in zip(backend.info.input_names, example_inputs, strict=True)
        }
        outs = backend.run(feeds)
    finally:
        backend.close()
    diffs = tuple(
        (n, float(np.max(np.abs(outs[n].astype(np.float64) - r.detach().cpu().numpy().astype(np.float64)))))
        for n, r in zip(backend.info.output_names, refs, strict=True)
    )
    return ParityResult(max_abs_diff=diffs, tolerance=tolerance)
