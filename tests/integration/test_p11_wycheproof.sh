#!/usr/bin/env bash
# Wycheproof test vectors through the PKCS#11 module (PyKCS11 + ctypes,
# /usr/bin/python3): each test key imported with C_CreateObject as a session
# object, each vector run with the mechanism an application would use
# (tests/integration/p11_wycheproof.py, which takes its file selection and
# its valid / invalid / acceptable rules from wycheproof_excrypt.py).
#
# The vectors: $KH_WYCHEPROOF_DIR, default ../shared/vectors/wycheproof next
# to the source tree. Extra options for the runner (e.g. "--only aes_gcm -v"):
# $KH_WYCHEPROOF_ARGS.
source "$(dirname "$0")/lib.sh"
source "$KH_SRC/tests/integration/p11_lib.sh"

VECTORS=${KH_WYCHEPROOF_DIR:-$KH_SRC/../shared/vectors/wycheproof}
[ -d "$VECTORS" ] || fail "no Wycheproof vectors in $VECTORS (set KH_WYCHEPROOF_DIR)"
/usr/bin/python3 -c 'import PyKCS11, cryptography' 2>/dev/null \
  || fail "needs python3-pykcs11 and python3-cryptography for /usr/bin/python3"

p11_setup A
# clear keys come in through C_CreateObject (Import PKI), and the key-wrap
# vectors wrap unwrapped keys back out (No Usage Wrap)
role_grant A "keys.import_pki keys.no_usage_wrap" ""
export P11_MODULE P11_PIN

note "Wycheproof vectors from $VECTORS through $P11_MODULE"
# shellcheck disable=SC2086
p11_run timeout 600 /usr/bin/python3 "$KH_SRC/tests/integration/p11_wycheproof.py" \
  ${KH_WYCHEPROOF_ARGS:-} "$VECTORS" || fail "Wycheproof vectors through the module (see above)"
echo "p11 wycheproof: all checks passed"
