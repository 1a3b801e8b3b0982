#!/usr/bin/env bash
# Two HSMs in one slot of libkeyhold-pkcs11.so. HSM A gets the reference
# set-up and token keys made through the module; a backup of A is restored on
# a fresh HSM B that loads the same major keys (BEK and PMK recombined from
# A's fragments, the FTK from the same components), trusts A's CA for the
# client certificate and has a server certificate of its own CA, which the
# module's CA file also holds. Then, with both addresses in the slot:
#   - a PyKCS11 load (threads, single-part RSA / ECDSA signs + verifies and
#     AES-GCM round trips with session and token keys, 60 s) runs while A is
#     killed with SIGKILL and, 8 s later, restarted: not one operation may
#     fail; the HSMs' request counters (STAT) show both served while up, B
#     alone while A was down, and A taken back after its restart;
#   - while A is down, a new process opens sessions, logs in, uses the keys;
#   - B diverges while A is down (a token key replaced behind the module's
#     back in the same slot): the module's handle for the old key must fail
#     (CKR_OBJECT_HANDLE_INVALID), never sign with the new key;
#   - A back, the pair diverged: every signature a handle makes is by the key
#     it was found as, the other HSM refusing it.
# KH_P11_FAILOVER_SECONDS / _RESTART / _THREADS change the load's length,
# the restart delay and the threads.
# tests/integration/p11_failover.py does the PKCS#11 side.
source "$(dirname "$0")/lib.sh"
source "$KH_SRC/tests/integration/p11_lib.sh"

PY=/usr/bin/python3
FO="$KH_SRC/tests/integration/p11_failover.py"
# the pool's back-off reaches 30 s: A, restarted RESTART_AFTER s after the
# kill (about 13 s into the load), gets well over that before the load ends
LOAD_SECONDS=${KH_P11_FAILOVER_SECONDS:-60}
RESTART_AFTER=${KH_P11_FAILOVER_RESTART:-8}
LOAD_THREADS=${KH_P11_FAILOVER_THREADS:-4}
export P11_MODULE W

bad=()
problem() { echo "FAIL: $*" >&2; bad+=("$*"); }

# fo MODE ARGS...: p11_failover.py with the module's client environment
fo() { p11_run "$PY" "$FO" "$@"; }
# fo_check WHAT MODE ARGS...: fo, its output shown, a problem if it fails
fo_check() {
  local what=$1 rc=0; shift
  fo "$@" >"$T/fo.out" 2>&1 || rc=$?
  cat "$T/fo.out"
  [ "$rc" -eq 0 ] || problem "$what (p11_failover.py $1 exited $rc)"
}

# requests NAME: the HSM's STAT request counter (through its console)
requests() {
  local out
  out=$(console "$1" --json -f - 2>&1 <<EOF
$ADMIN_LOGIN
status
EOF
) || { echo "?"; return 0; }
  sed -n 's/.*"command":"status".*"requests":\([0-9]*\).*/\1/p' <<<"$out" | tail -n 1
}

keytable() {
  console "$1" -f - <<EOF | sed -n '/^ *[0-9]\+ /p'
$ADMIN_LOGIN
keytable --all
EOF
}

note "HSM A: reference set-up; token keys made through the module"
p11_setup A
export P11_PIN
fo_check "token keys on A" prepare 127.0.0.1 "$A_PROD"

note "backup of A, restored on a fresh HSM B with the same major keys"
out=$(console A -f - 2>&1 <<EOF
$ADMIN_LOGIN
backup --out $T/a.bak
EOF
) || fail "backup of A: $out"
start_hsm B
kh_put_secret "$T/B.a1" "B-admin1-password"
kh_put_secret "$T/B.a2" "B-admin2-password"
out=$(console B -f - 2>&1 <<EOF
login --user Admin1 --password-file $W/default.pw --new-password-file $T/B.a1
login --user Admin2 --password-file $W/default.pw --new-password-file $T/B.a2
majorkey recombine --bek --fragment $W/bek/BEK-fragment-1-of-2.khf --fragment $W/bek/BEK-fragment-2-of-2.khf --passphrase-file $W/bek1.pp --passphrase-file $W/bek2.pp
majorkey recombine --pmk --fragment $W/pmk/PMK-fragment-2-of-3.khf --fragment $W/pmk/PMK-fragment-3-of-3.khf --passphrase-file $W/pmk2.pp --passphrase-file $W/pmk3.pp
majorkey load --ftk --alg AES --bits 256 --parts 2 --component-file $W/ftk.components
majorkey status
restore --in $T/a.bak
EOF
) || fail "major keys and restore on B: $out"
# the FTK must be A's: session keys are cryptograms under it
ftk_a=$(grep -o 'FTK: loaded, AES-256, KCV [0-9A-F]*' "$W/setup.log" | awk '{print $NF}' | head -n 1)
grep -q "FTK: loaded, AES-256, KCV $ftk_a" <<<"$out" || fail "B's FTK is not A's ($ftk_a): $out"
note "B's TLS: its own CA and server certificate; A's CA trusted for the client certificate"
out=$(console B -f - 2>&1 <<EOF
$ADMIN_LOGIN
tls ca generate --type ec --curve P-256 --cn "Keyhold B CA" --out $T/b-ca.pem
tls server issue --cn keyhold-hsm-b --san IP:127.0.0.1,DNS:localhost
tls ca import --cert $W/ca.pem
tls-ports show
EOF
) || fail "TLS on B (with A's restored administrators): $out"
keys_a=$(keytable A)
keys_b=$(keytable B)
[ -n "$keys_a" ] || problem "A's key table is empty"
[ "$keys_a" = "$keys_b" ] || problem "B's key table differs from A's: A:
$keys_a
B:
$keys_b"
echo "ok: B holds A's keys, same slots and identifiers: $(wc -l <<<"$keys_b") rows"

