#!/usr/bin/env bash
# keyhold-guardian with three keyhold-hsm processes on loopback, driven by
# the keyhold CLI (REST API over HTTPS) and by PKCS#11 clients through the
# group's endpoint, as issue 5 asks:
#   - A gets the reference set-up; B and C load the same major keys (from
#     A's fragments and components); D has another FTK; E is a build that
#     reports another version. Each has the Guardian role and identity.
#   - refusals, each with its reason: a first device that is not the
#     Primary, a second Primary, other major keys, another version, a closed
#     port;
#   - A Primary, B Production, C Backup: configuration made on A (a role)
#     appears on B and C; a key generated through the group signs on every
#     member (straight to each);
#   - C killed during key creation catches up when restarted and the
#     key-table check agrees;
#   - kill -9 of B under a PKCS#11 load through the guardian: zero failed
#     operations, C serves; B returns and C steps back;
#   - kill -9 of the guardian during a burst of key creations: after its
#     restart every acknowledged key is on every member.
source "$(dirname "$0")/lib.sh"
source "$KH_SRC/tests/integration/p11_lib.sh"
source "$KH_SRC/tests/integration/guardian_lib.sh"

OTHER_BIN="$KH_BUILD/tests/keyhold-hsm-other-version"
[ -x "$OTHER_BIN" ] || fail "no keyhold-hsm-other-version at $OTHER_BIN"
FO="$KH_SRC/tests/integration/p11_failover.py"
LOAD_SECONDS=${KH_GUARDIAN_LOAD_SECONDS:-30}

# ---- the HSMs ----------------------------------------------------------

note "A: the reference set-up"
p11_setup A
export P11_PIN W P11_MODULE
guardian_identity A "$ADMIN_LOGIN"

note "B, C: A's major keys; D: another FTK; E: another version"
member B "$W/ftk.components"
member C "$W/ftk.components"
(umask 077; printf '%s\n%s\n' \
  "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD" \
  "0102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F20" >"$T/other.components")
member D "$T/other.components"
HSM_BIN=$OTHER_BIN member E "$W/ftk.components"
cat "$W/ca.pem" "$T"/B-ca.pem "$T"/C-ca.pem "$T"/D-ca.pem "$T"/E-ca.pem >"$T/hsm-cas.pem"

# ---- the guardian ------------------------------------------------------

note "the guardian: a client certificate from A's CA, a server certificate of its own CA"
guardian_certs
note "bad options and files: keyhold-guardian refuses to start, saying why"
bad_start() { # EXPECT ARGS...: exits non-zero, stderr says EXPECT, nothing left running
  local want=$1 out rc=0; shift
  out=$("$GUARD_BIN" -d "$T/g-bad" "$@" 2>&1) || rc=$?
  [ "$rc" -ne 0 ] || fail "keyhold-guardian $* started"
  grep -qi -- "$want" <<<"$out" || fail "keyhold-guardian $*: no '$want' in: $out"
  echo "ok: refused ($want): $(head -n 1 <<<"$out")"
}
gopts=(--ca "$T/hsm-cas.pem" --cert "$T/g-client.pem" --key "$T/g-client.key" --password-file "$T/guardian.pw")
bad_start "--http-port must be a number" "${gopts[@]}" --http-port 70000
bad_start "--ca and --cert are required" --password-file "$T/guardian.pw"
bad_start "unexpected argument" "${gopts[@]}" stray
bad_start "password file" --ca "$T/hsm-cas.pem" --cert "$T/g-client.pem" --password-file "$T/none.pw"
bad_start "cannot load client certificate" --ca "$T/hsm-cas.pem" --cert "$T/none.pem" --password-file "$T/guardian.pw" --http-port 0
bad_start "CA file" --ca "$T/none.pem" --cert "$T/g-client.pem" --key "$T/g-client.key" \
  --password-file "$T/guardian.pw" --http-port 0
guardian_up
GP=$(free_port)

note "a group, and the devices it refuses"
out=$(g group add --name Payments --port "$GP" --description "PKCS #11 applications") || fail "group add: $out"
refused "Primary" device add --group Payments --host 127.0.0.1 --port "$B_PROD" --admin-port "$B_ADMIN" --role Production
out=$(g device add --group Payments --host 127.0.0.1 --port "$A_PROD" --admin-port "$A_ADMIN" --role Primary) \
  || fail "Primary A: $out"
refused "Primary" device add --group Payments --host 127.0.0.1 --port "$B_PROD" --admin-port "$B_ADMIN" --role Primary
refused "FTK" device add --group Payments --host 127.0.0.1 --port "$D_PROD" --admin-port "$D_ADMIN" --role Production
refused "version" device add --group Payments --host 127.0.0.1 --port "$E_PROD" --admin-port "$E_ADMIN" --role Production
closed=$(free_port)
refused "port $closed" device add --group Payments --host 127.0.0.1 --port "$closed" --role Production

