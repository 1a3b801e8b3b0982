#!/usr/bin/env bash
# The network front: many concurrent mutual-TLS connections with pipelined
# requests answered in order; TLS 1.2 and 1.3 both served, and a minimum
# version enforced; the audit verify command catching an edited entry;
# --poll-us (workers poll before they sleep, and still sleep when idle); the
# daemon in the foreground stopping cleanly on SIGTERM.
source "$(dirname "$0")/lib.sh"
source "$KH_SRC/scripts/lib/reference-setup.sh"

start_hsm P
W=$T/work
kh_reference_setup "$CLI_BIN" "$T/P/console.sock" "$W" || fail "set-up"
ADMINS="login --user Admin1 --password-file $W/admin1.pw
login --user Admin2 --password-file $W/admin2.pw"

note "200 concurrent mutual-TLS connections, each pipelining 25 requests"
/usr/bin/python3 - "$P_PROD" "$W" <<'EOF' || fail "concurrency"
import socket, ssl, sys, threading
port, w = int(sys.argv[1]), sys.argv[2]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(f"{w}/ca.pem")
ctx.load_cert_chain(f"{w}/client.pem", f"{w}/client.key")
ctx.check_hostname = False
N, DEPTH = 200, 25
errors = []
barrier = threading.Barrier(N)

def worker(i):
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=60)
        s = ctx.wrap_socket(raw)
        barrier.wait(timeout=120)  # all connections open at once
        reqs = b"".join(b"[AOECHO;AGc%dr%d;]" % (i, j) for j in range(DEPTH))
        s.sendall(reqs)
        data = b""
        while data.count(b"]") < DEPTH:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("closed early")
            data += chunk
        frames = data.split(b"]")[:DEPTH]
        for j, fr in enumerate(frames):
            if not fr.startswith(b"[AOECHO;AGc%dr%d;" % (i, j)):
                raise RuntimeError(f"out of order or wrong reply {j}: {fr[:40]!r}")
        s.close()
    except Exception as e:  # noqa: BLE001 - report every failure
        errors.append(f"conn {i}: {e}")
        try:
            barrier.abort()
        except Exception:
            pass

ts = [threading.Thread(target=worker, args=(i,)) for i in range(N)]
for t in ts: t.start()
for t in ts: t.join()
if errors:
    print("\n".join(errors[:10]))
    sys.exit(1)
print(f"{N} connections x {DEPTH} pipelined requests: all answered in order")
EOF

note "a long pipelined burst of identical frames, larger than the pre-login buffer"
/usr/bin/python3 - "$P_PROD" "$W" <<'EOF' || fail "pipelined burst"
import select, socket, ssl, sys, time
port, w = int(sys.argv[1]), sys.argv[2]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(f"{w}/ca.pem")
ctx.load_cert_chain(f"{w}/client.pem", f"{w}/client.key")
ctx.check_hostname = False
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30))
N = 3000  # identical 20-byte frames: 60 KB, several times the 16 KiB pre-login buffer
frame = b"[AOECHO;AGabcdefgh;]"
# one thread drives both directions (an SSL object must not be used by two
# threads at once): write while the server lets us, read what it answers
out, got, deadline = memoryview(frame * N), 0, time.monotonic() + 60
s.setblocking(False)
while got < N and time.monotonic() < deadline:
    r, w, _ = select.select([s], [s] if out else [], [], 1)
    if w:
        try:
            out = out[s.send(out[:16384]):]
        except ssl.SSLWantWriteError:
            pass
    if r or s.pending():
        try:
            chunk = s.recv(65536)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            continue
        if not chunk:
            break
        got += chunk.count(b"]")
assert got == N, f"only {got} of {N} answered"
print(f"{N} pipelined frames answered")
EOF

