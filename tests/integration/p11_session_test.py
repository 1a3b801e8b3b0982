#!/usr/bin/python3
"""Sessions, login, objects and a few round trips of libkeyhold-pkcs11.so,
through PyKCS11, against a real HSM.

Run with /usr/bin/python3 (Debian's python3-pykcs11) after
tests/integration/p11_lib.sh's p11_setup; it needs P11_MODULE, P11_PIN and
FXPKCS11_CFG in the environment (tests/integration/test_p11_python.sh does
all of this):

    p11_run /usr/bin/python3 tests/integration/p11_session_test.py [TEST...]

What is covered (one test group per function below, run in order, each
reported ok / FAIL; a failing group does not stop the others):

  sessions   open/close, RO vs RW, C_GetSessionInfo states, login/logout,
             wrong PIN, CKR_USER_ALREADY_LOGGED_IN, CKU_SO, operations after
             logout, closing the last session logs out, C_CloseAllSessions
  objects    key generation of every type (session and token) with labels
             and IDs; C_FindObjects by class/label/ID/key type;
             C_GetAttributeValue (public parts, CKA_VALUE_LEN, and the
             specification's CKR_ATTRIBUTE_SENSITIVE / _TYPE_INVALID /
             CKR_BUFFER_TOO_SMALL rules, through ctypes so that buffers and
             lengths are exactly what a C caller passes);
             C_SetAttributeValue, C_CopyObject, C_DestroyObject,
             C_CreateObject of keys from components, certificates and data
             objects; session objects die with their session; token objects
             are found again by another process
  crypto     a few sign/verify, encrypt/decrypt, wrap/unwrap and derive
             round trips, digest and random (every mechanism is
             tests/integration/p11_crypto_test.py's job)

The module is driven through PyKCS11 where its high-level API shows the
return code (PyKCS11Error.value), and through ctypes on the same loaded
module (one C_Initialize, shared handles) where it does not: attribute
buffers, C_CopyObject, C_OpenSession flags.

The helpers at the top are imported by p11_wycheproof.py and p11_stress.py.
"""
import ctypes
import hashlib
import hmac
import os
import subprocess
import sys
import traceback
from ctypes import Structure, byref, c_ubyte, c_ulong, c_void_p

sys.dont_write_bytecode = True  # no __pycache__ in the source tree

import PyKCS11  # noqa: E402
from PyKCS11 import *  # noqa: F401,F403,E402  (CKM_*, CKR_*, CKA_* ...)

CK_ULONG = c_ulong
CK_UNAVAILABLE_INFORMATION = (1 << (8 * ctypes.sizeof(CK_ULONG))) - 1
CKR_NAMES = {v: k for k, v in vars(PyKCS11).items() if k.startswith("CKR_") and isinstance(v, int)}
CKR_ACTION_PROHIBITED = getattr(PyKCS11, "CKR_ACTION_PROHIBITED", 0x1B)
CKK_EC_EDWARDS = getattr(PyKCS11, "CKK_EC_EDWARDS", 0x40)
CKK_EC_MONTGOMERY = getattr(PyKCS11, "CKK_EC_MONTGOMERY", 0x41)
CKM_EC_EDWARDS_KEY_PAIR_GEN = getattr(PyKCS11, "CKM_EC_EDWARDS_KEY_PAIR_GEN", 0x1055)
CKM_EC_MONTGOMERY_KEY_PAIR_GEN = getattr(PyKCS11, "CKM_EC_MONTGOMERY_KEY_PAIR_GEN", 0x1056)
CKM_EDDSA = getattr(PyKCS11, "CKM_EDDSA", 0x1057)
CKM_AES_CMAC = getattr(PyKCS11, "CKM_AES_CMAC", 0x108A)
CKM_AES_KEY_WRAP = getattr(PyKCS11, "CKM_AES_KEY_WRAP", 0x2109)
CKM_AES_KEY_WRAP_PAD = getattr(PyKCS11, "CKM_AES_KEY_WRAP_PAD", 0x210A)

# DER OIDs of the curves, as CKA_EC_PARAMS
EC_PARAMS = {
    "P-256": bytes.fromhex("06082a8648ce3d030107"),
    "P-384": bytes.fromhex("06052b81040022"),
    "P-521": bytes.fromhex("06052b81040023"),
    "Ed25519": bytes.fromhex("06032b6570"),
    "X25519": bytes.fromhex("06032b656e"),
}
EC_COORD = {"P-256": 32, "P-384": 48, "P-521": 66}


class Fail(Exception):
    pass


def rvname(rv):
    return CKR_NAMES.get(rv, hex(rv))


def check(cond, what):
    if not cond:
        raise Fail(what)


SOFT = []


def soft(cond, what):
    """A check that does not stop its test group: the group fails at its end
    with every soft failure listed (so that one finding does not hide the
    checks after it)."""
    if not cond:
        SOFT.append(what)


def soft_call(what, f, *args, **kw):
    """f(...) under soft(): an exception is recorded, None returned."""
    try:
        return f(*args, **kw)
    except (Fail, PyKCS11Error) as e:
        SOFT.append("%s: %s" % (what, e))
        return None


def expect_rv(want, what, f, *args, **kw):
    """f(*args) must raise PyKCS11Error with one of the codes in want (an int
    or a tuple), or, for a ctypes call returning a CK_RV, return it."""
    wants = want if isinstance(want, (tuple, list, set, frozenset)) else (want,)
    try:
        r = f(*args, **kw)
    except PyKCS11Error as e:
        rv = e.value
    else:
        rv = r if isinstance(r, int) and not isinstance(r, bool) and r != CKR_OK else CKR_OK
    if rv not in wants:
        raise Fail("%s: got %s, want %s" % (what, rvname(rv), "/".join(rvname(w) for w in wants)))
    return rv


def ok(rv, what):
    if rv != CKR_OK:
        raise Fail("%s: %s" % (what, rvname(rv)))


def hv(h):
    """A handle (PyKCS11 object or int) as an int."""
    return h.value() if hasattr(h, "value") else int(h)


def oh(sess, n):
    """An int object handle (from ctypes) as PyKCS11 wants it."""
    h = PyKCS11.CK_OBJECT_HANDLE(sess)
    h.assign(n)
    return h


# ------------------------------------------------------------ ctypes side

class ATTR(Structure):
    _fields_ = [("type", CK_ULONG), ("pValue", c_void_p), ("ulValueLen", CK_ULONG)]


class MECH(Structure):
    _fields_ = [("mechanism", CK_ULONG), ("pParameter", c_void_p), ("ulParameterLen", CK_ULONG)]


class Module:
    """The module as PyKCS11 loaded it, plus a ctypes view of the same
    library (dlopen of the same path gives the same copy)."""

    def __init__(self, path=None, pin=None):
        self.path = path or os.environ["P11_MODULE"]
        self.pin = pin if pin is not None else os.environ["P11_PIN"]
        self.pk = PyKCS11Lib()
        self.pk.load(self.path)
        self.L = ctypes.CDLL(self.path)
        self.slot = self.pk.getSlotList(tokenPresent=True)[0]

    def fn(self, name):
        f = getattr(self.L, name)
        f.restype = CK_ULONG
        return f

    def open(self, rw=True, login=False):
        s = self.pk.openSession(self.slot, CKF_SERIAL_SESSION | (CKF_RW_SESSION if rw else 0))
        if login:
            s.login(self.pin)
        return s


def _attr_value(v):
    """A Python template value -> (ctypes buffer or None, length)."""
    if v is None:
        return None, 0
    if isinstance(v, bool):
        b = (c_ubyte * 1)(1 if v else 0)
        return b, 1
    if isinstance(v, int):
        n = ctypes.sizeof(CK_ULONG)
        return (c_ubyte * n).from_buffer_copy(v.to_bytes(n, sys.byteorder)), n
    if isinstance(v, str):
        v = v.encode()
    v = bytes(v)
    b = (c_ubyte * max(len(v), 1)).from_buffer_copy(v or b"\0")
    return b, len(v)


def c_template(tmpl):
    """[(type, value)] -> (ATTR array, keepalive)."""
    arr = (ATTR * max(len(tmpl), 1))()
    keep = []
    for i, (t, v) in enumerate(tmpl):
        b, n = _attr_value(v)
        keep.append(b)
        arr[i].type = t
        arr[i].pValue = ctypes.cast(b, c_void_p) if b is not None else None
        arr[i].ulValueLen = n
    return arr, keep


def copy_object(m, sess, obj, tmpl):
    """C_CopyObject through ctypes -> (rv, new handle)."""
    arr, keep = c_template(tmpl)
    out = CK_ULONG(0)
    rv = m.fn("C_CopyObject")(CK_ULONG(hv(sess.session)), CK_ULONG(hv(obj)), arr, CK_ULONG(len(tmpl)), byref(out))
    del keep
    return rv, oh(sess, out.value)


def get_raw(m, sess, obj, entries):
    """C_GetAttributeValue through ctypes. entries: [(type, buflen or None)]
    (None = a NULL pValue). -> (rv, [(ulValueLen, bytes or None)])."""
    arr = (ATTR * len(entries))()
    bufs = []
    for i, (t, n) in enumerate(entries):
        arr[i].type = t
        if n is None:
            arr[i].pValue = None
            arr[i].ulValueLen = 0
            bufs.append(None)
        else:
            b = (c_ubyte * max(n, 1))(*([0xA5] * max(n, 1)))
            bufs.append(b)
            arr[i].pValue = ctypes.cast(b, c_void_p)
            arr[i].ulValueLen = n
    rv = m.fn("C_GetAttributeValue")(CK_ULONG(hv(sess.session)), CK_ULONG(hv(obj)), arr, CK_ULONG(len(entries)))
    out = []
    for i in range(len(entries)):
        n = arr[i].ulValueLen
        if bufs[i] is not None and n != CK_UNAVAILABLE_INFORMATION and n <= len(bufs[i]):
            out.append((n, bytes(bufs[i][:n])))
        else:
            out.append((n, None))
    return rv, out


def attr1(sess, obj, t):
    """One attribute as PyKCS11 converts it (bytes for binary ones)."""
    v = sess.getAttributeValue(obj, [t], allAsBinary=False)[0]
    if isinstance(v, (list, tuple, PyKCS11.ckbytelist)) and t not in (CKA_LABEL,):
        return bytes(v)
    return v


