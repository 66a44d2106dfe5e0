#!/usr/bin/env bash
# Soak: does prequal-gw come back to where it started? Starts 2 example backends and the gateway
# (2 workers), then runs M million requests through it (wrk: 64 keep-alive connections, and 8
# that send "Connection: close" on every request, at the same time) and R connection storms of C
# connections each (slowloris: most send part of a head, a quarter send nothing; each storm is
# held until header_ms closes it). Pooled upstream connections idle out after 5 s. Prints the
# gateway's RSS and open fds before, after the requests, after the storms and 10 s later, and
# the requests that failed. Not run in CI.
# Usage: bench/soak.sh [millions=1] [storm-conns=3000] [storms=8]
set -euo pipefail
cd "$(dirname "$0")/.."
millions=${1:-1}
conns=${2:-3000}
storms=${3:-8}
. bench/lib.sh
bench_deps wrk
bench_build prequal-gw pgw-backend
ulimit -n $((conns + 4096))
tmp=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
for i in 1 2; do
  ./build/pgw-backend --listen "127.0.0.1:1930$i" --name "b$i" --quiet >/dev/null &
  pids+=($!)
done
cat >"$tmp/gw.lua" <<LUA
return {
  listen = "127.0.0.1:19300", workers = 2, admin = false,
  limits = { connections = $((conns + 1024)) },
  timeouts = { header_ms = 2000 },
  upstreams = { b = { keepalive = { idle_timeout_ms = 5000 },
                      backends = { "http://127.0.0.1:19301", "http://127.0.0.1:19302" } } },
  routes = { { match = { path_prefix = "/" }, upstream = "b" } },
}
LUA
setsid ./build/prequal-gw "$tmp/gw.lua" 2>"$tmp/gw.log" &
gw=$!
pids+=($gw)
for _ in $(seq 100); do
  curl -s -o /dev/null http://127.0.0.1:19300/ && break
  sleep 0.05
done
sleep 0.5

state() {
  local rss fds
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$gw/status")
  fds=$(ls "/proc/$gw/fd" | wc -l)
  awk -v what="$1" -v rss="$rss" -v fds="$fds" \
    'BEGIN { printf "%-16s RSS %6.1f MiB   fds %5d\n", what, rss / 1024, fds }'
}

# wrk runs for a duration, not a count: 10 s rounds until the total is reached.
total=$((millions * 1000000))
state "before"
echo "requests: $total (wrk -c64 keep-alive, and -c8 with Connection: close, in 10 s rounds)"
done_reqs=0 errors=0 t0=$SECONDS
while [ "$done_reqs" -lt "$total" ]; do
  wrk -t1 -c64 -d10s http://127.0.0.1:19300/ >"$tmp/ka.out" &
  ka=$!
  wrk -t1 -c8 -d10s -H "Connection: close" http://127.0.0.1:19300/ >"$tmp/cl.out" &
  cl=$!
  wait $ka $cl
  for f in "$tmp/ka.out" "$tmp/cl.out"; do
    n=$(awk '/requests in/ {print $1}' "$f")
    e=$(awk '/Non-2xx/ {s += $NF} /Socket errors/ {gsub(",", ""); s += $4 + $6 + $8 + $10} END {print s + 0}' "$f")
    done_reqs=$((done_reqs + n))
    errors=$((errors + e))
  done
  printf '  %9d requests, %d errors\n' "$done_reqs" "$errors"
done
echo "  $done_reqs requests in $((SECONDS - t0)) s, $errors errors"
state "after requests"

echo "storms: $storms x $conns connections (header_ms 2000)"
python3 - "$conns" "$storms" <<'PY'
import socket, sys, time
conns, storms = int(sys.argv[1]), int(sys.argv[2])
for r in range(storms):
    socks = []
    for i in range(conns):
        s = socket.create_connection(("127.0.0.1", 19300))
        if i % 4:
            s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * (i % 300))
        socks.append(s)
    time.sleep(2.5)  # header_ms closes them all
    for s in socks:
        s.close()
PY
state "after storms"
sleep 10
state "10 s later"
if grep -qE "\[(err|crit)\]" "$tmp/gw.log"; then
  echo "gateway errors:"
  grep -E "\[(err|crit)\]" "$tmp/gw.log" | tail -5
fi
