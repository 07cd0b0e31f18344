"""The surgeon's workstation (``xr3d gui``, PySide6): reads the service's outbox, never writes result.json.

Depends on ``appliance`` only; ``appliance`` never imports it (the subcommand registers through the
``xr3d.commands`` entry point). docs/gui.md describes the window, the corrections and the exports.
"""