def attr_bytes(sess, obj, t):
    return bytes(sess.getAttributeValue(obj, [t], allAsBinary=True)[0])


def ulong_le(b):
    return int.from_bytes(b, sys.byteorder)


# ------------------------------------------------------------ key helpers

def gen_aes(s, size=32, token=False, **extra):
    t = [(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES), (CKA_VALUE_LEN, size), (CKA_TOKEN, token)]
    t += list(extra.items()) if isinstance(extra, dict) else []
    return s.generateKey(_fix(t), Mechanism(CKM_AES_KEY_GEN))


def _fix(t):
    """Template entries given as (name, value) with CKA_ names -> numbers."""
    out = []
    for k, v in t:
        out.append((getattr(PyKCS11, k) if isinstance(k, str) else k, v))
    return out


def gen_secret(s, tmpl, mech=CKM_AES_KEY_GEN):
    return s.generateKey(tmpl, Mechanism(mech))


def gen_ec(s, curve="P-256", token=False, pub_extra=(), priv_extra=()):
    mech = {"Ed25519": CKM_EC_EDWARDS_KEY_PAIR_GEN, "X25519": CKM_EC_MONTGOMERY_KEY_PAIR_GEN}.get(
        curve, CKM_EC_KEY_PAIR_GEN)
    pub = [(CKA_TOKEN, token), (CKA_EC_PARAMS, EC_PARAMS[curve])] + list(pub_extra)
    priv = [(CKA_TOKEN, token)] + list(priv_extra)
    return s.generateKeyPair(pub, priv, Mechanism(mech))


def gen_rsa(s, bits=2048, token=False, pub_extra=(), priv_extra=()):
    pub = [(CKA_TOKEN, token), (CKA_MODULUS_BITS, bits), (CKA_PUBLIC_EXPONENT, b"\x01\x00\x01")] + list(pub_extra)
    priv = [(CKA_TOKEN, token)] + list(priv_extra)
    return s.generateKeyPair(pub, priv, Mechanism(CKM_RSA_PKCS_KEY_PAIR_GEN))


def gcm(iv, aad=b"", tag_bits=128):
    return AES_GCM_Mechanism(iv, aad, tag_bits)


def der_octet_string(b):
    n = len(b)
    if n < 0x80:
        return bytes([4, n]) + b
    nb = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([4, 0x80 | len(nb)]) + nb + b


def der_unwrap_octet_string(b):
    check(len(b) >= 2 and b[0] == 4, "not a DER OCTET STRING: %s" % b.hex())
    n = b[1]
    off = 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(b[2:2 + k], "big")
        off = 2 + k
    check(len(b) == off + n, "DER OCTET STRING length")
    return b[off:]


# =========================================================== the tests

TESTS = []


def test(f):
    TESTS.append(f)
    return f


M = None      # Module, set by main()
RUN = ""      # a per-run tag for labels, so that token objects of other runs never match


# ---------------------------------------------------------------- sessions

@test
def session_open_close_states():
    """RO and RW sessions, their flags and states before and after login;
    parallel sessions refused; an invalid handle."""
    ro = M.open(rw=False)
    rw = M.open(rw=True)
    try:
        i = ro.getSessionInfo()
        check(i.state == CKS_RO_PUBLIC_SESSION, "RO session state %s" % i.state2text())
        check(i.flags & CKF_SERIAL_SESSION and not i.flags & CKF_RW_SESSION, "RO session flags %#x" % i.flags)
        check(i.slotID == M.slot, "slot id")
        i = rw.getSessionInfo()
        check(i.state == CKS_RW_PUBLIC_SESSION, "RW session state %s" % i.state2text())
        check(i.flags & CKF_RW_SESSION and i.flags & CKF_SERIAL_SESSION, "RW session flags %#x" % i.flags)
        ti = M.pk.getTokenInfo(M.slot)
        check(CKF_LOGIN_REQUIRED & ti.flags and CKF_TOKEN_INITIALIZED & ti.flags, "token flags")
        # session counts: the number this application has open, or "unavailable"
        for name, want in (("ulSessionCount", 2), ("ulRwSessionCount", 1)):
            got = getattr(ti, name)
            check(got in (want, CK_UNAVAILABLE_INFORMATION, -1),
                  "%s is %s with 2 sessions (1 RW) open" % (name, got))
        # login through the RO session: every session of the slot is logged in
        ro.login(M.pin)
        check(ro.getSessionInfo().state == CKS_RO_USER_FUNCTIONS, "RO after login")
        check(rw.getSessionInfo().state == CKS_RW_USER_FUNCTIONS, "RW after login")
        # a session opened while logged in is logged in
        third = M.open(rw=False)
        check(third.getSessionInfo().state == CKS_RO_USER_FUNCTIONS, "new session while logged in")
        third.closeSession()
        expect_rv(CKR_SESSION_HANDLE_INVALID, "C_GetSessionInfo on a closed session", third.getSessionInfo)
        expect_rv(CKR_SESSION_HANDLE_INVALID, "C_CloseSession twice", third.closeSession)
        rw.logout()
        check(ro.getSessionInfo().state == CKS_RO_PUBLIC_SESSION, "RO after logout")
        check(rw.getSessionInfo().state == CKS_RW_PUBLIC_SESSION, "RW after logout")
    finally:
        ro.closeSession()
        rw.closeSession()
    # without CKF_SERIAL_SESSION
    h = CK_ULONG(0)
    r = M.fn("C_OpenSession")(CK_ULONG(M.slot), CK_ULONG(CKF_RW_SESSION), None, None, byref(h))
    check(r == CKR_SESSION_PARALLEL_NOT_SUPPORTED, "C_OpenSession without CKF_SERIAL_SESSION: %s" % rvname(r))
    r = M.fn("C_OpenSession")(CK_ULONG(M.slot + 1000), CK_ULONG(CKF_SERIAL_SESSION), None, None, byref(h))
    check(r == CKR_SLOT_ID_INVALID, "C_OpenSession on an unknown slot: %s" % rvname(r))
    r = M.fn("C_GetSessionInfo")(CK_ULONG(0x7FFFFF01), None)
    check(r in (CKR_SESSION_HANDLE_INVALID, CKR_ARGUMENTS_BAD), "C_GetSessionInfo(bad handle): %s" % rvname(r))


@test
def login_rules():
    """Wrong PIN, twice logged in, SO, unknown user type, logout twice."""
    s = M.open()
    try:
        expect_rv(CKR_PIN_INCORRECT, "C_Login with a wrong PIN", s.login, "not-the-pin")
        check(s.getSessionInfo().state == CKS_RW_PUBLIC_SESSION, "still public after a wrong PIN")
        # a wrong PIN that is a prefix of the right one
        expect_rv(CKR_PIN_INCORRECT, "C_Login with a truncated PIN", s.login, M.pin[:-1])
        # no <SO-OPR> in the configuration
        expect_rv(CKR_USER_TYPE_INVALID, "C_Login(CKU_SO) without <SO-OPR>", s.login, M.pin, CKU_SO)
        expect_rv(CKR_USER_TYPE_INVALID, "C_Login(user type 7)", s.login, M.pin, 7)
        expect_rv(CKR_USER_NOT_LOGGED_IN, "C_Logout while logged out", s.logout)
        s.login(M.pin)
        expect_rv(CKR_USER_ALREADY_LOGGED_IN, "C_Login twice", s.login, M.pin)
        expect_rv(CKR_USER_ALREADY_LOGGED_IN, "C_Login twice with a wrong PIN", s.login, "wrong")
        expect_rv((CKR_USER_ANOTHER_ALREADY_LOGGED_IN, CKR_USER_TYPE_INVALID),
                  "C_Login(CKU_SO) while the user is logged in", s.login, M.pin, CKU_SO)
        # CKU_CONTEXT_SPECIFIC with no operation active
        expect_rv((CKR_OPERATION_NOT_INITIALIZED, CKR_USER_ALREADY_LOGGED_IN),
                  "C_Login(CKU_CONTEXT_SPECIFIC) with no operation", s.login, M.pin, CKU_CONTEXT_SPECIFIC)
        check(s.getSessionInfo().state == CKS_RW_USER_FUNCTIONS, "still logged in")
        s.logout()
        expect_rv(CKR_USER_NOT_LOGGED_IN, "C_Logout twice", s.logout)
        # the module keeps working after failures: log in again
        s.login(M.pin)
        s.logout()
    finally:
        s.closeSession()


@test
def operations_after_logout():
    """Private objects go with the login; what needs a login is refused after it."""
    s = M.open()
    s2 = M.open(rw=False)
    try:
        s.login(M.pin)
        k = gen_aes(s, 16)
        pub, priv = gen_ec(s)
        sig = bytes(s.sign(priv, b"before logout", Mechanism(CKM_ECDSA_SHA256)))
        s.logout()
        expect_rv((CKR_KEY_HANDLE_INVALID, CKR_OBJECT_HANDLE_INVALID, CKR_USER_NOT_LOGGED_IN),
                  "C_EncryptInit with a private session key after logout",
                  s.encrypt, k, b"x" * 16, Mechanism(CKM_AES_CBC, bytes(16)))
        expect_rv((CKR_KEY_HANDLE_INVALID, CKR_OBJECT_HANDLE_INVALID, CKR_USER_NOT_LOGGED_IN),
                  "C_SignInit with a private key after logout", s.sign, priv, b"x", Mechanism(CKM_ECDSA_SHA256))
        expect_rv((CKR_OBJECT_HANDLE_INVALID,), "C_GetAttributeValue of a private session object after logout",
                  s.getAttributeValue, k, [CKA_LABEL])
        # the public half is a public object: it stays. (Verifying with it
        # needs ASYV, which the HSM's pre-login role of the reference set-up
        # does not have: CKR_FUNCTION_REJECTED, a set-up matter.)
        check(attr1(s, pub, CKA_CLASS) == CKO_PUBLIC_KEY, "the public key is still there after logout")
        del sig
        # no private objects are found
        found = s2.findObjects([(CKA_CLASS, CKO_PRIVATE_KEY)]) + s2.findObjects([(CKA_CLASS, CKO_SECRET_KEY)])
        check(not found, "private objects found after logout: %d" % len(found))
        soft_call("after logout", expect_rv, CKR_USER_NOT_LOGGED_IN, "C_CreateObject of a private key after logout",
                  s.createObject, [(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES), (CKA_VALUE, bytes(16))])
        # random and digests need no login
        check(len(s.generateRandom(32)) == 32, "random after logout")
        check(bytes(s.digest(b"abc", Mechanism(CKM_SHA256))) == hashlib.sha256(b"abc").digest(),
              "digest after logout")
        # PKCS#11 3.0 5.1: only public objects can be created unless the user is logged in
        soft_call("after logout", expect_rv, CKR_USER_NOT_LOGGED_IN, "C_GenerateKey (a private key) after logout",
                  gen_aes, s, 16)
        soft_call("after logout", expect_rv, CKR_USER_NOT_LOGGED_IN, "C_GenerateKeyPair after logout", gen_ec, s)
    finally:
        s.closeSession()
        s2.closeSession()


