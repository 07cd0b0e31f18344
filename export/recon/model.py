"""The reconstruction network: a 2D film encoder and an implicit, geometry-driven 3D decoder.

* :class:`FilmEncoder` turns a 256 x 256 film frame (0.75 mm/px at the detector) into feature maps: a fixed
  multi-scale filter bank (``N_FIXED`` maps, see its docstring), optionally followed by ``learned`` maps of a
  small CNN (:class:`LearnedFilmEncoder`, trained end to end with the decoder).
* :class:`PointDecoder` takes points in normalised cube coordinates (-1..1 per axis), projects each through
  every view's 3x4 matrix (normalised cube -> normalised frame), samples the feature maps there
  (bilinear ``grid_sample``), zeroes views that are absent (``present`` flag, AP-only mode), adds a
  Fourier encoding of the point and maps it with an MLP to HU (in units of 1000 HU) and 5 label logits
  (background, femur, tibia, fibula, patella). Features reach a 3D point only along the real ray through
  it.
* :class:`PatchDiscriminator` judges 16^3 HU blocks (adversarial term).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from export.recon.context import GRID, ContextNet, back_project, fast_path_coords, sample_volume

N_FREQ = 3
N_CLASSES = 5
N_VIEWS = 2
SIGMAS = (1.0, 2.0, 4.0, 8.0, 16.0)  # frame pixels (0.75 mm at the detector)
GRAD_SIGMAS = (1.0, 2.0, 4.0)
N_FIXED = 1 + len(SIGMAS) + 2 * len(GRAD_SIGMAS)
N_FEAT = N_FIXED  # features of the fixed-encoder model (``learned=0``)
_STACK = 16  # channels of the export form's depthwise filter bank (ONNX Runtime's NCHWc block on AVX-512)


def _gauss(sigma: float, order: int) -> Tensor:
    r = math.ceil(3.0 * sigma)
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    if order == 1:
        g = -x / sigma**2 * g
        g = g * sigma  # scale-normalised derivative
    return g


class FilmEncoder(nn.Module):
    """Fixed multi-scale filter bank: the film, Gaussian blurs (sigma 1-16 px = 0.75-12 mm at the
    detector) and scale-normalised x/y derivatives (sigma 1-4 px). Fixed rather than learned because the
    training budget is a shared 2-core CPU: the features of every sample are computed once, and each
    step then costs only the point decoder (docs/recon.md)."""

    def __init__(self, learned: int = 0, fine: int = 0) -> None:
        super().__init__()
        self.n_learned = int(learned)
        if fine and not learned:
            raise ValueError("a full-resolution film level needs the learned CNN (learned > 0)")
        self.cnn = LearnedFilmEncoder(self.n_learned, fine) if self.n_learned else None
        # Kernels are derived from the constants, so they are not part of the checkpoint.
        for i, sg in enumerate(SIGMAS):
            self._kernel(f"g{i}", _gauss(sg, 0))
        for i, sg in enumerate(GRAD_SIGMAS):
            self._kernel(f"gs{i}", _gauss(sg, 0))
            self._kernel(f"gd{i}", _gauss(sg, 1))
        # The export form's stacked bank (constants, so the ONNX graph holds them as initializers).
        kx, ky = self.stacked_kernels()
        self.register_buffer("stack_x", kx, persistent=False)
        self.register_buffer("stack_y", ky, persistent=False)

    def _kernel(self, name: str, k: Tensor) -> None:
        self.register_buffer(name + "_x", k.view(1, 1, 1, -1).clone(), persistent=False)
        self.register_buffer(name + "_y", k.view(1, 1, -1, 1).clone(), persistent=False)

    @staticmethod
    def _sep(x: Tensor, kx: Tensor, ky: Tensor) -> Tensor:
        rx, ry = kx.shape[-1] // 2, ky.shape[-2] // 2
        x = F.conv2d(F.pad(x, (rx, rx, 0, 0)), kx)
        return F.conv2d(F.pad(x, (0, 0, ry, ry)), ky)

    @property
    def n_out(self) -> int:
        return N_FIXED + self.n_learned

    def forward(self, img: Tensor) -> Tensor:
        """``img`` (B, 1, H, W) in [0, 1] -> (B, n_out, H, W): the fixed maps, then the learned ones."""
        fixed = self.fixed(img)
        if self.cnn is None:
            return fixed
        return torch.cat([fixed, self.cnn(img)], dim=1)

    def fixed(self, img: Tensor) -> Tensor:
        """The filter bank alone, (B, N_FIXED, H, W) (zero padding = black outside the film)."""
        if torch.onnx.is_in_onnx_export():
            return self.fixed_stacked(img)
        x = img * 2.0 - 1.0
        feats = [x]
        for i in range(len(SIGMAS)):
            feats.append(self._sep(x, getattr(self, f"g{i}_x"), getattr(self, f"g{i}_y")))
        for i in range(len(GRAD_SIGMAS)):
            sx, sy = getattr(self, f"gs{i}_x"), getattr(self, f"gs{i}_y")
            dx, dy = getattr(self, f"gd{i}_x"), getattr(self, f"gd{i}_y")
            feats.append(4.0 * self._sep(x, dx, sy))
            feats.append(4.0 * self._sep(x, sx, dy))
        return torch.cat(feats, dim=1)

    def stacked_kernels(self) -> tuple[Tensor, Tensor]:
        """Horizontal and vertical kernels (16, 1, 1, K) and (16, 1, K, 1), K the widest kernel's length,
        of the filter bank as one 16-channel separable pair: channel 0 the identity (the film itself),
        1-5 the blurs, then dx/dy per gradient sigma (the factor 4 folded into the vertical kernel,
        exact: a power of two), 12-15 zero. Shorter kernels are centred in zeros."""
        sx = [getattr(self, f"g{i}_x").flatten() for i in range(len(SIGMAS))]
        sy = [getattr(self, f"g{i}_y").flatten() for i in range(len(SIGMAS))]
        size = max(int(k.numel()) for k in sx + sy)
        delta = torch.zeros(1, device=sx[0].device)
        delta[0] = 1.0
        kx: list[Tensor] = [delta, *sx]
        ky: list[Tensor] = [delta, *sy]
        for i in range(len(GRAD_SIGMAS)):
            g_x, g_y = getattr(self, f"gs{i}_x").flatten(), getattr(self, f"gs{i}_y").flatten()
            d_x, d_y = getattr(self, f"gd{i}_x").flatten(), getattr(self, f"gd{i}_y").flatten()
            kx += [d_x, g_x]
            ky += [4.0 * g_y, 4.0 * d_y]
        out_x = torch.zeros(_STACK, size, device=delta.device)
        out_y = torch.zeros(_STACK, size, device=delta.device)
        for c, (a, b) in enumerate(zip(kx, ky, strict=True)):
            out_x[c, (size - a.numel()) // 2 : (size + a.numel()) // 2] = a
            out_y[c, (size - b.numel()) // 2 : (size + b.numel()) // 2] = b
        return out_x.view(_STACK, 1, 1, size), out_y.view(_STACK, 1, size, 1)

    def fixed_stacked(self, img: Tensor) -> Tensor:
        """:meth:`fixed` in the form the ONNX export traces: a 1 -> 16-channel horizontal convolution
        and a 16-channel depthwise vertical one (:meth:`stacked_kernels`), zero padding. Same sums (the
        added taps are zeros); ONNX Runtime pads every convolution's output channels to its NCHWc block
        (16 here), so the 22 single-channel convolutions of :meth:`fixed` each cost a whole block, and
        this form about 13 % less encoder time (docs/engines.md)."""
        kx, ky = self.stack_x, self.stack_y
        assert isinstance(kx, Tensor) and isinstance(ky, Tensor)
        r = int(kx.shape[-1]) // 2
        x = F.conv2d(img * 2.0 - 1.0, kx, padding=(0, r))  # 1 -> 16 channels
        x = F.conv2d(x, ky, padding=(r, 0), groups=_STACK)
        return x[:, :N_FIXED]


class LearnedFilmEncoder(nn.Module):
    """A small multi-scale CNN: four stride-2 levels (128, 64, 32, 16 px; 16-32 channels, two 3x3 convs
    each), each level projected by a 1x1 conv to ``out`` channels, upsampled and summed at 128 px, then
    bilinearly upsampled to the frame. Receptive field about +-60 px (+-45 mm at the detector): local
    context of the ray's neighbourhood on the film, so a point still sees a film only near its own ray.
    With ``fine`` > 0 a fifth level at the frame's own resolution (two 3x3 convs, ``fine`` channels) is added
    to the upsampled sum (``xr3d train recon --fine-film``)."""

    def __init__(self, out: int = 16, fine: int = 0) -> None:
        super().__init__()
        self.n_fine = int(fine)
        # Optional full-resolution level (``fine`` channels, 256 px = 0.75 mm at the detector): the four
        # stride-2 levels see the film at 1.5 mm and coarser, so a learned edge cue finer than that is only
        # in the fixed bank. Its head starts at zero, so a warm start from a model without it computes
        # exactly what that model did (the head's gradient is not zero: its input is the level's maps).
        self.fine: nn.Module | None = None
        self.fine_head: nn.Conv2d | None = None
        if self.n_fine:
            self.fine = nn.Sequential(
                nn.Conv2d(1, self.n_fine, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(self.n_fine, self.n_fine, 3, padding=1),
                nn.ReLU(inplace=True),
            )
            head = nn.Conv2d(self.n_fine, out, 1)
            nn.init.zeros_(head.weight)
            assert head.bias is not None
            nn.init.zeros_(head.bias)
            self.fine_head = head
        chans = (16, 32, 32, 32)
        levels = []
        c_in = 1
        for c in chans:
            levels.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c, 3, stride=2, padding=1),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(c, c, 3, padding=1),
                    nn.ReLU(inplace=True),
                )
            )
            c_in = c
        self.levels = nn.ModuleList(levels)
        self.heads = nn.ModuleList(nn.Conv2d(c, out, 1) for c in chans)

    def forward(self, img: Tensor) -> Tensor:
        x = img * 2.0 - 1.0
        size = (img.shape[-2] // 2, img.shape[-1] // 2)
        y: Tensor | None = None
        for level, head in zip(self.levels, self.heads, strict=True):
            x = level(x)
            h = head(x)
            if h.shape[-2:] != size:
                h = F.interpolate(h, size=size, mode="bilinear", align_corners=False)
            y = h if y is None else y + h
        assert y is not None
        full = F.interpolate(y, size=(img.shape[-2], img.shape[-1]), mode="bilinear", align_corners=False)
        if self.fine is None or self.fine_head is None:
            return full
        return full + self.fine_head(self.fine(img * 2.0 - 1.0))


def fourier(p: Tensor) -> Tensor:
    """(..., 3) -> (..., 3 + 6 N_FREQ)."""
    out = [p]
    for k in range(N_FREQ):
        a = p * (torch.pi * (2.0**k))
        out += [torch.sin(a), torch.cos(a)]
    return torch.cat(out, dim=-1)


def fourier_channels_first(p: Tensor) -> Tensor:
    """:func:`fourier` channels-first: (B, 3, N) -> (B, 3 + 6 N_FREQ, N), same channel order. The octaves
    above the first come from the double-angle identities sin 2a = 2 sin a cos a, cos 2a = 1 - 2 sin^2 a
    (equal to fp32 rounding), so only the first octave needs ``Sin``/``Cos`` (the export form's cost)."""
    a = p * torch.pi
    sn, cs = torch.sin(a), torch.cos(a)
    out = [p, sn, cs]
    for _ in range(N_FREQ - 1):
        sn, cs = 2.0 * sn * cs, 1.0 - 2.0 * sn * sn
        out += [sn, cs]
    return torch.cat(out, dim=1)


_CHANNEL_BLOCK = 16  # ONNX Runtime's NCHWc block (AVX-512): convs on a multiple of it run blocked
_ABSENT_UV = 4.0  # normalised coordinate outside the frame (|u| > 1 + 1/W): zero padding samples 0 there


D_POS = 1 + 3 + 6 * N_FREQ  # lateral-present flag and Fourier encoding of the point
D_IN = N_VIEWS * N_FEAT + D_POS


class PointDecoder(nn.Module):
    def __init__(self, hidden: int = 64, n_feat: int = N_FEAT, n_ctx: int = 0) -> None:
        super().__init__()
        self.n_feat = int(n_feat)
        self.n_ctx = int(n_ctx)
        self.mlp = nn.Sequential(
            nn.Linear(N_VIEWS * self.n_feat + self.n_ctx + D_POS, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(inplace=True),
            nn.Linear(hidden // 2, 1 + N_CLASSES),
        )

    def _context(self, ctx: Tensor | None, pts: Tensor) -> Tensor | None:
        """The 3D context (:mod:`export.recon.context`) sampled at ``pts``: (B, n_ctx, N), or None."""
        if self.n_ctx == 0:
            return None
        if ctx is None or ctx.shape[1] != self.n_ctx:
            raise ValueError(f"this decoder needs a context volume of {self.n_ctx} channels")
        return sample_volume(ctx, pts)

    def forward(
        self, feat: Tensor, mats: Tensor, present: Tensor, pts: Tensor, ctx: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``feat`` (B, V, F, H, W), ``mats`` (B, V, 3, 4), ``present`` (B, V), ``pts`` (B, N, 3) and, for a
        decoder with ``n_ctx`` > 0, the context volume ``ctx`` (B, n_ctx, G, G, G)
        -> HU/1000 (B, N), label logits (B, N, 5).

        PyTorch runs the MLP as ``Linear`` on points-last tensors (its fastest form on CPU); the ONNX
        export traces :meth:`forward_channels_first`, the same weights as 1x1 convolutions on a
        channels-first (B, C, 1, N) tensor, the form ONNX Runtime runs fastest (NCHWc convolutions with
        fused ReLU) -- same function, parity checked at export."""
        if torch.onnx.is_in_onnx_export():
            return self.forward_channels_first(feat, mats, present, pts, ctx)
        b = mats.shape[0]
        n = pts.shape[1]
        f = back_project(feat, mats, present, pts).transpose(1, 2)  # (B, N, V F), forward's column order
        lat = present[:, 1:2].view(b, 1, 1).expand(b, n, 1)
        c = self._context(ctx, pts)
        parts = [f] + ([c.transpose(1, 2)] if c is not None else []) + [lat, fourier(pts)]
        y = self.mlp(torch.cat(parts, dim=-1))
        return y[..., 0], y[..., 1:]

    def forward_channels_first(
        self, feat: Tensor, mats: Tensor, present: Tensor, pts: Tensor, ctx: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """:meth:`forward` in the form the ONNX export traces (same weights, same function; parity is
        checked at export and by tests/test_engines_decoder_speedform.py).

        Each step is chosen for what ONNX Runtime's CPU kernels run fastest (docs/engines.md, "recon
        decoder export form"):

        * sampling: ``GridSample`` with ``align_corners=False``, the only mode with ONNX Runtime's
          precomputed-plan fast path (~3x faster than the generic per-channel loop). The normalised
          coordinates are mapped so that ONNX Runtime recovers the align_corners=True pixel position
          ``x = (u + 1) (W - 1) / 2``: ``u' = ((u + 1) (W - 1) + 1) / W - 1`` (every step but the first
          rounding is exact in fp32, so the positions match PyTorch's to within an ulp);
        * absent views (``present`` 0) are sampled at a point outside the frame, where zero padding gives
          exactly the zeros ``forward``'s multiplication by the flag gives (``present`` is a 0/1 flag, as
          the runtime and training set it), so the sampled features need no multiplication and the first
          layer keeps constant weights (ONNX Runtime's blocked NCHWc convolutions);
        * the Fourier encoding is built channels-first, its higher octaves by the double-angle identities
          (one ``Sin`` and one ``Cos`` of 3 x N values instead of 9 x N each);
        * the MLP runs as 1x1 convolutions on (B, C, 1, N) (NCHWc convolutions with fused ReLU); the
          first layer's input is padded with zero channels (zero weights) to a multiple of the NCHWc
          block, without which ONNX Runtime runs it as a plain, ~40 % slower convolution.
        """
        b, v = mats.shape[0], mats.shape[1]
        c, h, w_px = feat.shape[2], feat.shape[3], feat.shape[4]
        n = pts.shape[1]
        p = pts.transpose(1, 2)  # (B, 3, N)
        pv = p.unsqueeze(1)  # (B, 1, 3, N)
        q = (
            mats[..., 0:1] * pv[:, :, 0:1]
            + mats[..., 1:2] * pv[:, :, 1:2]
            + mats[..., 2:3] * pv[:, :, 2:3]
            + mats[..., 3:4]
        )  # (B, V, 3, N)
        w = torch.clamp(q[:, :, 2:3], min=1e-3)
        size = torch.tensor([float(w_px), float(h)], dtype=feat.dtype).view(1, 1, 2, 1)
        uv = fast_path_coords(q[:, :, :2] / w, size)  # (B, V, 2, N), align_corners=False
        pr = present.view(b, v, 1, 1)
        uv = uv * pr + (1.0 - pr) * _ABSENT_UV  # absent view (flag 0): every sample outside the frame
        s = F.grid_sample(
            feat.reshape(b * v, c, h, w_px),
            uv.transpose(2, 3).reshape(b * v, 1, n, 2),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )  # (B V, C, 1, N)
        f = s.reshape(b, v * c, 1, n)
        cs = self._context(ctx, pts)
        if cs is not None:
            f = torch.cat([f, cs.unsqueeze(2)], dim=1)
        lat = present[:, 1:2].view(b, 1, 1) + torch.zeros_like(p[:, 0:1])  # (B, 1, N)
        pos = torch.cat([lat, fourier_channels_first(p)], dim=1).unsqueeze(2)  # (B, D_POS, 1, N)
        first = self.mlp[0]
        assert isinstance(first, nn.Linear)
        pad = -first.in_features % _CHANNEL_BLOCK
        # (B, C_in + pad, 1, N), forward's column order, then zero channels with zero weights
        x = torch.cat([f, pos, torch.zeros_like(pos[:, :pad])], dim=1)
        w0 = torch.cat([first.weight, first.weight.new_zeros(first.out_features, pad)], dim=1)
        x = F.conv2d(x, w0[:, :, None, None], first.bias)
        for layer in list(self.mlp)[1:]:
            if isinstance(layer, nn.Linear):
                x = F.conv2d(x, layer.weight[:, :, None, None], layer.bias)
            else:
                x = torch.relu(x)
        return x[:, 0, 0, :], x[:, 1:, 0, :].transpose(1, 2)


class ReconNet(nn.Module):
    def __init__(
        self,
        hidden: int = 64,
        learned: int = 0,
        context: int = 0,
        context_grid: int = GRID,
        fine_film: int = 0,
    ) -> None:
        super().__init__()
        self.encoder = FilmEncoder(learned, fine_film)
        self.context = ContextNet(self.encoder.n_out, context, grid=context_grid) if context else None
        self.decoder = PointDecoder(hidden, self.encoder.n_out, context)

    def make_context(self, feat: Tensor, mats: Tensor, present: Tensor) -> Tensor | None:
        """The 3D context volume of a film pair's features, or None for a model without one."""
        return None if self.context is None else self.context(feat, mats, present)

    def encode(self, films: Tensor) -> Tensor:
        """``films`` (B, V, H, W) -> features (B, V, n_feat, H, W)."""
        b, v, h, w = films.shape
        f = self.encoder(films.reshape(b * v, 1, h, w))
        return f.reshape(b, v, self.encoder.n_out, h, w)


def net_from_config(cfg: dict[str, object]) -> ReconNet:
    """The architecture a training config describes (``hidden``, ``learned``, ``context``; older
    checkpoints lack ``learned`` (the fixed encoder), ``context`` (none), ``context_grid`` (32) and
    ``fine_film`` (no full-resolution film level))."""
    return ReconNet(
        hidden=int(str(cfg.get("hidden", 64))),
        learned=int(str(cfg.get("learned", 0))),
        context=int(str(cfg.get("context", 0))),
        context_grid=int(str(cfg.get("context_grid", GRID))),
        fine_film=int(str(cfg.get("fine_film", 0))),
    )


def load_net(state: dict[str, Tensor], cfg: dict[str, object]) -> ReconNet:
    """A ReconNet with the learned weights of a checkpoint; the fixed kernels are rebuilt from the
    constants (non-persistent buffers)."""
    net = net_from_config(cfg)
    net.load_state_dict(state)
    return net


def load_film_cnn(old: LearnedFilmEncoder, new: LearnedFilmEncoder) -> None:
    """Warm start: ``old``'s learned film CNN into ``new``, which may add the full-resolution level (its
    zero head keeps ``new``'s output equal to ``old``'s). Dropping a level ``old`` has is refused."""
    res = new.load_state_dict(old.state_dict(), strict=False)
    added = [k for k in res.missing_keys if not k.startswith(("fine.", "fine_head."))]
    if res.unexpected_keys or added:
        raise ValueError(
            f"film CNNs differ beyond the full-resolution level: missing {added}, "
            f"unexpected {list(res.unexpected_keys)}"
        )


def widen_first_layer(old: PointDecoder, new: PointDecoder) -> None:
    """Warm start: copy ``old``'s weights into ``new``, which may take more feature maps per view or more
    context channels (the old ones first) and may have wider hidden layers (``hidden``). Every added input
    column and every weight leaving an added hidden unit starts at zero (the added units' own incoming
    weights keep their random initialisation, so they learn from the first step), so ``new`` computes
    exactly what ``old`` did."""
    lin_o = [m for m in old.mlp if isinstance(m, nn.Linear)]
    lin_n = [m for m in new.mlp if isinstance(m, nn.Linear)]
    if len(lin_o) != len(lin_n):
        raise ValueError("decoders of different depth")
    with torch.no_grad():
        for i, (lo, ln) in enumerate(zip(lin_o, lin_n, strict=True)):
            wo, wn = lo.weight, ln.weight
            ro = wo.shape[0]
            if i == len(lin_o) - 1 and wn.shape[0] != ro:
                raise ValueError("decoders with different outputs")
            wn[:ro].zero_()
            ln.bias[:ro] = lo.bias
            if i > 0:
                wn[:ro, : wo.shape[1]] = wo
                continue
            fo, fn = old.n_feat, new.n_feat
            for v in range(N_VIEWS):
                wn[:ro, v * fn : v * fn + fo] = wo[:, v * fo : (v + 1) * fo]
            # Old context columns first, new ones zero; then the position columns.
            co = N_VIEWS * fo
            cn = N_VIEWS * fn
            wn[:ro, cn : cn + old.n_ctx] = wo[:, co : co + old.n_ctx]
            wn[:ro, cn + new.n_ctx :] = wo[:, co + old.n_ctx :]


class PatchDiscriminator(nn.Module):
    """16^3 HU block (B, 1, 16, 16, 16) -> (B, 1, 4, 4, 4) realism logits."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv3d(1, 16, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv3d(16, 32, 4, stride=2, padding=1),
            nn.GroupNorm(4, 32),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv3d(32, 1, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
