"""Export form for U-Net up-blocks: nearest x2 + concat + 3x3 conv as a transposed convolution (issue 6).

The landmark U-Nets (``export/models/landmark_net.py`` ``_Up``, also the crop, fine and knee nets) export
each up-block as ``Resize`` (nearest, x2) -> ``Slice`` (to the skip's size, a no-op on these geometries)
-> ``Concat([up, skip])`` -> ``Conv`` 3x3 (BatchNorm already folded into its weights). With
``Wa``/``Wb`` the conv's weights on the upsampled / skip channels this equals exactly

    ConvTranspose(x, Wt, 4x4, stride 2, pads 1) + Conv(skip, Wb, 3x3, pads 1) + bias

where per axis the 4x4 kernel sums the 3x3 taps that read the same low-resolution pixel (output row
``2m`` reads ``x[m-1]`` with tap 0 and ``x[m]`` with taps 1+2; row ``2m+1`` reads ``x[m]`` with taps 0+1
and ``x[m+1]`` with tap 2). The upsampled channels cost 16 instead of 36 multiply-adds per input pixel
pair and the Resize/Slice/Concat copies disappear; ONNX Runtime on the CPU runs the landmark nets
~10 % faster (docs/engines.md, "Export forms"). Outputs differ from the original graph only by fp32
rounding (the 4x4 kernel's sums are formed in float64 and rounded once).

:func:`rewrite_upsample_blocks` is pure (returns a new ``ModelProto``; metadata, opset, producer and
doc string untouched) and strict: a block is rewritten only when every piece matches (nearest
``asymmetric``/``floor`` Resize by constant scales 1, 1, 2, 2; only no-op Slices; a two-input channel
Concat; a plain 3x3 stride-1 pad-1 group-1 Conv with constant fp32 weights; every intermediate tensor used
once; static spatial sizes with the skip exactly twice the coarse map). A graph without such a block
comes back equal to the input. ``export.onnx_export.export_onnx`` applies it to every export.

Command line (any ONNX file, in place when IN and OUT are the same file; checks the result with
``onnx.checker``, the TensorRT op check and ONNX Runtime parity against the input before writing)::

    python -m export.onnx_upsample_form IN.onnx OUT.onnx

Imports onnx and numpy only (no torch).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

log = logging.getLogger(__name__)

__all__ = ["UpBlock", "find_upsample_blocks", "rewrite_upsample_blocks", "subpixel_kernel"]

_TAPS = np.array([[0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=np.float64)
"""(4, 3): which 3x3 taps along one axis land on each tap of the 4x4 stride-2 pad-1 transposed kernel."""


@dataclass(frozen=True)
class UpBlock:
    """One matched up-block: the removed nodes (by index in ``graph.node``) and what replaces them."""

    resize: int
    slices: tuple[int, ...]
    concat: int
    conv: int
    coarse: str
    """The tensor upsampled (input of Resize)."""
    skip: str
    up_first: bool
    """Whether the upsampled tensor is the Concat's first input (its channels come first in W)."""
    up_channels: int


def subpixel_kernel(wa: np.ndarray) -> np.ndarray:
    """4x4 ConvTranspose weights (Cin, Cout, 4, 4) equal to ``wa`` (Cout, Cin, 3, 3) after nearest x2."""
    w = np.einsum("ka,lb,oiab->iokl", _TAPS, _TAPS, wa.astype(np.float64))
    return np.ascontiguousarray(w.astype(np.float32))


