#!/usr/bin/env bash
# No key or password bytes in clear where they must not be: after the
# reference set-up (passwords, FTK components, fragment passphrases) and a
# client login over TLS, none of those values, raw or hex, appears in the
# database files, the log, or anywhere in the live daemon's memory (its
# network buffers, freed heap and stacks included).
source "$(dirname "$0")/lib.sh"
source "$KH_SRC/scripts/lib/reference-setup.sh"

start_hsm S -v   # debug logging: the most the log ever says
W=$T/work
kh_reference_setup "$CLI_BIN" "$T/S/console.sock" "$W" || fail "set-up"
"$CLI_BIN" --host 127.0.0.1 --port "$S_PROD" --ca "$W/ca.pem" --cert "$W/client.pem" --key "$W/client.key" \
  -f - >/dev/null <<EOF || fail "client session"
login --user pkcs11user --password-file $W/user.pw
echo after-login
EOF
# a wrong password too: failures must not leave the attempt behind either
WRONG=$(secret wrong "Wrong-Guess-Password-8812")
"$CLI_BIN" --console "$T/S/console.sock" login --user Admin1 --password-file "$WRONG" >/dev/null 2>&1 && fail "wrong password accepted"

hexof() { xxd -p "$1" | tr -d '\n'; }
needles=$T/needles
{
  for f in admin1.pw admin2.pw user.pw pmk1.pp pmk2.pp pmk3.pp bek1.pp bek2.pp; do hexof "$W/$f"; echo; done
  hexof "$WRONG"; echo
  sed -n 1p "$W/ftk.components"; sed -n 2p "$W/ftk.components"
} >"$needles"
[ "$(wc -l <"$needles")" = 11 ] || fail "needles"

note "database files and log"
for f in "$T/S/keyhold.db" "$T/S/keyhold.db-wal" "$T/S/keyhold.db-shm" "$T/S.log"; do
  [ -f "$f" ] || continue
  while read -r hx; do
    up=$(tr a-f A-F <<<"$hx"); lo=$(tr A-F a-f <<<"$hx")
    if grep -qaF -- "$up" "$f" || grep -qaF -- "$lo" "$f" ||
       LC_ALL=C grep -qaF -- "$(xxd -r -p <<<"$hx")" "$f" 2>/dev/null; then
      fail "secret ${hx:0:8}... found in $f"
    fi
  done <"$needles"
done
# the components must not be there as raw binary either
/usr/bin/python3 - "$needles" "$T/S/keyhold.db" "$T/S/keyhold.db-wal" <<'EOF' || fail "binary scan of the database"
import binascii, os, sys
needles = [binascii.unhexlify(l.strip()) for l in open(sys.argv[1]) if l.strip()]
for path in sys.argv[2:]:
    if not os.path.exists(path):
        continue
    data = open(path, "rb").read()
    for n in needles:
        if n in data:
            print(f"FOUND secret in {path}")
            sys.exit(1)
print("database files clean")
EOF

note "the live daemon's memory"
/usr/bin/python3 "$KH_SRC/tests/integration/memscan.py" "$(hsm_pid S)" "$needles" || fail "secrets found in daemon memory"
echo "secrets: none found"
