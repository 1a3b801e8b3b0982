#!/usr/bin/env bash
# The web console's sealed admin channel end to end: keyhold-hsm A with the
# reference set-up as a group's Primary, keyhold-guardian in front of it,
# and src/guardian/console/remote.js run by Node 20 (WebCrypto, fetch) in
# tests/console/remote_node.mjs: guardian login, RemoteSession.open (the
# fingerprint compared with the Admin port's own server key), both HSM
# administrators logged in through the channel, MKST, the FTK erased and
# loaded again from its two components with the same check value. Then the
# guardian's memory must hold neither the passwords nor the components, and
# the HSM's audit log shows the sealed logins.
source "$(dirname "$0")/lib.sh"
source "$KH_SRC/tests/integration/p11_lib.sh"

GUARD_BIN="$KH_BUILD/keyhold-guardian"
NODE=${KH_NODE:-/usr/bin/node}
[ -x "$GUARD_BIN" ] || fail "no keyhold-guardian at $GUARD_BIN"
if ! [ -x "$NODE" ] || ! "$NODE" -e 'process.exit(globalThis.crypto && crypto.subtle && Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)'; then
  echo "SKIP: Node 20 with WebCrypto is needed at $NODE"
  exit 0
fi

kh_put_secret "$T/guardian.pw" "Guardian-Identity-Secret-1"
kh_put_secret "$T/gadmin.pw" "Guardian-Admin-Secret-1"

note "A: the reference set-up, the Guardian role and identity"
p11_setup A
out=$(console A -f - 2>&1 <<EOF
$ADMIN_LOGIN
role add --name Guardian --logins-required 1 --ports prod --sources ethernet --dual-factor never --permissions Replication --key-ranges none --commands ECHO,PRMD,STAT,HASH,KTEX,KTIM,KTCK,CFEX,CFIM
identity add --name guardian --role Guardian --password-file $T/guardian.pw
EOF
) || fail "Guardian role on A: $out"

note "the guardian: a client certificate from A's CA, a server certificate of its own CA"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$T/g-client.key" -out "$T/g-client.csr" -subj "/CN=guardian" 2>/dev/null
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

GH=$(free_port)
GP=$(free_port)
"$GUARD_BIN" --init-admin admin -d "$T/g" <"$T/gadmin.pw" >/dev/null || fail "guardian --init-admin"
"$GUARD_BIN" -d "$T/g" --ca "$W/ca.pem" --cert "$T/g-client.pem" --key "$T/g-client.key" \
  --server-cert "$T/g-srv.pem" --server-key "$T/g-srv.key" --password-file "$T/guardian.pw" \
  --http-port "$GH" --ping-interval 300 -D -p "$T/guardian.pid" --log-file "$T/guardian.log" \
  || fail "keyhold-guardian did not start (see $T/guardian.log)"
KH_PIDFILES+=("$T/guardian.pid")

g() { "$CLI_BIN" --guardian "127.0.0.1:$GH" --guardian-ca "$T/g-ca.pem" --user admin --password-file "$T/gadmin.pw" "$@"; }
out=$(g group add --name Console --port "$GP") || fail "group add: $out"
out=$(g device add --group Console --host 127.0.0.1 --port "$A_PROD" --admin-port "$A_ADMIN" --role Primary) \
  || fail "device add A: $out"
DA=$(g --json device list | /usr/bin/python3 -c '
import json, sys
for line in sys.stdin:
    line = line.strip()
    if line.startswith("{"):
        for d in json.loads(line).get("devices", []):
            print(d["id"])
' | head -n 1)
[ -n "$DA" ] || fail "no device id for A"

# what the operator compares: the SHA-256 of the Admin port's server key
# (the handshake fails without a client certificate, after the server's came)
SPFP=$({ openssl s_client -connect "127.0.0.1:$A_ADMIN" </dev/null 2>/dev/null || true; } \
  | openssl x509 -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum | awk '{print $1}')
[ ${#SPFP} -eq 64 ] || fail "could not read the Admin port's server key"

cp "$KH_SRC/src/guardian/console/remote.js" "$T/remote.mjs"
note "remote.js against a simulated HSM: ES256 and RS256, forged answers refused"
"$NODE" "$KH_SRC/tests/console/remote_selftest.mjs" "$T/remote.mjs" || fail "remote_selftest.mjs failed"

note "remote.js under Node: logins, MKST, the FTK erased and loaded again, all sealed"
NODE_EXTRA_CA_CERTS="$T/g-ca.pem" "$NODE" "$KH_SRC/tests/console/remote_node.mjs" \
  "$T/remote.mjs" "https://127.0.0.1:$GH" admin "$T/gadmin.pw" "$DA" \
  "$W/admin1.pw" "$W/admin2.pw" "$W/ftk.components" "$SPFP" \
  || fail "remote_node.mjs failed"

note "the HSM's audit log: the sealed logins and the ceremony, with their identities"
out=$(console A -f - 2>&1 <<EOF
$ADMIN_LOGIN
audit show --all
EOF
) || fail "audit show: $out"
grep -q "remote.open" <<<"$out" || fail "no remote.open in A's audit log: $out"
grep -q "(sealed)" <<<"$out" || fail "no sealed login in A's audit log: $out"
echo "ok: A's audit log records the sealed channel and its logins"

note "the guardian's memory holds neither the passwords nor the components"
: >"$T/needles"
for f in "$W/admin1.pw" "$W/admin2.pw"; do xxd -p "$f" | tr -d '\n' >>"$T/needles"; echo >>"$T/needles"; done
while read -r comp; do
  [ -n "$comp" ] || continue
  printf '%s' "$comp" | xxd -p | tr -d '\n' >>"$T/needles"; echo >>"$T/needles"
  echo "$comp" >>"$T/needles"
done <"$W/ftk.components"
/usr/bin/python3 "$KH_SRC/tests/integration/memscan.py" "$(cat "$T/guardian.pid")" "$T/needles" \
  || fail "an administrator's password or an FTK component is in the guardian's memory"
echo "ok: test_console_channel"