note "B Production, C Backup: both get A's configuration and keys"
out=$(g device add --group Payments --host 127.0.0.1 --port "$B_PROD" --admin-port "$B_ADMIN" --role Production) \
  || fail "Production B: $out"
out=$(g device add --group Payments --host 127.0.0.1 --port "$C_PROD" --admin-port "$C_ADMIN" --role Backup) \
  || fail "Backup C: $out"
DA=$(dev_id "$A_PROD"); DB=$(dev_id "$B_PROD"); DC=$(dev_id "$C_PROD")
[ -n "$DA" ] && [ -n "$DB" ] && [ -n "$DC" ] || fail "device ids: '$DA' '$DB' '$DC'"
for d in "$DA" "$DB" "$DC"; do wait_for 15 "device $d up" state_is "$d" up; done
serving "$DC" false || fail "the Backup serves while Production is up"
g device list

note "configuration made on the Primary reaches the members"
out=$(console A -f - 2>&1 <<EOF
$ADMIN_LOGIN
role add --name "Replicated Role" --logins-required 1 --ports prod --sources ethernet --dual-factor never --permissions Keys --key-ranges S:2000-2099 --commands ECHO,GPGS
EOF
) || fail "role add on A: $out"
has_role() { console "$1" -f - >/dev/null 2>&1 <<EOF
$ADMIN_LOGIN
role show --name "Replicated Role"
EOF
}
wait_for 20 "the role on B" has_role B
wait_for 20 "the role on C" has_role C
echo "ok: a role added on A is on B and C (A's administrators log in there too)"

note "Remote Manage: C's Admin port through the guardian, TLS end to end"
out=$(g --ca "$T/hsm-cas.pem" --cert "$W/client.pem" --key "$W/client.key" -f - 2>&1 <<EOF
remote --device $DC
$ADMIN_LOGIN
majorkey status
EOF
) || fail "remote manage of C: $out"
grep -q "FTK: loaded" <<<"$out" || fail "remote manage: no major-key status from C: $out"
echo "ok: majorkey status of C through the relay"
# the reference's "Configure the HSM through the Guardian": load the FTK
# from its two components on a member (C's is erased first, then loaded
# again: the same check value as A's)
ftk_a=$(grep -o 'FTK: loaded, AES-256, KCV [0-9A-F]*' "$W/setup.log" | awk '{print $NF}' | head -n 1)
out=$(g --ca "$T/hsm-cas.pem" --cert "$W/client.pem" --key "$W/client.key" -f - 2>&1 <<EOF
remote --device $DC
$ADMIN_LOGIN
majorkey erase --ftk
majorkey load --ftk --alg AES --bits 256 --parts 2 --component-file $W/ftk.components
majorkey status
EOF
) || fail "FTK load on C through the guardian: $out"
grep -q "FTK: loaded, AES-256, KCV $ftk_a" <<<"$out" || fail "C's FTK after the remote load is not A's ($ftk_a): $out"
echo "ok: FTK loaded on C through the guardian from its components, KCV $ftk_a"
# the administrators' passwords went through the guardian inside TLS to the
# HSM: the guardian's memory must not hold them
: >"$T/needles"
for f in "$W/admin1.pw" "$W/admin2.pw"; do xxd -p "$f" | tr -d '\n' >>"$T/needles"; echo >>"$T/needles"; done
# ... nor the FTK components (as the CLI sends them, hex text, or as bytes)
while read -r comp; do
  printf '%s' "$comp" | xxd -p | tr -d '\n' >>"$T/needles"; echo >>"$T/needles"
  echo "$comp" >>"$T/needles"
done <"$W/ftk.components"
/usr/bin/python3 "$KH_SRC/tests/integration/memscan.py" "$(cat "$T/guardian.pid")" "$T/needles" \
  || fail "an administrator's password or an FTK component is in the guardian's memory"

# ---- PKCS#11 through the guardian --------------------------------------

cat "$W/ca.pem" "$T/g-ca.pem" >"$T/cas.pem"
p11_write_cfg "$T/group.cfg" "$GP"
sed -i "s#<PROD-TLS-CA> .* </PROD-TLS-CA>#<PROD-TLS-CA> $T/g-ca.pem </PROD-TLS-CA>#" "$T/group.cfg"
direct_cfg() { # NAME: a slot straight to that HSM
  local port; port=$(eval echo "\${${1}_PROD}")
  p11_write_cfg "$T/$1.cfg" "$port"
  sed -i "s#<PROD-TLS-CA> .* </PROD-TLS-CA>#<PROD-TLS-CA> $T/hsm-cas.pem </PROD-TLS-CA>#" "$T/$1.cfg"
}
for h in A B C; do direct_cfg $h; done
p11() { local cfg=$1; shift; FXPKCS11_CFG=$cfg p11_run pkcs11-tool --module "$P11_MODULE" --login --pin "$P11_PIN" "$@"; }

