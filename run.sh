#!/usr/bin/env bash
# Quick start: set everything up and serve the example estate on http://127.0.0.1:8181
# (embedded SQLite under ./.trustplane, no other service needed). Ctrl-C stops it cleanly.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
exec .venv/bin/trustplane serve --init --bundle examples/shop "$@"
