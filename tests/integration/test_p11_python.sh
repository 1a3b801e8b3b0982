#!/usr/bin/env bash
# The PKCS#11 module through PyKCS11 (Debian's python3-pykcs11, so
# /usr/bin/python3): sessions, login, objects and their attributes, a few
# crypto round trips (tests/integration/p11_session_test.py; every
# mechanism is tests/integration/p11_crypto_test.py's job), against a real
# HSM with the reference set-up. Extra arguments for the script (names of
# test groups to run): $KH_P11_PY_ARGS.
source "$(dirname "$0")/lib.sh"
source "$KH_SRC/tests/integration/p11_lib.sh"

/usr/bin/python3 -c 'import PyKCS11, cryptography' 2>/dev/null \
  || fail "needs python3-pykcs11 and python3-cryptography for /usr/bin/python3"

p11_setup A
export P11_MODULE P11_PIN

note "sessions, login, objects, round trips"
# shellcheck disable=SC2086
p11_run /usr/bin/python3 "$KH_SRC/tests/integration/p11_session_test.py" ${KH_P11_PY_ARGS:-} \
  || fail "p11_session_test.py (see above)"
echo "p11 python: all checks passed"
