#!/usr/bin/env bash
# Every mechanism of the PKCS#11 module both ways against a real HSM, with
# known answers, signatures checked outside the HSM and the specification's
# return codes (tests/integration/p11_crypto_test.py, PyKCS11 + ctypes).
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/p11_lib.sh"

p11_setup A
export P11_MODULE P11_PIN
note "mechanisms through $P11_MODULE"
p11_run /usr/bin/python3 "$KH_SRC/tests/integration/p11_crypto_test.py" || fail "p11_crypto_test.py"
echo "p11 crypto: all checks passed"
