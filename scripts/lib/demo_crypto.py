"""The demo's crypto round: the application identity generates keys on the
HSM, signs and encrypts, and the results are checked outside the HSM with
openssl. usage: demo_crypto.py WORKDIR (ca.pem, client.pem/key, user.pw)."""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "integration"))
from excrypt import Connection  # noqa: E402

w = sys.argv[1]
msg = b"keyhold demo: a message signed inside the HSM"
with Connection(port=9100, ca=f"{w}/ca.pem", cert=f"{w}/client.pem", key=f"{w}/client.key") as c:
    c.login("pkcs11user", open(f"{w}/user.pw", "rb").read().strip())
    r = c.call("GRSA", RB=2048, SL=1500, PS=1501, RP="Y", LB=b"demo signing key")
    print(f"    GRSA: RSA-2048 pair in slots 1500/1501, key id {r['KD']}")
    spki = r.hex("RD")
    sig = c.call("ASYS", SL=1500, KD=r["KD"], HA="SHA-256", PD="PSS", DT=msg).hex("SG")
    print(f"    ASYS: RSA-PSS/SHA-256 signature, {len(sig)} bytes")
    c.call("ASYV", SL=1501, HA="SHA-256", PD="PSS", DT=msg, SG=sig)
    print("    ASYV: the HSM verifies it")
    with tempfile.TemporaryDirectory() as t:
        for name, data in (("pub.der", spki), ("msg", msg), ("sig", sig)):
            open(f"{t}/{name}", "wb").write(data)
        out = subprocess.run(["openssl", "dgst", "-sha256", "-sigopt", "rsa_padding_mode:pss",
                              "-sigopt", "rsa_pss_saltlen:-1", "-keyform", "DER", "-verify",
                              f"{t}/pub.der", "-signature", f"{t}/sig", f"{t}/msg"],
                             capture_output=True, text=True)
        print(f"    openssl, outside the HSM: {out.stdout.strip() or out.stderr.strip()}")
    r = c.call("GPGS", CT=6, SL=1000, RP="Y")
    print(f"    GPGS: AES-256 key in slot 1000, check value {r['AE']}")
    e = c.call("GPSE", SL=1000, AL="GCM", AD=b"header", DT=b"secret payload")
    d = c.call("GPSD", SL=1000, AL="GCM", IV=e.hex("IV"), AD=b"header", TG=e.hex("TG"), DT=e.hex("DT"))
    print(f"    GPSE/GPSD: AES-256-GCM round trip -> {d.hex('DT').decode()!r}")
    km = c.call("GPKM", CL="private")
    print(f"    GPKM: {km['KC']} private key(s) in the partition: {km['KL']}")
