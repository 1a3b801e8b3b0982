#!/usr/bin/env bash
# Slots the HSM picks (`*`) over the network, as the PKCS#11 module will use
# them: the reference set-up, the daemon on four worker threads, then many
# mutual-TLS connections of the "PKCS11 App" role storing keys, key pairs
# and data objects with SL * / PS * at the same time, pipelined. Every
# request must succeed (none EXISTS), every object get its own slot, in a
# range of its kind (S:1000-1499 for secret keys, A:1500-1999 for pairs),
# and the slots must be the lowest free ones. Then what GPKR tells of one of
# them, and a GPKS change of its usage, through the real server.
source "$(dirname "$0")/lib.sh"
source "$KH_SRC/scripts/lib/reference-setup.sh"

start_hsm P --workers 4
W=$T/work
kh_reference_setup "$CLI_BIN" "$T/P/console.sock" "$W" || fail "set-up"

note "24 connections x 12 pipelined requests with SL * / PS *"
PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$KH_SRC/tests/integration" \
/usr/bin/python3 - "$P_PROD" "$W" <<'EOF' || fail "concurrent slot picks"
import sys, threading
from excrypt import Connection, ExcryptError, Response

port, w = int(sys.argv[1]), sys.argv[2]
password = open(f"{w}/user.pw").read()
N, PER = 24, 12
errors, secret, asym = [], [], []
lock = threading.Lock()
barrier = threading.Barrier(N)

def worker(i):
    try:
        with Connection("127.0.0.1", port, ca=f"{w}/ca.pem", cert=f"{w}/client.pem",
                        key=f"{w}/client.key") as c:
            c.login("pkcs11user", password)
            reqs = []
            for j in range(PER):
                if (i + j) % 4 == 0:
                    reqs.append(("GECC", [("RA", "2"), ("SL", "*"), ("PS", "*")]))
                elif (i + j) % 4 == 1:
                    reqs.append(("GPKA", [("CL", "data"), ("KV", b"conn %d" % i), ("SL", "*")]))
                else:
                    reqs.append(("GPGS", [("CT", "6"), ("SL", "*")]))
            barrier.wait(timeout=120)
            for (cmd, _), ans in zip(reqs, c.send_many(reqs, window=PER)):
                if not isinstance(ans, Response):
                    raise RuntimeError(f"{cmd}: {ans}")
                with lock:
                    if cmd == "GECC":
                        asym.extend([int(ans["SL"]), int(ans["PS"])])
                    else:
                        secret.append(int(ans["SL"]))
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
# data objects fit any range: the S range is the lower, so they share it
if sorted(secret) != list(range(1000, 1000 + len(secret))):
    sys.exit(f"secret keys and data objects: not the lowest distinct slots: {sorted(secret)}")
if sorted(asym) != list(range(1500, 1500 + len(asym))):
    sys.exit(f"key pairs: not the lowest distinct slots: {sorted(asym)}")

with Connection("127.0.0.1", port, ca=f"{w}/ca.pem", cert=f"{w}/client.pem",
                key=f"{w}/client.key") as c:
    c.login("pkcs11user", password)
    kc = int(c.call("GPKM")["KC"])
    if kc != len(secret) + len(asym):
        sys.exit(f"GPKM counts {kc} keys, {len(secret) + len(asym)} were made")
    # what the module reads, and a usage change (the key is modifiable)
    r = c.call("GPGS", CT="6", CZ="ED", KF="M", SL="*")
    slot = r["SL"]
    r = c.call("GPKR", SL=slot)
    if (r["CL"], r["CZ"], r["KF"], r["FS"], len(r["AE"])) != ("secret", "ED", "MLN", "PMK", 6):
        sys.exit(f"GPKR: {r}")
    r = c.call("GPKS", SL=slot, CZ="E")
    if r["CZ"] != "E":
        sys.exit(f"GPKS: {r}")
    try:
        c.call("GPKS", SL=slot, KF="XM")
        sys.exit("GPKS added X")
    except ExcryptError as e:
        if e.name != "KEY_USAGE":
            sys.exit(f"GPKS adding X: {e}")
print(f"{N} connections: {len(secret)} secret keys and data objects, "
      f"{len(asym) // 2} pairs, all in distinct, lowest free slots")
EOF
echo "autoslot: all checks passed"