@test
def last_session_close_logs_out():
    """Closing the slot's last session logs the application out
    (C_CloseSession and C_CloseAllSessions)."""
    a = M.open()
    b = M.open(rw=False)
    a.login(M.pin)
    k = gen_aes(a, 16, **{"CKA_LABEL": "closes-" + RUN})
    a.closeSession()
    check(b.getSessionInfo().state == CKS_RO_USER_FUNCTIONS, "another session still open: still logged in")
    check(len(b.findObjects([(CKA_LABEL, "closes-" + RUN)])) == 0, "a's session object gone with a")
    b.closeSession()
    c = M.open()
    check(c.getSessionInfo().state == CKS_RW_PUBLIC_SESSION, "logged out after the last session closed: %s"
          % c.getSessionInfo().state2text())
    check(not c.findObjects([(CKA_CLASS, CKO_SECRET_KEY)]), "no secret key visible before login")
    c.login(M.pin)
    expect_rv((CKR_KEY_HANDLE_INVALID, CKR_OBJECT_HANDLE_INVALID), "the old session key's handle",
              c.encrypt, k, bytes(16), Mechanism(CKM_AES_CBC, bytes(16)))
    d = M.open()
    check(d.getSessionInfo().state == CKS_RW_USER_FUNCTIONS, "d logged in")
    M.pk.closeAllSessions(M.slot)
    for s in (c, d):
        expect_rv(CKR_SESSION_HANDLE_INVALID, "session after C_CloseAllSessions", s.getSessionInfo)
    e = M.open()
    try:
        check(e.getSessionInfo().state == CKS_RW_PUBLIC_SESSION, "logged out after C_CloseAllSessions")
    finally:
        e.closeSession()


@test
def read_only_session_rules():
    """A RO session may make session objects but not token objects."""
    s = M.open(rw=False)
    try:
        s.login(M.pin)
        k = gen_aes(s, 16)
        check(attr1(s, k, CKA_TOKEN) is False, "session key in a RO session")
        expect_rv(CKR_SESSION_READ_ONLY, "a token key in a RO session", gen_aes, s, 16, True)
        expect_rv(CKR_SESSION_READ_ONLY, "a token data object in a RO session", s.createObject,
                  [(CKA_CLASS, CKO_DATA), (CKA_TOKEN, True), (CKA_VALUE, b"x")])
        expect_rv(CKR_SESSION_READ_ONLY, "a token key pair in a RO session", gen_ec, s, "P-256", True)
        s.setAttributeValue(k, [(CKA_LABEL, "ro-ok")])
        check(attr1(s, k, CKA_LABEL) == "ro-ok", "label of a session object set in a RO session")
        s.destroyObject(k)
    finally:
        s.logout()
        s.closeSession()


# ---------------------------------------------------------------- objects

KEYGEN = [
    # (name, kind, spec)
    ("aes128", "aes", 16), ("aes192", "aes", 24), ("aes256", "aes", 32),
    ("generic", "generic", 32),
    ("rsa2048", "rsa", 2048),
    ("p256", "ec", "P-256"), ("p384", "ec", "P-384"), ("p521", "ec", "P-521"),
    ("ed25519", "ec", "Ed25519"), ("x25519", "ec", "X25519"),
]


def make_keys(s, token):
    """Every key type, each with a label and an ID; -> {name: (handles...)}."""
    out = {}
    tag = ("tok-" if token else "ses-") + RUN
    for name, kind, spec in KEYGEN:
        label = "%s-%s" % (tag, name)
        kid = ("%s/%s" % (tag, name)).encode()
        common = [(CKA_TOKEN, token), (CKA_LABEL, label), (CKA_ID, kid)]
        if kind == "aes":
            out[name] = (s.generateKey([(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES),
                                        (CKA_VALUE_LEN, spec)] + common, Mechanism(CKM_AES_KEY_GEN)),)
        elif kind == "generic":
            out[name] = (s.generateKey([(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_GENERIC_SECRET),
                                        (CKA_VALUE_LEN, spec), (CKA_SIGN, True), (CKA_VERIFY, True)] + common,
                                       Mechanism(CKM_GENERIC_SECRET_KEY_GEN)),)
        elif kind == "rsa":
            out[name] = gen_rsa(s, spec, token, common[1:], common[1:])
        else:
            out[name] = gen_ec(s, spec, token, common[1:], common[1:])
    return out, tag


def check_generated(s, keys, tag, token):
    for name, kind, spec in KEYGEN:
        label = "%s-%s" % (tag, name)
        kid = ("%s/%s" % (tag, name)).encode()
        hs = keys[name]
        found = s.findObjects([(CKA_LABEL, label)])
        check(sorted(hv(h) for h in found) == sorted(hv(h) for h in hs),
              "%s: find by label gives %s, generated %s" % (name, [hv(h) for h in found], [hv(h) for h in hs]))
        found = s.findObjects([(CKA_ID, kid)])
        check(len(found) == len(hs), "%s: find by ID gives %d" % (name, len(found)))
        for h in hs:
            check(attr1(s, h, CKA_TOKEN) is token, "%s: CKA_TOKEN" % name)
            check(attr1(s, h, CKA_LABEL) == label, "%s: CKA_LABEL" % name)
            check(attr_bytes(s, h, CKA_ID) == kid, "%s: CKA_ID" % name)
            check(attr1(s, h, CKA_LOCAL) is True, "%s: CKA_LOCAL of a generated key" % name)
        if kind in ("aes", "generic"):
            k = hs[0]
            check(attr1(s, k, CKA_CLASS) == CKO_SECRET_KEY, "%s class" % name)
            want_kt = CKK_AES if kind == "aes" else CKK_GENERIC_SECRET
            check(attr1(s, k, CKA_KEY_TYPE) == want_kt, "%s key type %s" % (name, attr1(s, k, CKA_KEY_TYPE)))
            check(attr1(s, k, CKA_VALUE_LEN) == spec, "%s CKA_VALUE_LEN %s" % (name, attr1(s, k, CKA_VALUE_LEN)))
            check(attr1(s, k, CKA_SENSITIVE) is True and attr1(s, k, CKA_EXTRACTABLE) is False,
                  "%s: sensitive and not extractable by default" % name)
            check(attr1(s, k, CKA_PRIVATE) is True, "%s: private by default" % name)
            check(attr1(s, k, CKA_ALWAYS_SENSITIVE) is True and attr1(s, k, CKA_NEVER_EXTRACTABLE) is True,
                  "%s: always sensitive, never extractable" % name)
        elif kind == "rsa":
            pub, priv = hs
            check(attr1(s, pub, CKA_CLASS) == CKO_PUBLIC_KEY and attr1(s, priv, CKA_CLASS) == CKO_PRIVATE_KEY,
                  "rsa classes")
            for h in hs:
                check(attr1(s, h, CKA_KEY_TYPE) == CKK_RSA, "rsa key type")
                n = attr_bytes(s, h, CKA_MODULUS)
                check(len(n) == spec // 8 and n[0] & 0x80, "CKA_MODULUS is %d bytes" % len(n))
                check(attr_bytes(s, h, CKA_PUBLIC_EXPONENT).lstrip(b"\0") == b"\x01\x00\x01", "exponent")
            check(attr1(s, pub, CKA_MODULUS_BITS) == spec, "CKA_MODULUS_BITS")
            check(attr_bytes(s, pub, CKA_MODULUS) == attr_bytes(s, priv, CKA_MODULUS), "same modulus in both")
            check(attr1(s, pub, CKA_PRIVATE) is False and attr1(s, priv, CKA_PRIVATE) is True, "CKA_PRIVATE")
        else:
            pub, priv = hs
            want_kt = {"Ed25519": CKK_EC_EDWARDS, "X25519": CKK_EC_MONTGOMERY}.get(spec, CKK_EC)
            for h in hs:
                check(attr1(s, h, CKA_KEY_TYPE) == want_kt, "%s key type %s" % (name, attr1(s, h, CKA_KEY_TYPE)))
                check(attr_bytes(s, h, CKA_EC_PARAMS) == EC_PARAMS[spec],
                      "%s CKA_EC_PARAMS %s" % (name, attr_bytes(s, h, CKA_EC_PARAMS).hex()))
            point = der_unwrap_octet_string(attr_bytes(s, pub, CKA_EC_POINT))
            if spec in EC_COORD:
                check(len(point) == 1 + 2 * EC_COORD[spec] and point[0] == 4,
                      "%s CKA_EC_POINT: %d bytes, first %02x" % (name, len(point), point[0]))
            else:
                check(len(point) == 32, "%s CKA_EC_POINT: %d bytes" % (name, len(point)))
            if spec == "X25519":
                check(attr1(s, priv, CKA_DERIVE) is True and attr1(s, priv, CKA_SIGN) is False,
                      "X25519: derive only")
            else:
                check(attr1(s, priv, CKA_SIGN) is True and attr1(s, pub, CKA_VERIFY) is True,
                      "%s: sign / verify usage" % name)
                check(attr1(s, priv, CKA_DECRYPT) is False, "%s: no decrypt on an EC key" % name)
    # by class and key type, intersected with this run's objects
    mine = {hv(h) for hs in keys.values() for h in hs}
    for cls, want in ((CKO_SECRET_KEY, 4), (CKO_PUBLIC_KEY, 6), (CKO_PRIVATE_KEY, 6)):
        got = {hv(h) for h in s.findObjects([(CKA_CLASS, cls), (CKA_TOKEN, token)])} & mine
        check(len(got) == want, "find class %d: %d of this run's objects, want %d" % (cls, len(got), want))
    for kt, want in ((CKK_AES, 3), (CKK_RSA, 2), (CKK_EC, 6), (CKK_GENERIC_SECRET, 1), (CKK_EC_EDWARDS, 2),
                     (CKK_EC_MONTGOMERY, 2)):
        got = {hv(h) for h in s.findObjects([(CKA_KEY_TYPE, kt), (CKA_TOKEN, token)])} & mine
        soft(len(got) == want, "find key type %#x (token %s): %d of this run's objects, want %d"
             % (kt, token, len(got), want))
    got = s.findObjects([(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_KEY_TYPE, CKK_EC), (CKA_LABEL, tag + "-p384")])
    check([hv(h) for h in got] == [hv(keys["p384"][1])], "class + key type + label")
    got = s.findObjects([(CKA_CLASS, CKO_PUBLIC_KEY), (CKA_ID, ("%s/%s" % (tag, "rsa2048")).encode())])
    check([hv(h) for h in got] == [hv(keys["rsa2048"][0])], "class + ID")
    check(not s.findObjects([(CKA_LABEL, tag + "-none")]), "no object with an unknown label")
    check(not s.findObjects([(CKA_LABEL, tag + "-aes128"), (CKA_KEY_TYPE, CKK_RSA)]), "label + wrong key type")
    # a template with another attribute (the module reads the candidates)
    got = {hv(h) for h in s.findObjects([(CKA_SIGN, True), (CKA_TOKEN, token)])} & mine
    want = {hv(keys[n][1]) for n in ("rsa2048", "p256", "p384", "p521", "ed25519")} | \
        {hv(keys[n][0]) for n in ("aes128", "aes192", "aes256", "generic")}
    check(got == want, "find CKA_SIGN true: %s, want %s" % (sorted(got), sorted(want)))


@test
def keygen_session_objects():
    s = M.open(login=True)
    try:
        keys, tag = make_keys(s, token=False)
        check_generated(s, keys, tag, token=False)
        # find, in parts: C_FindObjects with a small count
        F = M.fn("C_FindObjectsInit")
        arr, keep = c_template([(CKA_TOKEN, False)])
        h = CK_ULONG(hv(s.session))
        ok(F(h, arr, CK_ULONG(1)), "C_FindObjectsInit")
        expect_rv(CKR_OPERATION_ACTIVE, "C_FindObjectsInit twice", M.fn("C_FindObjectsInit"), h, arr, CK_ULONG(1))
        seen = []
        objs = (CK_ULONG * 3)()
        n = CK_ULONG(0)
        while True:
            ok(M.fn("C_FindObjects")(h, objs, CK_ULONG(3), byref(n)), "C_FindObjects")
            check(n.value <= 3, "C_FindObjects returned more than asked")
            if not n.value:
                break
            seen += list(objs[:n.value])
        ok(M.fn("C_FindObjectsFinal")(h), "C_FindObjectsFinal")
        expect_rv(CKR_OPERATION_NOT_INITIALIZED, "C_FindObjects after Final", M.fn("C_FindObjects"),
                  h, objs, CK_ULONG(3), byref(n))
        check(len(seen) == len(set(seen)), "an object returned twice")
        mine = {hv(x) for hs in keys.values() for x in hs}
        check(mine <= set(seen), "all session keys found in parts")
    finally:
        s.logout()
        s.closeSession()


@test
def keygen_token_objects():
    """Token keys of every type, found again, then by another process."""
    s = M.open(login=True)
    keys = {}
    try:
        keys, tag = make_keys(s, token=True)
        check_generated(s, keys, tag, token=True)
        # another process (a new C_Initialize, new connections) finds them
        # by label and uses the AES one: its GCM output decrypts here
        iv = bytes(range(12))
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "--child-find", tag + "-aes256"],
                           capture_output=True, text=True, timeout=120)
        check(r.returncode == 0, "the other process: rc %d, %s %s" % (r.returncode, r.stdout, r.stderr))
        ct = bytes.fromhex(r.stdout.strip().splitlines()[-1])
        pt = bytes(s.decrypt(keys["aes256"][0], ct, gcm(iv)))
        check(pt == b"from another process", "the other process's ciphertext decrypts to %r" % pt)
        # session objects are not seen by the other process, token ones are
        ses = s.generateKey([(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES), (CKA_VALUE_LEN, 16),
                             (CKA_LABEL, tag + "-session-only")], Mechanism(CKM_AES_KEY_GEN))
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "--child-find", tag + "-session-only"],
                           capture_output=True, text=True, timeout=120)
        check(r.returncode == 3, "another process found a session object: rc %d %s %s"
              % (r.returncode, r.stdout, r.stderr))
        s.destroyObject(ses)
    finally:
        for hs in keys.values():
            for h in hs:
                try:
                    s.destroyObject(h)
                except PyKCS11Error:
                    pass
        if keys:
            check(not s.findObjects([(CKA_LABEL, tag + "-aes256")]), "token key destroyed")
        s.logout()
        s.closeSession()


