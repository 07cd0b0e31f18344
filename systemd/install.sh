#!/usr/bin/env bash
# Install (or update) xr3d as a systemd service on a clinic box. Idempotent: run it again after an
# update; it never overwrites /etc/xr3d/xr3d.toml. See systemd/README.md.
#
#   sudo bash systemd/install.sh                 # install or update, enable and (re)start the service
#   bash systemd/install.sh --dry-run            # print what would be done, change nothing
#   sudo bash systemd/install.sh --check-config  # validate /etc/xr3d/xr3d.toml only
#
# Options: --prefix DIR (venv, default /opt/xr3d), --config FILE (default /etc/xr3d/xr3d.toml),
# --source DIR (the xr3d source tree to install, default: this script's repository),
# --root DIR (install into a staging tree: no user, no chown, no systemctl; for packaging and tests),
# --no-venv (do not create/update the venv), --python PY (interpreter that reads the config; default
# the venv's), --no-start (enable but do not start).
set -euo pipefail

PREFIX=/opt/xr3d
CONFIG=/etc/xr3d/xr3d.toml
SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT=""
DRY_RUN=0
CHECK_ONLY=0
MAKE_VENV=1
START=1
PYTHON=""
SERVICE_USER=xr3d
UNIT_DIR=/etc/systemd/system

die() { echo "install.sh: error: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --check-config) CHECK_ONLY=1 ;;
        --no-venv) MAKE_VENV=0 ;;
        --no-start) START=0 ;;
        --prefix) PREFIX="${2:?--prefix needs a folder}"; shift ;;
        --config) CONFIG="${2:?--config needs a file}"; shift ;;
        --source) SOURCE="${2:?--source needs a folder}"; shift ;;
        --root) ROOT="${2:?--root needs a folder}"; shift ;;
        --python) PYTHON="${2:?--python needs an interpreter}"; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

[ -n "$PYTHON" ] || PYTHON="$PREFIX/bin/python"
ROOT="${ROOT%/}"
STAGED=0
[ -n "$ROOT" ] && STAGED=1

# Every change goes through run: printed in a dry run, executed otherwise.
run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '+'; printf ' %q' "$@"; printf '\n'
    else
        "$@"
    fi
}

# write_file DEST MODE: stdin -> DEST, replaced atomically and only when the content changed.
write_file() {
    local dest="$1" mode="$2" tmp
    tmp="$(mktemp)"
    cat > "$tmp"
    if [ -f "$dest" ] && cmp -s "$tmp" "$dest"; then
        rm -f "$tmp"
        say "unchanged: $dest"
        return 0
    fi
    if [ "$DRY_RUN" = 1 ]; then
        echo "+ write $dest (mode $mode):"
        sed 's/^/|   /' "$tmp"
        rm -f "$tmp"
        return 0
    fi
    install -D -m "$mode" "$tmp" "$dest"
    rm -f "$tmp"
    say "wrote: $dest"
}

# --- the config: read with the same validation the service uses ---------------------------------
read_config() {
    local cfg="$1"
    [ -x "$PYTHON" ] || [ "$DRY_RUN" = 1 ] || die "no Python at $PYTHON (create the venv first or pass --python)"
    if [ ! -x "$PYTHON" ]; then
        # dry run before the venv exists: show the defaults of the example config
        cfg="$SOURCE/systemd/xr3d.toml.example"
        PYTHON=python3
    fi
    PYTHONPATH="$SOURCE${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" - "$cfg" <<'PY'
import shlex
import sys
from pathlib import Path

from appliance.config import ConfigError, load_settings

try:
    s = load_settings(Path(sys.argv[1]))
except ConfigError as exc:
    sys.stderr.write(f"invalid config {sys.argv[1]}: {exc}\n")
    sys.exit(2)
p = s.paths
for name, value in (("INBOX", p.inbox), ("OUTBOX", p.outbox), ("STATE", p.state), ("QUARANTINE", p.quarantine)):
    print(f"CFG_{name}={shlex.quote(str(value))}")
print(f"CFG_RECEIVER={int(s.receiver.enabled)}")
print(f"CFG_RECEIVER_PORT={s.receiver.port}")
print(f"CFG_PACS={int(s.pacs.enabled)}")
PY
}

if [ "$CHECK_ONLY" = 1 ]; then
    read_config "$ROOT$CONFIG" > /dev/null
    say "config $ROOT$CONFIG is valid"
    exit 0
fi

if [ "$DRY_RUN" = 0 ] && [ "$STAGED" = 0 ] && [ "$(id -u)" != 0 ]; then
    die "run as root (sudo), or with --dry-run to see what it would do"
fi
[ -f "$SOURCE/pyproject.toml" ] || die "$SOURCE is not an xr3d source tree (no pyproject.toml)"

# --- 1. the service user --------------------------------------------------------------------------
if [ "$STAGED" = 1 ]; then
    say "skipped (--root): user $SERVICE_USER"
elif getent passwd "$SERVICE_USER" > /dev/null; then
    say "user $SERVICE_USER exists"
else
    run useradd --system --user-group --home-dir /var/lib/xr3d --no-create-home \
        --shell /usr/sbin/nologin --comment "xr3d service" "$SERVICE_USER"
fi
# the GPU device nodes belong to group video (or render) on most distributions
if [ "$STAGED" = 0 ]; then
    for grp in video render; do
        if getent group "$grp" > /dev/null && ! id -nG "$SERVICE_USER" 2> /dev/null | grep -qw "$grp"; then
            run usermod -a -G "$grp" "$SERVICE_USER"
        fi
    done
fi

