#!/usr/bin/env bash
# Each rule refuses, through the real daemon and CLI: wrong password,
# lockout, missing permission, command not allowed, a component with a
# wrong check value, M-1 fragments, a duplicate fragment, malformed and
# oversized frames, a second login by the same identity counting as one,
# and CLI misuse. State is unchanged after every refusal.
source "$(dirname "$0")/lib.sh"

start_hsm N
D=$(secret d safest); A1=$(secret a1 "Admin1-Secret-1"); A2=$(secret a2 "Admin2-Secret-2")
BAD=$(secret bad "not-the-password")
ADMINS="login --user Admin1 --password-file $A1
login --user Admin2 --password-file $A2"
console N -f - >/dev/null <<EOF || fail "first logins"
login --user Admin1 --password-file $D --new-password-file $A1
login --user Admin2 --password-file $D --new-password-file $A2
EOF

note "a second login by the same identity counts as one"
out=$(console N -f - 2>&1 <<EOF
login --user Admin1 --password-file $A1
login --user Admin1 --password-file $A1
role list
EOF
) && fail "role list must be refused with one distinct identity: $out"
[ "$(grep -c "1 of 2 logins, role not active" <<<"$out")" = 2 ] || fail "second login counted: $out"
grep -q "login required" <<<"$out" || fail "expected NOT_LOGGED_IN: $out"

note "wrong password, unknown identity: the same answer"
expect_fail "invalid identity or password" console N login --user Admin1 --password-file "$BAD"
expect_fail "invalid identity or password" console N login --user Nobody --password-file "$BAD"

note "lockout after the configured number of failures, unlock by an administrator"
console N -f - >/dev/null <<EOF || fail "settings"
$ADMINS
settings set --lockout-threshold 3 --lockout-seconds 600
identity add --name victim --role Administrator --password-file $BAD
EOF
V=$(secret v "victim-password-9")
console N -f - >/dev/null <<EOF || fail "victim password"
$ADMINS
identity modify --name victim --reset-password --password-file $V --must-change no
EOF
for _ in 1 2; do expect_fail "invalid identity or password" console N login --user victim --password-file "$BAD"; done
expect_fail "locked" console N login --user victim --password-file "$BAD"
expect_fail "locked" console N login --user victim --password-file "$V"
console N -f - >/dev/null <<EOF || fail "unlock"
$ADMINS
identity modify --name victim --unlock
EOF
expect_ok "Logged in victim" console N login --user victim --password-file "$V"

note "a role without a permission is refused the command"
AU=$(secret au "auditor-password-1")
console N -f - >/dev/null <<EOF || fail "auditor role"
$ADMINS
role add --name Auditors --permissions audit.view --logins-required 1 --ports admin --sources usb,ethernet
identity add --name auditor --role Auditors --password-file $AU
EOF
expect_ok "intact" console N -f - <<EOF
login --user auditor --password-file $AU
audit verify
EOF
expect_fail "needs role.modify" console N -f - <<EOF
login --user auditor --password-file $AU
role list
EOF
expect_fail "needs major_keys.load" console N -f - <<EOF
login --user auditor --password-file $AU
majorkey random --bek -m 2 -n 2 --out $T --passphrase-file $BAD --passphrase-file $BAD
EOF
note "a role may not grant what it lacks without Role:Assign All Permissions"
RM=$(secret rm "rolemaker-password-1")
console N -f - >/dev/null <<EOF || fail "rolemaker"
$ADMINS
role add --name RoleMakers --permissions role.add,role.modify,keys --logins-required 1 --ports admin --sources usb
identity add --name rolemaker --role RoleMakers --password-file $RM
EOF
expect_fail "PERMISSION_DENIED\|permission" console N -f - <<EOF
login --user rolemaker --password-file $RM
role add --name Escalated --permissions major_keys.load
EOF
expect_ok "added" console N -f - <<EOF
login --user rolemaker --password-file $RM
role add --name Subset --permissions keys
EOF

note "bad role fields change nothing"
expect_fail "BAD_FIELD\|invalid value" console N -f - <<EOF
$ADMINS
role modify --name Subset --key-ranges S:20-10
EOF
expect_fail "UNKNOWN\|invalid\|BAD_FIELD" console N -f - <<EOF
$ADMINS
role modify --name Subset --commands ECHO,NOPE
EOF
expect_ok "Permissions: *keys$" console N -f - <<EOF
$ADMINS
role show --name Subset
EOF

note "a component with a wrong check value is refused; the ceremony is not loaded"
C=$(secret comps "$(printf '%s\n%s\n' 00112233445566778899AABBCCDDEEFF 0F0E0D0C0B0A09080706050403020100)")
expect_fail "check value" console N -f - <<EOF
$ADMINS
majorkey load --ftk --bits 128 --parts 2 --component-file $C --kcv 000000,000000
EOF
expect_ok "FTK: not loaded" console N -f - <<EOF
$ADMINS
majorkey status
EOF

