#!/usr/bin/python3
"""libkeyhold-pkcs11.so under load and across fork(), against a real HSM.

usage: p11_stress.py [threads|fork|all] [--threads N] [--sessions N] [--iterations N]

Run with /usr/bin/python3 after tests/integration/p11_lib.sh's p11_setup
(P11_MODULE, P11_PIN, FXPKCS11_CFG); test_p11_stress.sh does that.

threads: N threads (16) with S sessions each (4) run a fixed number of
  iterations of mixed operations on shared session keys: RSA and ECDSA
  sign/verify, AES-GCM encrypt/decrypt, HMAC sign/verify, digests, random,
  C_FindObjects, generation (and use, and destruction) of session keys.
  Every result is checked: signatures verify on the module and here (public
  keys read from the module), ciphertexts and MACs equal Python's under the
  known imported key values, decryptions give the plaintext back, digests
  equal hashlib's, finds give exactly the expected handle. Zero errors
  allowed. The calls go through ctypes, which releases the GIL, so the
  threads really are in the module at the same time (PyKCS11's SWIG layer
  keeps the GIL); PyKCS11 loads the module and sets up the keys.

fork: the parent initialises the module, logs in and signs; then
  - a child that does not call C_Initialize gets CKR_CRYPTOKI_NOT_INITIALIZED
    from every call (its inherited handles included);
  - a child that calls C_Initialize (a new PyKCS11Lib loading the module) logs
    in, signs and verifies, encrypts and decrypts, and finalizes, while the
    parent keeps working in the meantime; a third child runs C_Finalize (not
    initialised: refused) then C_Initialize and works too;
  - the parent's operations after the children exit succeed, and its TLS
    connections are still the ones it had (the socket inodes it held before
    the fork are all still open: nothing forced a reconnect).
"""
import argparse
import ctypes
import hashlib
import hmac
import os
import sys
import threading
import time
import traceback
from ctypes import byref, c_ubyte, c_void_p

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import p11_session_test as P  # noqa: E402
from p11_session_test import (CK_ULONG, EC_PARAMS, MECH, Fail, Module, attr_bytes, c_template,  # noqa: E402
                              check, der_unwrap_octet_string, hv, rvname)
from PyKCS11 import *  # noqa: F401,F403,E402

from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402


class GCM(ctypes.Structure):
    _fields_ = [("pIv", c_void_p), ("ulIvLen", CK_ULONG), ("ulIvBits", CK_ULONG),
                ("pAAD", c_void_p), ("ulAADLen", CK_ULONG), ("ulTagBits", CK_ULONG)]


def cbuf(data):
    return (c_ubyte * max(len(data), 1)).from_buffer_copy(data or b"\0")


