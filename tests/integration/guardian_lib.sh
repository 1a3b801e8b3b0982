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

guardian_identity() { # NAME: the Guardian role and identity, as Admin1+Admin2 of NAME
  local out
  out=$(console "$1" -f - 2>&1 <<EOF
$2
role add --name Guardian --logins-required 1 --ports prod --sources ethernet --dual-factor never --permissions Replication --key-ranges none --commands ECHO,PRMD,STAT,HASH,KTEX,KTIM,KTCK,CFEX,CFIM
identity add --name guardian --role Guardian --password-file $T/guardian.pw
EOF
) || fail "Guardian role on $1: $out"
}

# member NAME FTK_COMPONENTS: a fresh HSM with A's PMK and BEK (from A's
# fragments), the FTK from the component file, its own CA and server
# certificate, A's CA trusted for client certificates, the Guardian identity
member() {
  local name=$1 comps=$2 out login
  start_hsm "$name"
  kh_put_secret "$T/$name.a1" "$name-admin1-password"
  kh_put_secret "$T/$name.a2" "$name-admin2-password"
  login="login --user Admin1 --password-file $T/$name.a1
login --user Admin2 --password-file $T/$name.a2"
  out=$(console "$name" -f - 2>&1 <<EOF
login --user Admin1 --password-file $W/default.pw --new-password-file $T/$name.a1
login --user Admin2 --password-file $W/default.pw --new-password-file $T/$name.a2
majorkey recombine --bek --fragment $W/bek/BEK-fragment-1-of-2.khf --fragment $W/bek/BEK-fragment-2-of-2.khf --passphrase-file $W/bek1.pp --passphrase-file $W/bek2.pp
majorkey recombine --pmk --fragment $W/pmk/PMK-fragment-2-of-3.khf --fragment $W/pmk/PMK-fragment-3-of-3.khf --passphrase-file $W/pmk2.pp --passphrase-file $W/pmk3.pp
majorkey load --ftk --alg AES --bits 256 --parts 2 --component-file $comps
tls ca generate --type ec --curve P-256 --cn "Keyhold $name CA" --out $T/$name-ca.pem
tls server issue --cn keyhold-hsm-$name --san IP:127.0.0.1,DNS:localhost
tls ca import --cert $W/ca.pem
EOF
) || fail "set-up of $name: $out"
  guardian_identity "$name" "$login"
}

guardian_certs() {
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$T/g-client.key" -out "$T/g-client.csr" -subj "/CN=guardian" 2>/dev/null
  local out
  out=$(console A -f - 2>&1 <<EOF
$ADMIN_LOGIN
tls sign --csr $T/g-client.csr --out $T/g-client.pem --days 30
EOF
) || fail "guardian client certificate: $out"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -keyout "$T/g-ca.key" -out "$T/g-ca.pem" -subj "/CN=Guardian Test CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$T/g-srv.key" -out "$T/g-srv.csr" -subj "/CN=guardian" 2>/dev/null
  openssl x509 -req -in "$T/g-srv.csr" -CA "$T/g-ca.pem" -CAkey "$T/g-ca.key" -CAcreateserial \
    -days 30 -out "$T/g-srv.pem" \
    -extfile <(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n') 2>/dev/null
  chmod 600 "$T"/*.key
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
