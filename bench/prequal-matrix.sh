#!/usr/bin/env bash
# The Prequal benchmark matrix (issue 11): prequal-gw's balancers (prequal, least_conn, p2c,
# round_robin, and any extra build given with --gw) against nginx least_conn and
# random two least_conn and HAProxy leastconn, under an open-loop Poisson load, over scenarios
# (equal, slow, freeze, flap), loads, replica counts and client set-ups (1 or 3 instances).
# Writes results.md, results.tsv and PNG plots to bench/out/matrix-DATE/. See bench/README.md.
#
#   bench/prequal-matrix.sh --quick                     # about 12 minutes
#   bench/prequal-matrix.sh --full                      # hours
#   bench/prequal-matrix.sh --quick --gw new=/path/to/other/build/prequal-gw
#   bench/prequal-matrix.sh --help                      # every option
#
# This wrapper installs what is missing (the project's build dependencies, nginx-light, haproxy,
# gnuplot-nox), builds build/, and runs bench/matrix.py.
set -euo pipefail
cd "$(dirname "$0")/.."
for a in "$@"; do
  case $a in -h | --help) exec python3 bench/matrix.py --help ;; esac
done
. bench/lib.sh
bench_deps nginx-light haproxy gnuplot-nox
bench_build prequal-gw pgw-backend pgw-loadgen
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec python3 bench/matrix.py "$@"