note "M-1 fragments load nothing; a duplicate fragment is refused"
P1=$(secret p1 "custodian one pass"); P2=$(secret p2 "custodian two pass"); P3=$(secret p3 "custodian three pass")
mkdir -m 700 "$T/frags"
console N -f - >/dev/null <<EOF || fail "generate"
$ADMINS
majorkey random --pmk --bits 256 -m 2 -n 3 --out $T/frags --passphrase-file $P1 --passphrase-file $P2 --passphrase-file $P3
majorkey erase --pmk
EOF
expect_fail "needs 2 fragments, 1 given" console N -f - <<EOF
$ADMINS
majorkey recombine --pmk --fragment $T/frags/PMK-fragment-1-of-3.khf --passphrase-file $P1
EOF
expect_fail "already entered\|DUPLICATE" console N -f - <<EOF
$ADMINS
majorkey recombine --pmk --fragment $T/frags/PMK-fragment-2-of-3.khf --fragment $T/frags/PMK-fragment-2-of-3.khf --passphrase-file $P2 --passphrase-file $P2
EOF
expect_fail "passphrase is wrong\|FRAGMENT_INVALID" console N -f - <<EOF
$ADMINS
majorkey recombine --pmk --fragment $T/frags/PMK-fragment-1-of-3.khf --fragment $T/frags/PMK-fragment-2-of-3.khf --passphrase-file $P1 --passphrase-file $P1
EOF
expect_ok "PMK: not loaded" console N -f - <<EOF
$ADMINS
majorkey status
EOF
expect_ok "Final Key Checksum" console N -f - <<EOF
$ADMINS
majorkey recombine --pmk --fragment $T/frags/PMK-fragment-3-of-3.khf --fragment $T/frags/PMK-fragment-2-of-3.khf --passphrase-file $P3 --passphrase-file $P2
EOF

note "malformed and oversized frames: an error answer, never a crash"
/usr/bin/python3 - "$T/N/console.sock" <<'EOF' || fail "raw frames"
import socket, sys
path = sys.argv[1]

def conn():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    return s

def reply(s):
    data = b""
    while not data.endswith(b"]"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data

def closed(s):
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True

# a delimited but invalid frame: MALFORMED, the connection stays usable
s = conn()
for bad in [b"[AOECHO;AGa;AGb;]", b"[AOEC;]", b"[AOECHO;aa1;]", b"[AOECHO;AG\x01;]"]:
    s.sendall(bad)
    r = reply(s)
    assert r.startswith(b"[AOERRO;") and b"EC3;" in r, (bad, r)
s.sendall(b"[AOECHO;AGstill-here;]")
assert b"AGstill-here;" in reply(s)
# too many fields before login: TOO_LARGE, still open
s.sendall(b"[AOECHO;" + b"".join(b"A%c1;" % (65 + i) for i in range(17)) + b"]")
r = reply(s)
assert b"EC4;" in r, r
# pipelined requests come back in order
s.sendall(b"[AOECHO;AG1;][AOZZZZ;][AOECHO;AG3;]")
out = b""
while out.count(b"]") < 3:
    out += s.recv(65536)
parts = out.split(b"]")[:3]
assert parts[0].startswith(b"[AOECHO;AG1;") and b"CMZZZZ;EC5;" in parts[1] and parts[2].startswith(b"[AOECHO;AG3;"), out
s.close()
# not starting with '[': an error, then the connection is closed
s = conn()
s.sendall(b"GET / HTTP/1.1\r\n\r\n")
r = reply(s)
assert r.startswith(b"[AOERRO;") and b"EC3;" in r, r
assert closed(s)
# an oversized frame before login: TOO_LARGE, then closed
s = conn()
try:
    s.sendall(b"[AOECHO;AG" + b"A" * 6000)
except (BrokenPipeError, ConnectionResetError):
    pass
r = reply(s)
assert b"EC4;" in r, r
assert closed(s)
# the daemon still serves
s = conn()
s.sendall(b"[AOECHO;AGalive;]")
assert b"AGalive;" in reply(s)
print("raw frame checks passed")
EOF
kill -0 "$(hsm_pid N)" || fail "daemon died"

note "a connection with too many failed logins is closed"
/usr/bin/python3 - "$T/N/console.sock" <<'EOF' || fail "failure budget"
import binascii, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(30)
s.connect(sys.argv[1])
pw = binascii.hexlify(b"wrong-password").upper()
s.sendall(b"".join(b"[AOLOGN;IDNobody%d;PW%s;]" % (i, pw) for i in range(12)))
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
answers = data.count(b"]")
assert answers == 10, f"expected 10 answers before the close, got {answers}: {data[-200:]!r}"
assert b"too many failed logins" in data, data[-200:]
print("closed after 10 failed logins")
EOF

note "CLI misuse: usage errors, and secrets are never taken from the command line"
rc=0; console N role add >/dev/null 2>&1 || rc=$?; [ "$rc" = 2 ] || fail "missing --name should be a usage error (2), got $rc"
rc=0; console N login --user Admin1 --password safest >/dev/null 2>&1 || rc=$?; [ "$rc" = 2 ] || fail "--password on argv must be refused (2), got $rc"
rc=0; "$CLI_BIN" --console "$T/nonexistent.sock" status >/dev/null 2>&1 || rc=$?; [ "$rc" = 3 ] || fail "connection failure should exit 3, got $rc"
expect_fail "refused\|No such file" "$CLI_BIN" --console "$T/nonexistent.sock" status

note "the audit log recorded all of it and is intact"
expect_ok "intact" console N -f - <<EOF
$ADMINS
audit verify
EOF
out=$(console N -f - <<EOF
$ADMINS
audit show --all
EOF
)
for ev in login.fail login.locked identity.unlock role.add majorkey; do
  grep -q "$ev" <<<"$out" || fail "audit lacks $ev"
done
echo "negative checks: all passed"
