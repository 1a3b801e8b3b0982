#!/usr/bin/python3
"""Run Wycheproof test vectors through a Keyhold HSM's Excrypt commands.

usage: wycheproof_excrypt.py [connection options] [--only TEXT]... VECTORS...

VECTORS are Wycheproof JSON files or directories of them. Every file whose
algorithm the Excrypt crypto commands support is run (see FAMILIES):

  AES-CBC-PKCS5  GPSE/GPSD AL=CBCP              AES-GCM   GPSE/GPSD AL=GCM
  AES-CMAC       GPMC (generate and verify)     HMACSHA*  HMAC (both)
  AES-WRAP/KWP   GPKU, then GPKW back; GPKW of the clear key
  ECDH, XDH      ASYL (PKCS#8 built here), GPDK KF=NULL, then HMAC of the
                 derived key against a local HMAC of the expected secret
  HKDF-SHA-256   GPKA of the IKM, GPDK KF=HKDF-SHA256, HMAC as above
  ECDSA, EDDSA, RSASSA-PKCS1-v1_5, RSASSA-PSS   ASYV with PU (SPKI), and
                 again with the key imported by ASYL (a trusted public key)
  RSAES-OAEP, RSAES-PKCS1-v1_5                  ASYL, GPSD

Keys are made as cryptograms (no slot is used). Every `valid` vector must
succeed with the expected output, every `invalid` one must be refused (which
error is counted and shown), `acceptable` ones may go either way (counted
apart) but, when accepted, must give the right output. X25519 peers of small
order must be refused (spec: GPDK).

`wycheproof_excrypt.py --selftest` checks the DER encoder alone (no HSM).

Exit status: 0 when every vector behaved, 1 on any failure or when a file of a
supported family could not be run, 2 on a usage or connection error.
"""

import argparse
import collections
import concurrent.futures
import hashlib
import hmac
import json
import os
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from excrypt import Connection, ExcryptError, ProtocolError, Response  # noqa: E402

# A rejection for one of these reasons says nothing about the vector: the test
# set-up (role, commands, permissions) or the HSM itself is at fault.
ENV_ERRORS = {"INTERNAL", "NOMEM", "MALFORMED", "UNKNOWN_COMMAND", "NOT_LOGGED_IN",
              "COMMAND_NOT_ALLOWED", "PERMISSION_DENIED", "SLOT_OUT_OF_RANGE",
              "MAJOR_KEY_NOT_LOADED", "STORAGE", "BUSY", "STATE", "KEY_USAGE", "FIPS"}

# Key imports: their refusals (a key of a size the type does not have, a
# private key off the curve) are counted, but no particular error is implied.
IMPORT_STAGES = {"import", "ASYL"}

# The message whose HMAC-SHA256 under a derived key is compared with the same
# HMAC under the vector's expected secret (nothing derived leaves the HSM).
CHECK_MSG = b"keyhold wycheproof: derived key check"


# --------------------------------------------------------------------------
# Minimal DER encoding (enough for PKCS#8 EC and X25519 private keys)

def der_len(n):
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def der_tlv(tag, content):
    return bytes([tag]) + der_len(len(content)) + content


def der_int(n):
    b = n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big", signed=True) if n >= 0 else None
    if b is None:
        raise ValueError("negative INTEGER")
    return der_tlv(0x02, b)


def der_oid(dotted):
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for a in arcs[2:]:
        chunk = [a & 0x7F]
        a >>= 7
        while a:
            chunk.append(0x80 | (a & 0x7F))
            a >>= 7
        body += bytes(reversed(chunk))
    return der_tlv(0x06, bytes(body))


def der_seq(*items):
    return der_tlv(0x30, b"".join(items))


def der_octets(b):
    return der_tlv(0x04, b)


OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
OID_X25519 = "1.3.101.110"
CURVES = {  # Wycheproof name -> (OID, private key / coordinate bytes)
    "secp256r1": ("1.2.840.10045.3.1.7", 32),
    "secp384r1": ("1.3.132.0.34", 48),
    "secp521r1": ("1.3.132.0.35", 66),
}


def ec_pkcs8(curve, private_hex):
    """PKCS#8 PrivateKeyInfo for an EC private key given as a big-endian
    (two's complement) integer in hex, without the optional public key."""
    oid, size = CURVES[curve]
    d = int(private_hex, 16) if private_hex else 0
    ec_private_key = der_seq(der_int(1), der_octets(d.to_bytes(size, "big")))
    return der_seq(der_int(0), der_seq(der_oid(OID_EC_PUBLIC_KEY), der_oid(oid)),
                   der_octets(ec_private_key))


