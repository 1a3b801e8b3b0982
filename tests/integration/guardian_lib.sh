# keyhold-guardian at test time, sourced after lib.sh and p11_lib.sh by
# tests/integration/test_guardian.sh and test_console.sh:
#   guardian_identity NAME LOGIN  the Guardian role and identity on HSM NAME
#   member NAME FTK_COMPONENTS    a fresh HSM holding A's major keys (see below)
#   guardian_certs                the guardian's client certificate from A's CA
#                                 ($T/g-client.*) and its server certificate from
#                                 a test CA of its own ($T/g-ca.pem, $T/g-srv.*)
#   guardian_up                   --init-admin, then the daemon on port $GH
#                                 (HTTPS), trusting the HSMs' CAs in $T/hsm-cas.pem
#   start_guardian                the daemon again (after a kill)
#   g ARGS...                     the keyhold CLI as the guardian's admin
#   gfield, refused, dev_id, wait_for, state_is, serving, pending_is, kill9
GUARD_BIN="$KH_BUILD/keyhold-guardian"
[ -x "$GUARD_BIN" ] || fail "no keyhold-guardian at $GUARD_BIN"
PY=/usr/bin/python3

kh_put_secret "$T/guardian.pw" "Guardian-Identity-Secret-1"
kh_put_secret "$T/gadmin.pw" "Guardian-Admin-Secret-1"

source "$KH_SRC/scripts/lib/guardian-setup.sh"

guardian_identity() { # NAME LOGIN: the Guardian role and identity on HSM NAME
  local out
  out=$(kh_guardian_identity "$CLI_BIN" "$T/$1/console.sock" "$2" "$T/guardian.pw" 2>&1) \
    || fail "Guardian role on $1: $out"
}

# member NAME FTK_COMPONENTS: a fresh HSM with A's PMK and BEK (from A's
# fragments), the FTK from the component file, its own CA ($T/NAME-ca.pem)
# and server certificate, A's CA trusted for client certificates, its
# administrators' passwords in $T/NAME.a1 / .a2, the Guardian identity
member() {
  local name=$1 comps=$2 login
  start_hsm "$name"
  login=$(kh_group_member "$CLI_BIN" "$T/$name/console.sock" "$W" "$name" "$comps" "$T") \
    || fail "set-up of $name (see $T/$name-setup.log)"
  guardian_identity "$name" "$login"
}

guardian_certs() {
  kh_guardian_certs "$CLI_BIN" "$T/A/console.sock" "$ADMIN_LOGIN" "$W" "$T" \
    || fail "the guardian's certificates"
}

start_guardian() {
  "$GUARD_BIN" -d "$T/g" --ca "$T/hsm-cas.pem" --cert "$T/g-client.pem" --key "$T/g-client.key" \
    --server-cert "$T/g-srv.pem" --server-key "$T/g-srv.key" --password-file "$T/guardian.pw" \
    --http-port "$GH" --ping-interval 300 -D -p "$T/guardian.pid" --log-file "$T/guardian.log" \
    || fail "keyhold-guardian did not start (see $T/guardian.log)"
}

guardian_up() {
  GH=$(free_port)
  "$GUARD_BIN" --init-admin admin -d "$T/g" <"$T/gadmin.pw" >/dev/null || fail "guardian --init-admin"
  start_guardian
  KH_PIDFILES+=("$T/guardian.pid")
}


g() { "$CLI_BIN" --guardian "127.0.0.1:$GH" --guardian-ca "$T/g-ca.pem" --user admin --password-file "$T/gadmin.pw" "$@"; }
# gjson FIELD ARGS...: a field of the CLI's JSON answer
gfield() {
  local f=$1; shift
  g --json "$@" | "$PY" -c '
import json, sys
f = sys.argv[1]
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        continue
    d = json.loads(line)
    for k in f.split("."):
        d = d.get(k) if isinstance(d, dict) else None
    if d is not None:
        print(str(d).lower() if isinstance(d, bool) else d)
        break
' "$f"
}
# refused EXPECT ARGS...: the command fails and says EXPECT
refused() {
  local want=$1 out; shift
  if out=$(g "$@" 2>&1); then fail "accepted, should be refused ($want): g $*: $out"; fi
  grep -qi -- "$want" <<<"$out" || fail "refused without '$want': g $*: $out"
  echo "ok: refused: $(tail -n 1 <<<"$out")"
}
dev_id() { # HOST PORT: the device's id
  g --json device list | "$PY" -c '
import json, sys
port = int(sys.argv[1])
for line in sys.stdin:
    line = line.strip()
    if line.startswith("{"):
        for d in json.loads(line).get("devices", []):
            if d.get("port") == port:
                print(d["id"])
' "$1"
}
wait_for() { # SECONDS WHAT CMD...: until CMD succeeds
  local n=$(( $1 * 10 )) what=$2; shift 2
  for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  fail "timed out: $what"
}
state_is() { [ "$(gfield device.state device show --device "$1")" = "$2" ]; }
serving() { [ "$(gfield device.serving device show --device "$1")" = "$2" ]; }
kill9() { # NAME: SIGKILL the HSM and wait until it is gone
  local pid; pid=$(hsm_pid "$1")
  kill -KILL "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.05; done
  fail "keyhold-hsm $1 survived SIGKILL"
}
pending_is() { [ "$(gfield device.pending device show --device "$1")" = "$2" ]; }
