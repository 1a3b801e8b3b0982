# Setting up HSMs for a keyhold-guardian device group through the keyhold
# CLI. Shared by scripts/demo and the guardian's integration tests.
# Sourced after scripts/lib/reference-setup.sh (kh_put_secret), with the
# reference set-up done on the first HSM in WORKDIR.
#
# kh_guardian_identity CLI CONSOLE LOGIN PWFILE
#   the least-privilege "Guardian" role and its identity "guardian" on the
#   HSM at CONSOLE; LOGIN is the CLI lines that log its administrators in
# kh_group_member CLI CONSOLE WORKDIR NAME COMPONENTS OUTDIR
#   a fresh HSM (default administrators) joins the first one's world: new
#   administrator passwords in OUTDIR/NAME.a1 / .a2, the first HSM's PMK and
#   BEK from its fragments, the FTK from COMPONENTS, its own CA
#   (OUTDIR/NAME-ca.pem) and server certificate for 127.0.0.1, the first
#   HSM's CA trusted for client certificates (the guardian's); prints the
#   CLI lines that log its administrators in
# kh_guardian_certs CLI CONSOLE LOGIN WORKDIR OUTDIR
#   the guardian's client certificate signed by the first HSM's CA
#   (OUTDIR/g-client.pem, .key) and a server certificate for 127.0.0.1 from
#   a CA of the guardian's own (OUTDIR/g-ca.pem, g-srv.pem, g-srv.key)

kh_guardian_identity() {
  local cli=$1 console=$2 login=$3 pw=$4
  "$cli" --console "$console" -f - <<EOF
$login
role add --name Guardian --logins-required 1 --ports prod --sources ethernet --dual-factor never --permissions Replication --key-ranges none --commands ECHO,PRMD,STAT,HASH,KTEX,KTIM,KTCK,CFEX,CFIM
identity add --name guardian --role Guardian --password-file $pw
EOF
}

kh_group_member() {
  local cli=$1 console=$2 w=$3 name=$4 comps=$5 out=$6
  kh_put_secret "$out/$name.a1" "$name-Admin1-Secret-1"
  kh_put_secret "$out/$name.a2" "$name-Admin2-Secret-2"
  "$cli" --console "$console" -f - >"$out/$name-setup.log" 2>&1 <<EOF || { cat "$out/$name-setup.log" >&2; return 1; }
login --user Admin1 --password-file $w/default.pw --new-password-file $out/$name.a1
login --user Admin2 --password-file $w/default.pw --new-password-file $out/$name.a2
majorkey recombine --bek --fragment $w/bek/BEK-fragment-1-of-2.khf --fragment $w/bek/BEK-fragment-2-of-2.khf --passphrase-file $w/bek1.pp --passphrase-file $w/bek2.pp
majorkey recombine --pmk --fragment $w/pmk/PMK-fragment-2-of-3.khf --fragment $w/pmk/PMK-fragment-3-of-3.khf --passphrase-file $w/pmk2.pp --passphrase-file $w/pmk3.pp
majorkey load --ftk --alg AES --bits 256 --parts 2 --component-file $comps
tls ca generate --type ec --curve P-256 --cn "Keyhold $name CA" --out $out/$name-ca.pem
tls server issue --cn keyhold-hsm-$name --san IP:127.0.0.1,DNS:localhost
tls ca import --cert $w/ca.pem
EOF
  printf 'login --user Admin1 --password-file %s\nlogin --user Admin2 --password-file %s\n' \
    "$out/$name.a1" "$out/$name.a2"
}

kh_guardian_certs() {
  local cli=$1 console=$2 login=$3 w=$4 out=$5
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$out/g-client.key" -out "$out/g-client.csr" -subj "/CN=guardian" 2>/dev/null || return 1
  "$cli" --console "$console" -f - >/dev/null <<EOF || return 1
$login
tls sign --csr $out/g-client.csr --out $out/g-client.pem --days 365
EOF
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
    -keyout "$out/g-ca.key" -out "$out/g-ca.pem" -subj "/CN=Keyhold Guardian CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    2>/dev/null || return 1
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$out/g-srv.key" -out "$out/g-srv.csr" -subj "/CN=keyhold-guardian" 2>/dev/null || return 1
  openssl x509 -req -in "$out/g-srv.csr" -CA "$out/g-ca.pem" -CAkey "$out/g-ca.key" \
    -CAcreateserial -days 365 -out "$out/g-srv.pem" \
    -extfile <(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=critical,CA:FALSE\n') \
    2>/dev/null || return 1
  chmod 600 "$out"/g-*.key
}
