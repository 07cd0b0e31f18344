"""The reconstruction decoder's ONNX export form (``PointDecoder.forward_channels_first``) computes the
trained function (``PointDecoder.forward``) within 1e-3, in PyTorch and as the shipped ONNX on ONNX Runtime.

The export form differs from ``forward`` in how it computes, not what: GridSample with
align_corners=False on remapped coordinates, absent views sampled off the frame, double-angle Fourier
octaves, a split first layer (docs/engines.md, "Reconstruction decoder export form").
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

if TYPE_CHECKING:
    from torch import Tensor

from appliance.recon.infer import DECODER_MODEL, DEFAULT_MODELS_DIR  # noqa: E402
from export.recon.model import (  # noqa: E402
    FilmEncoder,
    PointDecoder,
    fourier,
    fourier_channels_first,
    load_net,
)
from export.recon.onnx_io import PARITY_TOL, example_inputs  # noqa: E402

SHIPPED_DECODER = DEFAULT_MODELS_DIR / DECODER_MODEL
SHIPPED_CKPT = DEFAULT_MODELS_DIR / "recon.pt"
AP_ONLY = torch.tensor([[1.0, 0.0]])


def _points(n: int, seed: int, spread: float = 1.0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1, n, 3, generator=g) * 2.0 - 1.0) * spread


def _grid_points(step: int = 8) -> Tensor:
    """Voxel centres of a coarse sub-grid of the cube, in the runtime's order (as appliance.recon.infer)."""
    idx = np.stack(np.meshgrid(*(np.arange(0, 144, step),) * 3, indexing="ij"), -1).reshape(-1, 3)
    return torch.from_numpy((idx * (2.0 / 143.0) - 1.0).astype(np.float32))[None]


