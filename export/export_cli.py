"""``xr3d export onnx|tensorrt|triton``: argparse glue (``xr3d bench`` is :mod:`export.bench_cli`).

The registry of shipped models is :data:`SHIPPED_MODELS` (the three stages of the long-leg landmark model
and the two parts of the reconstruction network, weights in ``models/``). A model registers by adding a
:class:`ShippedModel` whose ``build`` returns the trained module (eval mode), an example input (also the
realistic call ``xr3d bench --shipped`` times), I/O names and metadata (version, training seed, input
geometry), exactly like :func:`export.reference_models.build_reference` does.

Only ``xr3d export onnx`` and ``xr3d bench --reference/--shipped`` need torch, and import it lazily, so
``xr3d export tensorrt`` and ``xr3d bench --onnx`` work on a runtime-only install.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.errors import InputError
from engines.config import EngineConfig

if TYPE_CHECKING:
    from export.reference_models import ReferenceModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShippedModel:
    """A product model that ``xr3d export onnx`` exports."""

    name: str
    build: Callable[[], ReferenceModel]
    dynamic_batch: bool = True
    dynamic_axes: tuple[tuple[str, int, str], ...] = ()
    """(tensor, axis, symbol) exported as symbolic instead of the batch axis (the decoder's point count)."""


def _landmarks(stage: str) -> Callable[[], ReferenceModel]:
    def build() -> ReferenceModel:
        from export.training.landmarks import build_shipped

        model: ReferenceModel = build_shipped(stage)
        return model

    return build


def _landmarks_fine() -> ReferenceModel:
    """Stage 3 of the long-leg landmark model (models/landmarks_fine.pt)."""
    from export.training.landmarks_fine import build_shipped_fine

    model: ReferenceModel = build_shipped_fine()
    return model


def _knee_landmarks() -> ReferenceModel:
    """The knee AP / lateral landmark model (models/knee_landmarks.pt)."""
    from export.training.knee_landmarks import build_shipped

    model: ReferenceModel = build_shipped()
    return model


def recon_chunk() -> int:
    """Points per decoder call in the runtime (``Reconstructor``'s default), the decoder's bench input."""
    import inspect

    from appliance.recon.infer import Reconstructor

    return int(inspect.signature(Reconstructor.__init__).parameters["chunk"].default)


def _recon(part: str) -> Callable[[], ReferenceModel]:
    """Encoder, context (recon-1.2+) or decoder of ``models/recon.pt``, loaded the way
    export/recon/onnx_io.py exports it."""

    def build() -> ReferenceModel:
        import torch

        from appliance.recon.infer import DEFAULT_MODELS_DIR
        from export.recon.model import load_net
        from export.recon.onnx_io import _Context, _ContextDecoder, _meta, example_inputs
        from export.reference_models import ReferenceModel

        ckpt = DEFAULT_MODELS_DIR / "recon.pt"
        if not ckpt.is_file():
            raise InputError(f"reconstruction weights missing: {ckpt}", reason="model_missing")
        ck = torch.load(ckpt, map_location="cpu", weights_only=False)
        cfg = ck.get("config", {})
        # Learned encoder (recon-1.1) and decoder; the fixed filter-bank kernels are rebuilt from constants.
        net = load_net(ck["net"], cfg)
        net.eval()
        film, mats, present, _ = example_inputs()
        seed = int(cfg.get("seed", 0))
        if part == "encoder":
            meta = _meta(seed, cfg, "encoder")
            return ReferenceModel("recon_encoder", net.encoder, (film,), ("film",), ("features",), meta)
        with torch.no_grad():
            feats = net.encoder(film)[None]
            ctx = net.make_context(feats, mats, present)
        if part == "context":
            if ctx is None:
                raise InputError(f"{ckpt} has no 3D context (a recon-1.0/1.1 model)", reason="model_missing")
            return ReferenceModel(
                "recon_context",
                _Context(net),
                (feats, mats, present),
                ("features", "mats", "present"),
                ("context",),
                _meta(seed, cfg, "context"),
            )
        # A realistic decoder call: features of a film pair and one runtime chunk of points in the cube.
        gen = torch.Generator().manual_seed(0)
        points = torch.rand(1, recon_chunk(), 3, generator=gen) * 2.0 - 1.0
        meta = _meta(seed, cfg, "decoder")
        if ctx is not None:
            return ReferenceModel(
                "recon_decoder",
                _ContextDecoder(net),
                (feats, mats, present, ctx, points),
                ("features", "mats", "present", "context", "points"),
                ("hu", "logits"),
                meta,
            )
        return ReferenceModel(
            "recon_decoder",
            net.decoder,
            (feats, mats, present, points),
            ("features", "mats", "present", "points"),
            ("hu", "logits"),
            meta,
        )

    return build


def _recon_orient() -> ReferenceModel:
    """The orientation model of knee-canonical reconstruction (models/recon_orient.pt, recon-1.4+)."""
    import torch

    from appliance.recon.infer import DEFAULT_MODELS_DIR, FILM_PX
    from export.recon.orient import load_orient, orient_meta
    from export.reference_models import ReferenceModel

    ckpt = DEFAULT_MODELS_DIR / "recon_orient.pt"
    if not ckpt.is_file():
        raise InputError(f"orientation weights missing: {ckpt}", reason="model_missing")
    net, seed = load_orient(ckpt)
    films = torch.rand(1, 2, FILM_PX, FILM_PX, generator=torch.Generator().manual_seed(0))
    return ReferenceModel("recon_orient", net, (films,), ("films",), ("angle_deg",), orient_meta(seed))


_POINT_AXES = (("points", 1, "points"), ("hu", 1, "points"), ("logits", 1, "points"))

SHIPPED_MODELS: tuple[ShippedModel, ...] = (
    ShippedModel("landmarks_whole", _landmarks("whole")),
    ShippedModel("landmarks_crop", _landmarks("crop")),
    ShippedModel("landmarks_fine", _landmarks_fine),
    ShippedModel("recon_encoder", _recon("encoder")),
    ShippedModel("recon_context", _recon("context"), dynamic_batch=False),
    ShippedModel("recon_decoder", _recon("decoder"), dynamic_batch=False, dynamic_axes=_POINT_AXES),
    ShippedModel("recon_orient", _recon_orient),
    ShippedModel("knee_landmarks", _knee_landmarks),
)
"""Product models to export: the three stages of the long-leg landmark model (issue 4); the encoder, 3D shape
context and point decoder of the reconstruction network (issue 5, recon-1.2) and its orientation model
(recon-1.4, knee-canonical frame); and the knee AP / lateral
landmark model (issue 4, knee films); weights in models/."""


def say(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``export`` (onnx, tensorrt, triton); ``bench`` registers through :func:`register_bench`."""
    p = sub.add_parser("export", help="export models to ONNX, TensorRT engines or a Triton model repository")
    esub = p.add_subparsers(dest="export_target", metavar="TARGET", required=True)

    po = esub.add_parser(
        "onnx",
        help="export shipped models to ONNX (opset 17, metadata, TensorRT op check, ORT parity)",
        description=(
            "Export shipped models to ONNX with a fixed opset, named inputs/outputs, dynamic batch and "
            "metadata (model version, training seed, input geometry); check each graph with onnx.checker "
            "and against TensorRT's ONNX operator support; compare ONNX Runtime with PyTorch. "
            f"Shipped models registered: {len(SHIPPED_MODELS)} (--reference exports the small "
            "reference networks)."
        ),
    )
    sel = po.add_mutually_exclusive_group(required=True)
    sel.add_argument("--model", metavar="NAME", help="one shipped model")
    sel.add_argument("--all", action="store_true", help="every shipped model")
    sel.add_argument(
        "--reference", action="store_true", help="the reference networks (engine machinery tests)"
    )
    po.add_argument("--out", type=Path, required=True, help="output folder")
    po.add_argument("--opset", type=int, default=17)
    po.add_argument("--fp16", action="store_true", help="also write <name>.fp16.onnx for TensorRT 11 FP16")
    po.add_argument("--strict", action="store_true", help="fail if TensorRT would not support a graph")
    po.add_argument("--json", action="store_true", help="machine-readable summary")
    po.set_defaults(func=run_export_onnx)

    pt = esub.add_parser(
        "tensorrt",
        help="build TensorRT engines (cached per GPU/TensorRT/ONNX/profile); needs an NVIDIA GPU",
        description=(
            "Build TensorRT engines from ONNX files into the engine cache, or reuse cached ones. Stale "
            "engines (other GPU, TensorRT version, ONNX, profile or precision) are rebuilt. Without an "
            "NVIDIA GPU and TensorRT this says so and exits 2."
        ),
    )
    tsel = pt.add_mutually_exclusive_group(required=True)
    tsel.add_argument("--onnx", type=Path, nargs="+", metavar="FILE", help="ONNX file(s)")
    tsel.add_argument("--all", type=Path, metavar="DIR", help="every *.onnx in DIR")
    add_engine_args(pt)
    pt.add_argument("--workspace-mb", type=int, default=2048, help="builder workspace limit (MiB)")
    pt.add_argument(
        "--fp16", action="store_true", help="FP16 engine (TRT 10: flag; TRT 11: <name>.fp16.onnx)"
    )
    pt.add_argument("--max-batch", type=int, default=4, help="largest batch of the optimisation profile")
    pt.set_defaults(func=run_export_tensorrt)

    pr = esub.add_parser(
        "triton",
        help="write a Triton Inference Server model repository (ONNX and, if given, TensorRT plans)",
    )
    pr.add_argument("--onnx", type=Path, nargs="+", required=True, metavar="FILE")
    pr.add_argument("--plan", type=Path, nargs="*", default=[], metavar="FILE", help="plans, same order")
    pr.add_argument("--out", type=Path, required=True, help="repository folder")
    pr.add_argument("--max-batch", type=int, default=8)
    pr.add_argument("--instances", type=int, default=1)
    pr.add_argument("--cpu", action="store_true", help="ONNX variants on KIND_CPU instances")
    pr.set_defaults(func=run_export_triton)


def add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache-dir", type=Path, default=None, help="engine cache (default ~/.cache/xr3d/engines)"
    )
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores)")


def engine_config(args: argparse.Namespace, **extra: Any) -> EngineConfig:
    values: dict[str, Any] = {"cpu_threads": args.threads, **extra}
    if args.cache_dir is not None:
        values["cache_dir"] = args.cache_dir
    return EngineConfig(**values)


def _models_to_export(args: argparse.Namespace) -> list[ShippedModel]:
    if args.reference:
        from export.reference_models import REFERENCE_NAMES, build_reference

        def builder(n: str) -> Callable[[], ReferenceModel]:
            return lambda: build_reference(n, scale="bench")

        return [ShippedModel(f"ref-{n}", builder(n)) for n in REFERENCE_NAMES]
    if not SHIPPED_MODELS:
        raise InputError(
            "no shipped models are registered yet (no product model has been trained); models are added "
            "to SHIPPED_MODELS in export/export_cli.py. Use --reference to export the reference networks.",
            reason="no_shipped_models",
        )
    if args.all:
        return list(SHIPPED_MODELS)
    for m in SHIPPED_MODELS:
        if m.name == args.model:
            return [m]
    known = ", ".join(m.name for m in SHIPPED_MODELS)
    raise InputError(f"unknown model {args.model!r}; shipped models: {known}", reason="unknown_model")


def export_shipped(model: ShippedModel, spec: ReferenceModel, path: Path, opset: int, fp16: bool) -> Any:
    """Export one model; returns :class:`export.onnx_export.ExportResult`.

    ``export_onnx`` only knows a dynamic batch axis, so a model with other symbolic axes (the decoder's
    point count) is traced here with those axes and then written through ``export_onnx``'s own steps
    (metadata, op check, hash, optional FP16 sibling).
    """
    from export.onnx_export import export_onnx

    if not model.dynamic_axes:
        return export_onnx(
            spec.module,
            spec.example,
            path,
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_batch=model.dynamic_batch,
            opset=opset,
            metadata=spec.metadata,
            name=model.name,
            fp16=fp16,
        )
    return _export_axes(model, spec, path, opset, fp16)


def _export_axes(model: ShippedModel, spec: ReferenceModel, path: Path, opset: int, fp16: bool) -> Any:
    import warnings

    import onnx
    import torch

    from engines.api import META_VERSION, read_model_info
    from engines.cache import sha256_file
    from export.onnx_export import ExportResult, check_onnx, metadata_props

    axes: dict[str, dict[int, str]] = {}
    for tensor, axis, symbol in model.dynamic_axes:
        axes.setdefault(tensor, {})[axis] = symbol
    path.parent.mkdir(parents=True, exist_ok=True)
    spec.module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            spec.module,
            tuple(spec.example),
            str(path),
            dynamo=False,
            input_names=list(spec.input_names),
            output_names=list(spec.output_names),
            opset_version=opset,
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    props = metadata_props(model.name, spec.metadata)
    onx = onnx.load(str(path))
    del onx.metadata_props[:]
    for k, v in sorted(props.items()):
        onx.metadata_props.add(key=k, value=v)
    onx.producer_name = "xr3d"
    onx.doc_string = f"{model.name} {props[META_VERSION]}"
    onnx.save(onx, str(path))
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
        opcheck=check_onnx(path),
        fp16_path=fp16_path,
    )


def run_export_onnx(args: argparse.Namespace) -> int:
    from export.onnx_export import ort_parity

    rows = []
    failed = False
    for model in _models_to_export(args):
        name = model.name
        spec = model.build()
        path = args.out / f"{name}.onnx"
        res = export_shipped(model, spec, path, args.opset, args.fp16)
        parity = ort_parity(spec.module, spec.example, path)
        failed |= not parity.ok or (args.strict and not res.opcheck.ok)
        rows.append(
            {
                "model": name,
                "onnx": str(path),
                "sha256": res.sha256,
                "fp16_onnx": str(res.fp16_path) if res.fp16_path else None,
                "opset": res.opset,
                "tensorrt_ops_ok": res.opcheck.ok,
                "opcheck": res.opcheck.to_json(),
                "ort_parity_max_abs_diff": parity.worst,
                "parity_ok": parity.ok,
            }
        )
        if not args.json:
            sys.stdout.write(res.opcheck.summary() + "\n")
            sys.stdout.write(
                f"  -> {path} sha256 {res.sha256[:12]}; ORT vs PyTorch max |diff| {parity.worst:.2e} "
                f"({'ok' if parity.ok else 'FAIL'} at {parity.tolerance:g})\n"
            )
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    return 1 if failed else 0


def run_export_tensorrt(args: argparse.Namespace) -> int:
    from engines.trt_export import build_engines, find_onnx

    config = engine_config(
        args, workspace_bytes=args.workspace_mb << 20, fp16=args.fp16, max_batch=args.max_batch
    )
    files = find_onnx(args.onnx or [], args.all)
    outcomes = build_engines(files, config, say)
    for o in outcomes:
        sys.stdout.write(f"{o.status:7s} {o.onnx.name}: {o.plan or '-'} ({o.detail})\n")
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def run_export_triton(args: argparse.Namespace) -> int:
    from engines.triton import RepositoryEntry, write_model_repository

    if args.plan and len(args.plan) != len(args.onnx):
        raise InputError("--plan needs one plan per --onnx file, same order", reason="bad_arguments")
    plans: list[Path | None] = list(args.plan) if args.plan else [None] * len(args.onnx)
    entries = [RepositoryEntry(o, p) for o, p in zip(args.onnx, plans, strict=True)]
    folders = write_model_repository(
        args.out,
        entries,
        max_batch_size=args.max_batch,
        instance_count=args.instances,
        onnx_kind="KIND_CPU" if args.cpu else "KIND_GPU",
    )
    for f in folders:
        sys.stdout.write(f"{f}\n")
    return 0
