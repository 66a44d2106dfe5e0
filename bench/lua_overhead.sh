#!/usr/bin/env bash
# What Lua costs on the request path: requests/s through prequal-gw (1 worker, round robin over 4
# example backends) with no Lua, with an on_request hook that sets one header, and with a Lua
# strategy, interleaved `wrk -t2 -c64` runs; then a jit.v trace log of the hook and strategy.
# Usage: bench/lua_overhead.sh [seconds-per-run] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
rounds=${2:-3}
. bench/lib.sh
bench_deps wrk
bench_build prequal-gw pgw-backend
tmp=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
for i in 1 2 3 4; do
  ./build/pgw-backend --listen "127.0.0.1:1950$i" --quiet >/dev/null &
  pids+=($!)
done
backends='"http://127.0.0.1:19501", "http://127.0.0.1:19502", "http://127.0.0.1:19503", "http://127.0.0.1:19504"'
jit=""
[ -n "${JIT_LOG:-}" ] && jit=$(printf 'require("jit.v").on("%s")' "$JIT_LOG")
cat >"$tmp/none.lua" <<LUA
return { listen = "127.0.0.1:19580", workers = 1, admin = false,
  upstreams = { b = { strategy = "round_robin", backends = { $backends } } },
  routes = { { match = { path_prefix = "/" }, upstream = "b" } } }
LUA
cat >"$tmp/hook.lua" <<LUA
$jit
return { listen = "127.0.0.1:19581", workers = 1, admin = false,
  upstreams = { b = { strategy = "round_robin", backends = { $backends } } },
  routes = { { match = { path_prefix = "/" }, upstream = "b",
               on_request = function(req) req:set_header("X-Hook", "1") end } } }
LUA
cat >"$tmp/strategy.lua" <<LUA
$jit
local rr = { name = "lua_rr", pick = function(backends, req, state)
  local n = #backends
  state.i = (state.i or 0) % n + 1
  return backends[state.i]
end }
return { listen = "127.0.0.1:19582", workers = 1, admin = false,
  upstreams = { b = { strategy = rr, backends = { $backends } } },
  routes = { { match = { path_prefix = "/" }, upstream = "b" } } }
LUA
for n in none hook strategy; do
  ./build/prequal-gw -t "$tmp/$n.lua" >/dev/null
  ./build/prequal-gw "$tmp/$n.lua" 2>"$tmp/$n.log" &
  pids+=($!)
done
sleep 0.5
declare -A res
declare -A ports=([none]=19580 [hook]=19581 [strategy]=19582)
for r in $(seq 1 "$rounds"); do
  for n in none hook strategy; do
    port=${ports[$n]}
    rps=$(wrk -t2 -c64 -d"${secs}s" "http://127.0.0.1:$port/" | awk '/Requests\/sec/ {print $2}')
    res[$n]="${res[$n]:-} $rps"
    printf 'round %d %-9s %10s req/s\n' "$r" "$n" "$rps"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
base=$(echo "${res[none]}" | median)
echo "median over $rounds rounds (wrk -t2 -c64, ${secs}s):"
for n in none hook strategy; do
  m=$(echo "${res[$n]}" | median)
  printf '  %-9s %10s req/s  %+.1f%%\n' "$n" "$m" "$(echo "($m - $base) * 100 / $base" | bc -l)"
done
