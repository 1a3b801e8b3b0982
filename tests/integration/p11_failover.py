#!/usr/bin/python3
"""Two HSMs in one slot of libkeyhold-pkcs11.so: load, failover, divergence.

Run with /usr/bin/python3 by tests/integration/test_p11_failover.sh, which
starts the HSMs and sets P11_MODULE, P11_PIN and FXPKCS11_CFG (the slot's
configuration). One mode per run:

  prepare HOST PORT  make the token keys the load uses (through the module:
                     RSA-2048 and EC P-256 key pairs, an AES-256 key, labels
                     fo-rsa, fo-ec, fo-aes) and check the module finds them
  load SECONDS N     N threads, each with its own session, for SECONDS: RSA
                     (CKM_SHA256_RSA_PKCS) and ECDSA (CKM_ECDSA_SHA256)
                     single-part signs, each verified, and AES-GCM
                     encrypt/decrypt round trips, with session keys (made
                     here) and the token keys; touches the file named by
                     FO_READY once warm. Every failed operation is printed;
                     exit 1 if there was any. At the end, still in this
                     process: a new session, logout, login, and operations.
  after              a new process after the first HSM died: sessions, login,
                     the token keys found and used
  diverge HOST PORT  (FO_CA: the CA file for HOST, default $W/ca.pem)
                     the token key fo-ec is replaced behind the module's back
                     on the HSM at HOST:PORT (GPKD, then GECC into the same
                     slot with the same label): the module's handle for the
                     old key must fail, never sign with the new key
  pair N             both HSMs up, diverged: N ECDSA signs with the fo-ec
                     handle (found again after each refusal): every signature
                     must verify under the key the handle was found as

The crypto calls go through ctypes to the module PyKCS11 loaded (the same
instance), so they release the GIL and the threads really run in parallel.
Output: one line per check or phase, "FAIL ..." for each failure.
"""
import ctypes
import os
import sys
import threading
import time
import traceback
from ctypes import POINTER, Structure, byref, c_ubyte, c_ulong, c_void_p

import PyKCS11
from PyKCS11 import *  # noqa: F401,F403

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

CK_ULONG = c_ulong
CKR_NAMES = {v: k for k, v in vars(PyKCS11).items() if k.startswith("CKR_") and isinstance(v, int)}


class MECH(Structure):
    _fields_ = [("mechanism", CK_ULONG), ("pParameter", c_void_p), ("ulParameterLen", CK_ULONG)]


class GCM(Structure):
    _fields_ = [("pIv", c_void_p), ("ulIvLen", CK_ULONG), ("ulIvBits", CK_ULONG),
                ("pAAD", c_void_p), ("ulAADLen", CK_ULONG), ("ulTagBits", CK_ULONG)]


MODULE = os.environ["P11_MODULE"]
PIN = os.environ["P11_PIN"]
pk = PyKCS11Lib()
pk.load(MODULE)
L = ctypes.CDLL(MODULE)  # the same loaded module: one C_Initialize, shared handles
SLOT = pk.getSlotList(tokenPresent=True)[0]

LABELS = {"rsa": "fo-rsa", "ec": "fo-ec", "aes": "fo-aes"}


def fn(name):
    f = getattr(L, name)
    f.restype = CK_ULONG
    return f


def rvname(rv):
    return CKR_NAMES.get(rv, hex(rv))


class Fail(Exception):
    def __init__(self, what, rv=None):
        super().__init__(what + (": " + rvname(rv) if rv is not None else ""))
        self.rv = rv


def ok(rv, what):
    if rv != CKR_OK:
        raise Fail(what, rv)


def hv(h):
    return CK_ULONG(h.value() if hasattr(h, "value") else int(h))


def buf(data):
    return (c_ubyte * max(len(data), 1)).from_buffer_copy(data if data else b"\0")


def mech(mtype, param=None):
    m = MECH(mtype, None, 0)
    if param is not None:
        m.pParameter = ctypes.cast(byref(param), c_void_p)
        m.ulParameterLen = ctypes.sizeof(param)
    m._keep = param
    return m


def gcm(iv, aad=b"", tag_bits=128):
    ivb, ab = buf(iv), buf(aad)
    p = GCM(ctypes.cast(ivb, c_void_p), len(iv), len(iv) * 8, ctypes.cast(ab, c_void_p) if aad else None,
            len(aad), tag_bits)
    p._keep = (ivb, ab)
    return p


