"""The up-block export form (export/onnx_upsample_form.py) on real exports and real ONNX Runtime sessions.

Small randomly initialised landmark U-Nets (the project's own classes, BatchNorm statistics randomised so
the folded weights are not trivial) are exported by ``export.onnx_export.export_onnx`` without the
rewrite, rewritten, and both graphs run in ONNX Runtime on the same inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from engines.opcheck import check_model
from export.models.knee_landmark_net import KneeLandmarkNet
from export.models.landmark_net import CropNet, WholeFilmNet
from export.onnx_export import export_onnx, ort_parity
from export.onnx_upsample_form import (
    find_upsample_blocks,
    main,
    rewrite_upsample_blocks,
    subpixel_kernel,
)
from tests.reference_onnx import export_reference

META = {"version": "t", "training_seed": 7, "input_geometry": {"rows": 64}, "stage": "test", "extra": [1, 2]}


def _randomise(net: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return net.eval()


# (name, module, input (rows, cols), expected up-blocks, output names)
NETS = {
    "whole": (lambda: WholeFilmNet(width=4), (64, 32), 3, ("heatmaps", "mask_logits")),
    "crop_s2": (lambda: CropNet(width=4, stride=2), (32, 48), 3, ("heatmaps",)),
    "knee": (lambda: KneeLandmarkNet(width=4), (64, 64), 4, ("heatmaps",)),
}


def _export(module: nn.Module, shape: tuple[int, ...], outs: tuple[str, ...], path: Path) -> Path:
    """Exported by the project's exporter with the rewrite switched off."""
    x = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(1))
    export_onnx(
        module, (x,), path, input_names=("film",), output_names=outs, metadata=META, upsample_form=False
    )
    return path


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in sess.run(None, {"film": x})]


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, onnx.ModelProto]:
    """Each net exported by the project's exporter with the rewrite switched off."""
    d = tmp_path_factory.mktemp("plain")
    out = {}
    for i, (name, (build, shape, _, outs)) in enumerate(NETS.items()):
        path = _export(_randomise(build(), i), shape, outs, d / f"{name}.onnx")
        out[name] = onnx.load(str(path))
    return out


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


@pytest.mark.parametrize("name", list(NETS))
def test_rewrite_is_exact_in_onnx_runtime(name: str, plain: dict[str, onnx.ModelProto]) -> None:
    _, shape, blocks, _ = NETS[name]
    before = plain[name]
    assert _ops(before).count("Resize") == blocks
    after = rewrite_upsample_blocks(before)
    onnx.checker.check_model(after, full_check=True)
    ops = _ops(after)
    assert ops.count("ConvTranspose") == blocks
    assert "Resize" not in ops and "Slice" not in ops
    assert ops.count("Concat") == _ops(before).count("Concat") - blocks  # the spatial softmax's shape concats
    x = np.random.default_rng(3).random((3, 1, *shape), dtype=np.float32)  # batch 3: the dynamic axis
    for a, b in zip(_run(before, x), _run(after, x), strict=True):
        assert a.shape == b.shape
        assert float(np.max(np.abs(a))) > 1e-3  # a live output, not all zeros
        assert float(np.max(np.abs(a - b))) < 1e-5


@pytest.mark.parametrize("name", list(NETS))
def test_rewrite_keeps_metadata_and_passes_tensorrt_op_check(
    name: str, plain: dict[str, onnx.ModelProto]
) -> None:
    before = plain[name]
    after = rewrite_upsample_blocks(before)
    assert list(after.metadata_props) == list(before.metadata_props)
    meta = {p.key: p.value for p in after.metadata_props}
    assert meta["xr3d.training_seed"] == "7" and meta["xr3d.stage"] == "test"
    assert (after.producer_name, after.doc_string) == (before.producer_name, before.doc_string)
    assert list(after.opset_import) == list(before.opset_import)
    report = check_model(after, name=name)
    assert report.ok, report.summary()
    assert [i.name for i in after.graph.input] == [i.name for i in before.graph.input]
    assert [o.name for o in after.graph.output] == [o.name for o in before.graph.output]


def test_rewrite_drops_dead_nodes_and_weights_and_is_idempotent(plain: dict[str, onnx.ModelProto]) -> None:
    before = plain["knee"]
    after = rewrite_upsample_blocks(before)
    used = {x for n in after.graph.node for x in n.input}
    assert all(t.name in used for t in after.graph.initializer)
    produced = {o for n in after.graph.node for o in n.output} | {i.name for i in after.graph.input}
    assert used - {""} <= produced | {t.name for t in after.graph.initializer}
    assert find_upsample_blocks(after) == ()
    assert rewrite_upsample_blocks(after) == after
    assert before == plain["knee"]  # the input is not modified


