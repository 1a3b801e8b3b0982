#!/usr/bin/env bash
# Wycheproof test vectors through the HSM's crypto commands, on the Excrypt
# port, as the reference's application partition: the reference set-up, then
# the "PKCS11 App" role is given what the vectors need (PKCS#1 v1.5
# decryption, Import PKI, No Usage Wrap, and GPDK in its command list), and
# tests/integration/wycheproof_excrypt.py runs every supported vector file
# (AES-CBC/GCM/CMAC/KW/KWP, HMAC, HKDF, ECDH, X25519, ECDSA, Ed25519, RSA
# PKCS#1 v1.5 and PSS signatures, RSA-OAEP and PKCS#1 v1.5 decryption).
#
# The vectors: $KH_WYCHEPROOF_DIR, default ../shared/vectors/wycheproof next
# to the source tree. Extra options for the runner (e.g. "--only aes_gcm -v"):
# $KH_WYCHEPROOF_ARGS.
source "$(dirname "$0")/lib.sh"
source "$KH_SRC/scripts/lib/reference-setup.sh"

VECTORS=${KH_WYCHEPROOF_DIR:-$KH_SRC/../shared/vectors/wycheproof}
[ -d "$VECTORS" ] || fail "no Wycheproof vectors in $VECTORS (set KH_WYCHEPROOF_DIR)"

note "client library and DER encoder self-tests"
PYTHONDONTWRITEBYTECODE=1 /usr/bin/python3 "$KH_SRC/tests/integration/excrypt.py" || fail "excrypt.py self-test"
/usr/bin/python3 "$KH_SRC/tests/integration/wycheproof_excrypt.py" --selftest || fail "DER self-test"

start_hsm A
W=$T/work
note "reference set-up through the CLI on the console"
kh_reference_setup "$CLI_BIN" "$T/A/console.sock" "$W" || fail "reference set-up"

ADMIN_LOGIN="login --user Admin1 --password-file $W/admin1.pw
login --user Admin2 --password-file $W/admin2.pw"
ROLE="PKCS11 App"

role_show() {
  console A -f - <<EOF
$ADMIN_LOGIN
role show --name "$ROLE"
EOF
}

# add_items LIST ITEM...: LIST (comma separated) with the missing ITEMs appended
add_items() {
  local list=$1 item; shift
  for item in "$@"; do
    [[ ",$list," == *",$item,"* ]] || list=${list:+$list,}$item
  done
  printf '%s' "$list"
}

note "the partition's role gets PKCS#1 v1.5 decryption, Import PKI, No Usage Wrap and GPDK"
out=$(role_show) || fail "role show: $out"
perms=$(sed -n 's/^Permissions: *//p' <<<"$out")
cmds=$(sed -n 's/^Commands: *//p' <<<"$out")
if [ -z "$perms" ] || [ -z "$cmds" ]; then
  fail "cannot read the role's permissions and commands: $out"
fi
perms=$(add_items "$perms" keys keys.pkcs1_decrypt keys.import_pki keys.no_usage_wrap)
cmds=$(add_items "$cmds" GPKA ASYL GPSE GPSD GPMC HMAC GPKW GPKU ASYV GPDK)
out=$(console A -f - 2>&1 <<EOF
$ADMIN_LOGIN
role modify --name "$ROLE" --permissions "$perms" --commands "$cmds"
EOF
) || fail "role modify (does the HSM know GPDK?): $out"
out=$(role_show) || fail "role show: $out"
for p in keys.pkcs1_decrypt keys.import_pki keys.no_usage_wrap; do
  grep -q "^Permissions:.*\b${p//./\\.}\b" <<<"$out" || fail "role lacks $p after modify: $out"
done
grep -q "^Commands:.*\bGPDK\b" <<<"$out" || fail "role lacks GPDK after modify: $out"

note "Wycheproof vectors from $VECTORS"
# shellcheck disable=SC2086
/usr/bin/python3 "$KH_SRC/tests/integration/wycheproof_excrypt.py" \
  --host 127.0.0.1 --port "$A_PROD" --ca "$W/ca.pem" \
  --cert "$W/client.pem" --key "$W/client.key" \
  --user pkcs11user --password-file "$W/user.pw" \
  ${KH_WYCHEPROOF_ARGS:-} "$VECTORS" || fail "Wycheproof vectors (see above)"
echo "wycheproof: all checks passed"