def x25519_pkcs8(raw):
    """PKCS#8 for an X25519 private key (RFC 8410): the 32 raw bytes."""
    if len(raw) != 32:
        raise ValueError("X25519 private key is 32 bytes")
    return der_seq(der_int(0), der_seq(der_oid(OID_X25519)), der_octets(der_octets(raw)))


def _der_selftest():
    assert der_len(5) == b"\x05" and der_len(0x80) == b"\x81\x80" and der_len(0x1234) == b"\x82\x12\x34"
    assert der_int(0) == b"\x02\x01\x00" and der_int(0x80) == b"\x02\x02\x00\x80" and der_int(127) == b"\x02\x01\x7f"
    assert der_oid("1.2.840.10045.2.1").hex() == "06072a8648ce3d0201"
    assert der_oid("1.2.840.10045.3.1.7").hex() == "06082a8648ce3d030107"
    assert der_oid("1.3.132.0.35").hex() == "06052b81040023"
    assert x25519_pkcs8(bytes(32)).hex().startswith("302e020100300506032b656e04220420")
    k = ec_pkcs8("secp256r1", "00c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721")
    assert k.hex() == ("3041020100301306072a8648ce3d020106082a8648ce3d030107042730250201010420"
                       "c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721"), k.hex()
    assert len(ec_pkcs8("secp521r1", "01")) == 98


# --------------------------------------------------------------------------
# Outcomes and their classification

class Outcome:
    """What the HSM did with a vector: accepted with the right output,
    accepted but wrong (or a follow-up step failed), or rejected."""
    __slots__ = ("kind", "err", "stage", "detail")

    def __init__(self, kind, err=None, stage="", detail=""):
        self.kind, self.err, self.stage, self.detail = kind, err, stage, detail

    def describe(self):
        if self.kind == "rejected":
            return f"{self.stage} refused: {self.err}"
        if self.kind == "wrong":
            return f"{self.stage}: {self.detail}"
        return "accepted"


def accepted():
    return Outcome("accepted")


def rejected(err, stage):
    return Outcome("rejected", err, stage)


def wrong(stage, detail):
    return Outcome("wrong", stage=stage, detail=detail)


def _h(b, n=48):
    s = b.hex()
    return s if len(s) <= n else f"{s[:n]}...({len(b)} bytes)"


def mismatch(stage, what, got, want):
    return wrong(stage, f"{what} is {_h(got)}, expected {_h(want)}")


class Policy:
    """Per-vector expectations beyond the vector's own `result`."""
    __slots__ = ("must_reject", "expect", "note")

    def __init__(self, must_reject=False, expect=(), note=""):
        self.must_reject = must_reject
        self.expect = frozenset(expect)   # error names the spec implies for a refusal
        self.note = note


