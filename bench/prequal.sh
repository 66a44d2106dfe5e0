#!/usr/bin/env bash
# Tail latency of prequal-gw's balancers vs nginx (least_conn) and HAProxy (leastconn) under an
# OPEN-LOOP Poisson load (bench/loadgen.c), in three scenarios over 5 example backends:
#   equal  5 equal backends (--service-ms 2 --dist exp)
#   slow   the same, but b5 is 5x slower (--slowdown 5)
#   stall  the same, but b5 stalls 200 ms every second (--stall-ms 200 --stall-every-ms 1000)
# Per scenario: start the backends and every target (each a non-daemon child, loopback only),
# calibrate the capacity once (closed loop, through prequal-gw round_robin), then offer the SAME
# rate (65 % of capacity) to every target, interleaved: ROUNDS rounds, each running every target
# for DURATION/ROUNDS seconds (target order rotated per round), and merge the rounds per target.
# Targets: prequal-gw with strategy prequal / round_robin / least_conn / p2c (a strategy that
# `prequal-gw -t` rejects is reported as skipped), nginx least_conn, HAProxy leastconn.
# A Prequal target may carry parameters, `prequal:key=value,key=value` (e.g.
# `prequal:removes_per_request=0.25`), so that variants run interleaved in one run; for every
# Prequal target the table also gives the share of fallback picks and the ok probes per request
# (from prequal_picks_total and prequal_probes_total on its admin listener, over the measured
# segments including their warm-up).
#
# Usage: bench/prequal.sh            (about 8 minutes)
# Environment (all optional):
#   DURATION=20      measured seconds per target per scenario (split over ROUNDS)
#   ROUNDS=4         interleaving rounds
#   WARMUP=1         unmeasured seconds before each measured segment
#   RATE=            offered req/s (default: LOAD x calibrated capacity)
#   LOAD=0.65        fraction of the calibrated capacity
#   CONNECTIONS=2048 loadgen connection pool (max) in the open-loop runs
#   CAL_CONNECTIONS=64  connections for the closed-loop calibration
#   TIMEOUT_MS=5000  loadgen request timeout
#   SERVICE_MS=2     mean backend service time (exponential)
#   SCENARIOS="equal slow stall"   TARGETS="prequal round_robin least_conn p2c nginx haproxy"
#   PORT_BASE=19400  ports PORT_BASE+1..PORT_BASE+60 are used on 127.0.0.1
#   KEEP=1           keep the temp dir (configs, logs, raw results)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DURATION:-20}
ROUNDS=${ROUNDS:-4}
WARMUP=${WARMUP:-1}
RATE=${RATE:-}
LOAD=${LOAD:-0.65}
CONNECTIONS=${CONNECTIONS:-2048}
CAL_CONNECTIONS=${CAL_CONNECTIONS:-64}
TIMEOUT_MS=${TIMEOUT_MS:-5000}
SERVICE_MS=${SERVICE_MS:-2}
SCENARIOS=${SCENARIOS:-"equal slow stall"}
TARGETS=${TARGETS:-"prequal round_robin least_conn p2c nginx haproxy"}
PORT_BASE=${PORT_BASE:-19400}
KEEP=${KEEP:-0}
HOST=127.0.0.1

log() { printf '%s\n' "$*" >&2; }

# ---- dependencies (idempotent) -------------------------------------------------------------
. bench/lib.sh
bench_deps nginx-light haproxy
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

# ---- build ---------------------------------------------------------------------------------
bench_build prequal-gw pgw-backend pgw-loadgen
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

