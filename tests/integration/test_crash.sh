#!/usr/bin/env bash
# Crash safety: kill -9 of the daemon during a loop of role and identity
# writes loses nothing that was acknowledged, leaves the database
# consistent (integrity check, intact audit chain), and a restart brings
# back all state.
source "$(dirname "$0")/lib.sh"

start_hsm C
D=$(secret d safest); A1=$(secret a1 "Admin1-Secret-1"); A2=$(secret a2 "Admin2-Secret-2")
U=$(secret u "identity-password-1")
console C -f - >/dev/null <<EOF || fail "first logins"
login --user Admin1 --password-file $D --new-password-file $A1
login --user Admin2 --password-file $D --new-password-file $A2
EOF

N=400
script=$T/writes.txt
{
  echo "login --user Admin1 --password-file $A1"
  echo "login --user Admin2 --password-file $A2"
  for i in $(seq 1 $N); do
    echo "role add --name crash-role-$i --permissions keys --key-ranges M:$((i * 10))-$((i * 10 + 9)) --commands ECHO,GPKM --ports admin --sources usb"
    echo "identity add --name crash-user-$i --role crash-role-$i --password-file $U"
  done
} >"$script"

note "writing in a loop, then kill -9 mid-way"
acks=$T/acks.txt
console C -f "$script" >"$acks" 2>"$T/writer.err" &
writer=$!
for _ in $(seq 1 600); do
  [ "$(grep -c "^Identity crash-user-" "$acks" 2>/dev/null || true)" -ge 40 ] && break
  kill -0 "$writer" 2>/dev/null || break
  sleep 0.1
done
kill9_hsm C
rc=0; wait "$writer" || rc=$?
[ "$rc" -ne 0 ] || fail "the writer finished all $N writes before the kill; raise N"
roles_acked=$(grep -c "^Role crash-role-.* added" "$acks" || true)
users_acked=$(grep -c "^Identity crash-user-.* added" "$acks" || true)
echo "acknowledged before the kill: $roles_acked roles, $users_acked identities"
[ "$users_acked" -ge 40 ] || fail "too few writes acknowledged ($users_acked)"

note "the database is consistent"
ic=$(sqlite3 "$T/C/keyhold.db" "PRAGMA integrity_check;")
[ "$ic" = ok ] || fail "integrity_check: $ic"
fk=$(sqlite3 "$T/C/keyhold.db" "PRAGMA foreign_key_check;")
[ -z "$fk" ] || fail "foreign_key_check: $fk"

note "restart brings back everything acknowledged"
rm -f "$T/C.pid"
start_hsm C
out=$(console C -f - <<EOF
login --user Admin1 --password-file $A1
login --user Admin2 --password-file $A2
role list
identity list
audit verify
EOF
) || fail "after restart: $out"
missing=0
while read -r line; do
  name=$(sed -E 's/^Role (crash-role-[0-9]+) added.*/\1/' <<<"$line")
  grep -qx "$name" <<<"$out" || { echo "lost role $name"; missing=$((missing + 1)); }
done < <(grep "^Role crash-role-.* added" "$acks")
while read -r line; do
  name=$(sed -E 's/^Identity (crash-user-[0-9]+) added.*/\1/' <<<"$line")
  grep -q "$name" <<<"$out" || { echo "lost identity $name"; missing=$((missing + 1)); }
done < <(grep "^Identity crash-user-.* added" "$acks")
[ "$missing" = 0 ] || fail "$missing acknowledged changes lost"
grep -qi "intact" <<<"$out" || fail "audit chain broken after the crash: $out"
# a restored identity works
expect_ok "Logged in crash-user-1" "$CLI_BIN" --console "$T/C/console.sock" login --user crash-user-1 --password-file "$U"
echo "crash safety: nothing acknowledged was lost"
