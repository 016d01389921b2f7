#!/usr/bin/env bash
# Installs what wsplice builds and tests with, from Debian's apt and npm only.
# Idempotent: does nothing when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(make gcc clang llvm libbpf-dev libelf-dev zlib1g-dev libssl-dev libinih-dev libsystemd-dev libcap-dev
      libcmocka-dev libclang-rt-14-dev bpftool pkg-config iproute2 python3 python3-websockets
      python3-pytest chromium prometheus go-md2man yamllint systemd man-db)
# node and npm may come from elsewhere than Debian (the CI image ships them);
# only ask apt when they are missing.
command -v node >/dev/null || pkgs+=(nodejs)
command -v npm >/dev/null || pkgs+=(npm)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "deps: missing ${missing[*]}; run 'make deps' as root" >&2
		exit 1
	fi
	echo "deps: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Real WebSocket peers for the demo and the tests (node `ws`).
if [ ! -d tests/peers/node_modules/ws ]; then
	echo "deps: npm ci in tests/peers"
	(cd tests/peers && npm ci --no-audit --no-fund --loglevel=error)
fi

# The Vite 7 dev server and playwright-core that drive Debian's chromium in
# the HMR test.
if [ ! -d tests/hmr/node_modules/vite ] || [ ! -d tests/hmr/node_modules/playwright-core ]; then
	echo "deps: npm ci in tests/hmr"
	(cd tests/hmr && npm ci --no-audit --no-fund --loglevel=error)
fi
