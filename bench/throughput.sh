#!/usr/bin/env bash
# Throughput through prequal-gw (1 worker, round robin; and with Prequal as "gw-pq") vs nginx
# (1 worker, round robin, upstream keep-alive) vs one backend directly, in one interleaved run of `wrk -t2 -c64` against the same 4 example
# backends. Prints requests/s per round and the median per target. Installs wrk and nginx
# (Debian) if missing. Usage: bench/throughput.sh [seconds-per-run] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
rounds=${2:-3}
. bench/lib.sh
bench_deps wrk nginx-light
bench_build prequal-gw pgw-backend
tmp=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  [ -f "$tmp/nginx.pid" ] && kill "$(cat "$tmp/nginx.pid")" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
for i in 1 2 3 4; do
  ./build/pgw-backend --listen "127.0.0.1:1910$i" --name "b$i" --quiet >/dev/null &
  pids+=($!)
done
cat >"$tmp/gw.lua" <<LUA
return {
  listen = "127.0.0.1:19180", workers = 1, admin = false,
  upstreams = { b = { strategy = "round_robin",
                      backends = { "http://127.0.0.1:19101", "http://127.0.0.1:19102",
                                   "http://127.0.0.1:19103", "http://127.0.0.1:19104" } } },
  routes = { { match = { path_prefix = "/" }, upstream = "b" } },
}
LUA
# The same with Prequal (its probes cost syscalls too: 3 per request by default).
sed -e 's/19180/19182/' -e 's/"round_robin"/"prequal"/' "$tmp/gw.lua" > "$tmp/gw-prequal.lua"
cat >"$tmp/nginx.conf" <<NGX
worker_processes 1;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream b {
    server 127.0.0.1:19101; server 127.0.0.1:19102; server 127.0.0.1:19103; server 127.0.0.1:19104;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:19181;
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGX
# Every proxy runs in a session of its own. nginx daemonizes (setsid), and with the kernel's
# scheduler autogroups (sched_autogroup_enabled) a session is a scheduling group: a proxy left in
# the script's session would share one group's CPU with wrk and the four backends, be preempted
# about ten times as often, and lose a third of its throughput for no fault of its own.
setsid ./build/prequal-gw "$tmp/gw.lua" 2>"$tmp/gw.log" &
pids+=($!)
setsid ./build/prequal-gw "$tmp/gw-prequal.lua" 2>"$tmp/gw-prequal.log" &
pids+=($!)
nginx -c "$tmp/nginx.conf" -e "$tmp/nginx-error.log"
sleep 0.5
declare -A results
run() {
  local name=$1 url=$2
  local rps
  rps=$(wrk -t2 -c64 -d"${secs}s" "$url" | awk '/Requests\/sec/ {print $2}')
  results[$name]="${results[$name]:-} $rps"
  printf '  %-8s %10s req/s\n' "$name" "$rps"
}
for r in $(seq 1 "$rounds"); do
  echo "round $r"
  run direct http://127.0.0.1:19101/
  run nginx http://127.0.0.1:19181/
  run gateway http://127.0.0.1:19180/
  run gw-pq http://127.0.0.1:19182/
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "median over $rounds rounds of ${secs}s (wrk -t2 -c64):"
d=$(echo "${results[direct]}" | median)
for n in direct nginx gateway gw-pq; do
  m=$(echo "${results[$n]}" | median)
  printf '  %-8s %10s req/s  %.2fx of direct\n' "$n" "$m" "$(echo "$m / $d" | bc -l)"
done
