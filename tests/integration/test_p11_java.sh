#!/usr/bin/env bash
# libkeyhold-pkcs11.so from Java 17 through SunPKCS11, against a real HSM:
# keytool lists the token, makes an EC key pair on it with a self-signed
# certificate (a token certificate object), signs a CSR with it, stores an
# AES token key and deletes what it made; then tests/integration/java/
# KeyholdP11Test.java (compiled here) logs in, lists the aliases, generates
# RSA-2048, EC and AES keys and signs, verifies, encrypts and decrypts with
# them, one line per check.
#
# The module is loaded into the JVM: a sanitizer build runs with the
# sanitizer runtime preloaded (p11_run), which the JDK 17 JVM tolerates. Where
# it does not, KH_P11_NOSAN_MODULE names a libkeyhold-pkcs11.so built without
# sanitizers (e.g. build/release) to load instead; the HSM stays the
# sanitizer build. Needs javac and keytool (Debian: openjdk-17-jdk-headless).
source "$(dirname "$0")/lib.sh"
source "$KH_SRC/tests/integration/p11_lib.sh"

for tool in java javac keytool; do
  command -v "$tool" >/dev/null || fail "$tool is needed: javac, java and keytool (Debian: openjdk-17-jdk-headless)"
done

if [ -n "${KH_P11_NOSAN_MODULE:-}" ]; then
  [ -f "$KH_P11_NOSAN_MODULE" ] || fail "KH_P11_NOSAN_MODULE: no file $KH_P11_NOSAN_MODULE"
  [[ $(ldd "$KH_P11_NOSAN_MODULE") == *libasan* || $(ldd "$KH_P11_NOSAN_MODULE") == *libubsan* ]] &&
    fail "KH_P11_NOSAN_MODULE ($KH_P11_NOSAN_MODULE) is a sanitizer build"
  P11_MODULE=$KH_P11_NOSAN_MODULE
  P11_PRELOAD=""
fi
note "module: $P11_MODULE${P11_PRELOAD:+ (sanitizer runtime preloaded into the JVM)}"

p11_setup A
JCFG=$T/java.cfg
cat >"$JCFG" <<EOF
name = Keyhold
library = $P11_MODULE
slot = 0
EOF

# Failures are collected so that one run reports everything.
bad=()
problem() { echo "FAIL: $*" >&2; bad+=("$*"); }

# keytool on the token; the PIN comes from the set-up's file, never argv
kt() {
  p11_run timeout 300 keytool -J-Xmx256m -storetype PKCS11 -providerClass sun.security.pkcs11.SunPKCS11 \
    -providerArg "$JCFG" -keystore NONE -storepass:file "$W/user.pw" "$@"
}

# The JVM must start with the module and its runtime before anything else
# means anything: a JVM that cannot run with ASan preloaded dies here.
out=$(kt -list 2>&1) || {
  [ -n "$P11_PRELOAD" ] && echo "hint: if the JVM cannot run with $P11_PRELOAD preloaded," \
    "set KH_P11_NOSAN_MODULE to a module built without sanitizers" >&2
  fail "keytool -list: $out"
}
grep -q "Keystore provider: SunPKCS11-Keyhold" <<<"$out" || fail "keytool -list did not use the module: $out"
grep -q "Your keystore contains 0 entries" <<<"$out" || problem "a fresh token is not empty: $out"
echo "ok: keytool -list on the empty token"

# a wrong PIN: keytool only says "load failed"; the module's log tells why
n_auth=$(grep -c "AUTH_FAILED" "$T/pkcs11.log" 2>/dev/null || true)
expect_fail "load failed" p11_run timeout 300 keytool -J-Xmx256m -storetype PKCS11 \
  -providerClass sun.security.pkcs11.SunPKCS11 -providerArg "$JCFG" -keystore NONE -storepass not-the-pin -list
[ "$(grep -c "AUTH_FAILED" "$T/pkcs11.log" 2>/dev/null || true)" -gt "${n_auth:-0}" ] ||
  problem "keytool's wrong PIN did not reach the HSM as a failed login"