def child_find(label):
    """--child-find LABEL: a new process finds the key and encrypts with it."""
    m = Module()
    s = m.open(login=True)
    found = s.findObjects([(CKA_LABEL, label)])
    if not found:
        print("not found")
        return 3
    ct = bytes(s.encrypt(found[0], b"from another process", gcm(bytes(range(12)))))
    print(ct.hex())
    s.logout()
    s.closeSession()
    return 0


@test
def get_attribute_rules():
    """C_GetAttributeValue's return codes and length rules (PKCS#11 3.0
    section 5.7): NULL pValue gets the length, a small buffer gets
    CKR_BUFFER_TOO_SMALL and CK_UNAVAILABLE_INFORMATION, a sensitive or
    unknown attribute gets its own code and CK_UNAVAILABLE_INFORMATION,
    and every other entry is still processed."""
    s = M.open(login=True)
    try:
        label = "attrs-" + RUN + "-long-enough-label"
        k = s.generateKey([(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES), (CKA_VALUE_LEN, 32),
                           (CKA_LABEL, label), (CKA_ID, b"\x01\x02\x03")], Mechanism(CKM_AES_KEY_GEN))
        pub, priv = gen_rsa(s, 2048)
        U = CK_UNAVAILABLE_INFORMATION
        # NULL pValue: the exact length of each
        rv, r = get_raw(M, s, k, [(CKA_LABEL, None), (CKA_ID, None), (CKA_VALUE_LEN, None), (CKA_CLASS, None)])
        ok(rv, "lengths")
        check([n for n, _ in r] == [len(label), 3, ctypes.sizeof(CK_ULONG), ctypes.sizeof(CK_ULONG)],
              "lengths: %s" % [n for n, _ in r])
        # exact buffers
        rv, r = get_raw(M, s, k, [(CKA_LABEL, len(label)), (CKA_VALUE_LEN, ctypes.sizeof(CK_ULONG))])
        ok(rv, "exact buffers")
        check(r[0] == (len(label), label.encode()) and ulong_le(r[1][1]) == 32, "exact buffer values %s" % r)
        # a bigger buffer: the length is the value's
        rv, r = get_raw(M, s, k, [(CKA_LABEL, 200)])
        ok(rv, "big buffer")
        check(r[0] == (len(label), label.encode()), "big buffer: length %d" % r[0][0])
        # too small: CKR_BUFFER_TOO_SMALL, that entry unavailable, the others filled
        rv, r = get_raw(M, s, k, [(CKA_ID, 3), (CKA_LABEL, 4), (CKA_VALUE_LEN, ctypes.sizeof(CK_ULONG))])
        check(rv == CKR_BUFFER_TOO_SMALL, "small label buffer: %s" % rvname(rv))
        check(r[1][0] == U, "small label buffer: ulValueLen %#x, want CK_UNAVAILABLE_INFORMATION" % r[1][0])
        check(r[0] == (3, b"\x01\x02\x03"), "the entry before is filled: %s" % (r[0],))
        check(r[2][0] == ctypes.sizeof(CK_ULONG) and ulong_le(r[2][1]) == 32, "the entry after is filled")
        # sensitive: CKA_VALUE of a secret key (whatever CKA_SENSITIVE says)
        rv, r = get_raw(M, s, k, [(CKA_VALUE, None), (CKA_LABEL, None)])
        check(rv == CKR_ATTRIBUTE_SENSITIVE, "CKA_VALUE of a secret key: %s" % rvname(rv))
        check(r[0][0] == U and r[1][0] == len(label), "sensitive entry %#x, next %d" % (r[0][0], r[1][0]))
        rv, r = get_raw(M, s, k, [(CKA_VALUE, 64)])
        check(rv == CKR_ATTRIBUTE_SENSITIVE and r[0][0] == U, "CKA_VALUE with a buffer: %s" % rvname(rv))
        for a in (CKA_PRIVATE_EXPONENT, CKA_PRIME_1, CKA_PRIME_2, CKA_EXPONENT_1, CKA_EXPONENT_2, CKA_COEFFICIENT):
            rv, r = get_raw(M, s, priv, [(a, None)])
            check(rv == CKR_ATTRIBUTE_SENSITIVE and r[0][0] == U, "RSA private attr %#x: %s" % (a, rvname(rv)))
        # public parts of a private key are readable
        rv, r = get_raw(M, s, priv, [(CKA_MODULUS, 256), (CKA_PUBLIC_EXPONENT, None)])
        ok(rv, "modulus of the private key")
        check(r[0][0] == 256 and r[1][0] in (3, 4), "public parts: %s" % [n for n, _ in r])
        # type invalid: an attribute the object does not have, and a vendor one
        for a in (CKA_MODULUS, CKA_EC_POINT, 0x8ABCDEF1):
            rv, r = get_raw(M, s, k, [(CKA_LABEL, None), (a, 16), (CKA_VALUE_LEN, None)])
            check(rv == CKR_ATTRIBUTE_TYPE_INVALID, "attr %#x of an AES key: %s" % (a, rvname(rv)))
            check(r[1][0] == U and r[0][0] == len(label) and r[2][0] == ctypes.sizeof(CK_ULONG),
                  "attr %#x of an AES key: lengths %s" % (a, [n for n, _ in r]))
        rv, r = get_raw(M, s, pub, [(CKA_VALUE_LEN, None)])
        check(rv == CKR_ATTRIBUTE_TYPE_INVALID and r[0][0] == U, "CKA_VALUE_LEN of an RSA key: %s" % rvname(rv))
        # all three at once: one of the three codes, every entry processed
        rv, r = get_raw(M, s, k, [(CKA_VALUE, None), (0x8ABCDEF1, None), (CKA_LABEL, 2), (CKA_ID, None)])
        check(rv in (CKR_ATTRIBUTE_SENSITIVE, CKR_ATTRIBUTE_TYPE_INVALID, CKR_BUFFER_TOO_SMALL),
              "mixed: %s" % rvname(rv))
        check([n for n, _ in r] == [U, U, U, 3], "mixed lengths %s" % [n for n, _ in r])
        # EC: CKA_EC_POINT's length query and value agree
        epub, epriv = gen_ec(s, "P-384")
        rv, r = get_raw(M, s, epub, [(CKA_EC_POINT, None)])
        ok(rv, "EC point length")
        n = r[0][0]
        rv, r = get_raw(M, s, epub, [(CKA_EC_POINT, n - 1)])
        check(rv == CKR_BUFFER_TOO_SMALL and r[0][0] == U, "EC point one byte short: %s" % rvname(rv))
        rv, r = get_raw(M, s, epub, [(CKA_EC_POINT, n)])
        ok(rv, "EC point")
        check(len(der_unwrap_octet_string(r[0][1])) == 97, "P-384 point")
        rv, r = get_raw(M, s, epriv, [(CKA_VALUE, None)])
        check(rv == CKR_ATTRIBUTE_SENSITIVE, "CKA_VALUE of an EC private key: %s" % rvname(rv))
        # a bad object handle
        rv, r = get_raw(M, s, 0x7FFF0001, [(CKA_LABEL, None)])
        check(rv == CKR_OBJECT_HANDLE_INVALID, "bad handle: %s" % rvname(rv))
        # C_GetObjectSize
        sz = CK_ULONG(0)
        ok(M.fn("C_GetObjectSize")(CK_ULONG(hv(s.session)), CK_ULONG(hv(k)), byref(sz)), "C_GetObjectSize")
        check(sz.value == U, "C_GetObjectSize answers CK_UNAVAILABLE_INFORMATION (%#x)" % sz.value)
    finally:
        s.logout()
        s.closeSession()


