#!/usr/bin/env bash
# The web console in headless Chromium against the real guardian and three
# HSMs (issue 6): tests/console/console.spec.mjs logs in, creates a group in
# the Group window, adds A (Primary), B (Production) and C (Backup), sees
# them come up, kills B and sees its state and its plot change, reads the
# event log and a diagnose result, checks accessibility with axe-core, and
# takes a screenshot of each screen into $KH_ARTIFACTS (default
# $KH_BUILD/artifacts/console).
#
# Trust: the guardian's server certificate comes from a test CA made here;
# Chromium trusts that CA through an NSS database in a HOME of its own
# ($T/home/.pki/nssdb). No certificate error is ignored.
#
# Needs Debian's chromium, nodejs/npm and libnss3-tools (scripts/deps);
# playwright-core and axe-core (tests/console/package-lock.json) are
# installed with `npm ci` into tests/console/node_modules when missing.
source "$(dirname "$0")/lib.sh"
source "$KH_SRC/tests/integration/p11_lib.sh"
source "$KH_SRC/tests/integration/guardian_lib.sh"

CHROMIUM=/usr/bin/chromium
CDIR="$KH_SRC/tests/console"
ART=${KH_ARTIFACTS:-$KH_BUILD/artifacts/console}
for tool in "$CHROMIUM" node npm certutil; do
  command -v "$tool" >/dev/null || fail "$tool is missing (scripts/deps installs it)"
done
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || fail "Node.js $(node --version) is too old: playwright-core needs 20 or later"
if [ ! -f "$CDIR/node_modules/playwright-core/package.json" ] ||
   [ ! -f "$CDIR/node_modules/axe-core/axe.min.js" ]; then
  note "npm ci in tests/console (playwright-core, axe-core; no browser download)"
  (cd "$CDIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund >"$T/npm.log" 2>&1) \
    || { cat "$T/npm.log"; fail "npm ci in $CDIR"; }
fi

note "A: the reference set-up; B and C: A's major keys"
p11_setup A
guardian_identity A "$ADMIN_LOGIN"
member B "$W/ftk.components"
member C "$W/ftk.components"
cat "$W/ca.pem" "$T"/B-ca.pem "$T"/C-ca.pem >"$T/hsm-cas.pem"

note "the guardian, its HTTPS certificate from a test CA"
guardian_certs
guardian_up
GP=$(free_port)
wait_for 10 "the console is served" curl -fsS --cacert "$T/g-ca.pem" -o /dev/null "https://127.0.0.1:$GH/"

note "Chromium's trust: the test CA in an NSS database of its own"
mkdir -p "$T/home/.pki/nssdb"
certutil -N -d "sql:$T/home/.pki/nssdb" --empty-password
certutil -A -d "sql:$T/home/.pki/nssdb" -n "Keyhold guardian test CA" -t "C,," -i "$T/g-ca.pem"

note "traffic through the group's endpoint (once the console has made it)"
"$PY" "$KH_SRC/tests/integration/console_traffic.py" "$GP" "$T/g-ca.pem" "$W/client.pem" \
  "$W/client.key" pkcs11user "$W/user.pw" "$T/traffic.stop" >"$T/traffic.log" 2>&1 &
traffic=$!

note "the browser test"
hsms=$(printf '[{"name":"A","port":%s,"admin_port":%s,"role":"Primary","pid":%s},' \
  "$A_PROD" "$A_ADMIN" "$(hsm_pid A)"
  printf '{"name":"B","port":%s,"admin_port":%s,"role":"Production","pid":%s},' \
  "$B_PROD" "$B_ADMIN" "$(hsm_pid B)"
  printf '{"name":"C","port":%s,"admin_port":%s,"role":"Backup","pid":%s}]' \
  "$C_PROD" "$C_ADMIN" "$(hsm_pid C)")
rm -rf "$ART"
mkdir -p "$ART"
rc=0
(cd "$CDIR" && HOME="$T/home" KH_CONSOLE_URL="https://127.0.0.1:$GH/" KH_CONSOLE_CA="$T/g-ca.pem" \
  KH_CONSOLE_USER=admin KH_CONSOLE_PASSWORD_FILE="$T/gadmin.pw" KH_ARTIFACTS="$ART" \
  KH_GROUP_PORT="$GP" KH_HSMS="$hsms" KH_STOP=B \
  KH_HSM_ADMIN1_FILE="$W/admin1.pw" KH_HSM_ADMIN2_FILE="$W/admin2.pw" \
  ASAN_OPTIONS= LD_PRELOAD= timeout 600 node console.spec.mjs) || rc=$?
touch "$T/traffic.stop"
wait "$traffic" || true
[ "$rc" -eq 0 ] || fail "the browser test failed (screenshots in $ART)"
ls "$ART"
echo "PASS"