def one_shot(h, init_name, call_name, m, key, data, outmax):
    if key is None:
        ok(fn(init_name)(h, byref(m)), init_name)
    else:
        ok(fn(init_name)(h, byref(m), hv(key)), init_name)
    b = buf(data)
    out = (c_ubyte * outmax)()
    n = CK_ULONG(outmax)
    ok(fn(call_name)(h, b, CK_ULONG(len(data)), out, byref(n)), call_name)
    return bytes(out[: n.value])


def sign(h, mtype, key, data):
    return one_shot(h, "C_SignInit", "C_Sign", mech(mtype), key, data, 1024)


def verify_rv(h, mtype, key, data, sig):
    ok(fn("C_VerifyInit")(h, byref(mech(mtype)), hv(key)), "C_VerifyInit")
    return fn("C_Verify")(h, buf(data), CK_ULONG(len(data)), buf(sig), CK_ULONG(len(sig)))


def verify(h, mtype, key, data, sig):
    ok(verify_rv(h, mtype, key, data, sig), "C_Verify")


def gcm_round(h, key, data):
    iv = os.urandom(12)
    aad = b"failover"
    ct = one_shot(h, "C_EncryptInit", "C_Encrypt", mech(CKM_AES_GCM, gcm(iv, aad)), key, data, len(data) + 64)
    if len(ct) != len(data) + 16:
        raise Fail("AES-GCM ciphertext of %d bytes for %d" % (len(ct), len(data)))
    pt = one_shot(h, "C_DecryptInit", "C_Decrypt", mech(CKM_AES_GCM, gcm(iv, aad)), key, ct, len(ct) + 64)
    if pt != data:
        raise Fail("AES-GCM round trip differs")


def open_session(rw=True):
    h = CK_ULONG(0)
    flags = CKF_SERIAL_SESSION | (CKF_RW_SESSION if rw else 0)
    ok(fn("C_OpenSession")(CK_ULONG(SLOT), CK_ULONG(flags), None, None, byref(h)), "C_OpenSession")
    return h


def login(h):
    p = PIN.encode()
    rv = fn("C_Login")(h, CK_ULONG(CKU_USER), buf(p), CK_ULONG(len(p)))
    if rv not in (CKR_OK, CKR_USER_ALREADY_LOGGED_IN):
        raise Fail("C_Login", rv)


def find(sess, cls, label):
    objs = sess.findObjects([(CKA_CLASS, cls), (CKA_TOKEN, True), (CKA_LABEL, label)])
    return objs


def public_der(sess, pub):
    """The public key as cryptography sees it, from CKA_PUBLIC_KEY_INFO (or
    modulus / EC point)."""
    try:
        spki = bytes(sess.getAttributeValue(pub, [CKA_PUBLIC_KEY_INFO])[0])
        if spki:
            return serialization.load_der_public_key(spki)
    except PyKCS11Error:
        pass
    raise Fail("no CKA_PUBLIC_KEY_INFO for a public key")


def token_keys(sess):
    """{'rsa': (priv, pub), 'ec': (priv, pub), 'aes': key} of the token keys, or raise."""
    out = {}
    for kind in ("rsa", "ec"):
        priv = find(sess, CKO_PRIVATE_KEY, LABELS[kind])
        pub = find(sess, CKO_PUBLIC_KEY, LABELS[kind])
        if len(priv) != 1 or len(pub) != 1:
            raise Fail("token key %s: %d private and %d public objects found" % (LABELS[kind], len(priv), len(pub)))
        out[kind] = (priv[0], pub[0])
    sec = find(sess, CKO_SECRET_KEY, LABELS["aes"])
    if len(sec) != 1:
        raise Fail("token key %s: %d objects found" % (LABELS["aes"], len(sec)))
    out["aes"] = sec[0]
    return out


