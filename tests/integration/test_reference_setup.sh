#!/usr/bin/env bash
# The reference's whole HSM set-up on a fresh daemon through the CLI, then
# clients on the Excrypt port: with the client certificate (login as the
# partition's identity, ECHO, RAND, GPKM), without one (refused), with one
# from another CA tree, expired, or revoked (refused, each naming why), and
# after `tls-ports set --allow-anonymous` (connects, but only the
# Transaction Processing rights until it logs in). Major keys survive a
# restart (sealed), and do not in volatile mode.
source "$(dirname "$0")/lib.sh"
source "$KH_SRC/scripts/lib/reference-setup.sh"

start_hsm A
W=$T/work
note "reference set-up through the CLI on the console"
kh_reference_setup "$CLI_BIN" "$T/A/console.sock" "$W" || fail "reference set-up"
log=$W/setup.log
grep -q "The password of Admin1 must be changed now" "$log" || fail "Admin1 was not forced to change the default password"
grep -q "Admin2: role Administrator, 2 of 2 logins, role active" "$log" || fail "dual login"

note "FTK: each component's check value, then the final KCV, checked independently"
kcv() { printf '\0%.0s' $(seq 16) | openssl enc -aes-256-ecb -K "$1" -nopad | xxd -p | head -c 6 | tr a-f A-F; }
c1=$(sed -n 1p "$W/ftk.components"); c2=$(sed -n 2p "$W/ftk.components")
ftk=$(/usr/bin/python3 -c "import sys; a,b=(bytes.fromhex(x) for x in sys.argv[1:]); print(bytes(x^y for x,y in zip(a,b)).hex())" "$c1" "$c2")
grep -q "Component 1 of 2 loaded, check value $(kcv "$c1")" "$log" || fail "component 1 KCV"
grep -q "Component 2 of 2 loaded, check value $(kcv "$c2")" "$log" || fail "component 2 KCV"
FTK_KCV=$(kcv "$ftk")
grep -q "FTK: loaded, AES-256, KCV $FTK_KCV" "$log" || fail "FTK final KCV is not $FTK_KCV"
pmk1=$(grep -m1 -A0 "PMK generated" -B1 "$log" | grep -o 'Final Key Checksum: *[0-9A-F]*' | awk '{print $NF}' || true)
grep -q "PMK: loaded, AES-256" "$log" || fail "PMK not loaded"
grep -q "BEK: loaded, AES-256" "$log" || fail "BEK not loaded"
[ "$(ls "$W/pmk" | wc -l)" = 3 ] || fail "three PMK fragment files expected"
[ "$(stat -c %a "$W/pmk/PMK-fragment-2-of-3.khf")" = 600 ] || fail "fragment file mode"

note "roles as the reference asks"
grep -A8 "^Name: *Transaction Processing" "$log" | grep -q "^Permissions: *keys$" || fail "TP permissions"
grep -A8 "^Name: *Transaction Processing" "$log" | grep -q "^Key ranges: *(none)" || fail "TP key ranges"
grep -A8 "^Name: *Transaction Processing" "$log" | grep -q "^Commands: *ECHO,PRMD,RAND,HASH,STAT,TIME,GPKM,GPKS,GPKR,ASYS$" || fail "TP commands"
grep -A9 "^Name: *PKCS11 App" "$log" | grep -q "^Permissions: *keys,keys.authorized,keys.import_pki,keys.no_usage_wrap$" || fail "partition permissions"
grep -A9 "^Name: *PKCS11 App" "$log" | grep -q "^Key ranges: *S:1000-1499,A:1500-1999$" || fail "partition ranges"
grep -A9 "^Name: *PKCS11 App" "$log" | grep -q "^Logins required: *1$" || fail "partition logins"
grep -A9 "^Name: *PKCS11 App" "$log" | grep -q "^Ports: *prod$" || fail "partition ports"
grep -A9 "^Name: *PKCS11 App" "$log" | grep -q "^Connection sources: *ethernet$" || fail "partition sources"
grep -A9 "^Name: *PKCS11 App" "$log" | grep -q "^Use dual factor: *never$" || fail "partition dual factor"
# the same set of commands (shown in the command table's order)
sorted_cmds() { tr ',' '\n' | sort | tr '\n' ','; }
have=$(grep -A9 "^Name: *PKCS11 App" "$log" | sed -n 's/^Commands: *//p' | sorted_cmds)
[ "$have" = "$(sorted_cmds <<<"$KH_APP_COMMANDS")" ] || fail "partition commands: $have"

