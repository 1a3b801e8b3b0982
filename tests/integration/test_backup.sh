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

note "a key table larger than one frame is backed up and restored in pages"
# 300 data objects of 16320 bytes: about 4.9 MB of backup, 9.8 MB of hex,
# more than one 8 MiB frame holds
big_objects() { # PORT put|check [clear]
  PYTHONDONTWRITEBYTECODE=1 /usr/bin/python3 - "$KH_SRC/tests/integration" "$W" "$@" <<'PY'
import hashlib, sys
sys.path.insert(0, sys.argv[1])
from excrypt import Connection, ExcryptError
w, port, mode = sys.argv[2], int(sys.argv[3]), sys.argv[4]
clear = len(sys.argv) > 5
tls = {} if clear else dict(ca=f"{w}/ca.pem", cert=f"{w}/client.pem", key=f"{w}/client.key")
value = lambda i: hashlib.sha256(str(i).encode()).digest() * 510
slots = range(300) if mode == "put" else (0, 150, 299)
with Connection("127.0.0.1", port, tls=not clear, **tls) as c:
    c.login("pkcs11user", open(f"{w}/user.pw").read().rstrip("\n"))
    if mode == "put":
        reqs = [("GPKA", [("CL", "data"), ("KV", value(i)), ("SL", 1000 + i)]) for i in slots]
    else:
        reqs = [("GPKR", [("SL", 1000 + i)]) for i in slots]
    for i, a in zip(slots, c.send_many(reqs, window=8)):
        if isinstance(a, ExcryptError):
            sys.exit(f"{mode} slot {1000 + i}: {a}")
        if mode == "check" and a.hex("DV") != value(i):
            sys.exit(f"slot {1000 + i}: wrong value")
PY
}
big_objects "$A_PROD" put || fail "filling A's key table"
out=$(console A -f - <<EOF
$ADMINS
backup --out $T/big.bak
EOF
) || fail "paged backup: $out"
size=$(stat -c %s "$T/big.bak")
[ "$size" -gt $((4 * 1024 * 1024)) ] || fail "the big backup is only $size bytes"
[ "$(stat -c %a "$T/big.bak")" = 600 ] || fail "big backup file mode"
out=$(console B -f - <<EOF
$ADMINS
restore --in $T/big.bak
EOF
) || fail "paged restore on B: $out"
grep -q "Keys restored: *30[0-9]" <<<"$out" || fail "paged restore counts: $out"
big_objects "$B_PROD" check clear || fail "B's objects after the paged restore"

note "a damaged big backup is refused after its last page, B unchanged"
cp "$T/big.bak" "$T/bigbad.bak"
printf '\x55' | dd of="$T/bigbad.bak" bs=1 seek=$((size - 100)) conv=notrunc status=none
expect_fail "BACKUP_INVALID\|invalid" console B -f - <<EOF
$ADMINS
restore --in $T/bigbad.bak
EOF
big_objects "$B_PROD" check clear || fail "B changed by a refused paged restore"

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