def gen_keys(sess, token):
    """RSA-2048 and EC P-256 key pairs and an AES-256 key, session or token objects."""
    lab = (lambda k: [(CKA_LABEL, LABELS[k]), (CKA_ID, LABELS[k].encode())]) if token else (lambda k: [])
    rsa = sess.generateKeyPair(
        [(CKA_TOKEN, token), (CKA_VERIFY, True), (CKA_MODULUS_BITS, 2048),
         (CKA_PUBLIC_EXPONENT, (1, 0, 1))] + lab("rsa"),
        [(CKA_TOKEN, token), (CKA_SIGN, True), (CKA_PRIVATE, True), (CKA_SENSITIVE, True)] + lab("rsa"),
        mecha=PyKCS11.Mechanism(CKM_RSA_PKCS_KEY_PAIR_GEN))
    p256 = bytes.fromhex("06082a8648ce3d030107")
    eck = sess.generateKeyPair(
        [(CKA_TOKEN, token), (CKA_VERIFY, True), (CKA_EC_PARAMS, p256)] + lab("ec"),
        [(CKA_TOKEN, token), (CKA_SIGN, True), (CKA_PRIVATE, True), (CKA_SENSITIVE, True)] + lab("ec"),
        mecha=PyKCS11.Mechanism(CKM_EC_KEY_PAIR_GEN))
    aes = sess.generateKey(
        [(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES), (CKA_VALUE_LEN, 32), (CKA_TOKEN, token),
         (CKA_ENCRYPT, True), (CKA_DECRYPT, True), (CKA_SENSITIVE, True)] + lab("aes"),
        mecha=PyKCS11.Mechanism(CKM_AES_KEY_GEN))
    return {"rsa": (rsa[1], rsa[0]), "ec": (eck[1], eck[0]), "aes": aes}


def exercise(h, keys, tag):
    """One of each operation with a key set; raises Fail."""
    msg = os.urandom(64)
    sig = sign(h, CKM_SHA256_RSA_PKCS, keys["rsa"][0], msg)
    verify(h, CKM_SHA256_RSA_PKCS, keys["rsa"][1], msg, sig)
    sig = sign(h, CKM_ECDSA_SHA256, keys["ec"][0], msg)
    verify(h, CKM_ECDSA_SHA256, keys["ec"][1], msg, sig)
    gcm_round(h, keys["aes"], msg * 4)
    print("ok: %s: RSA and ECDSA sign + verify, AES-GCM round trip" % tag)


# ---------------------------------------------------------------- modes

def mode_prepare(host, port):
    sess = pk.openSession(SLOT, CKF_SERIAL_SESSION | CKF_RW_SESSION)
    sess.login(PIN)
    rc = 0
    try:
        gen_keys(sess, True)
        print("ok: token keys made through the module (C_GenerateKeyPair / C_GenerateKey, CKA_TOKEN true)")
    except PyKCS11Error as e:
        print("FAIL: token key generation through the module: %s" % e)
        rc = 1
        # so that the failover can still be tested: the same keys made
        # directly on the HSM, at slots of the role's ranges
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from excrypt import Connection  # noqa: E402
        w = os.environ["W"]
        with Connection(host, int(port), ca=w + "/ca.pem", cert=w + "/client.pem", key=w + "/client.key") as c:
            c.login("pkcs11user", PIN)
            lb = {k: v.encode() for k, v in LABELS.items()}
            c.call("GRSA", RB=2048, SL=1500, PS=1501, LB=lb["rsa"], KI=lb["rsa"])
            c.call("GECC", RA=2, SL=1502, PS=1503, LB=lb["ec"], KI=lb["ec"])
            c.call("GPGS", CT=6, SL=1000, LB=lb["aes"], KI=lb["aes"])
        print("note: made them with GRSA / GECC / GPGS at slots 1500-1503 and 1000 instead")
    keys = token_keys(sess)
    exercise(CK_ULONG(sess.session.value()), keys, "token keys on the first HSM")
    sess.logout()
    sess.closeSession()
    return rc