class FileResult:
    def __init__(self, name):
        self.name = name
        self.counts = collections.Counter()
        self.reject_codes = collections.Counter()
        self.reject_examples = {}   # reject code -> first few tcIds
        self.unexpected_codes = collections.Counter()
        self.failures = []
        self.warnings = []
        self.skipped = None       # reason, when the file was not run
        self.must_support = True
        self.seconds = 0.0

    def add(self, t, outcome, policy, strict):
        res = t["result"]
        tc = f"tcId {t['tcId']} ({res}{', ' + ','.join(t.get('flags', [])) if t.get('flags') else ''})"
        err = outcome.err
        if outcome.kind == "rejected" and err.name in ENV_ERRORS:
            self._fail(tc, outcome.describe() + " [an error that says nothing about the vector]")
            return
        if outcome.kind == "wrong":
            self._fail(tc, outcome.describe())
            return
        if res == "valid":
            if outcome.kind == "accepted":
                self.counts["valid"] += 1
            else:
                self._fail(tc, outcome.describe())
            return
        if res == "invalid" or policy.must_reject:
            if outcome.kind == "accepted":
                why = policy.note or "an invalid vector"
                self._fail(tc, f"accepted {why}")
                return
            key = "invalid" if res == "invalid" else "acceptable_refused"
            self.counts[key] += 1
            self._refused(t, f"{err.name}@{outcome.stage}")
            if policy.expect and err.name not in policy.expect and outcome.stage not in IMPORT_STAGES:
                self.unexpected_codes[f"{err.name}@{outcome.stage}"] += 1
                msg = f"{tc}: {outcome.describe()}; the spec implies {'/'.join(sorted(policy.expect))}"
                if strict:
                    self._fail(tc, msg)
                elif len(self.warnings) < 50:
                    self.warnings.append(msg)
            return
        # acceptable
        if outcome.kind == "accepted":
            self.counts["acceptable_accepted"] += 1
        else:
            self.counts["acceptable_refused"] += 1
            self._refused(t, f"{err.name}@{outcome.stage}")

    def _refused(self, t, key):
        self.reject_codes[key] += 1
        ex = self.reject_examples.setdefault(key, [])
        if len(ex) < 3:
            ex.append(str(t["tcId"]))

    def _fail(self, tc, msg):
        self.counts["failures"] += 1
        self.failures.append(f"{tc}: {msg}")

    def line(self):
        c = self.counts
        s = (f"{self.name}: {c['valid']} valid ok, {c['invalid']} invalid rejected, "
             f"{c['acceptable_accepted'] + c['acceptable_refused']} acceptable, {c['failures']} failures")
        extra = []
        if c["acceptable_accepted"] + c["acceptable_refused"]:
            extra.append(f"acceptable: {c['acceptable_accepted']} accepted, {c['acceptable_refused']} refused")
        if self.unexpected_codes:
            extra.append(f"{sum(self.unexpected_codes.values())} refused with another error than the spec implies")
        extra.append(f"{self.seconds:.1f} s")
        return s + " (" + "; ".join(extra) + ")"


# --------------------------------------------------------------------------
# Running coroutine jobs over one pipelined connection
#
# A job is a generator: it yields requests (cmd, fields), receives each answer
# (a Response or an ExcryptError) and returns its result. All jobs advance in
# rounds: each round pipelines the next request of every live job.

def run_jobs(conn, jobs, window):
    results = [None] * len(jobs)
    last = [None] * len(jobs)
    pending = []
    for i, g in enumerate(jobs):
        try:
            pending.append((i, next(g)))
        except StopIteration as s:
            results[i] = s.value
    while pending:
        answers = conn.send_many([req for _, req in pending], window=window)
        nxt = []
        for (i, req), ans in zip(pending, answers):
            last[i] = req
            try:
                nxt.append((i, jobs[i].send(ans)))
            except StopIteration as s:
                results[i] = s.value
        pending = nxt
    return results, last


def req_text(req, limit=300):
    if req is None:
        return "(none)"
    cmd, fields = req
    parts = [f"{k}{v.hex().upper() if isinstance(v, bytes) else v}" for k, v in
             (fields.items() if isinstance(fields, dict) else fields) if v is not None]
    s = f"[AO{cmd};" + ";".join(parts) + ";]"
    return s if len(s) <= limit else s[:limit] + "..."


def import_keys(conn, window, specs):
    """specs: {name: (cmd, fields, out_tag)} -> {name: cryptogram hex or ExcryptError}"""
    def job(cmd, fields, tag):
        r = yield (cmd, fields)
        if isinstance(r, ExcryptError):
            return r
        if tag not in r:
            return ExcryptError(cmd, 1, f"answer without {tag}: {dict(r)}")
        return r[tag]
    names = list(specs)
    res, _ = run_jobs(conn, [job(*specs[n]) for n in names], window)
    return dict(zip(names, res))


def secret_import(key_hex, kt, cz, kf=None):
    return ("GPKA", {"KV": bytes.fromhex(key_hex), "CL": "secret", "KT": kt, "CZ": cz, "KF": kf}, "BG")


def private_import(der, cz):
    return ("ASYL", {"KV": der, "CZ": cz}, "RC")


def hmac_check(cg, expected_secret, stage="HMAC"):
    """Job fragment: HMAC-SHA256 of CHECK_MSG under the key `cg` on the HSM
    must equal the same HMAC under `expected_secret` here."""
    r = yield ("HMAC", {"CG": cg, "HA": "SHA-256", "DT": CHECK_MSG})
    if isinstance(r, ExcryptError):
        return wrong(stage, f"HMAC under the derived key failed: {r}")
    want = hmac.new(expected_secret, CHECK_MSG, hashlib.sha256).digest()
    got = r.hex("MC")
    if got != want:
        return wrong(stage, f"derived key differs from the expected secret (HMAC {_h(got)}, expected {_h(want)})")
    return accepted()