class C:
    """ctypes calls on the loaded module; every error raises Fail with the
    function's name and return code."""

    def __init__(self, m):
        self.m = m
        self.slot = m.slot

    def _f(self, name, *args):
        rv = self.m.fn(name)(*args)
        if rv != CKR_OK:
            raise Fail("%s: %s" % (name, rvname(rv)))

    def rv(self, name, *args):
        return self.m.fn(name)(*args)

    def open(self, rw=True):
        h = CK_ULONG(0)
        self._f("C_OpenSession", CK_ULONG(self.slot), CK_ULONG(CKF_SERIAL_SESSION | (CKF_RW_SESSION if rw else 0)),
                None, None, byref(h))
        return h

    def close(self, h):
        self._f("C_CloseSession", h)

    def _out(self, init, call, h, m, key, data, size):
        self._f(init, h, byref(m), CK_ULONG(key))
        out = (c_ubyte * size)()
        n = CK_ULONG(size)
        self._f(call, h, cbuf(data), CK_ULONG(len(data)), out, byref(n))
        return bytes(out[:n.value])

    def sign(self, h, m, key, data, size=512):
        return self._out("C_SignInit", "C_Sign", h, m, key, data, size)

    def verify(self, h, m, key, data, sig):
        self._f("C_VerifyInit", h, byref(m), CK_ULONG(key))
        return self.rv("C_Verify", h, cbuf(data), CK_ULONG(len(data)), cbuf(sig), CK_ULONG(len(sig)))

    def encrypt(self, h, m, key, data):
        return self._out("C_EncryptInit", "C_Encrypt", h, m, key, data, len(data) + 64)

    def decrypt(self, h, m, key, data):
        return self._out("C_DecryptInit", "C_Decrypt", h, m, key, data, len(data) + 64)

    def digest(self, h, mech_type, data):
        m = MECH(mech_type, None, 0)
        self._f("C_DigestInit", h, byref(m))
        out = (c_ubyte * 64)()
        n = CK_ULONG(64)
        self._f("C_Digest", h, cbuf(data), CK_ULONG(len(data)), out, byref(n))
        return bytes(out[:n.value])

    def random(self, h, n):
        out = (c_ubyte * n)()
        self._f("C_GenerateRandom", h, out, CK_ULONG(n))
        return bytes(out)

    def find(self, h, tmpl):
        arr, keep = c_template(tmpl)
        self._f("C_FindObjectsInit", h, arr, CK_ULONG(len(tmpl)))
        found = []
        objs = (CK_ULONG * 16)()
        n = CK_ULONG(0)
        try:
            while True:
                self._f("C_FindObjects", h, objs, CK_ULONG(16), byref(n))
                if not n.value:
                    break
                found += list(objs[:n.value])
        finally:
            self._f("C_FindObjectsFinal", h)
        return found

    def genkey(self, h, tmpl, mech_type=CKM_AES_KEY_GEN):
        arr, keep = c_template(tmpl)
        m = MECH(mech_type, None, 0)
        out = CK_ULONG(0)
        self._f("C_GenerateKey", h, byref(m), arr, CK_ULONG(len(tmpl)), byref(out))
        return out.value

    def genpair(self, h, pub, priv, mech_type):
        a1, k1 = c_template(pub)
        a2, k2 = c_template(priv)
        m = MECH(mech_type, None, 0)
        hp, hq = CK_ULONG(0), CK_ULONG(0)
        self._f("C_GenerateKeyPair", h, byref(m), a1, CK_ULONG(len(pub)), a2, CK_ULONG(len(priv)), byref(hp),
                byref(hq))
        return hp.value, hq.value

    def destroy(self, h, obj):
        self._f("C_DestroyObject", h, CK_ULONG(obj))


def gcm_mech(iv, aad=b""):
    ivb, aadb = cbuf(iv), cbuf(aad)
    p = GCM(ctypes.cast(ivb, c_void_p), len(iv), 8 * len(iv), ctypes.cast(aadb, c_void_p), len(aad), 128)
    m = MECH(CKM_AES_GCM, ctypes.cast(byref(p), c_void_p), ctypes.sizeof(p))
    m._keep = (p, ivb, aadb)
    return m


def mech(t):
    return MECH(t, None, 0)


# ---------------------------------------------------------------- threads