note "keytool -genkeypair: an EC P-256 key pair and its certificate on the token"
alias_ok=""
if out=$(kt -genkeypair -keyalg EC -groupname secp256r1 -sigalg SHA256withECDSA -alias javakey \
  -dname CN=java -validity 30 2>&1); then
  out=$(kt -list -v -alias javakey 2>&1) || problem "keytool -list -alias javakey: $out"
  if grep -q "Entry type: PrivateKeyEntry" <<<"$out" && grep -q "Owner: CN=java" <<<"$out" &&
    grep -q "Signature algorithm name: SHA256withECDSA" <<<"$out"; then
    echo "ok: javakey is a private key entry with its self-signed certificate"
    alias_ok=javakey
  else
    problem "javakey as keytool lists it: $out"
  fi
  # the certificate keytool stored, checked outside Java
  if out=$(kt -exportcert -rfc -alias javakey -file "$T/javakey.pem" 2>&1); then
    if ! openssl x509 -in "$T/javakey.pem" -noout -subject | grep -q "CN *= *java"; then
      problem "exported certificate: $(openssl x509 -in "$T/javakey.pem" -noout -text 2>&1 | head -20)"
    elif ! openssl verify -check_ss_sig -partial_chain -CAfile "$T/javakey.pem" "$T/javakey.pem" >/dev/null 2>&1; then
      problem "the token certificate's self-signature does not verify with openssl"
    else
      echo "ok: exported certificate verifies with openssl"
    fi
  else
    problem "keytool -exportcert: $out"
  fi
  # a CSR signed on the HSM by the token key
  if out=$(kt -certreq -alias javakey -file "$T/javakey.csr" 2>&1); then
    if openssl req -in "$T/javakey.csr" -noout -verify 2>&1 | grep -q "verify OK\|verification OK"; then
      echo "ok: keytool -certreq signed by the token key verifies with openssl"
    else
      problem "the CSR signed by the token key does not verify: $(openssl req -in "$T/javakey.csr" -noout -verify 2>&1)"
    fi
  else
    problem "keytool -certreq: $out"
  fi
else
  problem "keytool -genkeypair: $out"
fi

note "keytool -genseckey: an AES-256 token key"
if out=$(kt -genseckey -keyalg AES -keysize 256 -alias javaaes 2>&1); then
  out=$(kt -list 2>&1) || problem "keytool -list: $out"
  if grep -q "^javaaes, SecretKeyEntry" <<<"$out"; then
    echo "ok: javaaes listed as a secret key entry"
  else
    problem "javaaes not listed as a secret key: $out"
  fi
else
  problem "keytool -genseckey: $out"
fi

note "KeyholdP11Test.java"
mkdir -p "$T/classes"
javac -d "$T/classes" "$KH_SRC/tests/integration/java/KeyholdP11Test.java" || fail "javac"
rc=0
p11_run timeout 600 java -Xmx512m -cp "$T/classes" KeyholdP11Test "$JCFG" "$W/user.pw" $alias_ok \
  >"$T/java.out" 2>&1 || rc=$?
cat "$T/java.out"
[ "$rc" -eq 0 ] || problem "KeyholdP11Test exited $rc: $(grep '^FAIL' "$T/java.out" | head -20)"
tail -n 1 "$T/java.out" | grep -q '^[0-9]* passed, 0 failed' || problem "KeyholdP11Test's summary: $(tail -n 1 "$T/java.out")"
# the checks that must not be skipped: what the module offers and SunPKCS11 uses
for must in "keygen: RSA-2048" "keygen: AES-256" "sign: SHA256withRSA on" "sign: SHA256withECDSA with P-256" \
  "cipher: AES/GCM/NoPadding (12-byte" "cipher: RSA/ECB/PKCS1Padding" "keystore: list aliases"; do
  grep -q "^PASS $must" "$T/java.out" || problem "KeyholdP11Test did not pass '$must'"
done

note "keytool -delete: the token objects go away"
for a in javakey javaaes; do
  kt -list -alias "$a" >/dev/null 2>&1 || continue
  out=$(kt -delete -alias "$a" 2>&1) || problem "keytool -delete $a: $out"
done
out=$(kt -list 2>&1) || problem "keytool -list after delete: $out"
if grep -q "Your keystore contains 0 entries" <<<"$out"; then
  echo "ok: the token is empty again"
else
  problem "token not empty after delete: $out"
fi

if ((${#bad[@]})); then
  echo "--- module log" >&2
  tail -n 30 "$T/pkcs11.log" >&2 2>/dev/null || true
  fail "${#bad[@]} problem(s), see FAIL lines above"
fi
echo "p11 java: all checks passed"