def _smooth_film(seed: int) -> Tensor:
    """A film-like frame: smooth blobs and an edge, not pixel noise (the shapes real films have)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 256), torch.linspace(-1, 1, 256), indexing="ij")
    films = []
    for _ in range(2):
        c = torch.rand(4, 3, generator=g)
        img = 0.2 + 0.5 * (xx > c[0, 0] - 0.5).float() * (yy < c[0, 1]).float()
        for cx, cy, r in c[1:]:
            img = img + 0.3 * torch.exp(
                -((xx - (cx * 2 - 1)) ** 2 + (yy - (cy * 2 - 1)) ** 2) / (0.05 + 0.2 * r)
            )
        films.append(img.clamp(0, 1))
    return torch.stack(films)[:, None]


def _random_decoder(learned: int = 16) -> tuple[FilmEncoder, PointDecoder]:
    torch.manual_seed(3)
    enc = FilmEncoder(learned).eval()
    return enc, PointDecoder(64, enc.n_out).eval()


def test_fourier_channels_first_matches_fourier() -> None:
    p = _points(5000, 1, spread=1.3)
    ref = fourier(p).transpose(1, 2)
    got = fourier_channels_first(p.transpose(1, 2))
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) < 1e-5


@pytest.mark.parametrize("present", [torch.ones(1, 2), AP_ONLY], ids=["biplanar", "ap_only"])
def test_export_form_equals_forward_in_pytorch(present: Tensor) -> None:
    enc, dec = _random_decoder()
    film, mats, _, _ = example_inputs(2)
    with torch.no_grad():
        feats = enc(film)[None]
        # Points up to 1.5x past the cube: some project off the frame, where zero padding matters.
        pts = torch.cat([_points(6000, 4), _points(2000, 5, spread=1.5)], dim=1)
        hu0, lg0 = dec(feats, mats, present, pts)
        hu1, lg1 = dec.forward_channels_first(feats, mats, present, pts)
    assert hu1.shape == hu0.shape and lg1.shape == lg0.shape
    assert float((hu1 - hu0).abs().max()) < PARITY_TOL
    assert float((lg1 - lg0).abs().max()) < PARITY_TOL


def test_absent_view_ignores_its_matrix() -> None:
    """AP only: whatever the lateral matrix projects to, the lateral view contributes nothing (as in
    forward, where its features are multiplied by 0)."""
    enc, dec = _random_decoder()
    film, mats, _, _ = example_inputs(3)
    wild = mats.clone()
    wild[0, 1] = torch.tensor([[40.0, 3.0, -7.0, 0.2], [0.5, -30.0, 2.0, -0.1], [0.0, 0.0, 0.0, 1e-6]])
    with torch.no_grad():
        feats = enc(film)[None]
        pts = _points(4000, 6)
        ref = dec.forward_channels_first(feats, mats, AP_ONLY, pts)
        got = dec.forward_channels_first(feats, wild, AP_ONLY, pts)
        base = dec(feats, wild, AP_ONLY, pts)
    assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])
    assert float((got[1] - base[1]).abs().max()) < PARITY_TOL


@pytest.fixture(scope="module")
def shipped() -> Iterator[tuple[Any, Any]]:
    """(trained ReconNet from recon.pt, ORT-CPU backend of the shipped decoder ONNX)."""
    if not (SHIPPED_DECODER.is_file() and SHIPPED_CKPT.is_file()):
        pytest.skip("no shipped recon model")
    from engines.config import EngineConfig
    from engines.ort_backend import OrtBackend

    ck = torch.load(SHIPPED_CKPT, map_location="cpu", weights_only=False)
    net = load_net(ck["net"], ck.get("config", {})).eval()
    be = OrtBackend(SHIPPED_DECODER, EngineConfig(cpu_threads=1), device="cpu")
    yield net, be
    be.close()


@pytest.mark.parametrize("present", [torch.ones(1, 2), AP_ONLY], ids=["biplanar", "ap_only"])
@pytest.mark.parametrize("kind", ["grid", "random", "noise_film"])
def test_shipped_onnx_equals_pytorch_forward(shipped: tuple[Any, Any], kind: str, present: Tensor) -> None:
    """models/recon_decoder.onnx on ONNX Runtime vs the trained function in PyTorch (recon.pt)."""
    net, be = shipped
    film, mats, _, _ = example_inputs(4)
    if kind != "noise_film":  # pixel noise is the worst case for coordinate rounding; films are smoother
        film = _smooth_film(4)
    pts = _grid_points() if kind == "grid" else _points(12000, 7, spread=1.2)
    with torch.no_grad():
        feats = net.encoder(film)[None]
        ctx = net.make_context(feats, mats, present)  # recon-1.2+: the 3D context the decoder samples
        hu_ref, lg_ref = net.decoder(feats, mats, present, pts, ctx)
    feeds = {
        "features": feats.numpy(),
        "mats": mats.numpy(),
        "present": present.numpy(),
        "points": pts.numpy(),
    }
    if ctx is not None:
        feeds["context"] = ctx.numpy()
    out = be.run(feeds)
    assert out["hu"].shape == tuple(hu_ref.shape)
    assert float(np.abs(out["hu"] - hu_ref.numpy()).max()) < PARITY_TOL
    assert float(np.abs(out["logits"] - lg_ref.numpy()).max()) < PARITY_TOL


@pytest.mark.skipif(not SHIPPED_DECODER.is_file(), reason="no shipped recon decoder")
def test_shipped_decoder_uses_fast_gridsample_and_passes_opcheck() -> None:
    """GridSample in the mode ONNX Runtime's fast path covers (bilinear, zeros, align_corners=0), and
    every op TensorRT-supported."""
    import onnx

    from engines.opcheck import check_onnx_file

    model = onnx.load(str(SHIPPED_DECODER))
    gs = [n for n in model.graph.node if n.op_type == "GridSample"]
    has_context = "context" in [i.name for i in model.graph.input]
    assert len(gs) == (2 if has_context else 1)  # the film features, and the 3D context's 2D tiling
    for node in gs:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs.get("align_corners", 0) == 0
        assert attrs.get("padding_mode", b"zeros") in (b"zeros", "zeros")
        assert attrs.get("mode") in (b"bilinear", b"linear", "bilinear", "linear")
    report = check_onnx_file(Path(SHIPPED_DECODER))
    assert report.ok, report.summary()


def test_encoder_export_filter_bank_equals_fixed() -> None:
    """The encoder's export form of the fixed filter bank (one 1 -> 16 horizontal convolution, one
    16-channel depthwise vertical one) computes the same 12 maps as the 22 separable convolutions."""
    enc = FilmEncoder(0).eval()
    g = torch.Generator().manual_seed(8)
    img = torch.rand(2, 1, 256, 256, generator=g)
    img[:, :, :, :40] = 0.0  # black margin: the zero padding and the film edge
    with torch.no_grad():
        ref = enc.fixed(img)
        got = enc.fixed_stacked(img)
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) < 1e-5
    # The stacked kernels are derived constants, not weights: checkpoints keep their keys.
    assert not any(k.startswith("stack_") for k in enc.state_dict())