def test_export_onnx_applies_the_form_and_keeps_pytorch_parity(tmp_path: Path) -> None:
    net = _randomise(KneeLandmarkNet(width=4), 11)
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    res = export_onnx(
        net, (x,), tmp_path / "knee.onnx", input_names=("film",), output_names=("heatmaps",), metadata=META
    )
    assert res.opcheck.ok
    assert _ops(onnx.load(str(res.path))).count("ConvTranspose") == 4
    parity = ort_parity(net, (x,), res.path, tolerance=1e-5)
    assert parity.ok, parity


def test_subpixel_kernel_equals_nearest_upsample_then_conv() -> None:
    gen = torch.Generator().manual_seed(5)
    wa = torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(1, 2, 5, 4, generator=gen, dtype=torch.float64)
    want = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), wa, padding=1)
    wt = torch.from_numpy(subpixel_kernel(wa.numpy())).double()
    got = F.conv_transpose2d(x, wt, stride=2, padding=1)
    assert got.shape == want.shape
    assert float((got - want).abs().max()) < 1e-5  # fp32 kernel


@pytest.mark.parametrize("kind", ["landmark2d", "volume3d"])
def test_graphs_without_the_pattern_come_back_unchanged(kind: str, tmp_path: Path) -> None:
    model = onnx.load(str(export_reference(tmp_path, kind)))
    assert find_upsample_blocks(model) == ()
    assert rewrite_upsample_blocks(model).SerializeToString() == model.SerializeToString()


class _Up(nn.Module):
    """One up-block with a switch for each thing that must stop the rewrite."""

    def __init__(
        self, mode: str = "nearest", stride: int = 1, reuse: bool = False, skip_first: bool = False
    ) -> None:
        super().__init__()
        self.mode, self.reuse, self.skip_first = mode, reuse, skip_first
        self.coarse = nn.Conv2d(1, 3, 3, stride=2, padding=1)
        self.conv = nn.Conv2d(4, 2, 3, stride=stride, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.coarse(x)
        up = F.interpolate(c, scale_factor=2.0, mode=self.mode)
        up = up[:, :, : x.shape[2], : x.shape[3]]
        y = self.conv(torch.cat([x, up] if self.skip_first else [up, x], dim=1))
        return y + up.mean() if self.reuse else y


@pytest.mark.parametrize(
    ("kwargs", "rows", "blocks"),
    [
        ({}, 16, 1),
        ({"skip_first": True}, 16, 1),  # the skip's channels first in W
        ({}, 15, 0),  # odd skip: the Slice crops the upsampled map, so the form would not be exact
        ({"mode": "bilinear"}, 16, 0),
        ({"stride": 2}, 16, 0),
        ({"reuse": True}, 16, 0),  # the upsampled map is read elsewhere too
    ],
)
def test_only_exact_blocks_are_rewritten(
    kwargs: dict[str, object], rows: int, blocks: int, tmp_path: Path
) -> None:
    net = _Up(**kwargs).eval()  # type: ignore[arg-type]
    path = _export(net, (rows, 12), ("y",), tmp_path / "up.onnx")
    model = onnx.load(str(path))
    after = rewrite_upsample_blocks(model)
    assert len(find_upsample_blocks(model)) == blocks
    if not blocks:
        assert after.SerializeToString() == model.SerializeToString()
        return
    x = np.random.default_rng(0).random((2, 1, rows, 12), dtype=np.float32)
    (a,), (b,) = _run(model, x), _run(after, x)
    assert float(np.max(np.abs(a - b))) < 1e-5


def test_command_rewrites_in_place_and_leaves_other_files(
    plain: dict[str, onnx.ModelProto], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "whole.onnx"
    onnx.save(plain["whole"], str(path))
    assert main([str(path), str(path)]) == 0
    assert "3 up-block(s) rewritten" in capsys.readouterr().out
    assert _ops(onnx.load(str(path))).count("ConvTranspose") == 3
    assert list(onnx.load(str(path)).metadata_props) == list(plain["whole"].metadata_props)
    ref = export_reference(tmp_path, "volume3d")
    copy = tmp_path / "copy.onnx"
    assert main([str(ref), str(copy)]) == 0
    assert "unchanged" in capsys.readouterr().out
    assert copy.read_bytes() == ref.read_bytes()
