#!/usr/bin/env bash
# Runs the integration suite with Debian's python3 (python3-websockets and
# python3-pytest come from apt). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
export WSPLICE_BIN="$(realpath "${1:-../../build/wsplice}")"
shift || true
exec /usr/bin/python3 -m pytest -q -p no:cacheprovider "${@:-.}"
