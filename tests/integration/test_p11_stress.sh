#!/usr/bin/env bash
# The PKCS#11 module under load and across fork() (PyKCS11 + ctypes,
# /usr/bin/python3; tests/integration/p11_stress.py): 16 threads x 4
# sessions of mixed, checked operations with zero errors allowed; then a
# parent that forks children with and without C_Initialize and must keep
# its sessions, login and connections. Extra options for the script (e.g.
# "threads --iterations 100"): $KH_P11_STRESS_ARGS.
source "$(dirname "$0")/lib.sh"
source "$KH_SRC/tests/integration/p11_lib.sh"

/usr/bin/python3 -c 'import PyKCS11, cryptography' 2>/dev/null \
  || fail "needs python3-pykcs11 and python3-cryptography for /usr/bin/python3"

p11_setup A
export P11_MODULE P11_PIN

note "threads and fork"
# shellcheck disable=SC2086
p11_run timeout 600 /usr/bin/python3 "$KH_SRC/tests/integration/p11_stress.py" ${KH_P11_STRESS_ARGS:-} \
  || fail "p11_stress.py (see above)"
# a child that wrote on the parent's TLS connections would show as a
# connection the HSM dropped for a protocol or TLS error
if grep -E "Excrypt port: closing .*(TLS|tls|malformed|MALFORMED|bad record|decrypt)" "$T/A.log"; then
  fail "the HSM dropped a connection for a TLS or protocol error (see above)"
fi
echo "p11 stress: all checks passed"