def b(hexstr):
    return bytes.fromhex(hexstr)


def key_err(k, stage="import"):
    return rejected(k, stage) if isinstance(k, ExcryptError) else None


# --------------------------------------------------------------------------
# Families. Each: (conn, window, data) -> list of (test, job, Policy)

def fam_aes_cbc(conn, window, data):
    tests = [t for g in data["testGroups"] for t in g["tests"]]
    keys = import_keys(conn, window, {t["key"]: secret_import(t["key"], "AES", "ED") for t in tests})

    def job(t):
        k = keys[t["key"]]
        if key_err(k):
            return key_err(k)
        if t["result"] == "valid":
            r = yield ("GPSE", {"CG": k, "AL": "CBCP", "IV": b(t["iv"]), "DT": b(t["msg"])})
            if isinstance(r, ExcryptError):
                return rejected(r, "GPSE")
            if r.hex("DT", b"") != b(t["ct"]):
                return mismatch("GPSE", "ciphertext", r.hex("DT", b""), b(t["ct"]))
        r = yield ("GPSD", {"CG": k, "AL": "CBCP", "IV": b(t["iv"]), "DT": b(t["ct"])})
        if isinstance(r, ExcryptError):
            return rejected(r, "GPSD")
        if r.hex("DT", b"") != b(t["msg"]):
            return mismatch("GPSD", "plaintext", r.hex("DT", b""), b(t["msg"]))
        return accepted()
    return [(t, job(t), Policy(expect={"DECRYPT_FAILED", "BAD_FIELD"})) for t in tests]


def fam_aes_gcm(conn, window, data):
    out = []
    tests = [(g, t) for g in data["testGroups"] for t in g["tests"]]
    keys = import_keys(conn, window, {t["key"]: secret_import(t["key"], "AES", "ED") for _, t in tests})

    def job(g, t):
        k = keys[t["key"]]
        if key_err(k):
            return key_err(k)
        tl = g["tagSize"] // 8
        iv, aad, msg, ct, tag = (b(t[x]) for x in ("iv", "aad", "msg", "ct", "tag"))
        if t["result"] == "valid":
            r = yield ("GPSE", {"CG": k, "AL": "GCM", "IV": iv, "AD": aad or None, "TL": tl, "DT": msg})
            if isinstance(r, ExcryptError):
                return rejected(r, "GPSE")
            if r.hex("DT", b"") != ct:
                return mismatch("GPSE", "ciphertext", r.hex("DT", b""), ct)
            if r.hex("TG", b"") != tag:
                return mismatch("GPSE", "tag", r.hex("TG", b""), tag)
        r = yield ("GPSD", {"CG": k, "AL": "GCM", "IV": iv, "AD": aad or None, "TG": tag, "DT": ct})
        if isinstance(r, ExcryptError):
            return rejected(r, "GPSD")
        if r.hex("DT", b"") != msg:
            return mismatch("GPSD", "plaintext", r.hex("DT", b""), msg)
        return accepted()
    for g, t in tests:
        ivlen = len(t["iv"]) // 2
        out.append((t, job(g, t), Policy(expect={"DECRYPT_FAILED"} if ivlen else
                                         {"BAD_FIELD", "MISSING_FIELD"})))
    return out


def fam_mac(conn, window, data, cmd, kt, ha=None):
    tests = [(g, t) for g in data["testGroups"] for t in g["tests"]]
    keys = import_keys(conn, window, {t["key"]: secret_import(t["key"], kt, "GV") for _, t in tests})

    def job(g, t):
        k = keys[t["key"]]
        if key_err(k):
            return key_err(k)
        ml = g["tagSize"] // 8
        base = {"CG": k, "HA": ha, "ML": ml, "DT": b(t["msg"])}
        if t["result"] == "valid":
            r = yield (cmd, base)
            if isinstance(r, ExcryptError):
                return rejected(r, cmd + " generate")
            if r.hex("MC", b"") != b(t["tag"]):
                return mismatch(cmd, "MAC", r.hex("MC", b""), b(t["tag"]))
        r = yield (cmd, dict(base, MC=b(t["tag"])))
        if isinstance(r, ExcryptError):
            return rejected(r, cmd + " verify")
        return accepted()
    return [(t, job(g, t), Policy(expect={"VERIFY_FAILED"})) for g, t in tests]