@test
def set_attribute_rules():
    s = M.open(login=True)
    try:
        k = s.generateKey([(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES), (CKA_VALUE_LEN, 16),
                           (CKA_LABEL, "set-" + RUN), (CKA_SENSITIVE, False), (CKA_EXTRACTABLE, True)],
                          Mechanism(CKM_AES_KEY_GEN))
        check(attr1(s, k, CKA_SENSITIVE) is False and attr1(s, k, CKA_ALWAYS_SENSITIVE) is False,
              "generated not sensitive")
        check(attr1(s, k, CKA_EXTRACTABLE) is True and attr1(s, k, CKA_NEVER_EXTRACTABLE) is False,
              "generated extractable")
        # label and ID
        s.setAttributeValue(k, [(CKA_LABEL, "set2-" + RUN), (CKA_ID, b"new-id")])
        check(attr1(s, k, CKA_LABEL) == "set2-" + RUN and attr_bytes(s, k, CKA_ID) == b"new-id", "label + ID")
        check([hv(h) for h in s.findObjects([(CKA_LABEL, "set2-" + RUN)])] == [hv(k)], "found by the new label")
        check(not s.findObjects([(CKA_LABEL, "set-" + RUN)]), "not found by the old label")
        check([hv(h) for h in s.findObjects([(CKA_ID, b"new-id"), (CKA_TOKEN, False)])] == [hv(k)], "new ID")
        # CKA_VALUE is still sensitive (never leaves the HSM), even though CKA_SENSITIVE is false
        rv, r = get_raw(M, s, k, [(CKA_VALUE, None)])
        check(rv == CKR_ATTRIBUTE_SENSITIVE, "CKA_VALUE of a non-sensitive key: %s" % rvname(rv))
        # sensitive: false -> true allowed, true -> false refused
        s.setAttributeValue(k, [(CKA_SENSITIVE, True)])
        check(attr1(s, k, CKA_SENSITIVE) is True, "now sensitive")
        check(attr1(s, k, CKA_ALWAYS_SENSITIVE) is False, "CKA_ALWAYS_SENSITIVE stays false")
        expect_rv(CKR_ATTRIBUTE_READ_ONLY, "CKA_SENSITIVE true -> false", s.setAttributeValue, k,
                  [(CKA_SENSITIVE, False)])
        check(attr1(s, k, CKA_SENSITIVE) is True, "still sensitive after the refusal")
        # extractable: wrap it out while extractable, then true -> false, false -> true refused
        kek = gen_aes(s, 32)
        w = bytes(s.wrapKey(kek, k, Mechanism(CKM_AES_KEY_WRAP)))
        check(len(w) == 24, "wrapped AES-128 key length %d" % len(w))
        s.setAttributeValue(k, [(CKA_EXTRACTABLE, False)])
        check(attr1(s, k, CKA_EXTRACTABLE) is False, "now unextractable")
        expect_rv(CKR_ATTRIBUTE_READ_ONLY, "CKA_EXTRACTABLE false -> true", s.setAttributeValue, k,
                  [(CKA_EXTRACTABLE, True)])
        expect_rv(CKR_KEY_UNEXTRACTABLE, "wrap an unextractable key", s.wrapKey, kek, k,
                  Mechanism(CKM_AES_KEY_WRAP))
        check(attr1(s, k, CKA_NEVER_EXTRACTABLE) is False, "CKA_NEVER_EXTRACTABLE stays false")
        # the key is the same key after its attributes changed
        iv = os.urandom(16)
        ct = bytes(s.encrypt(k, b"0123456789abcdef", Mechanism(CKM_AES_CBC, iv)))
        u = s.unwrapKey(kek, w, [(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES)], Mechanism(CKM_AES_KEY_WRAP))
        check(bytes(s.decrypt(u, ct, Mechanism(CKM_AES_CBC, iv))) == b"0123456789abcdef",
              "the unwrapped copy decrypts what the re-wrapped key encrypted")
        # read-only attributes
        for a, v in ((CKA_CLASS, CKO_DATA), (CKA_KEY_TYPE, CKK_GENERIC_SECRET), (CKA_VALUE_LEN, 32),
                     (CKA_LOCAL, False), (CKA_ALWAYS_SENSITIVE, True), (CKA_NEVER_EXTRACTABLE, True),
                     (CKA_TOKEN, True)):
            expect_rv((CKR_ATTRIBUTE_READ_ONLY,), "C_SetAttributeValue(%#x)" % a, s.setAttributeValue, k, [(a, v)])
        expect_rv((CKR_ATTRIBUTE_TYPE_INVALID,), "C_SetAttributeValue(CKA_MODULUS) of an AES key",
                  s.setAttributeValue, k, [(CKA_MODULUS, b"\x01")])
        # usage on a modifiable key
        s.setAttributeValue(k, [(CKA_ENCRYPT, False)])
        check(attr1(s, k, CKA_ENCRYPT) is False, "CKA_ENCRYPT now false")
        expect_rv(CKR_KEY_FUNCTION_NOT_PERMITTED, "encrypt with CKA_ENCRYPT false", s.encrypt, k, bytes(16),
                  Mechanism(CKM_AES_CBC, iv))
        check(bytes(s.decrypt(k, ct, Mechanism(CKM_AES_CBC, iv))) == b"0123456789abcdef", "decrypt still")
        # CKA_MODIFIABLE false: nothing changes any more
        nm = s.generateKey([(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES), (CKA_VALUE_LEN, 16),
                            (CKA_MODIFIABLE, False), (CKA_LABEL, "fixed")], Mechanism(CKM_AES_KEY_GEN))
        check(attr1(s, nm, CKA_MODIFIABLE) is False, "not modifiable")
        expect_rv((CKR_ACTION_PROHIBITED, CKR_ATTRIBUTE_READ_ONLY), "set usage of an unmodifiable key",
                  s.setAttributeValue, nm, [(CKA_ENCRYPT, False)])
        expect_rv((CKR_ACTION_PROHIBITED, CKR_ATTRIBUTE_READ_ONLY), "set CKA_MODIFIABLE back",
                  s.setAttributeValue, nm, [(CKA_MODIFIABLE, True)])
        check(attr1(s, nm, CKA_ENCRYPT) is True, "usage unchanged")
        # a template that fails changes nothing
        expect_rv(CKR_ATTRIBUTE_READ_ONLY, "label + a read-only attribute", s.setAttributeValue, k,
                  [(CKA_LABEL, "should-not-stick"), (CKA_CLASS, CKO_DATA)])
        check(attr1(s, k, CKA_LABEL) == "set2-" + RUN, "label unchanged after a failed C_SetAttributeValue")
    finally:
        s.logout()
        s.closeSession()


@test
def copy_objects():
    """C_CopyObject: session -> session, session -> token, token -> session;
    a copy is the same key."""
    s = M.open(login=True)
    made = []
    try:
        k = s.generateKey([(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES), (CKA_VALUE_LEN, 32),
                           (CKA_LABEL, "copy-src-" + RUN)], Mechanism(CKM_AES_KEY_GEN))
        iv = os.urandom(12)
        ct = bytes(s.encrypt(k, b"copy me", gcm(iv)))

        def same_key(h, what):
            check(bytes(s.decrypt(h, ct, gcm(iv))) == b"copy me", "%s decrypts the original's output" % what)

        rv, c1 = copy_object(M, s, k, [(CKA_LABEL, "copy-ses-" + RUN)])
        ok(rv, "C_CopyObject session -> session")
        made.append(c1)
        check(hv(c1) != hv(k), "a new handle")
        check(attr1(s, c1, CKA_LABEL) == "copy-ses-" + RUN and attr1(s, k, CKA_LABEL) == "copy-src-" + RUN,
              "labels after the copy")
        check(attr1(s, c1, CKA_TOKEN) is False, "copy is a session object")
        same_key(c1, "session copy")
        # copy with changes the spec forbids
        rv, _ = copy_object(M, s, k, [(CKA_SENSITIVE, False)])
        check(rv == CKR_ATTRIBUTE_READ_ONLY, "copy with CKA_SENSITIVE false: %s" % rvname(rv))
        rv, _ = copy_object(M, s, k, [(CKA_CLASS, CKO_DATA)])
        check(rv in (CKR_ATTRIBUTE_READ_ONLY, CKR_TEMPLATE_INCONSISTENT), "copy with another class: %s" % rvname(rv))
        rv, c2 = copy_object(M, s, k, [(CKA_MODIFIABLE, False)])
        ok(rv, "copy, not modifiable")
        made.append(c2)
        check(attr1(s, c2, CKA_MODIFIABLE) is False and attr1(s, k, CKA_MODIFIABLE) is True, "CKA_MODIFIABLE")
        # a destroyed original leaves the copy working
        s.destroyObject(c1)
        made.remove(c1)
        same_key(c2, "copy after the first copy was destroyed")
        # session -> token -> session
        rv, t = copy_object(M, s, k, [(CKA_TOKEN, True), (CKA_LABEL, "copy-tok-" + RUN)])
        ok(rv, "C_CopyObject session -> token")
        made.append(t)
        check(attr1(s, t, CKA_TOKEN) is True, "token copy is a token object")
        check([hv(h) for h in s.findObjects([(CKA_LABEL, "copy-tok-" + RUN)])] == [hv(t)], "token copy found")
        same_key(t, "token copy")
        rv, back = copy_object(M, s, t, [(CKA_TOKEN, False), (CKA_LABEL, "copy-back-" + RUN)])
        ok(rv, "C_CopyObject token -> session")
        made.append(back)
        check(attr1(s, back, CKA_TOKEN) is False, "copy back is a session object")
        same_key(back, "copy of the token copy")
        # a RO session cannot copy to the token
        ro = M.open(rw=False)
        try:
            rv, _ = copy_object(M, ro, k, [(CKA_TOKEN, True)])
            check(rv == CKR_SESSION_READ_ONLY, "copy to the token in a RO session: %s" % rvname(rv))
        finally:
            ro.closeSession()
    finally:
        for h in made:
            try:
                s.destroyObject(h)
            except PyKCS11Error:
                pass
        s.logout()
        s.closeSession()


