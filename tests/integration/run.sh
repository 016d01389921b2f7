#!/usr/bin/env bash
# Runs the integration suite with Debian's python3 (python3-websockets and
# python3-pytest come from apt). Usage: run.sh [WSPLICE_BINARY] [pytest args]
set -euo pipefail
bin="$(realpath "${1:-$(dirname "$0")/../../build/wsplice}")"
shift || true
export WSPLICE_BIN="$bin"
cd "$(dirname "$0")"
exec /usr/bin/python3 -m pytest -q -p no:cacheprovider "${@:-.}"