def fam_keywrap(conn, window, data, al):
    tests = [t for g in data["testGroups"] for t in g["tests"]]
    keks = import_keys(conn, window, {t["key"]: secret_import(t["key"], "AES", "WU") for t in tests})

    def job(t):
        kek = keks[t["key"]]
        if key_err(kek):
            return key_err(kek)
        ct, msg = b(t["ct"]), b(t["msg"])
        r = yield ("GPKU", {"CG": kek, "AL": al, "WK": ct, "CL": "secret", "KT": "GENERIC", "KF": "X"})
        if isinstance(r, ExcryptError):
            return rejected(r, "GPKU")
        if "BG" not in r:
            return wrong("GPKU", f"no BG in the answer: {dict(r)}")
        r = yield ("GPKW", {"CG": kek, "C2": r["BG"], "AL": al})
        if isinstance(r, ExcryptError):
            return wrong("GPKW", f"wrapping the unwrapped key back failed: {r}")
        if r.hex("WK", b"") != ct:
            return mismatch("GPKW", "re-wrapped key", r.hex("WK", b""), ct)
        if t["result"] == "valid":
            r = yield ("GPKA", {"KV": msg, "CL": "secret", "KT": "GENERIC", "KF": "X"})
            if isinstance(r, ExcryptError):
                return wrong("GPKA", f"importing the clear key failed: {r}")
            r = yield ("GPKW", {"CG": kek, "C2": r["BG"], "AL": al})
            if isinstance(r, ExcryptError):
                return wrong("GPKW", f"wrapping the clear key failed: {r}")
            if r.hex("WK", b"") != ct:
                return mismatch("GPKW", "wrapped key", r.hex("WK", b""), ct)
        return accepted()
    return [(t, job(t), Policy(expect={"DECRYPT_FAILED", "BAD_FIELD"})) for t in tests]


def fam_ecdh(conn, window, data):
    tests = [(g, t) for g in data["testGroups"] for t in g["tests"]]
    specs = {}
    for g, t in tests:
        if g["curve"] not in CURVES:
            raise Unsupported(f"curve {g['curve']}")
        if g.get("encoding", "asn") != "asn":
            raise Unsupported(f"public key encoding {g['encoding']}")
        specs[(g["curve"], t["private"])] = private_import(ec_pkcs8(g["curve"], t["private"]), "X")
    keys = import_keys(conn, window, specs)

    def job(g, t):
        k = keys[(g["curve"], t["private"])]
        if key_err(k, "ASYL"):
            return key_err(k, "ASYL")
        size = CURVES[g["curve"]][1]
        r = yield ("GPDK", {"CG": k, "PU": b(t["public"]), "KF": "NULL", "CT": 7, "LN": size, "CZ": "G"})
        if isinstance(r, ExcryptError):
            return rejected(r, "GPDK")
        if "BG" not in r:
            return wrong("GPDK", f"no BG in the answer: {dict(r)}")
        return (yield from hmac_check(r["BG"], b(t["shared"])))
    return [(t, job(g, t), Policy(expect={"CRYPTO", "BAD_FIELD"})) for g, t in tests]


def fam_x25519(conn, window, data):
    tests = [(g, t) for g in data["testGroups"] for t in g["tests"]]
    for g, _ in tests:
        if g["curve"] != "curve25519":
            raise Unsupported(f"curve {g['curve']}")
    keys = import_keys(conn, window, {t["private"]: private_import(x25519_pkcs8(b(t["private"])), "X")
                                      for _, t in tests})

    def job(t):
        k = keys[t["private"]]
        if key_err(k, "ASYL"):
            return key_err(k, "ASYL")
        r = yield ("GPDK", {"CG": k, "PP": b(t["public"]), "KF": "NULL", "CT": 7, "LN": 32, "CZ": "G"})
        if isinstance(r, ExcryptError):
            return rejected(r, "GPDK")
        if "BG" not in r:
            return wrong("GPDK", f"no BG in the answer: {dict(r)}")
        return (yield from hmac_check(r["BG"], b(t["shared"])))
    out = []
    for _, t in tests:
        low = "LowOrderPublic" in t["flags"] or t["shared"] == "00" * 32
        out.append((t, job(t), Policy(must_reject=low, expect={"CRYPTO"},
                                      note="a peer of small order (all-zero secret)")))
    return out


