# The PKCS#11 module against a real HSM: sourced after lib.sh by the
# tests/integration/test_p11_*.sh scripts.
#
# p11_setup NAME: start HSM NAME, run the reference set-up on it, give the
# "PKCS11 App" role what the module's tests need (PKCS#1 v1.5 decryption,
# GPDK, STAT), and write $T/fxpkcs11.cfg for slot 0 with mutual TLS to it
# (exported as FXPKCS11_CFG). Leaves:
#   P11_MODULE  the module
#   P11_PIN     the crypto operator's password (pkcs11user)
#   W           the set-up's work dir (ca.pem, client.pem, client.key, ...)
# p11_run CMD...: run a PKCS#11 client (pkcs11-tool, p11tool, openssl,
# /usr/bin/python3, java); with a sanitizer build of the module the
# sanitizer runtime is preloaded for it.
source "$KH_SRC/scripts/lib/reference-setup.sh"

P11_MODULE="$KH_BUILD/libkeyhold-pkcs11.so"
[ -f "$P11_MODULE" ] || fail "no module at $P11_MODULE"

P11_PRELOAD=""
# not `ldd | grep -q`: grep -q exits at the first match, ldd may then die of
# SIGPIPE, and under pipefail the test would run the clients without the
# sanitizer runtime (about 1 run in 12)
if [[ $(ldd "$P11_MODULE") == *libasan* ]]; then
  P11_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
fi

p11_run() {
  # the clients are not ours: their own leaks are not this module's
  LD_PRELOAD="$P11_PRELOAD" ASAN_OPTIONS="detect_leaks=0:log_path=$T/sanitizer" "$@"
}

ADMIN_LOGIN=""

role_show() {
  console "$1" -f - <<EOF
$ADMIN_LOGIN
role show --name "PKCS11 App"
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

# role_grant HSM "perm..." "cmd...": add permissions and commands to the
# "PKCS11 App" role of the HSM, checking they are there afterwards.
role_grant() {
  local hsm=$1 addp=$2 addc=$3 out perms cmds p c
  out=$(role_show "$hsm") || fail "role show: $out"
  perms=$(sed -n 's/^Permissions: *//p' <<<"$out")
  cmds=$(sed -n 's/^Commands: *//p' <<<"$out")
  [ -n "$perms" ] && [ -n "$cmds" ] || fail "cannot read the role: $out"
  # shellcheck disable=SC2086
  perms=$(add_items "$perms" $addp)
  # shellcheck disable=SC2086
  cmds=$(add_items "$cmds" $addc)
  out=$(console "$hsm" -f - 2>&1 <<EOF
$ADMIN_LOGIN
role modify --name "PKCS11 App" --permissions "$perms" --commands "$cmds"
EOF
) || fail "role modify: $out"
  out=$(role_show "$hsm") || fail "role show: $out"
  for p in $addp; do
    grep -q "^Permissions:.*\b${p//./\\.}\b" <<<"$out" || fail "role lacks $p after modify: $out"
  done
  for c in $addc; do
    grep -q "^Commands:.*\b$c\b" <<<"$out" || fail "role lacks $c after modify: $out"
  done
}

# p11_write_cfg FILE PORT...: a configuration for slot 0 with an address
# per port on 127.0.0.1 (the set-up's certificates, the log in $T).
source "$KH_SRC/scripts/lib/fxpkcs11-cfg.sh"
p11_write_cfg() {
  local f=$1; shift
  KH_P11_LABEL="Keyhold Test" kh_write_fxpkcs11_cfg "$f" "$W" "$T/pkcs11.log" "$@"
}

p11_setup() {
  local name=$1 port
  start_hsm "$name"
  W=$T/work
  kh_reference_setup "$CLI_BIN" "$T/$name/console.sock" "$W" || fail "reference set-up"
  ADMIN_LOGIN="login --user Admin1 --password-file $W/admin1.pw
login --user Admin2 --password-file $W/admin2.pw"
  role_grant "$name" "keys.pkcs1_decrypt" "GPDK STAT"
  P11_PIN=$(cat "$W/user.pw")
  port=$(eval echo "\${${name}_PROD}")
  p11_write_cfg "$T/fxpkcs11.cfg" "$port"
  export FXPKCS11_CFG="$T/fxpkcs11.cfg"
}