tmp=$(mktemp -d /tmp/pgw-prequal-bench.XXXXXX)
# Run private copies: a rebuild of build/ while the bench runs would otherwise hand a process a
# half-written executable (it dies with SIGSEGV when it faults in a page the linker has not
# written yet).
mkdir -p "$tmp/bin"
cp build/prequal-gw build/pgw-backend build/pgw-loadgen "$tmp/bin/"
cp -r lua "$tmp/lua"
export PGW_LUA_DIR=$tmp/lua
GW=$tmp/bin/prequal-gw
BACKEND=$tmp/bin/pgw-backend
LOADGEN=$tmp/bin/pgw-loadgen
pids=()
stop_all() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
cleanup() {
  trap - EXIT INT TERM
  stop_all
  if [ "$KEEP" = 1 ]; then log "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
for i in $(seq 1 60); do
  port_free $((PORT_BASE + i)) || { log "port $((PORT_BASE + i)) on $HOST is in use (set PORT_BASE)"; exit 1; }
done

NB=5
BPORTS=()
for i in $(seq 1 $NB); do BPORTS+=($((PORT_BASE + i))); done
NGINX_PORT=$((PORT_BASE + 20))
HAPROXY_PORT=$((PORT_BASE + 21))
# prequal-gw targets get ports by their position in TARGETS: listener 30+i, admin 45+i
declare -A GW_IDX
i=0
for t in $TARGETS; do GW_IDX[$t]=$i; i=$((i + 1)); done
[ "$i" -le 15 ] || { log "at most 15 targets"; exit 1; }
gw_port() { echo $((PORT_BASE + 30 + ${GW_IDX[$1]})); }
admin_port() { echo $((PORT_BASE + 45 + ${GW_IDX[$1]})); }
strategy_of() { echo "${1%%:*}"; }
# "prequal:a=1,b=2" -> "a = 1, b = 2"
params_of() { [[ $1 == *:* ]] && sed 's/=/ = /g; s/,/, /g' <<<"${1#*:}" || true; }
is_prequal() { [ "$(strategy_of "$1")" = prequal ]; }
target_port() {
  case $1 in nginx) echo $NGINX_PORT ;; haproxy) echo $HAPROXY_PORT ;; *) gw_port "$1" ;; esac
}

# ---- configs -------------------------------------------------------------------------------
write_gw_config() { # target file
  local t=$1 f=$2 list="" p admin=false pq=""
  for p in "${BPORTS[@]}"; do list+="\"http://$HOST:$p\", "; done
  if is_prequal "$t"; then
    admin="{ listen = \"$HOST:$(admin_port "$t")\" }"
    pq=", prequal = { $(params_of "$t") }"
  fi
  cat >"$f" <<LUA
return {
  listen = "$HOST:$(gw_port "$t")", workers = 1, admin = $admin,
  upstreams = { b = { strategy = "$(strategy_of "$t")", backends = { ${list%, } }$pq } },
  routes = { { match = { path_prefix = "/" }, upstream = "b" } },
}
LUA
}

write_nginx_config() {
  local d=$tmp/nginx p
  mkdir -p "$d/logs"
  {
    cat <<NGX
worker_processes 1;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $d/body; proxy_temp_path $d/proxy; fastcgi_temp_path $d/fastcgi;
  uwsgi_temp_path $d/uwsgi; scgi_temp_path $d/scgi;
  keepalive_timeout 300s;
  keepalive_requests 100000000;
  upstream b {
    least_conn;
NGX
    for p in "${BPORTS[@]}"; do echo "    server $HOST:$p;"; done
    cat <<NGX
    keepalive 64;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
  }
  server {
    listen $HOST:$NGINX_PORT;
    location / {
      proxy_pass http://b;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGX
  } >"$d/nginx.conf"
}

write_haproxy_config() {
  local i=0 p
  {
    cat <<HAP
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  maxconn 8000
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-request 10s
  timeout http-keep-alive 60s
  timeout queue 10s
frontend fe
  bind $HOST:$HAPROXY_PORT
  default_backend b
backend b
  balance leastconn
HAP
    for p in "${BPORTS[@]}"; do i=$((i + 1)); echo "  server b$i $HOST:$p"; done
  } >"$tmp/haproxy.cfg"
}

# ---- which targets exist ------------------------------------------------------------------
declare -A SKIP
avail=()
for t in $TARGETS; do
  case $t in
    nginx)
      write_nginx_config
      if ! err=$("$NGINX" -t -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log" 2>&1); then
        SKIP[$t]="nginx -t failed: $(echo "$err" | grep -m1 emerg || echo "$err" | tail -1)"
      fi ;;
    haproxy)
      write_haproxy_config
      if ! err=$("$HAPROXY" -c -q -f "$tmp/haproxy.cfg" 2>&1); then
        SKIP[$t]="haproxy -c failed: $(echo "$err" | head -1)"
      fi ;;
    *)
      write_gw_config "$t" "$tmp/gw-$t.lua"
      if ! err=$("$GW" -t "$tmp/gw-$t.lua" 2>&1); then
        SKIP[$t]="skipped: rejected by prequal-gw -t"
        log "$t: $(echo "$err" | head -1 | sed "s|$tmp/||")"
      fi ;;
  esac
  if [ -n "${SKIP[$t]:-}" ]; then log "$t: ${SKIP[$t]}"; else avail+=("$t"); fi
