"""Export of the reconstruction network to two ONNX files, with metadata and a parity check.

* ``recon_encoder.onnx``: ``film`` (V, 1, 256, 256) -> ``features`` (V, F, 256, 256), V dynamic (F = 12 fixed
  filter-bank maps + the learned CNN maps, ``learned`` in the training config).
* ``recon_context.onnx`` (recon-1.2+, a model with a 3D shape context): ``features``, ``mats``, ``present``
  -> ``context`` (1, C, G, G, G) (export/recon/context.py).
* ``recon_decoder.onnx``: ``features`` (1, 2, F, 256, 256), ``mats`` (1, 2, 3, 4), ``present`` (1, 2),
  [``context`` (1, C, G, G, G),] ``points`` (1, N, 3) -> ``hu`` (1, N) in units of 1000 HU and ``logits``
  (1, N, 5); N dynamic.

Both run in ONNX Runtime through ``engines`` (appliance/recon/infer.py); parity with PyTorch is checked on
random points and a real-looking film (tolerance PARITY_TOL).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from appliance.recon.infer import (
    CONTEXT_MODEL,
    CUBE_VOXELS,
    DECODER_MODEL,
    ENCODER_MODEL,
    FILM_PITCH_MM,
    FILM_PX,
    FRAME_CANONICAL,
    FRAME_PATIENT,
    VOXEL_MM,
)
from engines.config import EngineConfig
from engines.ort_backend import OrtBackend
from export.onnx_export import check_onnx, metadata_props
from export.recon.data import EVAL_SEEDS, TRAIN_SEEDS
from export.recon.model import N_FIXED, ReconNet, load_net

log = logging.getLogger(__name__)

OPSET = 17
PARITY_TOL = 1e-3  # max abs difference, HU/1000 and logits


def _meta(seed: int, cfg: dict[str, Any], kind: str) -> dict[str, Any]:
    from export.recon.train import MODEL_VERSION

    return {
        "version": MODEL_VERSION,
        "training_seed": seed,
        "input_geometry": {
            "film_px": FILM_PX,
            "film_pitch_mm": FILM_PITCH_MM,
            "cube_voxels": CUBE_VOXELS,
            "voxel_mm": VOXEL_MM,
            "views": ["knee_ap", "knee_lat"],
            "features": N_FIXED + int(cfg.get("learned", 0) or 0),
            "classes": ["background", "femur", "tibia", "fibula", "patella"],
            "hu_unit": 1000.0,
        },
        "part": kind,
        "train_seed_range": list(TRAIN_SEEDS),
        "eval_seed_range": list(EVAL_SEEDS),
        "ablation": {k: cfg.get(k) for k in ("no_adv", "no_proj", "ap_only")},
        # How the runtime maps points to the network's cube (appliance/recon/orientation.py).
        "frame": FRAME_CANONICAL if cfg.get("canonical") else FRAME_PATIENT,
    }


def _write(
    module: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: Path,
    in_names: list[str],
    out_names: list[str],
    axes: dict[str, dict[int, str]],
    meta: dict[str, Any],
) -> None:
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            inputs,
            str(path),
            dynamo=False,
            input_names=in_names,
            output_names=out_names,
            opset_version=OPSET,
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for k, v in sorted(metadata_props(path.stem, meta).items()):
        model.metadata_props.add(key=k, value=v)
    model.producer_name = "xr3d"
    onnx.save(model, str(path))
    log.info("%s", check_onnx(path).summary())


class _Encoder(torch.nn.Module):
    def __init__(self, net: ReconNet) -> None:
        super().__init__()
        self.enc = net.encoder

    def forward(self, film: torch.Tensor) -> torch.Tensor:
        return self.enc(film)


class _Decoder(torch.nn.Module):
    def __init__(self, net: ReconNet) -> None:
        super().__init__()
        self.dec = net.decoder

    def forward(
        self, features: torch.Tensor, mats: torch.Tensor, present: torch.Tensor, points: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dec(features, mats, present, points)


class _ContextDecoder(torch.nn.Module):
    """The decoder of a model with a 3D context (input order of the ONNX graph: context before points)."""

    def __init__(self, net: ReconNet) -> None:
        super().__init__()
        self.dec = net.decoder

    def forward(
        self,
        features: torch.Tensor,
        mats: torch.Tensor,
        present: torch.Tensor,
        context: torch.Tensor,
        points: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dec(features, mats, present, points, context)


class _Context(torch.nn.Module):
    def __init__(self, net: ReconNet) -> None:
        super().__init__()
        assert net.context is not None
        self.ctx = net.context

    def forward(self, features: torch.Tensor, mats: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.ctx(features, mats, present)
        return out


def write_decoder(net: ReconNet, feats: torch.Tensor, path: Path, seed: int, cfg: dict[str, Any]) -> None:
    """``recon_decoder.onnx`` (and, for a model with a 3D context, ``recon_context.onnx`` beside it) from
    the features ``feats`` (1, 2, F, H, W) of the example films."""
    _, mats, present, points = example_inputs()
    axes = {"points": {1: "points"}, "hu": {1: "points"}, "logits": {1: "points"}}
    if net.context is None:
        _write(
            _Decoder(net),
            (feats, mats, present, points),
            path,
            ["features", "mats", "present", "points"],
            ["hu", "logits"],
            axes,
            _meta(seed, cfg, "decoder"),
        )
        return
    with torch.no_grad():
        ctx = net.context(feats, mats, present)
    _write(
        _Context(net),
        (feats, mats, present),
        path.parent / CONTEXT_MODEL,
        ["features", "mats", "present"],
        ["context"],
        {},
        _meta(seed, cfg, "context"),
    )
    _write(
        _ContextDecoder(net),
        (feats, mats, present, ctx, points),
        path,
        ["features", "mats", "present", "context", "points"],
        ["hu", "logits"],
        axes,
        _meta(seed, cfg, "decoder"),
    )


def example_inputs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    film = torch.rand(2, 1, FILM_PX, FILM_PX, generator=g)
    mats = torch.zeros(1, 2, 3, 4)
    mats[0, 0] = torch.tensor([[1.0, 0, 0, 0], [0, 0, -1.0, 0], [0, 0.1, 0, 1.0]])
    mats[0, 1] = torch.tensor([[0, -1.0, 0, 0], [0, 0, -1.0, 0], [0.1, 0, 0, 1.0]])
    points = torch.rand(1, 4096, 3, generator=g) * 2.0 - 1.0
    return film, mats, torch.ones(1, 2), points


def export_recon(
    net: ReconNet, models_dir: Path, seed: int, cfg: dict[str, Any]
) -> tuple[tuple[Path, ...], dict[str, float]]:
    """Write both ONNX files to ``models_dir``; returns the paths and the parity max abs differences."""
    models_dir.mkdir(parents=True, exist_ok=True)
    film = example_inputs()[0]
    enc = _Encoder(net)
    with torch.no_grad():
        feats = enc(film)
    p_enc, p_dec = models_dir / ENCODER_MODEL, models_dir / DECODER_MODEL
    _write(
        enc,
        (film,),
        p_enc,
        ["film"],
        ["features"],
        {"film": {0: "views"}, "features": {0: "views"}},
        _meta(seed, cfg, "encoder"),
    )
    write_decoder(net, feats[None], p_dec, seed, cfg)
    paths = (p_enc, p_dec) if net.context is None else (p_enc, models_dir / CONTEXT_MODEL, p_dec)
    return paths, parity(net, models_dir)


def parity(net: ReconNet, models_dir: Path) -> dict[str, float]:
    """Max abs difference PyTorch vs ONNX Runtime (CPU) for features, HU and logits, with both views and
    AP only (``present`` (1, 0): the export form samples an absent view outside its frame); raises
    ``ValueError`` above PARITY_TOL. Points reach 1.5x past the cube so some project off the frame."""
    film, mats, present, points = example_inputs(1)
    points = torch.cat([points, points[:, :1024] * 1.5], dim=1)
    ap_only = torch.tensor([[1.0, 0.0]])
    net.eval()
    with torch.no_grad():
        f_ref = net.encoder(film)
        ref = {}
        for suffix, pres in (("", present), ("_ap_only", ap_only)):
            ctx = net.make_context(f_ref[None], mats, pres)
            ref[suffix] = (ctx, *net.decoder(f_ref[None], mats, pres, points, ctx))
    cfg = EngineConfig()
    be = OrtBackend(models_dir / ENCODER_MODEL, cfg, device="cpu")
    bd = OrtBackend(models_dir / DECODER_MODEL, cfg, device="cpu")
    bc = OrtBackend(models_dir / CONTEXT_MODEL, cfg, device="cpu") if net.context is not None else None
    res: dict[str, float] = {}
    try:
        f = be.run({"film": film.numpy()})["features"]
        res["features"] = float(np.abs(f - f_ref.numpy()).max())
        for suffix, pres in (("", present), ("_ap_only", ap_only)):
            feeds = {"features": f[None], "mats": mats.numpy(), "present": pres.numpy()}
            ctx_ref, hu_ref, lg_ref = ref[suffix]
            if bc is not None and ctx_ref is not None:
                c = bc.run(feeds)["context"]
                res["context" + suffix] = float(np.abs(c - ctx_ref.numpy()).max())
                feeds["context"] = c
            out = bd.run({**feeds, "points": points.numpy()})
            res["hu" + suffix] = float(np.abs(out["hu"] - hu_ref.numpy()).max())
            res["logits" + suffix] = float(np.abs(out["logits"] - lg_ref.numpy()).max())
    finally:
        be.close()
        bd.close()
        if bc is not None:
            bc.close()
    worst = max(res.values())
    log.info("recon ONNX parity (max abs diff): %s", res)
    if worst > PARITY_TOL:
        raise ValueError(f"recon ONNX differs from PyTorch by {worst:.2e} > {PARITY_TOL} ({res})")
    return res


def export_checkpoint(checkpoint: Path, models_dir: Path) -> tuple[tuple[Path, ...], dict[str, float]]:
    """Export a ``recon.pt`` written by training."""
    ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg = ck.get("config", {})
    net = load_net(ck["net"], cfg)
    return export_recon(net, models_dir, int(cfg.get("seed", 0)), cfg)


def export_decoder_checkpoint(checkpoint: Path, models_dir: Path) -> dict[str, float]:
    """Re-export only ``recon_decoder.onnx`` from a ``recon.pt`` (same module, metadata and parity check
    as :func:`export_recon`; the encoder file in ``models_dir`` is kept and used for the parity run)."""
    ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg = ck.get("config", {})
    net = load_net(ck["net"], cfg)
    film = example_inputs()[0]
    with torch.no_grad():
        feats = net.encoder(film)
    write_decoder(net, feats[None], models_dir / DECODER_MODEL, int(cfg.get("seed", 0)), cfg)
    return parity(net, models_dir)
