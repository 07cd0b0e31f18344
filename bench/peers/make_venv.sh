#!/usr/bin/env bash
# Build the SEPARATE virtual environment for the DRR benchmark peer (DiffDRR, which needs torch).
# Nothing here touches the project's own .venv: appliance/ must never import torch.
#
#   bash bench/peers/make_venv.sh            # creates /work/main/.venv-peers (or $PEER_VENV)
#
# torch/torchvision versions are the ones pip resolves from local disk on this x86_64 machine
# (a CUDA build that runs on CPU); diffdrr comes from PyPI.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PEER_VENV="${PEER_VENV:-$ROOT/.venv-peers}"
PY="${PY:-python3}"

test -x "$PEER_VENV/bin/python" || "$PY" -m venv "$PEER_VENV"
"$PEER_VENV/bin/python" -m pip install -q --upgrade pip
"$PEER_VENV/bin/python" -m pip install -r "$HERE/requirements-peers.txt"
"$PEER_VENV/bin/python" -c "import torch, diffdrr; print('torch', torch.__version__, 'diffdrr', diffdrr.__version__)"