note "a key generated through the group signs on every member"
out=$(p11 "$T/group.cfg" --keypairgen --key-type EC:prime256v1 --label grp-ec --id 6701 2>&1) \
  || fail "keygen through the guardian: $out"
echo "data to sign" >"$T/msg"
for h in A B C; do
  out=$(p11 "$T/$h.cfg" --sign --mechanism ECDSA-SHA256 --label grp-ec --input-file "$T/msg" \
    --output-file "$T/sig.$h" 2>&1) || fail "sign on $h straight: $out"
done
echo "ok: grp-ec signs on A, B and C"
g group check --group Payments >"$T/check.out" 2>&1 || { cat "$T/check.out"; fail "key tables differ"; }

note "C killed during key creation; it catches up when restarted"
for i in 1 2 3 4 5 6; do
  [ "$i" = 3 ] && kill9 C
  out=$(p11 "$T/group.cfg" --keygen --key-type AES:32 --label "c-down-$i" 2>&1) || fail "keygen $i: $out"
done
wait_for 15 "C down" state_is "$DC" down
pending=$(gfield device.pending device show --device "$DC")
[ "${pending:-0}" -gt 0 ] || fail "no journal entries pending for C while it is down"
start_hsm C
wait_for 30 "C caught up" state_is "$DC" up
wait_for 30 "C caught up with the journal" pending_is "$DC" 0
g group check --group Payments || fail "key tables differ after C caught up"
echo "ok: C caught up ($pending entries) and the key-table check agrees"

note "kill -9 of Production B under a PKCS#11 load through the guardian"
FXPKCS11_CFG="$T/group.cfg" p11_run "$PY" "$FO" prepare 127.0.0.1 "$GP" >"$T/prepare.out" 2>&1 \
  || { cat "$T/prepare.out"; fail "token keys through the guardian"; }
req_c0=$(gfield device.requests device show --device "$DC")
rm -f "$T/fo.ready"
FO_READY="$T/fo.ready" FXPKCS11_CFG="$T/group.cfg" p11_run "$PY" "$FO" load "$LOAD_SECONDS" 4 \
  >"$T/load.out" 2>&1 &
load_pid=$!
wait_for 60 "the load warm" test -e "$T/fo.ready"
sleep 2
kill9 B
wait_for 15 "B down" state_is "$DB" down
wait_for 10 "C serving" serving "$DC" true
sleep 3
req_c1=$(gfield device.requests device show --device "$DC")
start_hsm B
wait_for 30 "B back" state_is "$DB" up
wait_for 10 "B serving" serving "$DB" true
wait_for 10 "C stepping back" serving "$DC" false
rc=0; wait "$load_pid" || rc=$?
cat "$T/load.out"
[ "$rc" -eq 0 ] || fail "the load saw failed operations through the guardian"
grep -q FAIL "$T/load.out" && fail "FAIL lines in the load"
[ "$req_c1" -gt "$req_c0" ] || fail "the Backup took no requests while B was down ($req_c0 -> $req_c1)"
echo "ok: zero failed operations; C served $((req_c1 - req_c0)) requests while B was down, and stepped back"

note "kill -9 of the guardian during a burst of key creations"
: >"$T/acked"
(
  for i in $(seq 1 40); do
    if p11 "$T/group.cfg" --keygen --key-type AES:32 --label "burst-$i" >/dev/null 2>&1; then
      echo "burst-$i" >>"$T/acked"
    fi
  done
) &
burst=$!
for _ in $(seq 1 100); do [ "$(wc -l <"$T/acked")" -ge 5 ] && break; sleep 0.1; done
kill -KILL "$(cat "$T/guardian.pid")"
wait "$burst" || true
acked=$(wc -l <"$T/acked")
[ "$acked" -ge 5 ] || fail "only $acked keys acknowledged before the kill"
start_guardian
for d in "$DA" "$DB" "$DC"; do wait_for 30 "device $d up after the restart" state_is "$d" up; done
wait_for 30 "the members agree" g group check --group Payments
for h in A B C; do
  FXPKCS11_CFG="$T/$h.cfg" p11_run pkcs11-tool --module "$P11_MODULE" --login --pin "$P11_PIN" \
    --list-objects --type secrkey >"$T/objs.$h" 2>&1 || fail "list on $h: $(cat "$T/objs.$h")"
  while read -r l; do
    grep -q "label: *$l\$" "$T/objs.$h" || fail "acknowledged key $l is missing on $h"
  done <"$T/acked"
done
echo "ok: all $acked acknowledged keys are on A, B and C after the guardian's restart"

note "events and metrics"
g events --group Payments --max 20
g metrics --device "$DA" | tail -n 3
echo "PASS"
