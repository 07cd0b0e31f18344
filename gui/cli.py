"""``xr3d gui``: the surgeon's workstation (registered through the ``xr3d.commands`` entry point).

``xr3d gui [--outbox DIR] [--user NAME]`` opens the window. ``xr3d gui --screenshot OUT.png --study UID
[--tab films|3d] [--size WxH] [--scale S]`` renders the window for one study offscreen, writes the PNG and
exits (docs and tests). The GUI uses no network: Qt's network module is never imported.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from pathlib import Path

from appliance.errors import InputError

log = logging.getLogger(__name__)

DEFAULT_OUTBOX = Path("/var/lib/xr3d/outbox")
TABS = ("films", "3d", "worklist")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "gui",
        help="the surgeon's workstation: worklist, films with editable landmarks, angles, CPAK, 3D",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--outbox",
        type=Path,
        default=None,
        help=f"the service's outbox (default: $XR3D_OUTBOX or {DEFAULT_OUTBOX})",
    )
    p.add_argument(
        "--user", default=None, help="name recorded with saved corrections (default: the login name)"
    )
    p.add_argument(
        "--screenshot",
        type=Path,
        default=None,
        metavar="OUT.png",
        help="render offscreen to OUT.png and exit",
    )
    p.add_argument(
        "--organization", default="unspecified", help="organisation recorded as verifier in exported SRs"
    )
    p.add_argument("--study", default=None, metavar="UID", help="study to open (required with --screenshot)")
    p.add_argument(
        "--tab", choices=TABS, default="films", help="film tab, 3D tab, or the worklist pane alone"
    )
    p.add_argument("--size", default="1600x1000", help="window size for the screenshot, WxH logical pixels")
    p.add_argument(
        "--scale", type=float, default=1.0, help="device pixel ratio of the screenshot (2 = HiDPI)"
    )
    p.set_defaults(func=run)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise InputError(f"--size must look like 1600x1000, got {text!r}", reason="bad_argument") from exc
    return w, h


def run(args: argparse.Namespace) -> int:
    # pydicom logs file paths at DEBUG, and clinics name files after patients: as in the service.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    outbox = args.outbox or Path(os.environ.get("XR3D_OUTBOX", str(DEFAULT_OUTBOX)))
    if args.screenshot is not None and not args.study:
        raise InputError("--screenshot needs --study UID", reason="bad_argument")
    if args.screenshot is not None:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        if args.scale != 1.0:
            os.environ["QT_SCALE_FACTOR"] = f"{args.scale:g}"
    from gui.app import make_app, screenshot
    from gui.main_window import MainWindow

    app = make_app()
    window = MainWindow(outbox, args.user or getpass.getuser(), args.organization)
    if args.screenshot is not None:
        written = screenshot(window, args.study, args.screenshot, _size(args.size), args.tab)
        sys.stdout.write(f"wrote {written}\n")
        return 0
    window.resize(1600, 1000)
    window.show()
    if args.study and not window.select_uid(args.study):
        log.warning("study %s is not in the outbox", args.study)
    return int(app.exec())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(2)