def fam_hkdf(conn, window, data, kdf, hashlen):
    tests = [t for g in data["testGroups"] for t in g["tests"]]
    keys = import_keys(conn, window, {t["ikm"]: secret_import(t["ikm"], "GENERIC", "X") for t in tests})

    def job(t):
        k = keys[t["ikm"]]
        if key_err(k):
            return key_err(k)
        r = yield ("GPDK", {"CG": k, "KF": kdf, "SA": b(t["salt"]) or None, "IN": b(t["info"]) or None,
                            "CT": 7, "LN": t["size"], "CZ": "G"})
        if isinstance(r, ExcryptError):
            return rejected(r, "GPDK")
        if "BG" not in r:
            return wrong("GPDK", f"no BG in the answer: {dict(r)}")
        return (yield from hmac_check(r["BG"], b(t["okm"])))
    return [(t, job(t), Policy(expect={"BAD_FIELD", "CRYPTO"})) for t in tests]


def _spki(g):
    for k in ("publicKeyDer", "keyDer"):
        if k in g:
            return b(g[k])
    raise Unsupported("no DER public key in the test group")


def fam_verify(conn, window, data, params):
    """ASYV twice per vector: with the group's SPKI in PU, and with the same
    key imported by ASYL as a trusted public key (SD) in CG; both must give
    the vector's answer. params(g) -> extra fields."""
    groups = data["testGroups"]
    for g in groups:
        _spki(g)
    keys = import_keys(conn, window, {i: ("ASYL", {"KV": _spki(g), "CZ": "V"}, "SD")
                                      for i, g in enumerate(groups)})
    out = []

    def job(fields, k):
        r = yield ("ASYV", fields)
        if isinstance(k, ExcryptError):
            return wrong("ASYL", f"importing the public key failed: {k}")
        f2 = dict(fields, CG=k)
        del f2["PU"]
        r2 = yield ("ASYV", f2)
        if isinstance(r, ExcryptError) != isinstance(r2, ExcryptError):
            return wrong("ASYV", f"PU answered {'refused: ' + str(r) if isinstance(r, ExcryptError) else 'valid'}, "
                                 f"CG answered {'refused: ' + str(r2) if isinstance(r2, ExcryptError) else 'valid'}")
        if isinstance(r, ExcryptError):
            return rejected(r, "ASYV")
        return accepted()
    for i, g in enumerate(groups):
        pu = _spki(g)
        extra = params(g)
        for t in g["tests"]:
            f = {"PU": pu, **extra, "DT": b(t["msg"]), "SG": b(t["sig"])}
            out.append((t, job(f, keys[i]), Policy(expect={"VERIFY_FAILED", "BAD_FIELD"})))
    return out


def fam_rsa_decrypt(conn, window, data, params):
    groups = data["testGroups"]
    keys = import_keys(conn, window, {i: private_import(b(g["privateKeyPkcs8"]), "D")
                                      for i, g in enumerate(groups)})
    out = []

    def job(k, fields, msg):
        if key_err(k, "ASYL"):
            return key_err(k, "ASYL")
        r = yield ("GPSD", dict(fields, CG=k))
        if isinstance(r, ExcryptError):
            return rejected(r, "GPSD")
        if r.hex("DT", b"") != msg:
            return mismatch("GPSD", "plaintext", r.hex("DT", b""), msg)
        return accepted()
    for i, g in enumerate(groups):
        for t in g["tests"]:
            f = {**params(g, t), "DT": b(t["ct"])}
            out.append((t, job(keys[i], f, b(t["msg"])), Policy(expect={"DECRYPT_FAILED", "BAD_FIELD"})))
    return out


class Unsupported(Exception):
    """A parameter of a supported family that this runner (or the spec) lacks."""


SHAS = {"SHA-1", "SHA-224", "SHA-256", "SHA-384", "SHA-512", "SHA3-224", "SHA3-256", "SHA3-384", "SHA3-512"}


def _sha(name):
    if name not in SHAS:
        raise Unsupported(f"hash {name}")
    return name


def _mgf(g):
    if g.get("mgf", "MGF1") != "MGF1":
        raise Unsupported(f"MGF {g['mgf']}")
    return _sha(g.get("mgfSha", g["sha"]))