class _Graph:
    """Read-only lookups over one graph: producers, consumers, constants, static shapes."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.graph = g
        self.producer: dict[str, int] = {}
        self.consumers: Counter[str] = Counter()
        for i, n in enumerate(g.node):
            for o in n.output:
                self.producer[o] = i
            for x in n.input:
                if x:
                    self.consumers[x] += 1
        self.outputs = {o.name for o in g.output}
        self.inits = {t.name: t for t in g.initializer}
        self.shapes = _static_shapes(model)

    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        i = self.producer.get(name)
        if i is None:
            return None
        n = self.graph.node[i]
        if n.op_type != "Constant" or n.domain not in ("", "ai.onnx"):
            return None
        for a in n.attribute:
            if a.name == "value":
                return numpy_helper.to_array(a.t)
        return None

    def used_once(self, name: str) -> bool:
        return self.consumers[name] == 1 and name not in self.outputs

    def node(self, name: str, op: str) -> int | None:
        """Index of the node producing ``name`` if it is a default-domain ``op``."""
        i = self.producer.get(name)
        if i is None:
            return None
        n = self.graph.node[i]
        return i if n.op_type == op and n.domain in ("", "ai.onnx") else None


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Tensor shapes from ONNX shape inference, unknown dimensions as None."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # inference failures leave every block unmatched rather than failing
        log.debug("shape inference failed: %s", exc)
        return {}
    g = inferred.graph
    out: dict[str, tuple[int | None, ...]] = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            continue
        out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
    return out


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _is_const_eq(g: _Graph, name: str, want: Sequence[float]) -> bool:
    v = g.const(name)
    return v is not None and v.shape == (len(want),) and bool(np.all(v == np.asarray(want)))


def _resize_ok(g: _Graph, n: onnx.NodeProto) -> bool:
    a = _attrs(n)
    ins = list(n.input) + [""] * (4 - len(n.input))
    if ins[3] or not ins[2] or not _is_const_eq(g, ins[2], (1.0, 1.0, 2.0, 2.0)):
        return False
    if ins[1] and ((roi := g.const(ins[1])) is None or roi.size):
        return False  # an ROI is only read by tf_crop_and_resize; refuse anything unusual
    return (
        a.get("mode") == b"nearest"
        and a.get("coordinate_transformation_mode") == b"asymmetric"
        and a.get("nearest_mode", b"round_prefer_floor") == b"floor"
        and not a.get("antialias", 0)
        and "axes" not in a
        and not a.get("exclude_outside", 0)
    )


def _slice_noop(g: _Graph, n: onnx.NodeProto, skip: str, full: tuple[int | None, ...]) -> bool:
    """Whether Slice ``n`` keeps all of its input: starts 0, steps 1, spatial axes, ends at or past the
    upsampled size (constant) or equal to the skip's own size (``Unsqueeze(Gather(Shape(skip), axis))``,
    the exporter's form of ``up[:, :, :skip.shape[2], :skip.shape[3]]``; the caller has checked that the
    skip is exactly the upsampled size)."""
    ins = list(n.input) + [""] * (5 - len(n.input))
    starts, axes = g.const(ins[1]), g.const(ins[3]) if ins[3] else None
    steps = g.const(ins[4]) if ins[4] else np.ones_like(starts) if starts is not None else None
    if starts is None or axes is None or steps is None:
        return False
    if starts.shape != (1,) or axes.shape != (1,) or steps.shape != (1,):
        return False
    axis = int(axes[0]) % 4
    if axis not in (2, 3) or int(starts[0]) != 0 or int(steps[0]) != 1:
        return False
    ends = g.const(ins[2])
    size = full[axis]
    if ends is not None:
        return ends.shape == (1,) and size is not None and int(ends[0]) >= size
    u = g.node(ins[2], "Unsqueeze")
    if u is None:
        return False
    un = g.graph.node[u]
    if len(un.input) < 2 or not _is_const_eq(g, un.input[1], (0,)):
        return False
    gi = g.node(un.input[0], "Gather")
    if gi is None:
        return False
    gn = g.graph.node[gi]
    idx = g.const(gn.input[1])
    if idx is None or idx.size != 1 or int(idx.reshape(())) != axis or _attrs(gn).get("axis", 0) != 0:
        return False
    si = g.node(gn.input[0], "Shape")
    if si is None:
        return False
    sn = g.graph.node[si]
    return sn.input[0] == skip and not ("start" in _attrs(sn) or "end" in _attrs(sn))


def _conv_ok(g: _Graph, n: onnx.NodeProto) -> bool:
    a = _attrs(n)
    w = g.const(n.input[1]) if len(n.input) > 1 else None
    if w is None or w.dtype != np.float32 or w.ndim != 4 or w.shape[2:] != (3, 3):
        return False
    if len(n.input) > 2 and n.input[2]:
        b = g.const(n.input[2])
        if b is None or b.dtype != np.float32 or b.shape != (w.shape[0],):
            return False
    return (
        list(a.get("kernel_shape", [3, 3])) == [3, 3]  # type: ignore[call-overload]
        and list(a.get("pads", [0, 0, 0, 0])) == [1, 1, 1, 1]  # type: ignore[call-overload]
        and list(a.get("strides", [1, 1])) == [1, 1]  # type: ignore[call-overload]
        and list(a.get("dilations", [1, 1])) == [1, 1]  # type: ignore[call-overload]
        and a.get("group", 1) == 1
        and a.get("auto_pad", b"NOTSET") == b"NOTSET"
    )


def _match(g: _Graph, ci: int) -> UpBlock | None:
    """The up-block ending in the Conv at ``ci``, or None when anything does not match."""
    conv = g.graph.node[ci]
    if conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") or not _conv_ok(g, conv):
        return None
    cat_i = g.node(conv.input[0], "Concat")
    if cat_i is None or not g.used_once(conv.input[0]):
        return None
    cat = g.graph.node[cat_i]
    if len(cat.input) != 2 or _attrs(cat).get("axis") not in (1, -3):
        return None
    for up_pos in (0, 1):
        tensor, skip = cat.input[up_pos], cat.input[1 - up_pos]
        slices: list[int] = []
        while (si := g.node(tensor, "Slice")) is not None and g.used_once(tensor):
            slices.append(si)
            tensor = g.graph.node[si].input[0]
        ri = g.node(tensor, "Resize")
        if ri is None or not g.used_once(tensor) or not _resize_ok(g, g.graph.node[ri]):
            continue
        coarse = g.graph.node[ri].input[0]
        xs, ss = g.shapes.get(coarse), g.shapes.get(skip)
        if xs is None or ss is None or len(xs) != 4 or len(ss) != 4 or None in (*xs[1:], *ss[1:]):
            return None  # strict: exactness needs the skip to be exactly twice the coarse map
        cx, hx, wx = (int(d or 0) for d in xs[1:])
        full = (xs[0], cx, 2 * hx, 2 * wx)
        if ss[2:] != full[2:]:
            return None
        w = g.const(conv.input[1])
        if w is None or cx + int(ss[1] or 0) != w.shape[1]:
            return None
        if not all(_slice_noop(g, g.graph.node[s], skip, full) for s in slices):
            return None
        return UpBlock(ri, tuple(reversed(slices)), cat_i, ci, coarse, skip, up_pos == 0, cx)
    return None


def find_upsample_blocks(model: onnx.ModelProto) -> tuple[UpBlock, ...]:
    """Every up-block of ``model``'s main graph that :func:`rewrite_upsample_blocks` would rewrite."""
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in model.graph.node
        for a in n.attribute
    ):
        return ()  # control flow: consumers inside subgraphs are not counted, so refuse the whole graph
    g = _Graph(model)
    found = (_match(g, i) for i, n in enumerate(model.graph.node) if n.op_type == "Conv")
    return tuple(b for b in found if b is not None)