# --- 2. the virtual environment -------------------------------------------------------------------
if [ "$MAKE_VENV" = 1 ]; then
    if [ -x "$ROOT$PREFIX/bin/python" ]; then
        say "venv $ROOT$PREFIX exists"
    else
        run python3 -m venv "$ROOT$PREFIX"
    fi
    run "$ROOT$PREFIX/bin/python" -m pip install --upgrade pip
    # runtime only: no training, GUI or test extras on the clinic box. A regular (non-editable) install:
    # pip builds a wheel, which carries the ONNX models as package data (pyproject.toml), so the box
    # does not depend on the source tree after this.
    run "$ROOT$PREFIX/bin/python" -m pip install --upgrade "$SOURCE"
fi
run install -D -m 0644 "$SOURCE/systemd/README.md" "$ROOT$PREFIX/share/xr3d/README.md"
run install -D -m 0755 "$SOURCE/systemd/install.sh" "$ROOT$PREFIX/share/xr3d/install.sh"
run install -D -m 0644 "$SOURCE/systemd/xr3d.toml.example" "$ROOT$PREFIX/share/xr3d/xr3d.toml.example"

# --- 3. the config (never overwritten) -----------------------------------------------------------
if [ -f "$ROOT$CONFIG" ]; then
    say "config $ROOT$CONFIG kept as it is"
else
    run install -D -m 0640 "$SOURCE/systemd/xr3d.toml.example" "$ROOT$CONFIG"
fi
if [ "$STAGED" = 0 ]; then
    run chown root:"$SERVICE_USER" "$(dirname "$CONFIG")" "$CONFIG"
    run chmod 0750 "$(dirname "$CONFIG")"
fi
if [ "$DRY_RUN" = 1 ] && [ ! -f "$ROOT$CONFIG" ]; then
    CONFIG_TO_READ="$SOURCE/systemd/xr3d.toml.example"
else
    CONFIG_TO_READ="$ROOT$CONFIG"
fi
CONFIG_VARS="$(read_config "$CONFIG_TO_READ")" || die "fix $ROOT$CONFIG (docs/config.md), then run this again"
eval "$CONFIG_VARS"

# --- 3b. the models: the installed xr3d must find them where the config says --------------------------
# The wheel carries the ONNX models as package data (<site-packages>/models/, the default
# pipeline.models_dir of an installed xr3d); a config may point models_dir elsewhere. Checked with the
# installed package (not the source tree), from /, so a missing model stops the install, not the service.
check_models() {
    (cd / && env -u PYTHONPATH "$PYTHON" - "$1" <<'PY'
import sys
from pathlib import Path

try:
    from appliance.config import ConfigError, load_settings
except ImportError as exc:
    sys.stderr.write(f"xr3d is not installed for this Python ({exc}); models not checked\n")
    sys.exit(0)
try:
    d = load_settings(Path(sys.argv[1])).pipeline.models_dir
except ConfigError as exc:
    sys.stderr.write(f"invalid config {sys.argv[1]}: {exc}\n")
    sys.exit(2)
missing = [n for n in ("landmarks_whole.onnx", "landmarks_crop.onnx") if not (d / n).is_file()]
if missing:
    sys.stderr.write(f"models folder {d} lacks {', '.join(missing)} (pipeline.models_dir)\n")
    sys.exit(2)
print(f"install.sh: models found in {d}")
PY
    )
}
if [ "$DRY_RUN" = 0 ] && [ -x "$PYTHON" ]; then
    check_models "$CONFIG_TO_READ" || die "the landmark models are missing: see docs/config.md (models_dir)"
fi

# --- 4. the folders, owned by the service user ----------------------------------------------------
for dir in "$CFG_INBOX" "$CFG_OUTBOX" "$CFG_STATE" "$CFG_QUARANTINE"; do
    if [ "$STAGED" = 1 ]; then
        run install -d -m 0750 "$ROOT$dir"
    else
        run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$dir"
    fi
done

# --- 5. the unit and its drop-ins -----------------------------------------------------------------
UNIT="$ROOT$UNIT_DIR/xr3d.service"
DROPIN="$ROOT$UNIT_DIR/xr3d.service.d"
write_file "$UNIT" 0644 < "$SOURCE/systemd/xr3d.service"
write_file "$DROPIN/10-paths.conf" 0644 <<EOF
# Written by install.sh from $CONFIG: the folders the service may write (all else is read-only).
[Service]
ReadWritePaths=$CFG_INBOX $CFG_OUTBOX $CFG_STATE $CFG_QUARANTINE
EOF
if [ "$CFG_RECEIVER" = 1 ] || [ "$CFG_PACS" = 1 ]; then
    {
        echo "# Written by install.sh: [receiver] or [pacs] is enabled in $CONFIG, so the service needs the network."
        echo "[Service]"
        echo "PrivateNetwork=no"
        if [ "$CFG_RECEIVER" = 1 ] && [ "$CFG_RECEIVER_PORT" -lt 1024 ]; then
            echo "# receiver.port $CFG_RECEIVER_PORT is privileged"
            echo "AmbientCapabilities=CAP_NET_BIND_SERVICE"
            echo "CapabilityBoundingSet=CAP_NET_BIND_SERVICE"
        fi
    } | write_file "$DROPIN/20-network.conf" 0644
elif [ -f "$DROPIN/20-network.conf" ]; then
    run rm -f "$DROPIN/20-network.conf"  # network switched off again: back to PrivateNetwork=yes
fi

# --- 6. enable and (re)start ----------------------------------------------------------------------
if [ "$STAGED" = 1 ]; then
    say "skipped (--root): systemctl daemon-reload / enable / restart"
else
    run systemctl daemon-reload
    run systemctl enable xr3d.service
    if [ "$START" = 1 ]; then
        # restart (not start) so an update or a changed config takes effect
        run systemctl restart xr3d.service
    fi
fi
say "done. Logs: journalctl -u xr3d -f    Status: systemctl status xr3d"