note "pipelined bursts that fill the output mark resume when it drains (no stall, no busy loop)"
/usr/bin/python3 - "$T/P/console.sock" "$(hsm_pid P)" <<'EOF' || fail "output mark"
import os, socket, sys, threading, time
path, pid = sys.argv[1], int(sys.argv[2])
def cpu():
    f = open(f"/proc/{pid}/stat").read().split(")")[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
for n in (2000, 4000, 8000, 8192):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(path)
    th = threading.Thread(target=lambda: s.sendall(b"[AOECHO;AGabcdefgh;]" * n))
    th.start()
    got = 0
    while got < n:
        d = s.recv(1 << 20)
        if not d:
            break
        got += d.count(b"]")
    th.join()
    s.close()
    assert got == n, f"burst of {n}: only {got} answered"
# a peer that sends and never reads: the daemon waits, it does not spin
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
s.setblocking(False)
sent, t0 = 0, time.time()
while time.time() - t0 < 1.0:
    try:
        sent += s.send(b"[AOECHO;AGabcdefgh;]" * 256)
    except BlockingIOError:
        time.sleep(0.01)
c0 = cpu(); time.sleep(2); c1 = cpu()
s.close()
assert c1 - c0 < 0.5, f"daemon used {c1 - c0:.2f} s of CPU in 2 s waiting on a peer that does not read"
print(f"bursts answered; idle CPU while blocked: {c1 - c0:.2f} s")
EOF

note "TLS 1.2 and TLS 1.3 are both served; a minimum version is enforced"
for v in tls1_2 tls1_3; do
  out=$(printf '[AOECHO;AG%s;]' "$v" | timeout 20 openssl s_client -connect "127.0.0.1:$P_PROD" -"$v" \
        -CAfile "$W/ca.pem" -cert "$W/client.pem" -key "$W/client.key" -quiet -verify_return_error 2>&1) || true
  grep -q "\[AOECHO;AG$v;" <<<"$out" || fail "$v: $out"
done
console P -f - >/dev/null <<EOF || fail "min version"
$ADMINS
tls-ports set --port excrypt --min-version 1.3
EOF
out=$(printf '[AOECHO;]' | timeout 20 openssl s_client -connect "127.0.0.1:$P_PROD" -tls1_2 \
      -CAfile "$W/ca.pem" -cert "$W/client.pem" -key "$W/client.key" -quiet 2>&1) || true
grep -q "AOECHO" <<<"$out" && fail "TLS 1.2 accepted after --min-version 1.3"
expect_ok "mutual *min TLS 1.3" console P -f - <<EOF
$ADMINS
tls-ports show
EOF

note "audit verify names an edited entry"
stop_hsm P
sqlite3 "$T/P/keyhold.db" "UPDATE audit SET detail = 'nothing happened' WHERE seq = 3;"
start_hsm P
expect_fail "edited" console P -f - <<EOF
$ADMINS
audit verify
EOF

note "resource limits: a handshake never finished is dropped; a connection cap"
/usr/bin/python3 - "$P_PROD" <<'EOF' || fail "handshake timeout"
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
t0 = time.time()
assert s.recv(1) == b"", "the server sent something to a silent client"
took = time.time() - t0
assert 5 < took < 25, f"dropped after {took:.1f} s, expected about 10"
print(f"silent TLS client dropped after {took:.1f} s")
EOF
start_hsm Q --max-connections 3
QD=$(secret qd safest); Q1=$(secret q1 "Q-admin1-password"); Q2=$(secret q2 "Q-admin2-password")
console Q -f - >/dev/null <<EOF || fail "Q set-up"
login --user Admin1 --password-file $QD --new-password-file $Q1
login --user Admin2 --password-file $QD --new-password-file $Q2
tls-ports set --port excrypt --mode clear
EOF
/usr/bin/python3 - "$Q_PROD" "$T/Q/console.sock" <<'EOF' || fail "connection cap"
import socket, sys, time
port, console = int(sys.argv[1]), sys.argv[2]
def tcp():
    return socket.create_connection(("127.0.0.1", port), timeout=10)
def unix():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(console)
    return s
def echo(s):
    try:
        s.sendall(b"[AOECHO;AGx;]")
        return s.recv(100)
    except (BrokenPipeError, ConnectionResetError):
        return b""
held = [tcp() for _ in range(3)]
for h in held:
    assert echo(h).startswith(b"[AOECHO;"), "held connection not served"
assert echo(tcp()) == b"", "a 4th connection was served over the cap"
# the console is the way back in: never capped
assert echo(unix()).startswith(b"[AOECHO;"), "the console was refused by the cap"
held.pop().close()
time.sleep(0.5)
assert echo(tcp()).startswith(b"[AOECHO;"), "not served again after one closed"
print("connection cap enforced; the console stays reachable")
EOF

note "a second daemon on the same data dir is refused"
rc=0
"$HSM_BIN" -d "$T/P" --excrypt-port 0 --admin-port 0 --console none --pidfile "$T/P2.pid" \
  --log-file "$T/P2.log" -D || rc=$?
[ "$rc" != 0 ] || { KH_PIDFILES+=("$T/P2.pid"); fail "a second daemon started on a data dir in use"; }
grep -q "in use by another keyhold-hsm" "$T/P2.log" || fail "no clear reason: $(cat "$T/P2.log")"
expect_ok "Echo" "$CLI_BIN" --console "$T/P/console.sock" echo

note "--poll-us: requests answered, an idle daemon sleeps, SIGTERM still stops it"
for bad in -1 100001 x ""; do
  rc=0
  out=$("$HSM_BIN" -d "$T/bad" --poll-us "$bad" --console none 2>&1) || rc=$?
  [ "$rc" = 2 ] || fail "--poll-us '$bad' exited $rc"
  grep -q -- "--poll-us must be a number from 0 to 100000" <<<"$out" || fail "--poll-us '$bad': $out"
done
[ ! -e "$T/bad" ] || fail "a refused --poll-us left a data dir behind"
start_hsm L --poll-us 2000
/usr/bin/python3 - "$T/L/console.sock" "$(hsm_pid L)" <<'EOF' || fail "polling worker"
import os, socket, sys, time
path, pid = sys.argv[1], int(sys.argv[2])
def cpu():
    f = open(f"/proc/{pid}/stat").read().split(")")[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(path)
for i in range(500):  # one at a time: every answer is followed by a poll
    s.sendall(b"[AOECHO;AGp%d;]" % i)
    d = b""
    while not d.endswith(b"]"):
        d += s.recv(100)
    assert d.startswith(b"[AOECHO;AGp%d;" % i), d
time.sleep(0.2)  # longer than the poll: every worker is asleep now
c0 = cpu(); time.sleep(2); c1 = cpu()
s.close()
assert c1 - c0 < 0.2, f"idle daemon used {c1 - c0:.2f} s of CPU in 2 s"
print(f"500 answers; idle CPU afterwards: {c1 - c0:.2f} s in 2 s")
EOF
stop_hsm L

note "in the foreground, SIGTERM stops the daemon cleanly"
prod=$(free_port); admin=$(free_port)
"$HSM_BIN" -d "$T/F" --excrypt-port "$prod" --admin-port "$admin" --log-file "$T/F.log" &
fg=$!
for _ in $(seq 1 100); do [ -S "$T/F/console.sock" ] && break; sleep 0.1; done
[ -S "$T/F/console.sock" ] || fail "foreground daemon did not start"
[ "$(stat -c %a "$T/F/console.sock")" = 600 ] || fail "console socket mode"
kill -TERM "$fg"
rc=0; wait "$fg" || rc=$?
[ "$rc" = 0 ] || fail "foreground daemon exited $rc on SIGTERM"
[ ! -e "$T/F/console.sock" ] || fail "console socket left behind"
grep -q "stopped" "$T/F.log" || fail "no clean stop in the log"
echo "connections: all checks passed"
