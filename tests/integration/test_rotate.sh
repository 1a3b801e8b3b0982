#!/usr/bin/env bash
# PMK rotation through the real daemon and CLI: the reference set-up, keys
# under the PMK and the FTK made by the application over TLS, then
# `majorkey load --pmk --rotate` by two components. The keys stay usable
# (same check values), the old PMK's cryptogram opens only within the grace
# period, and after a restart the new PMK, the rotated-out one and the
# re-wrapped TLS keys (server and CA) are all still there.
source "$(dirname "$0")/lib.sh"
source "$KH_SRC/scripts/lib/reference-setup.sh"

start_hsm A
W=$T/work
note "reference set-up through the CLI on the console"
kh_reference_setup "$CLI_BIN" "$T/A/console.sock" "$W" || fail "reference set-up"
ADMIN_LOGIN="login --user Admin1 --password-file $W/admin1.pw
login --user Admin2 --password-file $W/admin2.pw"

# app STEP: one application session on the Excrypt port (client
# certificate, pkcs11user); state in $W/app.json between steps.
app() {
  /usr/bin/python3 - "$1" <<EOF
import json, os, sys
sys.path.insert(0, "$KH_SRC/tests/integration")
from excrypt import Connection, ExcryptError
step, state = sys.argv[1], "$W/app.json"
st = json.load(open(state)) if os.path.exists(state) else {}
with Connection("127.0.0.1", $A_PROD, ca="$W/ca.pem", cert="$W/client.pem",
                key="$W/client.key") as c:
    c.login("pkcs11user", open("$W/user.pw").read())
    def kcv_of(slot):
        # the slot's key as a cryptogram, stored again under a new id: its check value
        bg = c.call("GPGC", SL=slot)["BG"]
        return c.call("GPKA", CG=bg, SL=1400, NI=True, RP=True)["AE"]
    if step == "make":
        st["pmk_kcv"] = c.call("GPGS", CT=6, SL=1000)["AE"]
        st["ftk_kcv"] = c.call("GPGS", CT=6, SL=1001, FS="FTK")["AE"]
        r = c.call("GPGS", CT=6)
        st["cg"], st["cg_kcv"] = r["BG"], r["AE"]
        json.dump(st, open(state, "w"))
    elif step in ("use", "use-no-old"):
        assert kcv_of(1000) == st["pmk_kcv"], "slot 1000 changed"
        assert kcv_of(1001) == st["ftk_kcv"], "slot 1001 changed"
        try:
            ae = c.call("GPKA", CG=st["cg"], SL=1401, NI=True, RP=True)["AE"]
            assert step == "use", "the old PMK's cryptogram opened after the grace period"
            assert ae == st["cg_kcv"]
        except ExcryptError as e:
            assert step == "use-no-old" and "CRYPTO" in str(e), e
    print("app", step, "ok")
EOF
}

app make || fail "keys under the PMK and the FTK"
app use || fail "keys before the rotation"

note "rotate the PMK by two components, grace period one hour"
(umask 077; printf '%s\n%s\n' \
  "A1B2C3D4E5F60718293A4B5C6D7E8F90A1B2C3D4E5F60718293A4B5C6D7E8F90" \
  "0F0E0D0C0B0A09080706050403020100F0E0D0C0B0A090807060504030201000" >"$W/pmk2.components")
kcv() { printf '\0%.0s' $(seq 16) | openssl enc -aes-256-ecb -K "$1" -nopad | xxd -p | head -c 6 | tr a-f A-F; }
c1=$(sed -n 1p "$W/pmk2.components"); c2=$(sed -n 2p "$W/pmk2.components")
pmk2=$(/usr/bin/python3 -c "import sys; a,b=(bytes.fromhex(x) for x in sys.argv[1:]); print(bytes(x^y for x,y in zip(a,b)).hex())" "$c1" "$c2")
NEW_KCV=$(kcv "$pmk2")
out=$(console A -f - <<EOF
$ADMIN_LOGIN
majorkey status
EOF
) || fail "status: $out"
OLD_KCV=$(sed -n 's/^PMK: loaded, AES-256, KCV \([0-9A-F]*\)$/\1/p' <<<"$out")
[ -n "$OLD_KCV" ] || fail "PMK KCV: $out"
out=$(console A -f - <<EOF
$ADMIN_LOGIN
majorkey load --pmk --bits 256 --parts 2 --component-file $W/pmk2.components --rotate --grace 3600
majorkey status
EOF
) || fail "rotation: $out"
grep -q "Rotating PMK: AES-256 from 2 components." <<<"$out" || fail "rotation banner: $out"
grep -q "Final Key Checksum: *$NEW_KCV" <<<"$out" || fail "new KCV is not $NEW_KCV: $out"
grep -q "Replaced key KCV: *$OLD_KCV" <<<"$out" || fail "replaced KCV: $out"
grep -q "Keys re-wrapped: *2" <<<"$out" || fail "two keys under the PMK (1000, 1400): $out"
grep -q "PMK: loaded, AES-256, KCV $NEW_KCV" <<<"$out" || fail "status after rotation: $out"
grep -q "PMK: replaced key KCV $OLD_KCV opens its cryptograms until" <<<"$out" || fail "status: $out"

note "the keys are still usable, the old cryptogram within the grace period"
app use || fail "keys after the rotation"

note "refusals: BEK, --grace without --rotate"
expect_fail "only the FTK and the PMK" console A majorkey load --bek --rotate
expect_fail "--grace needs --rotate" console A majorkey load --pmk --grace 10

note "after a restart: the new PMK, the rotated-out one, TLS keys re-wrapped"
stop_hsm A
start_hsm A
grep -q "server key cannot be unsealed" "$T/A.log" && fail "TLS server key lost its PMK"
out=$(console A -f - <<EOF
$ADMIN_LOGIN
majorkey status
tls server issue --cn keyhold-hsm --san IP:127.0.0.1,DNS:localhost
EOF
) || fail "status and CA use after restart: $out"
grep -q "PMK: loaded, AES-256, KCV $NEW_KCV" <<<"$out" || fail "new PMK lost on restart: $out"
grep -q "PMK: replaced key KCV $OLD_KCV" <<<"$out" || fail "rotated-out PMK lost: $out"
app use || fail "keys after the restart"

note "past the grace period the old cryptogram is refused"
later=$(date -u -d '+2 hours' +%Y%m%d%H%M%S)
console A -f - >/dev/null <<EOF || fail "time set"
$ADMIN_LOGIN
time --set $later
EOF
app use-no-old || fail "old cryptogram after the grace period"
out=$(console A -f - <<EOF
$ADMIN_LOGIN
majorkey status
audit show --all
audit verify
EOF
) || fail "status: $out"
grep -q "replaced key" <<<"$out" && fail "rotated-out PMK still listed: $out"
grep -q "majorkey.rotate.*KCV $NEW_KCV replaces KCV $OLD_KCV, 2 keys re-wrapped" <<<"$out" \
  || fail "rotation not audited: $out"
grep -q "majorkey.retire.*KCV $OLD_KCV" <<<"$out" || fail "retirement not audited: $out"
echo "rotation: all checks passed"
