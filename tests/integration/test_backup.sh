#!/usr/bin/env bash
# Backup and restore of configuration and keys under the BEK: onto another
# HSM that recombines the same BEK from its fragments (its own PMK differs),
# refused on an HSM with another BEK and for a damaged file, leaving that
# HSM's state as it was.
source "$(dirname "$0")/lib.sh"
source "$KH_SRC/scripts/lib/reference-setup.sh"

start_hsm A
W=$T/work
kh_reference_setup "$CLI_BIN" "$T/A/console.sock" "$W" || fail "set-up of A"
ADMINS="login --user Admin1 --password-file $W/admin1.pw
login --user Admin2 --password-file $W/admin2.pw"
out=$(console A -f - <<EOF
$ADMINS
backup --out $T/a.bak
EOF
) || fail "backup: $out"
[ "$(stat -c %a "$T/a.bak")" = 600 ] || fail "backup file mode"
bek_kcv=$(grep -o 'BEK: loaded, AES-256, KCV [0-9A-F]*' "$W/setup.log" | awk '{print $NF}')

fresh_admins() { # NAME: first logins on a fresh HSM, passwords of its own
  console "$1" -f - >/dev/null <<EOF || fail "first logins on $1"
login --user Admin1 --password-file $W/default.pw --new-password-file $T/$1.a1
login --user Admin2 --password-file $W/default.pw --new-password-file $T/$1.a2
EOF
}

note "restore onto a second HSM holding the same BEK (recombined from A's fragments)"
start_hsm B
kh_put_secret "$T/B.a1" "B-admin1-password"; kh_put_secret "$T/B.a2" "B-admin2-password"
fresh_admins B
mkdir -m 700 "$T/bpmk"
out=$(console B -f - 2>&1 <<EOF
login --user Admin1 --password-file $T/B.a1
login --user Admin2 --password-file $T/B.a2
majorkey recombine --bek --fragment $W/bek/BEK-fragment-2-of-2.khf --fragment $W/bek/BEK-fragment-1-of-2.khf --passphrase-file $W/bek2.pp --passphrase-file $W/bek1.pp
majorkey random --pmk -m 2 -n 2 --out $T/bpmk --passphrase-file $W/pmk1.pp --passphrase-file $W/pmk2.pp
tls-ports set --port excrypt --mode clear
restore --in $T/a.bak
EOF
) || fail "restore on B: $out"
grep -q "Final Key Checksum: *$bek_kcv" <<<"$out" || fail "B's BEK differs: $out"
note "B now has A's partition, identity and administrators"
out=$(console B -f - <<EOF
$ADMINS
role show --name "PKCS11 App"
identity list
EOF
) || fail "A's administrators on B: $out"
grep -q "^Key ranges: *S:1000-1499,A:1500-1999" <<<"$out" || fail "partition not restored: $out"
grep -q "pkcs11user" <<<"$out" || fail "identity not restored: $out"
expect_ok '"role":"PKCS11 App"' "$CLI_BIN" --host 127.0.0.1 --port "$B_PROD" --no-tls --json -f - <<EOF
login --user pkcs11user --password-file $W/user.pw
keytable
EOF

note "a damaged backup is refused and changes nothing"
cp "$T/a.bak" "$T/bad.bak"
size=$(stat -c %s "$T/bad.bak")
printf '\x55' | dd of="$T/bad.bak" bs=1 seek=$((size / 2)) conv=notrunc status=none
expect_fail "BACKUP_INVALID\|invalid" console B -f - <<EOF
$ADMINS
restore --in $T/bad.bak
EOF
head -c 40 "$T/a.bak" >"$T/short.bak"
expect_fail "BACKUP_INVALID\|invalid" console B -f - <<EOF
$ADMINS
restore --in $T/short.bak
EOF

note "an HSM with another BEK refuses it, its own state untouched"
start_hsm C
kh_put_secret "$T/C.a1" "C-admin1-password"; kh_put_secret "$T/C.a2" "C-admin2-password"
fresh_admins C
mkdir -m 700 "$T/cbek"
expect_fail "BACKUP_INVALID\|another BEK" console C -f - <<EOF
login --user Admin1 --password-file $T/C.a1
login --user Admin2 --password-file $T/C.a2
majorkey random --bek -m 2 -n 2 --out $T/cbek --passphrase-file $W/bek1.pp --passphrase-file $W/bek2.pp
restore --in $T/a.bak
EOF
out=$(console C -f - <<EOF
login --user Admin1 --password-file $T/C.a1
login --user Admin2 --password-file $T/C.a2
role list
EOF
) || fail "C after the refused restore: $out"
grep -q "PKCS11 App" <<<"$out" && fail "C was changed by a refused restore"
echo "backup and restore: all checks passed"