PROD=(--host 127.0.0.1 --port "$A_PROD" --ca "$W/ca.pem")
CERT=(--cert "$W/client.pem" --key "$W/client.key")

note "a client with the client certificate logs in as the identity and works"
out=$("$CLI_BIN" "${PROD[@]}" "${CERT[@]}" --json -f - <<EOF
login --user pkcs11user --password-file $W/user.pw
echo hello-hsm
rand --bytes 32
keytable
EOF
) || fail "client session: $out"
grep -q '"role":"PKCS11 App"' <<<"$out" || fail "login as pkcs11user: $out"
grep -q 'hello-hsm' <<<"$out" || fail "ECHO: $out"
grep -Eq '[0-9A-F]{64}' <<<"$out" || fail "RAND: $out"
grep -q '"command":"keytable","ok":true,"count":0' <<<"$out" || fail "GPKM: $out"

note "a client without a certificate is refused, and told why"
expect_fail "server requires a client certificate" "$CLI_BIN" "${PROD[@]}" echo
expect_fail "TLS handshake" "$CLI_BIN" --host 127.0.0.1 --port "$A_ADMIN" --ca "$W/ca.pem" echo

note "a certificate from another CA tree is refused"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -keyout "$T/other-ca.key" -out "$T/other-ca.pem" -subj "/CN=Other CA" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$T/other.key" -out "$T/other.csr" -subj "/CN=pkcs11user" 2>/dev/null
openssl x509 -req -in "$T/other.csr" -CA "$T/other-ca.pem" -CAkey "$T/other-ca.key" \
  -CAcreateserial -days 30 -out "$T/other.pem" 2>/dev/null
expect_fail "another CA tree" "$CLI_BIN" "${PROD[@]}" --cert "$T/other.pem" --key "$T/other.key" echo

note "an expired certificate from a trusted CA is refused"
# An external CA the HSM trusts (the shared-CA-tree workflow), signing a
# certificate whose validity ended in 2021.
cat >"$T/ca.cnf" <<EOF
[ca]
default_ca = x
[x]
dir = $T/extca
database = \$dir/index.txt
new_certs_dir = \$dir
serial = \$dir/serial
default_md = sha256
policy = p
[p]
commonName = supplied
EOF
mkdir -p "$T/extca"; : >"$T/extca/index.txt"; echo 1000 >"$T/extca/serial"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -keyout "$T/ext-ca.key" -out "$T/ext-ca.pem" -subj "/CN=Corporate CA" 2>/dev/null
openssl ca -batch -config "$T/ca.cnf" -cert "$T/ext-ca.pem" -keyfile "$T/ext-ca.key" \
  -in "$T/other.csr" -out "$T/expired.pem" -startdate 20200101000000Z -enddate 20210101000000Z \
  >/dev/null 2>&1 || fail "openssl ca"
ADMIN_LOGIN="login --user Admin1 --password-file $W/admin1.pw
login --user Admin2 --password-file $W/admin2.pw"
console A -f - <<EOF >/dev/null || fail "import CA"
$ADMIN_LOGIN
tls ca import --cert $T/ext-ca.pem
EOF
expect_fail "expired" "$CLI_BIN" "${PROD[@]}" --cert "$T/expired.pem" --key "$T/other.key" echo

note "a revoked certificate is refused"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$T/rev.key" -out "$T/rev.csr" -subj "/CN=pkcs11user" 2>/dev/null
out=$(console A -f - <<EOF
$ADMIN_LOGIN
tls sign --csr $T/rev.csr --out $T/rev.pem
EOF
) || fail "sign: $out"
serial=$(grep -o 'Serial: *[0-9A-F]*' <<<"$out" | awk '{print $NF}')
[ -n "$serial" ] || fail "no serial printed: $out"
expect_ok "Echo" "$CLI_BIN" "${PROD[@]}" --cert "$T/rev.pem" --key "$T/rev.key" echo
console A -f - <<EOF >/dev/null || fail "revoke"
$ADMIN_LOGIN
tls revoke --serial $serial
EOF
expect_fail "revoked" "$CLI_BIN" "${PROD[@]}" --cert "$T/rev.pem" --key "$T/rev.key" echo
expect_ok "Echo" "$CLI_BIN" "${PROD[@]}" "${CERT[@]}" echo