def mode_load(seconds, nthreads):
    main = pk.openSession(SLOT, CKF_SERIAL_SESSION | CKF_RW_SESSION)
    main.login(PIN)
    skeys = gen_keys(main, False)
    pre_rc = 0
    try:
        tkeys = token_keys(main)
    except Fail as e:
        print("FAIL: token keys not found before the load: %s" % e)
        tkeys = None
        pre_rc = 1
    mh = CK_ULONG(main.session.value())
    exercise(mh, skeys, "session keys before the load")
    if tkeys:
        try:
            exercise(mh, tkeys, "token keys before the load")
        except Fail as e:
            print("FAIL: token keys do not work before the load (%s): the load uses session keys only" % e)
            tkeys = None
            pre_rc = 1
    sets = [("session", skeys)] + ([("token", tkeys)] if tkeys else [])

    lock = threading.Lock()
    counts = {}
    failures = []
    stop_at = [None]

    def worker(i):
        try:
            h = open_session(rw=False)
        except Fail as e:
            with lock:
                failures.append("thread %d: %s" % (i, e))
            return
        n = 0
        while time.monotonic() < stop_at[0]:
            name, ks = sets[n % len(sets)]
            op = ("rsa", "ec", "aes")[(n // len(sets)) % 3]
            n += 1
            kind = "%s-%s" % (name, op)
            msg = os.urandom(32 + n % 200)
            try:
                if op == "rsa":
                    sig = sign(h, CKM_SHA256_RSA_PKCS, ks["rsa"][0], msg)
                    verify(h, CKM_SHA256_RSA_PKCS, ks["rsa"][1], msg, sig)
                elif op == "ec":
                    sig = sign(h, CKM_ECDSA_SHA256, ks["ec"][0], msg)
                    verify(h, CKM_ECDSA_SHA256, ks["ec"][1], msg, sig)
                else:
                    gcm_round(h, ks["aes"], msg)
                res = "ok"
            except Fail as e:
                res = "fail"
                with lock:
                    failures.append("%.3f s thread %d %s: %s" % (time.monotonic() - t0, i, kind, e))
            with lock:
                counts.setdefault(kind, [0, 0])[0 if res == "ok" else 1] += 1
        fn("C_CloseSession")(h)

    t0 = time.monotonic()
    stop_at[0] = t0 + seconds
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(nthreads)]
    for t in threads:
        t.start()
    ready = os.environ.get("FO_READY")
    if ready:
        open(ready, "w").close()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    total = sum(c[0] + c[1] for c in counts.values())
    nfail = sum(c[1] for c in counts.values())
    for kind in sorted(counts):
        print("load: %-12s %6d ok %4d failed" % (kind, counts[kind][0], counts[kind][1]))
    print("load: %d operation pairs in %.1f s over %d threads (%.0f/s), %d failed"
          % (total, took, nthreads, total / took if took else 0, nfail))
    for f in failures[:30]:
        print("FAIL: " + f)
    rc = 1 if failures or pre_rc else 0
    if total == 0:
        print("FAIL: the load ran no operation")
        rc = 1

    # after the load, in the same process: new sessions and logins still work
    try:
        h = open_session()
        exercise(h, skeys, "a new session after the failover (session keys)")
        if tkeys:
            exercise(h, tkeys, "a new session after the failover (token keys)")
        main.logout()
        # C_Logout destroys the private session objects (PKCS#11 5.6)
        rv = fn("C_SignInit")(h, byref(mech(CKM_SHA256_RSA_PKCS)), hv(skeys["rsa"][0]))
        if rv not in (CKR_KEY_HANDLE_INVALID, CKR_OBJECT_HANDLE_INVALID, CKR_USER_NOT_LOGGED_IN):
            raise Fail("a private session key after C_Logout", rv)
        login(h)
        exercise(h, gen_keys(main, False), "logged out and in again (new session keys)")
        if tkeys:
            exercise(h, tkeys, "logged out and in again (token keys)")
        fn("C_CloseSession")(h)
    except Exception as e:  # noqa: BLE001
        print("FAIL: after the load: %s" % e)
        rc = 1
    return rc


def mode_after():
    rc = 0
    try:
        s1 = pk.openSession(SLOT, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        s1.login(PIN)
        print("ok: a new process opened a session and logged in")
        h = CK_ULONG(s1.session.value())
        exercise(h, gen_keys(s1, False), "new session keys")
        try:
            exercise(h, token_keys(s1), "token keys found by a new process")
        except Fail as e:
            print("FAIL: token keys in a new process: %s" % e)
            rc = 1
        s1.logout()
        try:
            s1.login("wrong-" + PIN)
            print("FAIL: a wrong PIN was accepted")
            rc = 1
        except PyKCS11Error as e:
            if e.value != CKR_PIN_INCORRECT:
                print("FAIL: wrong PIN: %s (want CKR_PIN_INCORRECT)" % e)
                rc = 1
            else:
                print("ok: a wrong PIN is refused (CKR_PIN_INCORRECT)")
        s1.login(PIN)
        print("ok: logged out and in again")
        s1.closeSession()
    except Exception as e:  # noqa: BLE001
        print("FAIL: %s" % e)
        traceback.print_exc()
        rc = 1
    return rc


def mode_diverge(host, port):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from excrypt import Connection, ExcryptError  # noqa: E402

    w = os.environ["W"]
    sess = pk.openSession(SLOT, CKF_SERIAL_SESSION | CKF_RW_SESSION)
    sess.login(PIN)
    h = CK_ULONG(sess.session.value())
    keys = token_keys(sess)
    priv, pub = keys["ec"]
    try:
        old_pub = public_der(sess, pub)
    except Fail as e:
        print("FAIL: the old public key: %s" % e)
        old_pub = None
    msg = b"before the key was replaced"
    sig = sign(h, CKM_ECDSA_SHA256, priv, msg)
    verify(h, CKM_ECDSA_SHA256, pub, msg, sig)
    print("ok: the module's handle %d for %s signs" % (priv.value(), LABELS["ec"]))

    # behind the module's back: the slot now holds another key, same label
    ca = os.environ.get("FO_CA", w + "/ca.pem")
    with Connection(host, int(port), ca=ca, cert=w + "/client.pem", key=w + "/client.key") as c:
        c.login("pkcs11user", PIN)
        r = c.call("GPKM", LB=LABELS["ec"].encode(), CL="private")
        rows = [x for x in r.get("KL", "").split(",") if x]
        if len(rows) != 1:
            print("FAIL: GPKM for %s: %r" % (LABELS["ec"], r))
            return 1
        slot, _, _, _, kd = rows[0].split(":")
        c.call("GPKD", SL=slot, KD=kd)
        r = c.call("GECC", RA=2, SL=slot, LB=LABELS["ec"].encode(), KI=LABELS["ec"].encode())
        new_kd = r.get("KD")
        print("ok: on the HSM, slot %s: key %s deleted, key %s made in its place (GPKD, GECC)" % (slot, kd, new_kd))
        if new_kd == kd:
            print("FAIL: the new key has the old identifier")
            return 1

    rc = 0
    msg = b"after the key was replaced"
    try:
        s = sign(h, CKM_ECDSA_SHA256, priv, msg)
    except Fail as e:
        if e.rv in (CKR_OBJECT_HANDLE_INVALID, CKR_KEY_HANDLE_INVALID):
            print("ok: the old handle is refused: %s" % e)
            # used again: refused at C_SignInit, or at C_Sign (the module may
            # keep the handle: another address may still hold the key)
            rv = fn("C_SignInit")(h, byref(mech(CKM_ECDSA_SHA256)), hv(priv))
            if rv in (CKR_OBJECT_HANDLE_INVALID, CKR_KEY_HANDLE_INVALID):
                print("ok: and stays refused: C_SignInit: %s" % rvname(rv))
            elif rv != CKR_OK:
                print("FAIL: the old handle, used again: C_SignInit: %s" % rvname(rv))
                rc = 1
            else:
                b = buf(msg)
                out = (c_ubyte * 256)()
                n = CK_ULONG(256)
                rv = fn("C_Sign")(h, b, CK_ULONG(len(msg)), out, byref(n))
                if rv in (CKR_OBJECT_HANDLE_INVALID, CKR_KEY_HANDLE_INVALID):
                    print("ok: and stays refused: C_SignInit CKR_OK (the handle is kept), C_Sign %s" % rvname(rv))
                else:
                    print("FAIL: the old handle, used again: C_SignInit CKR_OK, C_Sign %s" % rvname(rv))
                    rc = 1
                    if rv == CKR_BUFFER_TOO_SMALL:
                        fn("C_SignInit")(h, None, hv(priv))  # cancel (3.0)
        else:
            print("FAIL: the old handle fails, but with %s (want CKR_OBJECT_HANDLE_INVALID"
                  " or CKR_KEY_HANDLE_INVALID)" % e)
            rc = 1
    else:
        r_s = utils.encode_dss_signature(int.from_bytes(s[:32], "big"), int.from_bytes(s[32:], "big"))
        try:
            if old_pub is None:
                raise Fail("no old public key to tell")
            old_pub.verify(r_s, msg, ec.ECDSA(hashes.SHA256()))
            print("FAIL: the old handle still signs with the OLD key after it was deleted")
        except Exception:  # noqa: BLE001
            print("FAIL: the old handle SIGNED, and not with the old key: the NEW key (signature %s)" % s.hex())
        rc = 1
    # the new key, found afresh, is another object that works
    try:
        keys2 = token_keys(sess)
        p2, _ = keys2["ec"]
        if p2.value() == priv.value():
            print("FAIL: the new key got the old key's handle %d" % p2.value())
            rc = 1
        sign(h, CKM_ECDSA_SHA256, p2, msg)
        print("ok: the new key is found under a new handle (%d) and signs" % p2.value())
    except Exception as e:  # noqa: BLE001
        print("FAIL: the new key, found afresh: %s" % e)
        rc = 1
    return rc


def mode_pair(n):
    """Both HSMs up but diverged (the slot of fo-ec holds another key on each):
    every signature a handle makes must be by the key the handle was found
    as; the other HSM refuses the handle. Handles are found again after a
    refusal (GPKM may go to either HSM)."""
    sess = pk.openSession(SLOT, CKF_SERIAL_SESSION | CKF_RW_SESSION)
    sess.login(PIN)
    h = CK_ULONG(sess.session.value())
    signed, refused, wrong = {}, 0, 0

    def current():
        # the find (GPKM) and the attribute read (GPKR) may go to different
        # HSMs: a handle whose key the other HSM does not hold is refused
        nonlocal refused
        for attempt in range(50):
            objs = find(sess, CKO_PRIVATE_KEY, LABELS["ec"])
            if len(objs) != 1:
                raise Fail("%d private %s found" % (len(objs), LABELS["ec"]))
            # every other time one balanced call (a single-part digest runs
            # on the HSM) between the find and the read: with the round
            # robin, a find and the read right after it always go to
            # different HSMs
            for _ in range(attempt % 2):
                one_shot(h, "C_DigestInit", "C_Digest", mech(CKM_SHA256), None, b"shift", 64)
            try:
                spki = bytes(sess.getAttributeValue(objs[0], [CKA_PUBLIC_KEY_INFO])[0])
            except PyKCS11Error as e:
                if e.value not in (CKR_OBJECT_HANDLE_INVALID, CKR_KEY_HANDLE_INVALID):
                    raise
                refused += 1
                continue
            if not spki:
                raise Fail("no CKA_PUBLIC_KEY_INFO on the private key")
            return objs[0], serialization.load_der_public_key(spki), spki
        raise Fail("no handle for %s survived its attribute read 50 times" % LABELS["ec"])

    priv, pub, spki = current()
    for i in range(n):
        msg = b"pair %d" % i
        for _ in range(i % 2):  # as in current(): vary which HSM the sign meets
            one_shot(h, "C_DigestInit", "C_Digest", mech(CKM_SHA256), None, b"shift", 64)
        try:
            sg = sign(h, CKM_ECDSA_SHA256, priv, msg)
        except Fail as e:
            if e.rv not in (CKR_OBJECT_HANDLE_INVALID, CKR_KEY_HANDLE_INVALID):
                print("FAIL: sign %d: %s" % (i, e))
                return 1
            refused += 1
            priv, pub, spki = current()
            continue
        der = utils.encode_dss_signature(int.from_bytes(sg[:32], "big"), int.from_bytes(sg[32:], "big"))
        try:
            pub.verify(der, msg, ec.ECDSA(hashes.SHA256()))
            k = spki[-8:].hex()
            signed[k] = signed.get(k, 0) + 1
        except Exception:  # noqa: BLE001
            wrong += 1
            print("FAIL: sign %d: the handle (%d) signed with a key other than the one it was found as"
                  % (i, priv.value()))
    print("pair: %d signatures by the key each handle was found as (%s), %d refused handles, %d by another key"
          % (sum(signed.values()), ", ".join("key ..%s: %d" % kv for kv in sorted(signed.items())), refused, wrong))
    if not signed:
        print("FAIL: no signature at all: the check saw nothing")
        return 1
    return 1 if wrong else 0


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    m = sys.argv[1]
    try:
        if m == "prepare":
            return mode_prepare(sys.argv[2], sys.argv[3])
        if m == "load":
            return mode_load(float(sys.argv[2]), int(sys.argv[3]))
        if m == "after":
            return mode_after()
        if m == "pair":
            return mode_pair(int(sys.argv[2]))
        if m == "diverge":
            return mode_diverge(sys.argv[2], sys.argv[3])
    except Exception as e:  # noqa: BLE001
        print("FAIL: %s: %s" % (m, e))
        traceback.print_exc()
        return 1
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