@test
def destroy_objects():
    s = M.open(login=True)
    try:
        k = gen_aes(s, 16)
        pub, priv = gen_ec(s)
        s.destroyObject(k)
        expect_rv(CKR_OBJECT_HANDLE_INVALID, "C_DestroyObject twice", s.destroyObject, k)
        expect_rv(CKR_OBJECT_HANDLE_INVALID, "attributes of a destroyed key", s.getAttributeValue, k, [CKA_LABEL])
        expect_rv(CKR_KEY_HANDLE_INVALID, "C_EncryptInit with a destroyed key", s.encrypt, k, bytes(16),
                  Mechanism(CKM_AES_CBC, bytes(16)))
        # destroying one half of a pair leaves the other
        s.destroyObject(priv)
        check(attr1(s, pub, CKA_CLASS) == CKO_PUBLIC_KEY, "public half still there")
        s.destroyObject(pub)
        expect_rv(CKR_OBJECT_HANDLE_INVALID, "a bad handle", s.destroyObject, oh(s, 0x7FFF0002))
    finally:
        s.logout()
        s.closeSession()


@test
def session_objects_die_with_their_session():
    a = M.open(login=True)
    b = M.open(rw=False)
    try:
        lab = "dies-" + RUN
        k = gen_aes(a, 16, **{"CKA_LABEL": lab})
        d = a.createObject([(CKA_CLASS, CKO_DATA), (CKA_LABEL, lab), (CKA_VALUE, b"data"), (CKA_PRIVATE, False)])
        # session objects are visible to every session of the application
        check({hv(h) for h in b.findObjects([(CKA_LABEL, lab)])} == {hv(k), hv(d)}, "b sees a's objects")
        check(bytes(b.encrypt(k, bytes(16), Mechanism(CKM_AES_ECB))), "b uses a's key")
        a.closeSession()
        check(not b.findObjects([(CKA_LABEL, lab)]), "a's objects gone when a closed")
        expect_rv(CKR_OBJECT_HANDLE_INVALID, "a's key from b", b.getAttributeValue, k, [CKA_LABEL])
        expect_rv(CKR_OBJECT_HANDLE_INVALID, "a's data object from b", b.getAttributeValue, d, [CKA_VALUE])
        check(b.getSessionInfo().state == CKS_RO_USER_FUNCTIONS, "b still logged in")
    finally:
        try:
            a.closeSession()
        except PyKCS11Error:
            pass
        b.logout()
        b.closeSession()


def _rsa_local():
    from cryptography.hazmat.primitives.asymmetric import rsa
    return rsa.generate_private_key(65537, 2048)