note "tls-ports set with Allow Anonymous: no certificate needed, Transaction Processing rights until login"
console A -f - <<EOF >/dev/null || fail "tls-ports set"
$ADMIN_LOGIN
tls-ports set --port excrypt --allow-anonymous
EOF
out=$("$CLI_BIN" "${PROD[@]}" --keep-going -f - 2>&1 <<EOF
echo anonymous
rand --bytes 8
send [AOGPKR;SL1000;]
send [AOGRSA;RB2048;]
login --user pkcs11user --password-file $W/user.pw
send [AOGPKR;SL1000;]
send [AOGRSA;RB2048;]
EOF
) && fail "expected the refused commands to fail the script"
grep -q "Echo: *anonymous" <<<"$out" || fail "anonymous ECHO: $out"
grep -q "EC11;ETkey slot outside the role's ranges" <<<"$out" || fail "TP slot range: $out"
grep -q "GRSA not enabled for role Transaction Processing" <<<"$out" || fail "TP command list: $out"
grep -q "EC18;ETnot found" <<<"$out" || fail "after login the slot is in range: $out"
grep -q "\[AOGRSA;BBY;" <<<"$out" || fail "after login GRSA runs: $out"
# a certificate that is sent is still verified
expect_fail "another CA tree" "$CLI_BIN" "${PROD[@]}" --cert "$T/other.pem" --key "$T/other.key" echo
# the Admin port is still mutual
expect_fail "server requires a client certificate" "$CLI_BIN" --host 127.0.0.1 --port "$A_ADMIN" --ca "$W/ca.pem" echo

note "the client checks that the server certificate names the address it dialled"
console A -f - >/dev/null <<EOF || fail "reissue"
$ADMIN_LOGIN
tls server issue --cn keyhold-hsm --san DNS:localhost
EOF
expect_fail "server certificate not trusted" "$CLI_BIN" "${PROD[@]}" "${CERT[@]}" echo
expect_ok "Echo" "$CLI_BIN" --host localhost --port "$A_PROD" --ca "$W/ca.pem" "${CERT[@]}" echo
console A -f - >/dev/null <<EOF || fail "reissue"
$ADMIN_LOGIN
tls server issue --cn keyhold-hsm --san IP:127.0.0.1,DNS:localhost
EOF
expect_ok "Echo" "$CLI_BIN" "${PROD[@]}" "${CERT[@]}" echo

note "major keys survive a restart (sealed under the device key)"
stop_hsm A
start_hsm A
out=$(console A -f - <<EOF
$ADMIN_LOGIN
majorkey status
EOF
) || fail "status after restart: $out"
grep -q "FTK: loaded, AES-256, KCV $FTK_KCV" <<<"$out" || fail "FTK lost on restart: $out"
grep -q "PMK: loaded" <<<"$out" || fail "PMK lost on restart: $out"
grep -q "BEK: loaded" <<<"$out" || fail "BEK lost on restart: $out"
expect_ok "Echo" "$CLI_BIN" "${PROD[@]}" "${CERT[@]}" echo

note "in volatile mode they do not"
start_hsm V --volatile-major-keys
console V -f - >/dev/null <<EOF || fail "volatile load"
login --user Admin1 --password-file $W/default.pw --new-password-file $W/admin1.pw
login --user Admin2 --password-file $W/default.pw --new-password-file $W/admin2.pw
majorkey load --ftk --bits 256 --parts 2 --component-file $W/ftk.components
EOF
stop_hsm V
start_hsm V --volatile-major-keys
out=$(console V -f - <<EOF
$ADMIN_LOGIN
majorkey status
EOF
) || fail "volatile status: $out"
grep -q "FTK: not loaded" <<<"$out" || fail "volatile FTK survived a restart: $out"
echo "reference set-up: all checks passed"