def family_for(data):
    """-> (label, function(conn, window, data)) or None when the spec has no
    command for the file's algorithm."""
    alg = data.get("algorithm", "")
    schema = data.get("schema", "")
    if alg == "AES-CBC-PKCS5":
        return fam_aes_cbc
    if alg == "AES-GCM":
        return fam_aes_gcm
    if alg == "AES-CMAC":
        return lambda c, w, d: fam_mac(c, w, d, "GPMC", "AES")
    if alg.startswith("HMACSHA"):
        ha = {"HMACSHA1": "SHA-1", "HMACSHA224": "SHA-224", "HMACSHA256": "SHA-256",
              "HMACSHA384": "SHA-384", "HMACSHA512": "SHA-512", "HMACSHA3-224": "SHA3-224",
              "HMACSHA3-256": "SHA3-256", "HMACSHA3-384": "SHA3-384", "HMACSHA3-512": "SHA3-512"}.get(alg)
        return (lambda c, w, d: fam_mac(c, w, d, "HMAC", "GENERIC", ha)) if ha else None
    if alg == "AES-WRAP":
        return lambda c, w, d: fam_keywrap(c, w, d, "KW")
    if alg == "AES-KWP":
        return lambda c, w, d: fam_keywrap(c, w, d, "KWP")
    if alg == "ECDH" and schema == "ecdh_test_schema_v1.json":
        curves = {g.get("curve") for g in data["testGroups"]}
        return fam_ecdh if curves <= set(CURVES) else None
    if alg == "XDH":
        curves = {g.get("curve") for g in data["testGroups"]}
        return fam_x25519 if curves == {"curve25519"} else None
    if alg.startswith("HKDF-SHA-"):
        n = alg[len("HKDF-SHA-"):]
        if n in ("256", "384", "512"):
            return lambda c, w, d: fam_hkdf(c, w, d, f"HKDF-SHA{n}", int(n) // 8)
        return None
    if alg == "ECDSA" and schema in ("ecdsa_verify_schema_v1.json", "ecdsa_p1363_verify_schema_v1.json"):
        sf = "P1363" if "p1363" in schema else "DER"
        curves = {(g.get("publicKey") or {}).get("curve") for g in data["testGroups"]}
        if not curves <= set(CURVES):
            return None
        return lambda c, w, d: fam_verify(c, w, d, lambda g: {"HA": _sha(g["sha"]), "SF": sf})
    if alg == "EDDSA":
        curves = {(g.get("publicKey") or {}).get("curve") for g in data["testGroups"]}
        return (lambda c, w, d: fam_verify(c, w, d, lambda g: {})) if curves == {"edwards25519"} else None
    if alg == "RSASSA-PKCS1-v1_5":
        return lambda c, w, d: fam_verify(c, w, d, lambda g: {"HA": _sha(g["sha"]), "PD": "PKCS1"})
    if alg == "RSASSA-PSS":
        return lambda c, w, d: fam_verify(c, w, d, lambda g: {"HA": _sha(g["sha"]), "PD": "PSS",
                                                              "MG": _mgf(g), "SA": g["sLen"]})
    if alg == "RSAES-OAEP":
        return lambda c, w, d: fam_rsa_decrypt(c, w, d, lambda g, t: {
            "PD": "OAEP", "HA": _sha(g["sha"]), "MG": _mgf(g), "OL": b(t["label"]) or None})
    if alg == "RSAES-PKCS1-v1_5":
        return lambda c, w, d: fam_rsa_decrypt(c, w, d, lambda g, t: {"PD": "PKCS1"})
    return None


# --------------------------------------------------------------------------

class Runner:
    def __init__(self, args, password):
        self.args = args
        self.password = password
        self.local = threading.local()
        self.conns = []
        self.lock = threading.Lock()

    def conn(self):
        c = getattr(self.local, "conn", None)
        if c is None:
            a = self.args
            c = Connection(a.host, a.port, ca=a.ca, cert=a.cert, key=a.key, tls=not a.no_tls,
                           timeout=a.timeout)
            c.login(a.user, self.password)
            self.local.conn = c
            with self.lock:
                self.conns.append(c)
        return c

    def run_file(self, path):
        name = os.path.basename(path)
        fr = FileResult(name)
        t0 = time.monotonic()
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            fr.skipped = f"cannot read: {e}"
            return fr
        fam = family_for(data)
        if fam is None:
            fr.skipped = f"no Excrypt command for {data.get('algorithm')} ({data.get('schema')})"
            fr.must_support = False
            return fr
        try:
            conn = self.conn()
            items = fam(conn, self.args.window, data)
            jobs = [job for _, job, _ in items]
            results, last = run_jobs(conn, jobs, self.args.window)
        except Unsupported as e:
            fr.skipped = f"unsupported parameter: {e}"
            return fr
        except (ProtocolError, OSError) as e:
            fr.skipped = f"connection failed: {e}"
            self.local.conn = None
            return fr
        for (t, _, policy), outcome, req in zip(items, results, last):
            nfail = fr.counts["failures"]
            fr.add(t, outcome, policy, self.args.strict_errors)
            if fr.counts["failures"] > nfail and self.args.verbose:
                fr.failures[-1] += f"\n        last request: {req_text(req)}"
        fr.seconds = time.monotonic() - t0
        return fr


def collect(paths, only):
    files = []
    for p in paths:
        if os.path.isdir(p):
            files += [os.path.join(p, f) for f in sorted(os.listdir(p)) if f.endswith(".json")]
        else:
            files.append(p)
    if only:
        files = [f for f in files if any(o in os.path.basename(f) for o in only)]
    return files


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("vectors", nargs="+", help="Wycheproof JSON files or directories")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9100)
    ap.add_argument("--ca", help="CA certificate(s) of the HSM's server certificate (PEM)")
    ap.add_argument("--cert", help="client certificate (PEM)")
    ap.add_argument("--key", help="client key (PEM)")
    ap.add_argument("--no-tls", action="store_true", help="plain TCP (a port in clear mode)")
    ap.add_argument("--user", default="pkcs11user", help="identity to log in (default pkcs11user)")
    ap.add_argument("--password-file", help="the identity's password (one trailing newline stripped)")
    ap.add_argument("--only", action="append", default=[], help="run only files whose name contains TEXT")
    ap.add_argument("--jobs", type=int, default=2, help="files run in parallel, one connection each (default 2)")
    ap.add_argument("--window", type=int, default=64, help="requests in flight per connection (default 64)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for an answer")
    ap.add_argument("--show", type=int, default=5, help="failures shown per file (default 5)")
    ap.add_argument("--strict-errors", action="store_true",
                    help="a refusal with another error than the spec implies is a failure")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="show the error codes of refusals and the request of each failure")
    a = ap.parse_args(argv)

    password = ""
    if a.password_file:
        with open(a.password_file) as f:
            password = f.read()
        if password.endswith("\n"):
            password = password[:-1]
    files = collect(a.vectors, a.only)
    if not files:
        print("no vector files", file=sys.stderr)
        return 2
    runner = Runner(a, password)
    try:
        runner.conn()  # fail early on connection or login problems
    except (ExcryptError, ProtocolError, OSError) as e:
        print(f"cannot connect and log in: {e}", file=sys.stderr)
        return 2

    total = collections.Counter()
    bad_skips = []
    t0 = time.monotonic()
    # the biggest files first, so the parallel connections finish together
    order = sorted(files, key=lambda f: -os.path.getsize(f))
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, a.jobs)) as ex:
        futs = {f: ex.submit(runner.run_file, f) for f in order}
        for f in files:
            fr = futs[f].result()
            if fr.skipped:
                tag = "SKIPPED" if fr.must_support else "skipped"
                print(f"{fr.name}: {tag}: {fr.skipped}")
                if fr.must_support:
                    bad_skips.append(fr.name)
                continue
            print(fr.line())
            if a.verbose and fr.reject_codes:
                print("    refusals: " + ", ".join(f"{k} {v} (tcId {','.join(fr.reject_examples[k])}...)"
                                              for k, v in sorted(fr.reject_codes.items())))
            for msg in fr.failures[:a.show]:
                print(f"    FAIL {msg}")
            if len(fr.failures) > a.show:
                print(f"    ... and {len(fr.failures) - a.show} more failures")
            for msg in fr.warnings[:a.show if not a.verbose else 50]:
                print(f"    note {msg}")
            total.update(fr.counts)
            total["files"] += 1
            sys.stdout.flush()
    for c in runner.conns:
        c.close()
    acc = total["acceptable_accepted"] + total["acceptable_refused"]
    print(f"total: {total['valid']} valid ok, {total['invalid']} invalid rejected, {acc} acceptable, "
          f"{total['failures']} failures ({total['files']} files run, {len(bad_skips)} could not be run, "
          f"{time.monotonic() - t0:.1f} s)")
    if bad_skips:
        print("files of supported families that were not run: " + ", ".join(bad_skips))
    return 1 if total["failures"] or bad_skips else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--selftest":
        _der_selftest()
        print("wycheproof_excrypt.py: self-test passed")
        sys.exit(0)
    sys.exit(main())