class Keys:
    """Shared session keys, made once; values known where the module allows."""

    def __init__(self, m, s):
        tag = os.urandom(4).hex()
        self.tag = tag
        self.aes_value = os.urandom(32)
        self.hmac_value = os.urandom(48)
        self.aes = hv(s.createObject([(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES),
                                      (CKA_VALUE, self.aes_value), (CKA_LABEL, "stress-aes-" + tag)]))
        self.hmac = hv(s.createObject([(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_GENERIC_SECRET),
                                       (CKA_VALUE, self.hmac_value), (CKA_SIGN, True), (CKA_VERIFY, True),
                                       (CKA_LABEL, "stress-hmac-" + tag)]))
        pub, priv = P.gen_rsa(s, 2048, False, [(CKA_LABEL, "stress-rsa-" + tag)],
                              [(CKA_LABEL, "stress-rsa-" + tag)])
        self.rsa_pub, self.rsa_priv = hv(pub), hv(priv)
        n = int.from_bytes(attr_bytes(s, pub, CKA_MODULUS), "big")
        e = int.from_bytes(attr_bytes(s, pub, CKA_PUBLIC_EXPONENT), "big")
        self.rsa_local = rsa.RSAPublicNumbers(e, n).public_key()
        pub, priv = P.gen_ec(s, "P-256", False, [(CKA_LABEL, "stress-ec-" + tag)], [(CKA_LABEL, "stress-ec-" + tag)])
        self.ec_pub, self.ec_priv = hv(pub), hv(priv)
        point = der_unwrap_octet_string(attr_bytes(s, pub, CKA_EC_POINT))
        self.ec_local = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)


def op_rsa(c, h, k, rnd):
    msg = os.urandom(rnd % 2000 + 1)
    sig = c.sign(h, mech(CKM_SHA256_RSA_PKCS), k.rsa_priv, msg)
    check(len(sig) == 256, "RSA signature length %d" % len(sig))
    k.rsa_local.verify(sig, msg, padding.PKCS1v15(), hashes.SHA256())
    check(c.verify(h, mech(CKM_SHA256_RSA_PKCS), k.rsa_pub, msg, sig) == CKR_OK, "RSA verify on the module")
    bad = bytearray(sig)
    bad[rnd % 256] ^= 0x10
    rv = c.verify(h, mech(CKM_SHA256_RSA_PKCS), k.rsa_pub, msg, bytes(bad))
    check(rv == CKR_SIGNATURE_INVALID, "RSA tampered signature: %s" % rvname(rv))


def op_ecdsa(c, h, k, rnd):
    msg = os.urandom(rnd % 500 + 1)
    sig = c.sign(h, mech(CKM_ECDSA_SHA256), k.ec_priv, msg)
    check(len(sig) == 64, "ECDSA signature length %d" % len(sig))
    k.ec_local.verify(utils.encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")),
                      msg, ec.ECDSA(hashes.SHA256()))
    check(c.verify(h, mech(CKM_ECDSA_SHA256), k.ec_pub, msg, sig) == CKR_OK, "ECDSA verify on the module")
    rv = c.verify(h, mech(CKM_ECDSA_SHA256), k.ec_pub, msg + b"x", sig)
    check(rv == CKR_SIGNATURE_INVALID, "ECDSA wrong message: %s" % rvname(rv))


def op_gcm(c, h, k, rnd):
    msg = os.urandom(rnd % 3000)
    iv = os.urandom(12)
    aad = os.urandom(rnd % 40)
    ct = c.encrypt(h, gcm_mech(iv, aad), k.aes, msg)
    check(ct == AESGCM(k.aes_value).encrypt(iv, msg, aad), "GCM ciphertext differs from Python's")
    check(c.decrypt(h, gcm_mech(iv, aad), k.aes, ct) == msg, "GCM round trip")


def op_hmac(c, h, k, rnd):
    msg = os.urandom(rnd % 1000)
    mac = c.sign(h, mech(CKM_SHA384_HMAC), k.hmac, msg, 64)
    check(mac == hmac.new(k.hmac_value, msg, hashlib.sha384).digest(), "HMAC differs from Python's")
    check(c.verify(h, mech(CKM_SHA384_HMAC), k.hmac, msg, mac) == CKR_OK, "HMAC verify")


def op_digest(c, h, k, rnd):
    msg = os.urandom(rnd % 1500)
    check(c.digest(h, CKM_SHA256, msg) == hashlib.sha256(msg).digest(), "SHA-256 digest")
    check(c.digest(h, CKM_SHA512, msg) == hashlib.sha512(msg).digest(), "SHA-512 digest")


