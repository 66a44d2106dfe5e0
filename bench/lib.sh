# Shell pieces shared by the benches (sourced, not run): dependencies and the build.
# The caller has done `cd` to the repository root and `set -euo pipefail`.

bench_log() { printf '%s\n' "$*" >&2; }

# The project's build dependencies, plus the Debian packages given, installed when missing.
bench_deps() { # package...
  ./scripts/install-deps >&2
  local missing=() p sudo=""
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  bench_log "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Builds build/ (RelWithDebInfo). core/ is a moving target: when the build fails but the bench's
# binaries exist, the bench still runs on them, with a warning.
bench_build() { # binary... (paths under build/ that the bench needs)
  local log=/tmp/pgw-bench-build.$$.log b
  cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  if cmake --build build -j"$(nproc)" >"$log" 2>&1; then
    rm -f "$log"
    return 0
  fi
  for b in "$@"; do
    [ -x "build/$b" ] || { cat "$log" >&2; return 1; }
  done
  bench_log "warning: build failed ($log); using the existing binaries"
}
