#!/usr/bin/env bash
# The arrows of user/ go one way: session -> tunnel -> engine. Checked on
# the sources, so a change that crosses the boundary fails `make test`:
# - struct session is defined in session.c only (elsewhere it is opaque);
# - tunnel.c includes no engine's header (engines are reached through
#   engine.h's struct engine_ops, listed in engines.c);
# - the session knows the tunnel layer only through tunnel.h;
# - engines include neither the session nor another engine.
set -uo pipefail
cd "$(dirname "$0")/../user"
fail=0
bad() { echo "check_layers: $*"; fail=1; }

defs=$(grep -l '^struct session {' ./*.c ./*.h)
[ "$defs" = "./session.c" ] || bad "struct session is defined in: $defs (session.c only)"

engine_headers='dataplane\.h|tc_dataplane\.h|cgroup\.h|tunnel_[a-z_]*\.h'
grep -nE "#include \"($engine_headers)\"" tunnel.c session.c main.c && bad "tunnel.c, session.c or main.c includes an engine's header"
grep -nE '#include "engine\.h"' session.c main.c && bad "session.c or main.c includes engine.h (the tunnel layer's side)"
for f in tunnel_*.c; do
	grep -nE '#include "(session|proxy|tunnel_[a-z_]*)\.h"' "$f" && bad "$f includes the session, the proxy or another engine"
	grep -q '^const struct engine_ops engine_' "$f" || bad "$f defines no struct engine_ops"
done
for e in $(grep -ho 'engine_[a-z]*;' engines.c | tr -d ';' | grep -v fallback | sort -u); do
	grep -q "^const struct engine_ops $e " tunnel_*.c || bad "engines.c lists $e, which no tunnel_*.c defines"
done
[ $fail = 0 ] && echo "check_layers: session -> tunnel -> engine holds"
exit $fail