done
[ ${#avail[@]} -gt 0 ] || { log "no target available"; exit 1; }

wait_http() { # port name
  local i code
  for i in $(seq 1 100); do
    code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://$HOST:$1/" 2>/dev/null || true)
    [ "$code" = 200 ] && return 0
    sleep 0.1
  done
  log "$2 on port $1 did not answer 200"
  return 1
}

# every process of the running scenario, to notice one that died (or was killed from outside)
spids=()
snames=()
spawned() { pids+=($!); spids+=($!); snames+=("$1"); } # name: backend-bN or a target
declare -A FAILED
# Checks the scenario's processes. A dead target is marked FAILED (and not run again); a dead
# backend makes the whole scenario invalid (its name is printed).
check_procs() { # round
  local i st why
  for i in "${!spids[@]}"; do
    [ -n "${spids[$i]}" ] || continue
    kill -0 "${spids[$i]}" 2>/dev/null && continue
    st=0
    wait "${spids[$i]}" 2>/dev/null || st=$?
    why="exit status $st"
    [ "$st" -gt 128 ] && why="killed by SIG$(kill -l $((st - 128)) 2>/dev/null || echo $((st - 128)))"
    log "  ${snames[$i]} died in round $1: $why"
    spids[$i]=""
    case ${snames[$i]} in
      backend-*) echo "${snames[$i]} ($why)" ;;
      *) FAILED[$scn-${snames[$i]}]="FAILED: died in round $1 ($why)" ;;
    esac
  done
}

start_scenario() { # scenario
  local odd=() i
  spids=()
  snames=()
  case $1 in
    equal) odd=() ;;
    slow) odd=(--slowdown 5) ;;
    stall) odd=(--stall-ms 200 --stall-every-ms 1000) ;;
    *) log "unknown scenario $1"; exit 1 ;;
  esac
  for i in $(seq 1 $NB); do
    local extra=()
    [ "$i" = $NB ] && extra=("${odd[@]}")
    "$BACKEND" --listen "$HOST:${BPORTS[$((i - 1))]}" --name "b$i" --service-ms "$SERVICE_MS" \
      --dist exp ${extra[@]+"${extra[@]}"} --quiet >/dev/null 2>"$tmp/backend-$1-b$i.log" &
    spawned "backend-b$i"
  done
  for i in $(seq 1 $NB); do wait_http "${BPORTS[$((i - 1))]}" "backend b$i"; done
  for t in "${avail[@]}"; do
    case $t in
      nginx) "$NGINX" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log" & spawned nginx ;;
      haproxy) "$HAPROXY" -db -f "$tmp/haproxy.cfg" >"$tmp/haproxy-$1.log" 2>&1 & spawned haproxy ;;
      *) "$GW" "$tmp/gw-$t.lua" >"$tmp/gw-$t-$1.log" 2>&1 & spawned "$t" ;;
    esac
  done
  for t in "${avail[@]}"; do wait_http "$(target_port "$t")" "$t"; done
}

# field NAME from a RESULT line
field() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" <<<"$2"; }