def op_random(c, h, k, rnd):
    a = c.random(h, 64)
    b = c.random(h, 64)
    check(a != b and len(set(a)) > 16, "random output repeats or is constant")


def op_find(c, h, k, rnd):
    got = c.find(h, [(CKA_LABEL, "stress-aes-" + k.tag)])
    check(got == [k.aes], "find AES by label: %s, want %s" % (got, [k.aes]))
    got = c.find(h, [(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_LABEL, "stress-ec-" + k.tag)])
    check(got == [k.ec_priv], "find EC private key: %s" % got)
    got = sorted(c.find(h, [(CKA_LABEL, "stress-rsa-" + k.tag)]))
    check(got == sorted([k.rsa_pub, k.rsa_priv]), "find RSA pair: %s" % got)


def op_keygen(c, h, k, rnd):
    key = c.genkey(h, [(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES), (CKA_VALUE_LEN, 16),
                       (CKA_TOKEN, False)])
    iv = os.urandom(12)
    ct = c.encrypt(h, gcm_mech(iv), key, b"fresh key")
    check(c.decrypt(h, gcm_mech(iv), key, ct) == b"fresh key", "fresh key round trip")
    c.destroy(h, key)
    if rnd % 4 == 0:
        pub, priv = c.genpair(h, [(CKA_EC_PARAMS, EC_PARAMS["P-256"]), (CKA_TOKEN, False)], [(CKA_TOKEN, False)],
                              CKM_EC_KEY_PAIR_GEN)
        sig = c.sign(h, mech(CKM_ECDSA_SHA256), priv, b"fresh pair")
        check(c.verify(h, mech(CKM_ECDSA_SHA256), pub, b"fresh pair", sig) == CKR_OK, "fresh pair")
        c.destroy(h, priv)
        c.destroy(h, pub)


OPS = [op_rsa, op_ecdsa, op_gcm, op_hmac, op_digest, op_random, op_find, op_keygen]


