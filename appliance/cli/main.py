"""The ``xr3d`` command line: one entry point, one subcommand per job.

Subcommands that live outside ``appliance`` (the simulator and training in ``export``, the GUI in
``gui``) register themselves through the ``xr3d.commands`` entry-point group, so the runtime never
imports them by name and a runtime-only install simply lacks those subcommands.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from appliance import __version__
from appliance.errors import Xr3dError

log = logging.getLogger(__name__)

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

_BUILTIN: tuple[str, ...] = (
    "appliance.analytics.measure_cli",
    "appliance.service_cli",
    "appliance.process_cli",
    "appliance.demo_cli",
)


def _builtin_registrars() -> list[Register]:
    """Subcommands that ship with the runtime itself."""
    regs: list[Register] = []
    for modname in _BUILTIN:
        module = __import__(modname, fromlist=["register"])
        regs.append(module.register)
    return regs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xr3d",
        description=(
            "xr3d turns ordinary knee and long-leg X-rays into alignment angles (mHKA, mLDFA, MPTA, "
            "JLCA, aHKA, JLO, CPAK) and a 3D knee, offline on the clinic's own machine."
        ),
    )
    parser.add_argument("--version", action="version", version=f"xr3d {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for reg in _builtin_registrars():
        reg(sub)
    for ep in sorted(entry_points(group="xr3d.commands"), key=lambda e: e.name):
        try:
            reg = ep.load()
        except ImportError as exc:
            # e.g. the GUI extra is not installed: the subcommand is simply absent, and we say why.
            log.debug("subcommand %s unavailable: %s", ep.name, exc)
            continue
        reg(sub)
    return parser


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING - 10 * min(verbosity, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except Xr3dError as exc:
        sys.stderr.write(f"xr3d {args.command}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