def _unique(taken: set[str], base: str) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def rewrite_upsample_blocks(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every matched up-block in the transposed-convolution form.

    Nodes left without consumers by the rewrite (the Slices' ``Shape``/``Gather``/``Unsqueeze`` chains,
    the Resize scales) and initializers no longer read are dropped; nothing else changes. Without a
    matching block the copy equals ``model``.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    blocks = find_upsample_blocks(out)
    if not blocks:
        return out
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    graph_inputs = {i.name for i in g.input}
    taken = {t.name for t in g.initializer} | graph_inputs
    taken |= {o for n in g.node for o in n.output} | {n.name for n in g.node}
    removed: set[int] = set()
    insert: dict[int, list[onnx.NodeProto]] = {}
    new_inits: list[onnx.TensorProto] = []
    lookup = _Graph(out)
    for b in blocks:
        conv = g.node[b.conv]
        w = lookup.const(conv.input[1])
        assert w is not None
        ca = b.up_channels
        wa, wb = (w[:, :ca], w[:, ca:]) if b.up_first else (w[:, -ca:], w[:, :-ca])
        base = conv.name or conv.output[0]
        wt_name = _unique(taken, f"{base}.up_convT.weight")
        wb_name = _unique(taken, f"{base}.skip.weight")
        new_inits += [
            numpy_helper.from_array(subpixel_kernel(wa), wt_name),
            numpy_helper.from_array(np.ascontiguousarray(wb), wb_name),
        ]
        up_out = _unique(taken, f"{base}/up_convT_output_0")
        skip_out = _unique(taken, f"{base}/skip_conv_output_0")
        skip_in = [b.skip, wb_name] + ([conv.input[2]] if len(conv.input) > 2 and conv.input[2] else [])
        insert[b.conv] = [
            helper.make_node(
                "ConvTranspose",
                [b.coarse, wt_name],
                [up_out],
                name=_unique(taken, f"{base}/up_convT"),
                kernel_shape=[4, 4],
                strides=[2, 2],
                pads=[1, 1, 1, 1],
                dilations=[1, 1],
                group=1,
            ),
            helper.make_node(
                "Conv",
                skip_in,
                [skip_out],
                name=_unique(taken, f"{base}/skip_conv"),
                kernel_shape=[3, 3],
                strides=[1, 1],
                pads=[1, 1, 1, 1],
                dilations=[1, 1],
                group=1,
            ),
            helper.make_node("Add", [up_out, skip_out], [conv.output[0]], name=_unique(taken, f"{base}/add")),
        ]
        removed |= {b.resize, *b.slices, b.concat, b.conv}
    before = {x for n in g.node for x in n.input if x}
    nodes: list[onnx.NodeProto] = []
    for i, n in enumerate(g.node):
        nodes.extend(insert.get(i, []))
        if i not in removed:
            nodes.append(n)
    nodes = _drop_newly_dead(nodes, {o.name for o in g.output}, before)
    del g.node[:]
    g.node.extend(nodes)
    used = {x for n in g.node for x in n.input if x}
    stale = {name for name in inits if name in before and name not in used and name not in graph_inputs}
    kept = [t for t in g.initializer if t.name not in stale]
    del g.initializer[:]
    g.initializer.extend([*kept, *new_inits])
    live = used | {o for n in g.node for o in n.output} | {o.name for o in g.output}
    vis = [v for v in g.value_info if v.name in live]
    del g.value_info[:]
    g.value_info.extend(vis)
    log.info("%d up-block(s) rewritten to the transposed-convolution form", len(blocks))
    return out


def _drop_newly_dead(
    nodes: list[onnx.NodeProto], outputs: set[str], before: set[str]
) -> list[onnx.NodeProto]:
    """Remove nodes whose outputs were read before the rewrite and are read by nothing now."""
    while True:
        used = {x for n in nodes for x in n.input if x} | outputs
        keep = [
            n
            for n in nodes
            if any(o in used for o in n.output) or not any(o in before or o in outputs for o in n.output)
        ]
        if len(keep) == len(nodes):
            return keep
        nodes = keep


def max_output_difference(a: onnx.ModelProto, b: onnx.ModelProto, batch: int = 2, seed: int = 0) -> float:
    """Largest |difference| of any output of ``a`` and ``b`` (ONNX Runtime, CPU, one thread) on uniform
    [0, 1) inputs with symbolic dimensions set to ``batch``, relative to max(1, the largest |output|)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sa, sb = (
        ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"]) for m in (a, b)
    )
    rng = np.random.default_rng(seed)
    feeds = {
        i.name: rng.random([d if isinstance(d, int) else batch for d in i.shape], dtype=np.float32)
        for i in sa.get_inputs()
    }
    worst = 0.0
    for x, y in zip(sa.run(None, feeds), sb.run(None, feeds), strict=True):
        x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
        scale = max(1.0, float(np.max(np.abs(x64))) if x64.size else 1.0)
        worst = max(worst, float(np.max(np.abs(x64 - y64))) / scale if x64.size else 0.0)
    return worst


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m export.onnx_upsample_form IN OUT``: rewrite, check, write (exit 1 if a check fails)."""
    import argparse
    import os
    import sys
    import tempfile
    from pathlib import Path

    from engines.opcheck import check_model

    p = argparse.ArgumentParser(
        prog="python -m export.onnx_upsample_form",
        description="Rewrite the nearest-x2 + concat + 3x3-conv up-blocks of an ONNX U-Net into the exact "
        "transposed-convolution form (metadata kept); checks onnx.checker, the TensorRT op support and "
        "ONNX Runtime parity with the input before writing. IN may equal OUT (in place).",
    )
    p.add_argument("src", type=Path, metavar="IN")
    p.add_argument("dst", type=Path, metavar="OUT")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |diff| / max(1, max |output|)")
    args = p.parse_args(argv)
    model = onnx.load(str(args.src))
    blocks = find_upsample_blocks(model)
    if not blocks:
        sys.stdout.write(f"{args.src}: no up-block in the nearest-x2 + concat + conv form; unchanged\n")
        if args.src.resolve() != args.dst.resolve():
            args.dst.write_bytes(args.src.read_bytes())
        return 0
    new = rewrite_upsample_blocks(model)
    onnx.checker.check_model(new, full_check=True)
    report = check_model(new, name=args.dst.name)
    diff = max_output_difference(model, new)
    sys.stdout.write(
        f"{args.src}: {len(blocks)} up-block(s) rewritten; ONNX Runtime max |diff| vs input {diff:.2e} "
        f"(relative, tolerance {args.tolerance:g}); {report.summary()}\n"
    )
    if diff > args.tolerance or not report.ok:
        sys.stdout.write("not written: a check failed\n")
        return 1
    args.dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=args.dst.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        onnx.save(new, tmp)
        os.replace(tmp, args.dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    sys.stdout.write(f"wrote {args.dst}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