def stress_threads(m, nthreads, nsessions, iterations):
    c = C(m)
    main = m.open(login=True)
    keys = Keys(m, main)
    errors = []
    counts = [0] * nthreads
    lock = threading.Lock()
    start = threading.Barrier(nthreads)

    def worker(i):
        sessions = []
        try:
            sessions = [c.open(rw=(j % 2 == 0)) for j in range(nsessions)]
            start.wait(timeout=60)
            for it in range(iterations):
                h = sessions[it % nsessions]
                op = OPS[(i + it) % len(OPS)]
                try:
                    op(c, h, keys, (i * 7919 + it * 104729) & 0xFFFF)
                    counts[i] += 1
                except Exception as e:  # noqa: BLE001 - every error is counted
                    with lock:
                        errors.append("thread %d iteration %d %s: %s" % (i, it, op.__name__, e))
                        if len(errors) <= 3:
                            traceback.print_exc()
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append("thread %d: %s" % (i, e))
        finally:
            for h in sessions:
                try:
                    c.close(h)
                except Fail as e:
                    with lock:
                        errors.append("thread %d close: %s" % (i, e))

    t0 = time.monotonic()
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(nthreads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    dt = time.monotonic() - t0
    # the main session is still logged in; the shared keys still work
    check(main.getSessionInfo().state == CKS_RW_USER_FUNCTIONS, "still logged in after the threads")
    op_gcm(c, CK_ULONG(hv(main.session)), keys, 5)
    main.logout()
    main.closeSession()
    total = sum(counts)
    print("threads: %d threads x %d sessions, %d operations groups in %.1f s (%.0f/s), %d errors"
          % (nthreads, nsessions, total, dt, total / dt if dt else 0, len(errors)))
    for e in errors[:20]:
        print("  ERROR " + e)
    return not errors and total == nthreads * iterations


# ---------------------------------------------------------------- fork

def socket_inodes():
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            t = os.readlink("/proc/self/fd/" + fd)
        except OSError:
            continue
        if t.startswith("socket:"):
            out.add(t)
    return out


def sign_verify_round(m, s, label):
    """A few operations on the session s (PyKCS11), each checked."""
    pub, priv = P.gen_ec(s, "P-256")
    msg = os.urandom(100)
    sig = bytes(s.sign(priv, msg, Mechanism(CKM_ECDSA_SHA256)))
    check(s.verify(pub, msg, sig, Mechanism(CKM_ECDSA_SHA256)), "%s: verify" % label)
    k = P.gen_aes(s, 32)
    iv = os.urandom(12)
    ct = bytes(s.encrypt(k, msg, AES_GCM_Mechanism(iv, b"", 128)))
    check(bytes(s.decrypt(k, ct, AES_GCM_Mechanism(iv, b"", 128))) == msg, "%s: GCM" % label)
    s.destroyObject(k)
    s.destroyObject(priv)
    s.destroyObject(pub)


def child_exit(code):
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def child_without_init(m, s, fr):
    """The inherited module, not initialised in this process."""
    c = C(m)
    h = CK_ULONG(hv(s.session))
    problems = []
    info = (ctypes.c_ubyte * 256)()
    n = CK_ULONG(0)
    calls = [
        ("C_GetInfo", lambda: c.rv("C_GetInfo", info)),
        ("C_GetSlotList", lambda: c.rv("C_GetSlotList", ctypes.c_ubyte(1), None, byref(n))),
        ("C_OpenSession", lambda: c.rv("C_OpenSession", CK_ULONG(m.slot), CK_ULONG(CKF_SERIAL_SESSION), None, None,
                                       byref(n))),
        ("C_GetSessionInfo (inherited session)", lambda: c.rv("C_GetSessionInfo", h, info)),
        ("C_SignInit (inherited session and key)",
         lambda: c.rv("C_SignInit", h, byref(mech(CKM_ECDSA_SHA256)), CK_ULONG(fr))),
        ("C_GenerateRandom (inherited session)", lambda: c.rv("C_GenerateRandom", h, info, CK_ULONG(16))),
        ("C_Logout (inherited session)", lambda: c.rv("C_Logout", h)),
        ("C_CloseAllSessions", lambda: c.rv("C_CloseAllSessions", CK_ULONG(m.slot))),
        ("C_Finalize", lambda: c.rv("C_Finalize", None)),
    ]
    for name, f in calls:
        rv = f()
        if rv != CKR_CRYPTOKI_NOT_INITIALIZED:
            problems.append("%s: %s, want CKR_CRYPTOKI_NOT_INITIALIZED" % (name, rvname(rv)))
    for p in problems:
        print("  child (no C_Initialize): " + p)
    return 1 if problems else 0


def child_with_init(finalize_first, seconds):
    """A new PyKCS11Lib: C_Initialize in the child, then real work."""
    try:
        if finalize_first:
            lib = ctypes.CDLL(os.environ["P11_MODULE"])
            lib.C_Finalize.restype = CK_ULONG
            rv = lib.C_Finalize(None)
            if rv != CKR_CRYPTOKI_NOT_INITIALIZED:
                print("  child: C_Finalize before C_Initialize: %s" % rvname(rv))
                return 1
        m2 = Module()
        s = m2.open(login=True)
        end = time.monotonic() + seconds
        rounds = 0
        while rounds < 2 or time.monotonic() < end:
            sign_verify_round(m2, s, "child")
            rounds += 1
        s.logout()
        s.closeSession()
        rv = m2.fn("C_Finalize")(None)
        if rv != CKR_OK:
            print("  child: C_Finalize: %s" % rvname(rv))
            return 1
        print("  child %d: %d rounds after C_Initialize%s" % (os.getpid(), rounds,
                                                             " (after a refused C_Finalize)" if finalize_first
                                                             else ""))
        return 0
    except Exception as e:  # noqa: BLE001
        print("  child: %s" % e)
        traceback.print_exc()
        return 1


def stress_fork(m):
    ok = True
    s = m.open(login=True)
    extra = [m.open(rw=False) for _ in range(3)]
    sign_verify_round(m, s, "parent before fork")
    # use several connections at once so the pool holds more than one
    c = C(m)
    keys = Keys(m, s)

    def burst():
        hs = [CK_ULONG(hv(x.session)) for x in extra] + [CK_ULONG(hv(s.session))]
        errs = []

        def one(h):
            try:
                for i in range(3):
                    op_gcm(c, h, keys, i)
                    op_ecdsa(c, h, keys, i)
            except Exception as e:  # noqa: BLE001
                errs.append(str(e))
        ts = [threading.Thread(target=one, args=(h,)) for h in hs]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return errs

    errs = burst()
    check(not errs, "parent burst before fork: %s" % errs)
    before = socket_inodes()
    check(before, "the parent holds no sockets")

    # 1. a child that does not re-initialise
    pid = os.fork()
    if pid == 0:
        child_exit(child_without_init(m, s, keys.ec_priv))
    _, st = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(st) != 0:
        print("FAIL fork: a child without C_Initialize (exit %d)" % os.waitstatus_to_exitcode(st))
        ok = False
    else:
        print("ok   fork: a child without C_Initialize gets CKR_CRYPTOKI_NOT_INITIALIZED everywhere")

    # 2. children that re-initialise, while the parent keeps working
    for finalize_first in (False, True):
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            child_exit(child_with_init(finalize_first, 3.0))
        rounds = 0
        errors = []
        while True:
            done, st = os.waitpid(pid, os.WNOHANG)
            try:
                sign_verify_round(m, s, "parent during the child")
                errors += burst()
            except Exception as e:  # noqa: BLE001
                errors.append(str(e))
            rounds += 1
            if done:
                break
        code = os.waitstatus_to_exitcode(st)
        if code != 0 or errors:
            print("FAIL fork: child with C_Initialize%s exit %d; parent errors during it: %s"
                  % (" (C_Finalize first)" if finalize_first else "", code, errors[:5]))
            ok = False
        else:
            print("ok   fork: a child with C_Initialize%s worked; the parent did %d rounds meanwhile"
                  % (" (C_Finalize first)" if finalize_first else "", rounds))

    # 3. the parent afterwards: its sessions, login and keys, its connections
    try:
        check(s.getSessionInfo().state == CKS_RW_USER_FUNCTIONS, "parent still logged in")
        for _ in range(3):
            sign_verify_round(m, s, "parent after the children")
            errs = burst()
            check(not errs, "parent burst after the children: %s" % errs)
        after = socket_inodes()
        lost = before - after
        check(not lost, "the parent lost %d of its %d connections (a reconnect: something disturbed them)"
              % (len(lost), len(before)))
        print("ok   fork: the parent works after the children, on the same %d connections" % len(before))
    except Exception as e:  # noqa: BLE001
        print("FAIL fork: the parent after the children: %s" % e)
        ok = False
    for x in extra:
        x.closeSession()
    s.logout()
    s.closeSession()
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", nargs="?", default="all", choices=("threads", "fork", "all"))
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=1200,
                    help="operation groups per thread (default 1200: about 30 s with 16 threads)")
    a = ap.parse_args()
    m = Module()
    ok = True
    if a.what in ("threads", "all"):
        try:
            r = stress_threads(m, a.threads, a.sessions, a.iterations)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            print("FAIL threads: %s" % e)
            r = False
        print(("ok  " if r else "FAIL") + " threads")
        ok &= r
    if a.what in ("fork", "all"):
        try:
            r = stress_fork(m)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            print("FAIL fork: %s" % e)
            r = False
        ok &= r
    print("p11_stress: " + ("all passed" if ok else "FAILED"))
    sys.stdout.flush()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