# Prequal counters of a target: "picks fallback probes_ok probes_timeout probes_skipped"
pq_scrape() {
  curl -s -m 2 "http://$HOST:$(admin_port "$1")/metrics" | awk '
    /^prequal_picks_total\{/ { p += $NF; if ($0 ~ /branch="fallback"/) f += $NF }
    /^prequal_probes_total\{/ { if ($0 ~ /result="ok"/) o += $NF; if ($0 ~ /result="timeout"/) t += $NF
                                if ($0 ~ /result="skipped"/) s += $NF }
    END { printf "%d %d %d %d %d\n", p, f, o, t, s }'
}

seg=$(awk -v d="$DURATION" -v r="$ROUNDS" 'BEGIN { printf "%.3f", d / r }')
log "targets: ${avail[*]}; ${DURATION}s per target per scenario in $ROUNDS rounds (+${WARMUP}s warm-up each)"
TW=12
for t in $TARGETS; do [ ${#t} -le $TW ] || TW=${#t}; done
tables=()
for scn in $SCENARIOS; do
  log ""
  log "=== scenario $scn ==="
  start_scenario "$scn"
  cal_target=round_robin
  [[ " ${avail[*]} " == *" round_robin "* ]] || cal_target=${avail[0]}
  rate=$RATE
  if [ -z "$rate" ]; then
    cal=$("$LOADGEN" --calibrate --url "http://$HOST:$(target_port "$cal_target")/" \
      --connections "$CAL_CONNECTIONS" --duration 3 --warmup 1 --quiet | tail -1)
    cap=$(field rps "$cal")
    rate=$(awk -v c="$cap" -v l="$LOAD" 'BEGIN { printf "%.0f", c * l }')
    log "capacity through $cal_target ($CAL_CONNECTIONS conns, closed loop): $cap req/s -> offering $rate req/s (${LOAD})"
  else
    log "offering RATE=$rate req/s"
  fi
  order=("${avail[@]}")
  invalid=""
  for r in $(seq 1 "$ROUNDS"); do
    [ -z "$invalid" ] || break
    for t in "${order[@]}"; do
      [ -z "${FAILED[$scn-$t]:-}" ] || continue
      is_prequal "$t" && before=$(pq_scrape "$t")
      out=$("$LOADGEN" --url "http://$HOST:$(target_port "$t")/" --rate "$rate" --duration "$seg" \
        --warmup "$WARMUP" --connections "$CONNECTIONS" --timeout-ms "$TIMEOUT_MS" --quiet \
        --save "$tmp/res-$scn-$t-$r" | tail -1)
      if is_prequal "$t"; then
        echo "$before $(pq_scrape "$t")" | awk '{ for (i = 1; i <= 5; i++) printf "%d ", $(i + 5) - $i; print "" }' \
          >>"$tmp/pq-$scn-$t"
      fi
      log "  round $r $(printf "%-${TW}s" "$t") p50 $(field p50_ms "$out")  p99 $(field p99_ms "$out")  errors $(field errors "$out")  timeouts $(field timeouts "$out")"
      check_procs "$r" >"$tmp/dead"
      if [ -s "$tmp/dead" ]; then
        invalid="INVALID: a backend died during round $r: $(tr '\n' ' ' <"$tmp/dead")(killed from outside?)"
        log "  $invalid"
        break
      fi
      sleep 0.3
    done
    order=("${order[@]:1}" "${order[0]}") # rotate so no target always runs first
  done
  stop_all

  if [ "$scn" = equal ]; then scol="max share"; else scol="b5 share"; fi
  table=$(printf '\nscenario %s: %s req/s offered, %s s per target, open loop, timeout %s ms\n' \
    "$scn" "$rate" "$DURATION" "$TIMEOUT_MS")
  [ -z "$invalid" ] || table+=$(printf '\n%s' "$invalid")
  table+=$(printf "\n%-${TW}s %9s %9s %9s %13s %10s %12s %9s %10s" target p50_ms p99_ms p99.9_ms \
    errors+tmo "$scol" p99_med_rnd fallback probes/req)
  for t in $TARGETS; do
    if [ -n "${SKIP[$t]:-}" ]; then
      table+=$(printf "\n%-${TW}s %s" "$t" "${SKIP[$t]}")
      continue
    fi
    if [ -n "${FAILED[$scn-$t]:-}" ]; then
      table+=$(printf "\n%-${TW}s %s" "$t" "${FAILED[$scn-$t]}")
      continue
    fi
    if ! compgen -G "$tmp/res-$scn-$t-*" >/dev/null; then
      table+=$(printf "\n%-${TW}s %s" "$t" "not run")
      continue
    fi
    res=$("$LOADGEN" --merge "$tmp"/res-"$scn"-"$t"-* | tail -1)
    echo "$res" >"$tmp/result-$scn-$t"
    share=$(field share "$res")
    if [ "$scn" = equal ]; then
      sh=$(tr ',' '\n' <<<"$share" | awk -F: 'BEGIN { m = 0 } $2 > m { m = $2; n = $1 } END { if (n != "") printf "%.1f%% %s", 100 * m, n; else print "-" }')
    else
      sh=$(tr ',' '\n' <<<"$share" | awk -F: '$1 == "b5" { f = $2 } END { printf "%.1f%%", 100 * f }')
    fi
    et=$(($(field errors "$res") + $(field timeouts "$res")))
    # median over rounds of each round's p99: robust to one round hit by outside load
    med=$(for f in "$tmp"/res-"$scn"-"$t"-*; do field p99_ms "$("$LOADGEN" --merge "$f" | tail -1)"; done |
      sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }')
    fb=- ppr=-
    if [ -s "$tmp/pq-$scn-$t" ]; then
      fb=$(awk '{ p += $1; f += $2 } END { printf "%.1f%%", p ? 100 * f / p : 0 }' "$tmp/pq-$scn-$t")
      ppr=$(awk '{ p += $1; o += $3 } END { printf "%.2f", p ? o / p : 0 }' "$tmp/pq-$scn-$t")
    fi
    table+=$(printf "\n%-${TW}s %9s %9s %9s %13s %10s %12s %9s %10s" "$t" "$(field p50_ms "$res")" \
      "$(field p99_ms "$res")" "$(field p999_ms "$res")" "$et" "$sh" "$med" "$fb" "$ppr")
  done
  echo "$table"
  tables+=("$table")
done

if [ ${#tables[@]} -gt 1 ]; then
  echo
  echo "==================== summary ===================="
  printf '%s\n' "${tables[@]}"
fi