cat "$W/ca.pem" "$T/b-ca.pem" >"$T/ca-both.pem"
cfg_for() { # FILE PORT...: p11_write_cfg with the CA file of both HSMs
  local f=$1; shift
  p11_write_cfg "$f" "$@"
  sed -i "s#<PROD-TLS-CA> .* </PROD-TLS-CA>#<PROD-TLS-CA> $T/ca-both.pem </PROD-TLS-CA>#" "$f"
}
cfg_for "$T/b-only.cfg" "$B_PROD"
note "B alone through the module (a slot with only its address)"
FXPKCS11_CFG="$T/b-only.cfg" fo_check "B alone through the module" after
cfg_for "$T/fxpkcs11.cfg" "$A_PROD" "$B_PROD"
export FXPKCS11_CFG="$T/fxpkcs11.cfg"

note "load over A and B for ${LOAD_SECONDS}s with $LOAD_THREADS threads: A killed with SIGKILL after 5s, restarted $RESTART_AFTER s later"
rq_a0=$(requests A); rq_b0=$(requests B)
rm -f "$T/ready"
FO_READY="$T/ready" fo load "$LOAD_SECONDS" "$LOAD_THREADS" >"$T/load.out" 2>&1 &
load_pid=$!
for _ in $(seq 1 600); do
  [ -e "$T/ready" ] && break
  kill -0 "$load_pid" 2>/dev/null || break
  sleep 0.1
done
[ -e "$T/ready" ] || { cat "$T/load.out"; fail "the load did not start"; }
t_start=$SECONDS
sleep 5
rq_a1=$(requests A); rq_b1=$(requests B)
kill9_hsm A
t_kill=$SECONDS
echo "A killed (SIGKILL) $((t_kill - t_start)) s into the load"

note "A gone, the load still running: a new process opens sessions and logs in"
fo_check "a new process after A died" after

# A comes back (same data directory and ports) while the load runs: the
# module must take it back into the balance
while [ $((SECONDS - t_kill)) -lt "$RESTART_AFTER" ]; do sleep 0.5; done
rq_b2=$(requests B)
start_hsm A
t_restart=$SECONDS
echo "A restarted $((t_restart - t_start)) s into the load"
rejoin=""
while kill -0 "$load_pid" 2>/dev/null; do
  rq=$(requests A)
  if [[ "$rq" =~ ^[0-9]+$ ]] && [ "$rq" -gt 100 ]; then rejoin=$((SECONDS - t_restart)); break; fi
  sleep 1
done
if [ -n "$rejoin" ]; then
  echo "A back in the balance (over 100 requests served) within $rejoin s of its restart"
else
  problem "A restarted $((t_restart - t_start)) s into the load and was not taken back before the load ended ($((SECONDS - t_restart)) s later)"
fi
load_rc=0
wait "$load_pid" || load_rc=$?
rq_a3=$(requests A); rq_b3=$(requests B)
cat "$T/load.out"
[ "$load_rc" -eq 0 ] || problem "the load exited $load_rc"
grep -q "^load: .* 0 failed$" "$T/load.out" || problem "the load had failed operations"
echo "HSM requests (STAT RQ, the console's own included): A $rq_a0 -> $rq_a1 at the kill," \
  "$rq_a3 at the end (counted from its restart); B $rq_b0 -> $rq_b1 at the kill -> $rq_b2 at A's restart -> $rq_b3 at the end"
if [[ "$rq_a1$rq_a3$rq_b1$rq_b2$rq_b3" =~ ^[0-9]+$ ]]; then
  on_a=$((rq_a1 - rq_a0)); on_b_before=$((rq_b1 - rq_b0)); on_b_alone=$((rq_b2 - rq_b1))
  echo "requests served: while both were up A $on_a, B $on_b_before; B alone $on_b_alone;" \
    "after A's restart A $rq_a3, B $((rq_b3 - rq_b2))"
  [ "$on_a" -gt 100 ] || problem "A served only $on_a requests before the kill"
  [ "$on_b_before" -gt 100 ] || problem "the load was not balanced: B served $on_b_before requests while A was up"
  [ "$on_b_alone" -gt 100 ] || problem "B served only $on_b_alone requests while A was down"
else
  problem "could not read the request counters"
fi

note "B diverges while A is down: a token key replaced in its slot behind the module's back"
kill9_hsm A
FO_CA="$T/ca-both.pem" fo_check "divergence" diverge 127.0.0.1 "$B_PROD"

note "A back, A and B diverged: a handle signs only with the key it was found as"
start_hsm A
fo_check "diverged pair" pair 60

if ((${#bad[@]})); then
  echo "--- module log" >&2
  tail -n 30 "$T/pkcs11.log" >&2 2>/dev/null || true
  fail "${#bad[@]} problem(s), see FAIL lines above"
fi
echo "p11 failover: all checks passed"
