#!/usr/bin/env bash
# `make run`: the demo. A node `ws` backend on 127.0.0.1:3000 that greets
# every client with "example" and logs what it receives, and wsplice on
# 127.0.0.1:8080 in front of it. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
LISTEN=${LISTEN:-127.0.0.1:8080}
UPSTREAM_PORT=${UPSTREAM_PORT:-3000}
MODE=${MODE:-auto}  # the kernel splice wherever it loads (wsplice logs which it chose)

PORT=$UPSTREAM_PORT node tests/peers/demo_server.js &
backend=$!
trap 'kill $backend 2>/dev/null || true' EXIT
for _ in $(seq 50); do
	(exec 3<>/dev/tcp/127.0.0.1/"$UPSTREAM_PORT") 2>/dev/null && break
	kill -0 $backend 2>/dev/null || { echo "demo backend failed to start (is port $UPSTREAM_PORT free?)" >&2; exit 1; }
	sleep 0.1
done

cat <<EOT

  wsplice demo: ws://$LISTEN/  ->  ws://127.0.0.1:$UPSTREAM_PORT/ (mode $MODE)

  Connect from another terminal:
    node tests/peers/ws_client.js ws://$LISTEN/ hello      # prints "example"; the backend logs "received: hello"
    /usr/bin/python3 -m websockets ws://$LISTEN/            # interactive client (python3-websockets)

  Inspect the data plane while a client is connected:
    bpftool map dump pinned /sys/fs/bpf/wsplice/tunnels     # per tunnel: peers, bytes and packets each way
    bpftool map dump pinned /sys/fs/bpf/wsplice/counters    # redirects, missing peers, pause requests
    bpftool prog show pinned /sys/fs/bpf/wsplice/verdict

EOT
exec_status=0
build/wsplice --listen "$LISTEN" --upstream "127.0.0.1:$UPSTREAM_PORT" --mode "$MODE" || exec_status=$?
exit $exec_status
