# Helpers for integration tests: start real keyhold-hsm daemons on free
# loopback ports in a temp dir, drive them with the real keyhold CLI, and
# stop everything on exit. Sourced by tests/integration/test_*.sh.
set -euo pipefail

: "${KH_BUILD:?KH_BUILD must point at the build directory}"
: "${KH_SRC:=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
HSM_BIN="$KH_BUILD/keyhold-hsm"
CLI_BIN="$KH_BUILD/keyhold"
T=$(mktemp -d /tmp/kh-it-XXXXXX)
chmod 700 "$T"
# Daemons run detached with stderr on /dev/null: sanitizer reports (from the
# daemons and the CLI alike) go to files that kh_cleanup turns into a failure.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=1:log_path=$T/sanitizer"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}print_stacktrace=1:log_path=$T/sanitizer"
declare -a KH_PIDFILES=()

kh_cleanup() {
  local rc=$?
  for pf in "${KH_PIDFILES[@]}"; do
    if [ -s "$pf" ]; then
      local pid
      pid=$(cat "$pf")
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  if compgen -G "$T/sanitizer.*" >/dev/null; then
    echo "--- sanitizer reports ---" >&2
    cat "$T"/sanitizer.* >&2
    rc=1
  fi
  if [ "$rc" -ne 0 ]; then
    echo "--- daemon logs ($T) ---" >&2
    for f in "$T"/*.log; do [ -f "$f" ] && { echo "== $f" >&2; tail -n 40 "$f" >&2; }; done
  fi
  if [ -n "${KH_ARTIFACTS:-}" ]; then
    mkdir -p "$KH_ARTIFACTS"
    cp "$T"/*.log "$KH_ARTIFACTS"/ 2>/dev/null || true
  fi
  [ -n "${KH_KEEP:-}" ] || rm -rf "$T"
  exit "$rc"
}
trap kh_cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
note() { echo "--- $*"; }

free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_hsm NAME [extra daemon options...]: data dir $T/NAME, ports in
# NAME_PROD / NAME_ADMIN, console socket $T/NAME/console.sock.
start_hsm() {
  local name=$1; shift
  local prod admin
  prod=$(eval echo "\${${name}_PROD:-}"); admin=$(eval echo "\${${name}_ADMIN:-}")
  [ -n "$prod" ] || prod=$(free_port)
  [ -n "$admin" ] || admin=$(free_port)
  eval "${name}_PROD=$prod; ${name}_ADMIN=$admin"
  "$HSM_BIN" -d "$T/$name" --excrypt-port "$prod" --admin-port "$admin" \
    --pidfile "$T/$name.pid" --log-file "$T/$name.log" -D "$@" \
    || fail "keyhold-hsm $name did not start (see $T/$name.log)"
  KH_PIDFILES+=("$T/$name.pid")
}

stop_hsm() {
  local name=$1 pid
  pid=$(cat "$T/$name.pid")
  kill -TERM "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  fail "keyhold-hsm $name did not stop on SIGTERM"
}

kill9_hsm() {
  local name=$1
  kill -KILL "$(cat "$T/$name.pid")"
  sleep 0.2
}

hsm_pid() { cat "$T/$1.pid"; }

# console NAME [cli args...]: the CLI on the HSM's console socket.
console() { local name=$1; shift; "$CLI_BIN" --console "$T/$name/console.sock" "$@"; }

# secret NAME VALUE: a 0600 file holding VALUE (no newline); prints its path.
secret() { local f="$T/secret.$1"; printf '%s' "$2" > "$f"; chmod 600 "$f"; echo "$f"; }

# expect_fail PATTERN cmd...: the command must fail and print PATTERN.
expect_fail() {
  local pat=$1; shift
  local out rc=0
  out=$("$@" 2>&1) || rc=$?
  [ "$rc" -ne 0 ] || fail "expected failure ($pat) but succeeded: $* -> $out"
  grep -q -- "$pat" <<<"$out" || fail "expected '$pat' in output of $*: $out"
  echo "ok (refused as expected): $pat"
}

# expect_ok PATTERN cmd...: the command must succeed and print PATTERN.
expect_ok() {
  local pat=$1; shift
  local out rc=0
  out=$("$@" 2>&1) || rc=$?
  [ "$rc" -eq 0 ] || fail "expected success of $* (rc=$rc): $out"
  grep -q -- "$pat" <<<"$out" || fail "expected '$pat' in output of $*: $out"
}