def _int(n, size=None):
    return n.to_bytes(size or (n.bit_length() + 7) // 8, "big")


@test
def create_objects():
    """C_CreateObject of keys from clear values, a certificate and a data
    object, checked against the same keys in Python."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, utils
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.x509.oid import NameOID
    import datetime

    s = M.open(login=True)
    try:
        # AES from its value: the same ciphertext as here, and its check value
        v = os.urandom(32)
        k = s.createObject([(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES), (CKA_VALUE, v),
                            (CKA_LABEL, "imp-aes-" + RUN), (CKA_TOKEN, False)])
        iv = os.urandom(16)
        e = Cipher(algorithms.AES(v), modes.CBC(iv)).encryptor()
        want = e.update(b"A" * 32) + e.finalize()
        check(bytes(s.encrypt(k, b"A" * 32, Mechanism(CKM_AES_CBC, iv))) == want, "AES-CBC of an imported key")
        check(attr1(s, k, CKA_VALUE_LEN) == 32, "CKA_VALUE_LEN of an imported key")
        check(attr1(s, k, CKA_LOCAL) is False, "an imported key is not local")
        check(attr1(s, k, CKA_ALWAYS_SENSITIVE) is False and attr1(s, k, CKA_NEVER_EXTRACTABLE) is False,
              "an imported key was known in clear: not always sensitive / never extractable")
        z = Cipher(algorithms.AES(v), modes.ECB()).encryptor().update(bytes(16))
        try:
            kcv = attr_bytes(s, k, CKA_CHECK_VALUE)
            check(kcv == z[:3], "CKA_CHECK_VALUE %s, want %s" % (kcv.hex(), z[:3].hex()))
        except PyKCS11Error as e_:
            raise Fail("CKA_CHECK_VALUE of an AES key: %s" % e_)
        expect_rv((CKR_ATTRIBUTE_VALUE_INVALID, CKR_TEMPLATE_INCONSISTENT),
                  "an AES key of 15 bytes", s.createObject,
                  [(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES), (CKA_VALUE, bytes(15))])
        expect_rv(CKR_TEMPLATE_INCOMPLETE, "a secret key without CKA_VALUE", s.createObject,
                  [(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES)])
        expect_rv(CKR_TEMPLATE_INCOMPLETE, "no CKA_CLASS", s.createObject, [(CKA_VALUE, bytes(16))])
        # a generic secret as an HMAC key
        hk = os.urandom(40)
        g = s.createObject([(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_GENERIC_SECRET), (CKA_VALUE, hk),
                            (CKA_SIGN, True), (CKA_VERIFY, True)])
        mac = bytes(s.sign(g, b"mac me", Mechanism(CKM_SHA256_HMAC)))
        check(mac == hmac.new(hk, b"mac me", hashlib.sha256).digest(), "HMAC of an imported generic secret")

        # RSA public key from modulus and exponent: verifies Python's signature
        rk = _rsa_local()
        pn = rk.public_key().public_numbers()
        msg = b"signed in python"
        sig = rk.sign(msg, padding.PKCS1v15(), hashes.SHA256())
        rpub = s.createObject([(CKA_CLASS, CKO_PUBLIC_KEY), (CKA_KEY_TYPE, CKK_RSA), (CKA_MODULUS, _int(pn.n)),
                               (CKA_PUBLIC_EXPONENT, _int(pn.e)), (CKA_VERIFY, True), (CKA_ENCRYPT, True),
                               (CKA_LABEL, "imp-rsa-" + RUN)])
        check(s.verify(rpub, msg, sig, Mechanism(CKM_SHA256_RSA_PKCS)), "imported RSA public key verifies")
        check(not s.verify(rpub, msg + b"!", sig, Mechanism(CKM_SHA256_RSA_PKCS)), "and refuses a wrong message")
        soft(attr1(s, rpub, CKA_MODULUS_BITS) == 2048, "CKA_MODULUS_BITS of an imported RSA public key is %s, "
             "want 2048" % attr1(s, rpub, CKA_MODULUS_BITS))
        ct = bytes(s.encrypt(rpub, b"to python", RSAOAEPMechanism(CKM_SHA256, CKG_MGF1_SHA256)))
        check(rk.decrypt(ct, padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)) == b"to python",
              "OAEP with the imported public key decrypts in Python")
        # RSA private key from its eight components: signs what Python verifies
        pr = rk.private_numbers()
        rpriv = s.createObject([(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_KEY_TYPE, CKK_RSA), (CKA_MODULUS, _int(pn.n)),
                                (CKA_PUBLIC_EXPONENT, _int(pn.e)), (CKA_PRIVATE_EXPONENT, _int(pr.d)),
                                (CKA_PRIME_1, _int(pr.p)), (CKA_PRIME_2, _int(pr.q)),
                                (CKA_EXPONENT_1, _int(pr.dmp1)), (CKA_EXPONENT_2, _int(pr.dmq1)),
                                (CKA_COEFFICIENT, _int(pr.iqmp)), (CKA_SIGN, True), (CKA_DECRYPT, True)])
        sig2 = bytes(s.sign(rpriv, msg, Mechanism(CKM_SHA256_RSA_PKCS)))
        check(sig2 == sig, "PKCS#1 v1.5 signature of the imported private key equals Python's")
        ct = rk.public_key().encrypt(b"from python", padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(),
                                                                  None))
        check(bytes(s.decrypt(rpriv, ct, RSAOAEPMechanism(CKM_SHA256, CKG_MGF1_SHA256))) == b"from python",
              "OAEP decryption with the imported private key")
        rv, r = get_raw(M, s, rpriv, [(CKA_PRIVATE_EXPONENT, None)])
        check(rv == CKR_ATTRIBUTE_SENSITIVE, "an imported private exponent: %s" % rvname(rv))
        # the public parts of an imported private key (PKCS#11: RSA private
        # keys have CKA_MODULUS and CKA_PUBLIC_EXPONENT)
        rv, r = get_raw(M, s, rpriv, [(CKA_MODULUS, None), (CKA_PUBLIC_EXPONENT, None)])
        soft(rv == CKR_OK and r[0][0] == 256, "CKA_MODULUS of an imported RSA private key: %s, length %#x"
             % (rvname(rv), r[0][0]))
        expect_rv(CKR_TEMPLATE_INCOMPLETE, "an RSA public key without its exponent", s.createObject,
                  [(CKA_CLASS, CKO_PUBLIC_KEY), (CKA_KEY_TYPE, CKK_RSA), (CKA_MODULUS, _int(pn.n))])

        # EC keys, P-256 and P-384
        for curve, pycurve, h, mech in (("P-256", ec.SECP256R1(), hashes.SHA256(), CKM_ECDSA_SHA256),
                                        ("P-384", ec.SECP384R1(), hashes.SHA384(), CKM_ECDSA_SHA384)):
            ek = ec.generate_private_key(pycurve)
            point = ek.public_key().public_bytes(serialization.Encoding.X962,
                                                 serialization.PublicFormat.UncompressedPoint)
            epub = s.createObject([(CKA_CLASS, CKO_PUBLIC_KEY), (CKA_KEY_TYPE, CKK_EC),
                                   (CKA_EC_PARAMS, EC_PARAMS[curve]), (CKA_EC_POINT, der_octet_string(point)),
                                   (CKA_VERIFY, True)])
            check(der_unwrap_octet_string(attr_bytes(s, epub, CKA_EC_POINT)) == point, "%s point read back" % curve)
            der = ek.sign(msg, ec.ECDSA(h))
            r_, s_ = utils.decode_dss_signature(der)
            n = EC_COORD[curve]
            raw = _int(r_, n) + _int(s_, n)
            check(s.verify(epub, msg, raw, Mechanism(mech)), "%s: Python's signature verifies" % curve)
            check(not s.verify(epub, msg + b"!", raw, Mechanism(mech)), "%s: wrong message refused" % curve)
            epriv = s.createObject([(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_KEY_TYPE, CKK_EC),
                                    (CKA_EC_PARAMS, EC_PARAMS[curve]),
                                    (CKA_VALUE, _int(ek.private_numbers().private_value, n)), (CKA_SIGN, True)])
            rv, r = get_raw(M, s, epriv, [(CKA_EC_PARAMS, None)])
            soft(rv == CKR_OK and r[0][0] == len(EC_PARAMS[curve]),
                 "CKA_EC_PARAMS of an imported %s private key: %s" % (curve, rvname(rv)))
            sig3 = bytes(s.sign(epriv, msg, Mechanism(mech)))
            check(len(sig3) == 2 * n, "%s signature length" % curve)
            ek.public_key().verify(utils.encode_dss_signature(int.from_bytes(sig3[:n], "big"),
                                                              int.from_bytes(sig3[n:], "big")), msg, ec.ECDSA(h))
            # the point as a raw value is accepted too? (not required): skip
        # Ed25519 from 32 raw bytes
        edk = ed25519.Ed25519PrivateKey.generate()
        raw_pub = edk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        raw_priv = edk.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())
        edpub = s.createObject([(CKA_CLASS, CKO_PUBLIC_KEY), (CKA_KEY_TYPE, CKK_EC_EDWARDS),
                                (CKA_EC_PARAMS, EC_PARAMS["Ed25519"]), (CKA_EC_POINT, der_octet_string(raw_pub)),
                                (CKA_VERIFY, True)])
        check(s.verify(edpub, msg, edk.sign(msg), Mechanism(CKM_EDDSA)), "Ed25519: Python's signature verifies")
        edpriv = s.createObject([(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_KEY_TYPE, CKK_EC_EDWARDS),
                                 (CKA_EC_PARAMS, EC_PARAMS["Ed25519"]), (CKA_VALUE, raw_priv), (CKA_SIGN, True)])
        check(bytes(s.sign(edpriv, msg, Mechanism(CKM_EDDSA))) == edk.sign(msg),
              "Ed25519 signature equals Python's (deterministic)")

        # an X.509 certificate
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyhold p11 test " + RUN)])
        now = datetime.datetime(2024, 1, 1)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(ek.public_key()).serial_number(0x1234567)
                .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
                .sign(ek, hashes.SHA256()))
        der_cert = cert.public_bytes(serialization.Encoding.DER)
        for token in (False, True):
            lab = "cert-%s-%s" % (token, RUN)
            c = s.createObject([(CKA_CLASS, CKO_CERTIFICATE), (CKA_CERTIFICATE_TYPE, CKC_X_509),
                                (CKA_VALUE, der_cert), (CKA_LABEL, lab), (CKA_ID, b"cert-id"), (CKA_TOKEN, token)])
            try:
                check(attr_bytes(s, c, CKA_VALUE) == der_cert, "certificate CKA_VALUE read back (token %s)" % token)
                check(attr_bytes(s, c, CKA_SUBJECT) == name.public_bytes(),
                      "certificate CKA_SUBJECT from the certificate (token %s)" % token)
                check(attr_bytes(s, c, CKA_ISSUER) == name.public_bytes(), "CKA_ISSUER")
                sn = attr_bytes(s, c, CKA_SERIAL_NUMBER)
                check(sn in (bytes.fromhex("020401234567"), bytes.fromhex("01234567")),
                      "CKA_SERIAL_NUMBER %s" % sn.hex())
                check(attr1(s, c, CKA_CERTIFICATE_TYPE) == CKC_X_509, "CKA_CERTIFICATE_TYPE")
                check(attr1(s, c, CKA_PRIVATE) is False, "a certificate is public")
                got = s.findObjects([(CKA_CLASS, CKO_CERTIFICATE), (CKA_LABEL, lab)])
                check([hv(x) for x in got] == [hv(c)], "certificate found by class and label (token %s)" % token)
            finally:
                s.destroyObject(c)
        expect_rv((CKR_ATTRIBUTE_VALUE_INVALID, CKR_TEMPLATE_INCONSISTENT), "a certificate that is not DER",
                  s.createObject, [(CKA_CLASS, CKO_CERTIFICATE), (CKA_CERTIFICATE_TYPE, CKC_X_509),
                                   (CKA_VALUE, b"not a certificate")])
        # data objects
        for token in (False, True):
            lab = "data-%s-%s" % (token, RUN)
            val = os.urandom(300)
            d = s.createObject([(CKA_CLASS, CKO_DATA), (CKA_LABEL, lab), (CKA_APPLICATION, "keyhold-test"),
                                (CKA_VALUE, val), (CKA_TOKEN, token), (CKA_PRIVATE, True)])
            try:
                check(attr_bytes(s, d, CKA_VALUE) == val, "data CKA_VALUE (token %s)" % token)
                check(attr1(s, d, CKA_APPLICATION) == "keyhold-test", "CKA_APPLICATION")
                got = s.findObjects([(CKA_CLASS, CKO_DATA), (CKA_LABEL, lab)])
                check([hv(x) for x in got] == [hv(d)], "data object found (token %s)" % token)
                s.setAttributeValue(d, [(CKA_LABEL, lab + "-x")])
                check(attr1(s, d, CKA_LABEL) == lab + "-x", "data object relabelled")
            finally:
                s.destroyObject(d)
        # a token key from its value, found by another process
        lab = "imp-tok-" + RUN
        tk = s.createObject([(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES), (CKA_VALUE, v),
                             (CKA_LABEL, lab), (CKA_TOKEN, True)])
        try:
            r = subprocess.run([sys.executable, os.path.abspath(__file__), "--child-find", lab],
                               capture_output=True, text=True, timeout=120)
            check(r.returncode == 0, "the other process: rc %d, %s %s" % (r.returncode, r.stdout, r.stderr))
            ct = bytes.fromhex(r.stdout.strip().splitlines()[-1])
            check(bytes(s.decrypt(k, ct, gcm(bytes(range(12))))) == b"from another process",
                  "an imported token key used by another process")
        finally:
            s.destroyObject(tk)
    finally:
        s.logout()
        s.closeSession()


# ---------------------------------------------------------------- crypto

@test
def sign_verify_round_trips():
    s = M.open(login=True)
    try:
        msg = os.urandom(1000)
        rpub, rpriv = gen_rsa(s, 2048)
        for mech in (Mechanism(CKM_SHA256_RSA_PKCS),
                     RSA_PSS_Mechanism(CKM_SHA384_RSA_PKCS_PSS, CKM_SHA384, CKG_MGF1_SHA384, 48)):
            sig = bytes(s.sign(rpriv, msg, mech))
            check(len(sig) == 256, "RSA signature length")
            check(s.verify(rpub, msg, sig, mech), "RSA verify")
            bad = bytearray(sig)
            bad[10] ^= 1
            check(not s.verify(rpub, msg, bytes(bad), mech), "RSA tampered signature refused")
        for curve, mech in (("P-256", CKM_ECDSA_SHA256), ("P-521", CKM_ECDSA_SHA512), ("Ed25519", CKM_EDDSA)):
            pub, priv = gen_ec(s, curve)
            sig = bytes(s.sign(priv, msg, Mechanism(mech)))
            check(s.verify(pub, msg, sig, Mechanism(mech)), "%s verify" % curve)
            check(not s.verify(pub, msg[:-1], sig, Mechanism(mech)), "%s wrong message" % curve)
        # CKM_ECDSA over a digest made here
        pub, priv = gen_ec(s, "P-384")
        d = hashlib.sha384(msg).digest()
        sig = bytes(s.sign(priv, d, Mechanism(CKM_ECDSA)))
        check(s.verify(pub, msg, sig, Mechanism(CKM_ECDSA_SHA384)), "CKM_ECDSA over a digest = CKM_ECDSA_SHA384")
        # HMAC and CMAC
        hk = s.generateKey([(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_GENERIC_SECRET), (CKA_VALUE_LEN, 32),
                            (CKA_SIGN, True), (CKA_VERIFY, True)], Mechanism(CKM_GENERIC_SECRET_KEY_GEN))
        mac = bytes(s.sign(hk, msg, Mechanism(CKM_SHA512_HMAC)))
        check(len(mac) == 64 and s.verify(hk, msg, mac, Mechanism(CKM_SHA512_HMAC)), "HMAC-SHA512")
        ak = gen_aes(s, 16)
        mac = bytes(s.sign(ak, msg, Mechanism(CKM_AES_CMAC)))
        check(len(mac) == 16 and s.verify(ak, msg, mac, Mechanism(CKM_AES_CMAC)), "AES-CMAC")
        # verifying with the wrong kind of key
        expect_rv(CKR_KEY_TYPE_INCONSISTENT, "ECDSA with an RSA key", s.sign, rpriv, msg, Mechanism(CKM_ECDSA_SHA256))
        expect_rv((CKR_KEY_FUNCTION_NOT_PERMITTED, CKR_KEY_TYPE_INCONSISTENT), "sign with a public key", s.sign, rpub, msg,
                  Mechanism(CKM_SHA256_RSA_PKCS))
    finally:
        s.logout()
        s.closeSession()


@test
def encrypt_decrypt_round_trips():
    s = M.open(login=True)
    try:
        k = gen_aes(s, 32)
        # (no empty input: PyKCS11 answers CKR_ARGUMENTS_BAD itself for an empty
        # buffer; p11_crypto_test.py covers empty data through ctypes)
        for data in (b"x", os.urandom(16), os.urandom(1000)):
            iv = os.urandom(12)
            ct = bytes(s.encrypt(k, data, gcm(iv, b"aad")))
            check(len(ct) == len(data) + 16, "GCM ciphertext length")
            check(bytes(s.decrypt(k, ct, gcm(iv, b"aad"))) == data, "GCM round trip")
            expect_rv(CKR_ENCRYPTED_DATA_INVALID, "GCM with another AAD", s.decrypt, k, ct, gcm(iv, b"aaX"))
            iv = os.urandom(16)
            ct = bytes(s.encrypt(k, data, Mechanism(CKM_AES_CBC_PAD, iv)))
            check(len(ct) == (len(data) // 16 + 1) * 16, "CBC_PAD ciphertext length")
            check(bytes(s.decrypt(k, ct, Mechanism(CKM_AES_CBC_PAD, iv))) == data, "CBC_PAD round trip")
        expect_rv(CKR_DATA_LEN_RANGE, "CBC without padding of 15 bytes", s.encrypt, k, bytes(15),
                  Mechanism(CKM_AES_CBC, bytes(16)))
        pub, priv = gen_rsa(s, 2048)
        oaep = RSAOAEPMechanism(CKM_SHA256, CKG_MGF1_SHA256, b"label")
        ct = bytes(s.encrypt(pub, b"secret", oaep))
        check(len(ct) == 256 and bytes(s.decrypt(priv, ct, oaep)) == b"secret", "OAEP round trip")
        expect_rv(CKR_ENCRYPTED_DATA_INVALID, "OAEP with another label", s.decrypt, priv, ct,
                  RSAOAEPMechanism(CKM_SHA256, CKG_MGF1_SHA256, b"other"))
        ct = bytes(s.encrypt(pub, b"pkcs1", Mechanism(CKM_RSA_PKCS)))
        check(bytes(s.decrypt(priv, ct, Mechanism(CKM_RSA_PKCS))) == b"pkcs1", "PKCS#1 v1.5 round trip")
    finally:
        s.logout()
        s.closeSession()


@test
def wrap_unwrap_round_trips():
    s = M.open(login=True)
    try:
        kek = gen_aes(s, 32)
        # an extractable AES key under AES-KW, and the unwrapped copy is the same key
        k = s.generateKey([(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES), (CKA_VALUE_LEN, 32),
                           (CKA_EXTRACTABLE, True)], Mechanism(CKM_AES_KEY_GEN))
        iv = os.urandom(12)
        ct = bytes(s.encrypt(k, b"wrapped", gcm(iv)))
        for mech in (CKM_AES_KEY_WRAP, CKM_AES_KEY_WRAP_PAD):
            w = bytes(s.wrapKey(kek, k, Mechanism(mech)))
            check(len(w) == 40, "wrapped length %d" % len(w))
            u = s.unwrapKey(kek, w, [(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES), (CKA_LABEL, "unw")],
                            Mechanism(mech))
            check(bytes(s.decrypt(u, ct, gcm(iv))) == b"wrapped", "unwrapped key (%#x) is the same" % mech)
            check(attr1(s, u, CKA_VALUE_LEN) == 32 and attr1(s, u, CKA_LABEL) == "unw", "unwrapped attributes")
            check(attr1(s, u, CKA_LOCAL) is False, "an unwrapped key is not local")
            bad = bytearray(w)
            bad[5] ^= 1
            expect_rv(CKR_WRAPPED_KEY_INVALID, "unwrap a tampered key (%#x)" % mech, s.unwrapKey, kek, bytes(bad),
                      [(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES)], Mechanism(mech))
        # an EC private key under KWP, used after unwrapping
        pub, priv = gen_ec(s, "P-256", priv_extra=[(CKA_EXTRACTABLE, True)])
        w = bytes(s.wrapKey(kek, priv, Mechanism(CKM_AES_KEY_WRAP_PAD)))
        u = s.unwrapKey(kek, w, [(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_KEY_TYPE, CKK_EC), (CKA_SIGN, True)],
                        Mechanism(CKM_AES_KEY_WRAP_PAD))
        sig = bytes(s.sign(u, b"unwrapped EC", Mechanism(CKM_ECDSA_SHA256)))
        check(s.verify(pub, b"unwrapped EC", sig, Mechanism(CKM_ECDSA_SHA256)), "the unwrapped EC key signs")
        # a secret key under RSA-OAEP
        rpub, rpriv = gen_rsa(s, 2048)
        oaep = RSAOAEPMechanism(CKM_SHA256, CKG_MGF1_SHA256)
        w = bytes(s.wrapKey(rpub, k, oaep))
        check(len(w) == 256, "OAEP-wrapped length")
        u = s.unwrapKey(rpriv, w, [(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES)], oaep)
        check(bytes(s.decrypt(u, ct, gcm(iv))) == b"wrapped", "OAEP-unwrapped key is the same")
        # unextractable keys do not leave
        expect_rv(CKR_KEY_UNEXTRACTABLE, "wrap an unextractable key", s.wrapKey, kek, kek,
                  Mechanism(CKM_AES_KEY_WRAP))
    finally:
        s.logout()
        s.closeSession()


@test
def derive_round_trip():
    """ECDH on both sides gives the same AES key."""
    s = M.open(login=True)
    try:
        for curve in ("P-256", "X25519"):
            a_pub, a_priv = gen_ec(s, curve, priv_extra=[(CKA_DERIVE, True)])
            b_pub, b_priv = gen_ec(s, curve, priv_extra=[(CKA_DERIVE, True)])
            pa = der_unwrap_octet_string(attr_bytes(s, a_pub, CKA_EC_POINT))
            pb = der_unwrap_octet_string(attr_bytes(s, b_pub, CKA_EC_POINT))
            tmpl = [(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES), (CKA_VALUE_LEN, 32),
                    (CKA_ENCRYPT, True), (CKA_DECRYPT, True)]
            ka = s.deriveKey(a_priv, tmpl, ECDH1_DERIVE_Mechanism(pb, CKD_SHA256_KDF))
            kb = s.deriveKey(b_priv, tmpl, ECDH1_DERIVE_Mechanism(pa, CKD_SHA256_KDF))
            iv = os.urandom(12)
            ct = bytes(s.encrypt(ka, b"agreed", gcm(iv)))
            check(bytes(s.decrypt(kb, ct, gcm(iv))) == b"agreed", "%s: both sides derive the same key" % curve)
            kc = s.deriveKey(b_priv, tmpl, ECDH1_DERIVE_Mechanism(pb, CKD_SHA256_KDF))
            expect_rv(CKR_ENCRYPTED_DATA_INVALID, "%s: a different peer gives another key" % curve,
                      s.decrypt, kc, ct, gcm(iv))
    finally:
        s.logout()
        s.closeSession()


@test
def digest_and_random():
    s = M.open(rw=False)
    try:
        for mech, h in ((CKM_SHA_1, hashlib.sha1), (CKM_SHA256, hashlib.sha256), (CKM_SHA512, hashlib.sha512),
                        (CKM_SHA3_256, hashlib.sha3_256)):
            for data in (b"a", os.urandom(5000)):
                # before login (this session is not logged in yet)
                got = soft_call("C_Digest(%#x) of %d bytes before login" % (mech, len(data)), s.digest, data,
                                Mechanism(mech))
                soft(got is None or bytes(got) == h(data).digest(), "digest %#x" % mech)
        ds = s.digestSession(Mechanism(CKM_SHA384))
        ds.update(b"part one, ")
        ds.update(b"part two")
        check(bytes(ds.final()) == hashlib.sha384(b"part one, part two").digest(), "multi-part digest")
        s.login(M.pin)
        data = os.urandom(70000)
        check(bytes(s.digest(data, Mechanism(CKM_SHA256))) == hashlib.sha256(data).digest(),
              "digest of 70000 bytes after login")
        seen = set()
        for n in (1, 16, 4095, 4096, 4097, 10000):
            r = bytes(s.generateRandom(n))
            check(len(r) == n, "random length %d" % n)
            if n >= 16:
                check(r not in seen, "random repeats")
                seen.add(r)
                check(len(set(r)) > min(n, 256) // 4, "random of %d bytes looks constant" % n)
        r = M.fn("C_GenerateRandom")(CK_ULONG(hv(s.session)), (c_ubyte * 1)(), CK_ULONG(0))
        check(r == CKR_OK, "C_GenerateRandom of 0 bytes: %s" % rvname(r))
        expect_rv(CKR_RANDOM_SEED_NOT_SUPPORTED, "C_SeedRandom", s.seedRandom, b"seed")
    finally:
        try:
            s.logout()
        except PyKCS11Error:
            pass
        s.closeSession()


def main(argv):
    global M, RUN
    if len(argv) > 2 and argv[1] == "--child-find":
        return child_find(argv[2])
    only = set(argv[1:])
    M = Module()
    RUN = os.urandom(4).hex()
    failed = 0
    ran = 0
    for t in TESTS:
        if only and t.__name__ not in only:
            continue
        ran += 1
        del SOFT[:]
        try:
            t()
            if SOFT:
                raise Fail("; ".join(SOFT))
            print("ok   %s" % t.__name__)
        except Exception as e:  # a group's failure must not hide the others'
            failed += 1
            print("FAIL %s: %s" % (t.__name__, e))
            if not isinstance(e, Fail):
                traceback.print_exc(limit=4)
            # whatever the failure left behind: no sessions, logged out
            try:
                M.pk.closeAllSessions(M.slot)
            except PyKCS11Error:
                pass
        sys.stdout.flush()
    print("%d of %d test groups failed" % (failed, ran) if failed else "all %d test groups passed" % ran)
    return 1 if failed or not ran else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
