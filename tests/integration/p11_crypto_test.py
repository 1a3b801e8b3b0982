#!/usr/bin/python3
"""Every mechanism of libkeyhold-pkcs11.so against a real HSM.

Run with /usr/bin/python3 after tests/integration/p11_lib.sh's p11_setup
(HSM with the reference set-up, the role granted PKCS#1 v1.5 decryption and
GPDK); it needs P11_MODULE (the module) and P11_PIN (pkcs11user's password),
and FXPKCS11_CFG. For example:

    export KH_BUILD=build/asan
    source tests/integration/lib.sh; source tests/integration/p11_lib.sh
    p11_setup hsm1; export P11_MODULE P11_PIN
    p11_run /usr/bin/python3 tests/integration/p11_crypto_test.py

Sessions and keys come from PyKCS11; the cryptographic calls go through
ctypes to the same loaded module, so that each test controls NULL buffers,
buffer sizes and parameter structures exactly as a C application would.
Results are checked both ways (sign then verify, encrypt then decrypt) and,
where a key's value is known (imported with C_CreateObject) or public,
against Python's own implementations (hashlib, hmac, cryptography).
"""
import ctypes
import hashlib
import hmac
import os
import sys
import traceback
from ctypes import POINTER, Structure, byref, c_ubyte, c_ulong, c_void_p

import PyKCS11
from PyKCS11 import *  # noqa: F401,F403  (CKM_*, CKR_*, CKA_* ...)

from cryptography.hazmat.primitives import cmac as c_cmac
from cryptography.hazmat.primitives import hashes, keywrap, padding as c_padding
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

CK_ULONG = c_ulong


def const(name, value):
    return getattr(PyKCS11, name, value)


CKG_MGF1_SHA3_224 = const("CKG_MGF1_SHA3_224", 6)
CKG_MGF1_SHA3_256 = const("CKG_MGF1_SHA3_256", 7)
CKG_MGF1_SHA3_384 = const("CKG_MGF1_SHA3_384", 8)
CKG_MGF1_SHA3_512 = const("CKG_MGF1_SHA3_512", 9)
CKF_MESSAGE_ENCRYPT = const("CKF_MESSAGE_ENCRYPT", 2)
CKF_MESSAGE_SIGN = const("CKF_MESSAGE_SIGN", 8)
CKG_NO_GENERATE, CKG_GENERATE_RANDOM, CKG_GENERATE_COUNTER = 0, 3, 2
CKR_NAMES = {v: k for k, v in vars(PyKCS11).items() if k.startswith("CKR_") and isinstance(v, int)}


class MECH(Structure):
    _fields_ = [("mechanism", CK_ULONG), ("pParameter", c_void_p), ("ulParameterLen", CK_ULONG)]


class GCM(Structure):
    _fields_ = [("pIv", c_void_p), ("ulIvLen", CK_ULONG), ("ulIvBits", CK_ULONG),
                ("pAAD", c_void_p), ("ulAADLen", CK_ULONG), ("ulTagBits", CK_ULONG)]


class CTR(Structure):
    _fields_ = [("ulCounterBits", CK_ULONG), ("cb", c_ubyte * 16)]


class PSS(Structure):
    _fields_ = [("hashAlg", CK_ULONG), ("mgf", CK_ULONG), ("sLen", CK_ULONG)]


class OAEP(Structure):
    _fields_ = [("hashAlg", CK_ULONG), ("mgf", CK_ULONG), ("source", CK_ULONG),
                ("pSourceData", c_void_p), ("ulSourceDataLen", CK_ULONG)]


class ECDH(Structure):
    _fields_ = [("kdf", CK_ULONG), ("ulSharedDataLen", CK_ULONG), ("pSharedData", c_void_p),
                ("ulPublicDataLen", CK_ULONG), ("pPublicData", c_void_p)]


class EDDSA(Structure):
    _fields_ = [("phFlag", c_ubyte), ("ulContextDataLen", CK_ULONG), ("pContextData", c_void_p)]


class GCMMSG(Structure):
    _fields_ = [("pIv", c_void_p), ("ulIvLen", CK_ULONG), ("ulIvFixedBits", CK_ULONG),
                ("ivGenerator", CK_ULONG), ("pTag", c_void_p), ("ulTagBits", CK_ULONG)]


class MECHINFO(Structure):
    _fields_ = [("ulMinKeySize", CK_ULONG), ("ulMaxKeySize", CK_ULONG), ("flags", CK_ULONG)]


class ATTR(Structure):
    _fields_ = [("type", CK_ULONG), ("pValue", c_void_p), ("ulValueLen", CK_ULONG)]


# ---------------------------------------------------------------- plumbing

MODULE = os.environ["P11_MODULE"]
PIN = os.environ["P11_PIN"]
pk = PyKCS11Lib()
pk.load(MODULE)
L = ctypes.CDLL(MODULE)  # the same loaded module: one C_Initialize, shared handles


def fn(name):
    f = getattr(L, name)
    f.restype = CK_ULONG
    return f


SLOT = pk.getSlotList(tokenPresent=True)[0]
SESS = pk.openSession(SLOT, CKF_SERIAL_SESSION | CKF_RW_SESSION)
SESS.login(PIN)
H = CK_ULONG(SESS.session.value())


class Fail(Exception):
    pass


def rvname(rv):
    return CKR_NAMES.get(rv, hex(rv))


def expect(rv, want, what):
    if rv != want:
        raise Fail("%s: got %s, want %s" % (what, rvname(rv), rvname(want)))


def ok(rv, what):
    expect(rv, CKR_OK, what)


def check(cond, what):
    if not cond:
        raise Fail(what)


def buf(data):
    """An input buffer (bytes -> a ctypes array that lives as long as the reference)."""
    if data is None:
        return None
    return (c_ubyte * max(len(data), 1)).from_buffer_copy(data if data else b"\0")


def mech(mtype, param=None):
    """(CK_MECHANISM, keepalive). param: None, bytes, or a ctypes Structure."""
    m = MECH(mtype, None, 0)
    keep = None
    if isinstance(param, (bytes, bytearray)):
        keep = buf(bytes(param))
        m.pParameter = ctypes.cast(keep, c_void_p)
        m.ulParameterLen = len(param)
    elif param is not None:
        keep = param
        m.pParameter = ctypes.cast(byref(param), c_void_p)
        m.ulParameterLen = ctypes.sizeof(param)
    m._keep = keep
    return m


def hv(h):
    return CK_ULONG(h.value() if hasattr(h, "value") else int(h))


def init(name, m, key=None):
    if key is None:
        return fn(name)(H, byref(m))
    return fn(name)(H, byref(m), hv(key))


def out_call(name, *args, size=None):
    """Call an output function twice as PKCS#11 intends: a NULL buffer for the
    length, then a buffer of that length (or of size). Returns (rv, bytes)."""
    f = fn(name)
    n = CK_ULONG(0)
    if size is None:
        rv = f(H, *args, None, byref(n))
        if rv != CKR_OK:
            return rv, None
    else:
        n.value = size
    b = (c_ubyte * max(n.value, 1))()
    rv = f(H, *args, b, byref(n))
    return rv, bytes(b[: n.value]) if rv == CKR_OK else None


def data_args(data):
    b = buf(data)
    return b, CK_ULONG(len(data))


def one_shot(init_name, call_name, m, key, data, size=None):
    ok(init(init_name, m, key), init_name)
    b, n = data_args(data)
    rv, out = out_call(call_name, b, n, size=size)
    ok(rv, call_name)
    return out


def encrypt(m, key, data):
    return one_shot("C_EncryptInit", "C_Encrypt", m, key, data)


def decrypt(m, key, data):
    return one_shot("C_DecryptInit", "C_Decrypt", m, key, data)


def sign(m, key, data):
    return one_shot("C_SignInit", "C_Sign", m, key, data)


def verify_rv(m, key, data, sig):
    ok(init("C_VerifyInit", m, key), "C_VerifyInit")
    b, n = data_args(data)
    s, sn = data_args(sig)
    return fn("C_Verify")(H, b, n, s, sn)


def verify(m, key, data, sig):
    ok(verify_rv(m, key, data, sig), "C_Verify")


def multi(init_name, upd, final, m, key, chunks, outputs=True):
    ok(init(init_name, m, key), init_name)
    out = b""
    for c in chunks:
        b, n = data_args(c)
        if outputs:
            o = (c_ubyte * (len(c) + 64))()
            on = CK_ULONG(len(c) + 64)
            ok(fn(upd)(H, b, n, o, byref(on)), upd)
            out += bytes(o[: on.value])
        else:
            ok(fn(upd)(H, b, n), upd)
    rv, last = out_call(final)
    ok(rv, final)
    return out + last


def op_gone(name, *args):
    """The operation must have ended: the next call is NOT_INITIALIZED."""
    expect(fn(name)(H, *args), CKR_OPERATION_NOT_INITIALIZED, name + " after the end")


def attr(obj, a):
    return bytes(SESS.getAttributeValue(obj, [a])[0])


def value_len(h):
    """CKA_VALUE_LEN of a handle (an int or a PyKCS11 handle)."""
    v = CK_ULONG(0)
    a = ATTR(CKA_VALUE_LEN, ctypes.cast(byref(v), c_void_p), ctypes.sizeof(v))
    ok(fn("C_GetAttributeValue")(H, hv(h), byref(a), CK_ULONG(1)), "C_GetAttributeValue")
    return v.value


# ---------------------------------------------------------------- keys

T, F = True, False


def override(template, kw):
    """The template with the attributes named in kw (CKA_... = value) replaced or added."""
    extra = {getattr(PyKCS11, k): v for k, v in kw.items()}
    return [(a, v) for a, v in template if a not in extra] + list(extra.items())


def aes_key(length=32, **kw):
    t = [(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES), (CKA_VALUE_LEN, length), (CKA_TOKEN, F),
         (CKA_ENCRYPT, T), (CKA_DECRYPT, T), (CKA_SIGN, T), (CKA_VERIFY, T), (CKA_WRAP, T), (CKA_UNWRAP, T)]
    return SESS.generateKey(override(t, kw), mecha=MechanismAESGENERATEKEY)


def generic_key(length=32, **kw):
    t = [(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_GENERIC_SECRET), (CKA_VALUE_LEN, length),
         (CKA_TOKEN, F), (CKA_SIGN, T), (CKA_VERIFY, T)]
    return SESS.generateKey(override(t, kw), mecha=PyKCS11.Mechanism(CKM_GENERIC_SECRET_KEY_GEN))


def import_secret(ktype, value, **kw):
    """A secret key whose value the test knows (C_CreateObject), or None."""
    t = [(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, ktype), (CKA_VALUE, value), (CKA_TOKEN, F),
         (CKA_ENCRYPT, T), (CKA_DECRYPT, T), (CKA_SIGN, T), (CKA_VERIFY, T)]
    try:
        return SESS.createObject(override(t, kw))
    except PyKCS11Error as e:
        print("  (C_CreateObject of a known secret failed: %s; comparisons skipped)" % e)
        return None


def rsa_pair(bits=2048):
    pub = [(CKA_CLASS, CKO_PUBLIC_KEY), (CKA_KEY_TYPE, CKK_RSA), (CKA_TOKEN, F), (CKA_MODULUS_BITS, bits),
           (CKA_PUBLIC_EXPONENT, b"\x01\x00\x01"), (CKA_VERIFY, T), (CKA_ENCRYPT, T), (CKA_WRAP, T)]
    priv = [(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_KEY_TYPE, CKK_RSA), (CKA_TOKEN, F), (CKA_SIGN, T),
            (CKA_DECRYPT, T), (CKA_UNWRAP, T)]
    return SESS.generateKeyPair(pub, priv, mecha=MechanismRSAGENERATEKEYPAIR)


CURVES = {"P-256": "06082a8648ce3d030107", "P-384": "06052b81040022", "P-521": "06052b81040023",
          "ED25519": "06032b6570", "X25519": "06032b656e"}


def ec_pair(curve, derive=False, extractable=False):
    kt = {"ED25519": CKK_EC_EDWARDS, "X25519": CKK_EC_MONTGOMERY}.get(curve, CKK_EC)
    gen = {"ED25519": CKM_EC_EDWARDS_KEY_PAIR_GEN, "X25519": CKM_EC_MONTGOMERY_KEY_PAIR_GEN}.get(
        curve, CKM_EC_KEY_PAIR_GEN)
    pub = [(CKA_CLASS, CKO_PUBLIC_KEY), (CKA_KEY_TYPE, kt), (CKA_TOKEN, F),
           (CKA_EC_PARAMS, bytes.fromhex(CURVES[curve]))]
    priv = [(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_KEY_TYPE, kt), (CKA_TOKEN, F), (CKA_EXTRACTABLE, extractable)]
    if curve == "X25519":
        priv += [(CKA_DERIVE, T)]
        pub += [(CKA_DERIVE, T)]
    else:
        pub += [(CKA_VERIFY, T)]
        priv += [(CKA_SIGN, T)] + ([(CKA_DERIVE, T)] if derive else [])
    return SESS.generateKeyPair(pub, priv, mecha=PyKCS11.Mechanism(gen))


def ec_point(pub):
    """CKA_EC_POINT without its DER OCTET STRING wrapping."""
    p = attr(pub, CKA_EC_POINT)
    if p[0] == 0x04 and len(p) > 2:
        n, h = (p[1], 2) if p[1] < 0x80 else (int.from_bytes(p[2:2 + (p[1] & 0x7F)], "big"), 2 + (p[1] & 0x7F))
        if h + n == len(p):
            return p[h:]
    return p


def rsa_public(pub):
    n = int.from_bytes(attr(pub, CKA_MODULUS), "big")
    e = int.from_bytes(attr(pub, CKA_PUBLIC_EXPONENT), "big")
    return rsa.RSAPublicNumbers(e, n).public_key()


HASHES = {  # CKM digest -> (hashlib name, cryptography hash, MGF)
    CKM_SHA_1: ("sha1", hashes.SHA1(), CKG_MGF1_SHA1),
    CKM_SHA224: ("sha224", hashes.SHA224(), CKG_MGF1_SHA224),
    CKM_SHA256: ("sha256", hashes.SHA256(), CKG_MGF1_SHA256),
    CKM_SHA384: ("sha384", hashes.SHA384(), CKG_MGF1_SHA384),
    CKM_SHA512: ("sha512", hashes.SHA512(), CKG_MGF1_SHA512),
    CKM_SHA3_224: ("sha3_224", hashes.SHA3_224(), CKG_MGF1_SHA3_224),
    CKM_SHA3_256: ("sha3_256", hashes.SHA3_256(), CKG_MGF1_SHA3_256),
    CKM_SHA3_384: ("sha3_384", hashes.SHA3_384(), CKG_MGF1_SHA3_384),
    CKM_SHA3_512: ("sha3_512", hashes.SHA3_512(), CKG_MGF1_SHA3_512),
}
RSA_PKCS_H = {CKM_SHA1_RSA_PKCS: CKM_SHA_1, CKM_SHA224_RSA_PKCS: CKM_SHA224, CKM_SHA256_RSA_PKCS: CKM_SHA256,
              CKM_SHA384_RSA_PKCS: CKM_SHA384, CKM_SHA512_RSA_PKCS: CKM_SHA512,
              CKM_SHA3_224_RSA_PKCS: CKM_SHA3_224, CKM_SHA3_256_RSA_PKCS: CKM_SHA3_256,
              CKM_SHA3_384_RSA_PKCS: CKM_SHA3_384, CKM_SHA3_512_RSA_PKCS: CKM_SHA3_512}
RSA_PSS_H = {CKM_SHA1_RSA_PKCS_PSS: CKM_SHA_1, CKM_SHA224_RSA_PKCS_PSS: CKM_SHA224,
             CKM_SHA256_RSA_PKCS_PSS: CKM_SHA256, CKM_SHA384_RSA_PKCS_PSS: CKM_SHA384,
             CKM_SHA512_RSA_PKCS_PSS: CKM_SHA512, CKM_SHA3_224_RSA_PKCS_PSS: CKM_SHA3_224,
             CKM_SHA3_256_RSA_PKCS_PSS: CKM_SHA3_256, CKM_SHA3_384_RSA_PKCS_PSS: CKM_SHA3_384,
             CKM_SHA3_512_RSA_PKCS_PSS: CKM_SHA3_512}
ECDSA_H = {CKM_ECDSA_SHA1: CKM_SHA_1, CKM_ECDSA_SHA224: CKM_SHA224, CKM_ECDSA_SHA256: CKM_SHA256,
           CKM_ECDSA_SHA384: CKM_SHA384, CKM_ECDSA_SHA512: CKM_SHA512, CKM_ECDSA_SHA3_224: CKM_SHA3_224,
           CKM_ECDSA_SHA3_256: CKM_SHA3_256, CKM_ECDSA_SHA3_384: CKM_SHA3_384,
           CKM_ECDSA_SHA3_512: CKM_SHA3_512}
HMACS = {CKM_SHA_1_HMAC: (CKM_SHA_1_HMAC_GENERAL, "sha1"), CKM_SHA224_HMAC: (CKM_SHA224_HMAC_GENERAL, "sha224"),
         CKM_SHA256_HMAC: (CKM_SHA256_HMAC_GENERAL, "sha256"), CKM_SHA384_HMAC: (CKM_SHA384_HMAC_GENERAL, "sha384"),
         CKM_SHA512_HMAC: (CKM_SHA512_HMAC_GENERAL, "sha512"),
         CKM_SHA3_224_HMAC: (CKM_SHA3_224_HMAC_GENERAL, "sha3_224"),
         CKM_SHA3_256_HMAC: (CKM_SHA3_256_HMAC_GENERAL, "sha3_256"),
         CKM_SHA3_384_HMAC: (CKM_SHA3_384_HMAC_GENERAL, "sha3_384"),
         CKM_SHA3_512_HMAC: (CKM_SHA3_512_HMAC_GENERAL, "sha3_512")}
DIGEST_INFO_SHA256 = bytes.fromhex("3031300d060960864801650304020105000420")


def ulong_param(v):
    return CK_ULONG(v)


def tamper(b, i=0):
    b = bytearray(b)
    b[i] ^= 0x01
    return bytes(b)


# ---------------------------------------------------------------- tests

TESTS = []


def test(f):
    TESTS.append(f)
    return f


@test
def mechanism_info():
    n = CK_ULONG(0)
    ok(fn("C_GetMechanismList")(CK_ULONG(SLOT), None, byref(n)), "list length")
    lst = (CK_ULONG * n.value)()
    small = CK_ULONG(1)
    expect(fn("C_GetMechanismList")(CK_ULONG(SLOT), lst, byref(small)), CKR_BUFFER_TOO_SMALL, "list too small")
    check(small.value == n.value, "too small gives the count")
    ok(fn("C_GetMechanismList")(CK_ULONG(SLOT), lst, byref(n)), "list")
    have = set(lst)
    want = {CKM_RSA_PKCS_KEY_PAIR_GEN, CKM_EC_KEY_PAIR_GEN, CKM_EC_EDWARDS_KEY_PAIR_GEN,
            CKM_EC_MONTGOMERY_KEY_PAIR_GEN, CKM_AES_KEY_GEN, CKM_GENERIC_SECRET_KEY_GEN, CKM_RSA_PKCS,
            CKM_RSA_X_509, CKM_RSA_PKCS_PSS, CKM_RSA_PKCS_OAEP, CKM_ECDSA, CKM_EDDSA, CKM_ECDH1_DERIVE,
            CKM_AES_ECB, CKM_AES_CBC, CKM_AES_CBC_PAD, CKM_AES_CTR, CKM_AES_GCM, CKM_AES_CMAC,
            CKM_AES_CMAC_GENERAL, CKM_AES_KEY_WRAP, CKM_AES_KEY_WRAP_PAD}
    want |= set(RSA_PKCS_H) | set(RSA_PSS_H) | set(ECDSA_H) | set(HASHES) | set(HMACS)
    want |= {g for g, _ in HMACS.values()}
    check(want <= have, "missing mechanisms: %s" % [hex(m) for m in want - have])
    info = MECHINFO()
    expected = {  # mechanism: (min, max, flags that must be set, flags that must not)
        CKM_RSA_PKCS: (1024, 4096, CKF_HW | CKF_ENCRYPT | CKF_DECRYPT | CKF_SIGN | CKF_VERIFY |
                       CKF_SIGN_RECOVER | CKF_VERIFY_RECOVER, CKF_WRAP | CKF_DIGEST),
        CKM_RSA_PKCS_OAEP: (1024, 4096, CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP, CKF_SIGN),
        CKM_SHA256_RSA_PKCS_PSS: (1024, 4096, CKF_SIGN | CKF_VERIFY, CKF_ENCRYPT),
        CKM_ECDSA: (256, 521, CKF_SIGN | CKF_VERIFY | CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS,
                    CKF_DERIVE),
        CKM_ECDH1_DERIVE: (255, 521, CKF_DERIVE, CKF_SIGN),
        CKM_EDDSA: (255, 255, CKF_SIGN | CKF_VERIFY, CKF_DERIVE),
        CKM_AES_GCM: (16, 32, CKF_ENCRYPT | CKF_DECRYPT | CKF_MESSAGE_ENCRYPT, CKF_SIGN | CKF_WRAP),
        CKM_AES_KEY_WRAP_PAD: (16, 32, CKF_WRAP | CKF_UNWRAP, CKF_ENCRYPT),
        CKM_AES_CMAC: (16, 32, CKF_SIGN | CKF_VERIFY, CKF_ENCRYPT),
        CKM_SHA256_HMAC: (1, 16320, CKF_SIGN | CKF_VERIFY, CKF_ENCRYPT),
        CKM_SHA3_512: (0, 0, CKF_DIGEST, CKF_SIGN),
        CKM_AES_KEY_GEN: (16, 32, CKF_GENERATE, CKF_GENERATE_KEY_PAIR),
        CKM_GENERIC_SECRET_KEY_GEN: (8, 130560, CKF_GENERATE, 0),
        CKM_EC_KEY_PAIR_GEN: (256, 521, CKF_GENERATE_KEY_PAIR, CKF_GENERATE),
        CKM_RSA_PKCS_KEY_PAIR_GEN: (1024, 4096, CKF_GENERATE_KEY_PAIR, CKF_GENERATE),
    }
    for m, (lo, hi, must, mustnot) in expected.items():
        ok(fn("C_GetMechanismInfo")(CK_ULONG(SLOT), CK_ULONG(m), byref(info)), "info %#x" % m)
        check((info.ulMinKeySize, info.ulMaxKeySize) == (lo, hi),
              "info %#x sizes %d-%d" % (m, info.ulMinKeySize, info.ulMaxKeySize))
        check(info.flags & (must | CKF_HW) == must | CKF_HW, "info %#x flags %#x lack %#x" % (m, info.flags, must))
        check(not info.flags & mustnot, "info %#x flags %#x have %#x" % (m, info.flags, mustnot))
    for m in have:
        ok(fn("C_GetMechanismInfo")(CK_ULONG(SLOT), CK_ULONG(m), byref(info)), "info %#x" % m)
    expect(fn("C_GetMechanismInfo")(CK_ULONG(SLOT), CK_ULONG(CKM_DES3_CBC), byref(info)),
           CKR_MECHANISM_INVALID, "unknown mechanism")
    expect(fn("C_GetMechanismInfo")(CK_ULONG(SLOT + 4242), CK_ULONG(CKM_AES_GCM), byref(info)),
           CKR_SLOT_ID_INVALID, "bad slot")
    expect(fn("C_GetMechanismInfo")(CK_ULONG(SLOT), CK_ULONG(CKM_AES_GCM), None), CKR_ARGUMENTS_BAD, "NULL info")
    expect(fn("C_GetMechanismList")(CK_ULONG(SLOT), None, None), CKR_ARGUMENTS_BAD, "NULL count")


@test
def digests():
    data = os.urandom(1000)
    for m, (name, _, _) in HASHES.items():
        want = hashlib.new(name, data).digest()
        ok(fn("C_DigestInit")(H, byref(mech(m))), "DigestInit")
        b, n = data_args(data)
        small = (c_ubyte * 4)()
        sn = CK_ULONG(4)
        expect(fn("C_Digest")(H, b, n, small, byref(sn)), CKR_BUFFER_TOO_SMALL, "digest too small")
        check(sn.value == len(want), "too small gives the length")
        rv, got = out_call("C_Digest", b, n)
        ok(rv, "C_Digest %s" % name)
        check(got == want, "GHSH %s differs from hashlib" % name)
        ok(fn("C_DigestInit")(H, byref(mech(m))), "DigestInit")
        for part in (data[:1], data[1:700], b"", data[700:]):
            b, n = data_args(part)
            ok(fn("C_DigestUpdate")(H, b, n), "DigestUpdate")
        rv, got = out_call("C_DigestFinal")
        ok(rv, "DigestFinal")
        check(got == want, "multi-part %s differs" % name)
    # past a frame (3 MiB): made by the module
    big = os.urandom(4 * 1024 * 1024)
    ok(fn("C_DigestInit")(H, byref(mech(CKM_SHA512))), "DigestInit")
    b, n = data_args(big)
    rv, got = out_call("C_Digest", b, n)
    ok(rv, "4 MiB digest")
    check(got == hashlib.sha512(big).digest(), "4 MiB digest value")
    # empty input, single part
    ok(fn("C_DigestInit")(H, byref(mech(CKM_SHA256))), "DigestInit")
    rv, got = out_call("C_Digest", buf(b""), CK_ULONG(0))
    ok(rv, "empty digest")
    check(got == hashlib.sha256(b"").digest(), "empty digest value")
    # conventions and errors
    ok(fn("C_DigestInit")(H, byref(mech(CKM_SHA256))), "DigestInit")
    expect(fn("C_DigestInit")(H, byref(mech(CKM_SHA256))), CKR_OPERATION_ACTIVE, "DigestInit twice")
    b, n = data_args(b"abc")
    ok(fn("C_DigestUpdate")(H, b, n), "DigestUpdate")
    out = (c_ubyte * 64)()
    on = CK_ULONG(64)
    expect(fn("C_Digest")(H, b, n, out, byref(on)), CKR_OPERATION_ACTIVE, "C_Digest after an update")
    op_gone("C_DigestUpdate", b, n)
    key = aes_key()
    ok(fn("C_DigestInit")(H, byref(mech(CKM_SHA256))), "DigestInit")
    expect(fn("C_DigestKey")(H, hv(key)), CKR_KEY_INDIGESTIBLE, "C_DigestKey")
    expect(fn("C_DigestInit")(H, byref(mech(CKM_SHA256, b"x"))), CKR_MECHANISM_PARAM_INVALID, "digest param")
    expect(fn("C_DigestInit")(H, byref(mech(CKM_AES_CBC))), CKR_MECHANISM_INVALID, "not a digest")
    expect(fn("C_DigestInit")(H, None), CKR_ARGUMENTS_BAD, "NULL mechanism")
    op_gone("C_DigestFinal", None, byref(on))


@test
def aes_modes():
    key = aes_key(32)
    iv = os.urandom(16)
    for length in (0, 16, 48, 4096 + 16):
        data = os.urandom(length)
        for m in (mech(CKM_AES_ECB), mech(CKM_AES_CBC, iv)):
            ct = encrypt(m, key, data)
            check(len(ct) == length, "ECB/CBC length")
            check(decrypt(m, key, ct) == data, "ECB/CBC round trip")
    for length in (0, 1, 15, 16, 17, 1000):
        data = os.urandom(length)
        ct = encrypt(mech(CKM_AES_CBC_PAD, iv), key, data)
        check(len(ct) == (length // 16 + 1) * 16, "CBC_PAD length")
        check(decrypt(mech(CKM_AES_CBC_PAD, iv), key, ct) == data, "CBC_PAD round trip")
        # CBC_PAD is CBC over the PKCS#7-padded data
        pad = 16 - length % 16
        check(encrypt(mech(CKM_AES_CBC, iv), key, data + bytes([pad]) * pad) == ct, "CBC_PAD = CBC(pad)")
        ctr = CTR(128, (c_ubyte * 16).from_buffer_copy(iv))
        c2 = encrypt(mech(CKM_AES_CTR, ctr), key, data)
        check(len(c2) == length and decrypt(mech(CKM_AES_CTR, ctr), key, c2) == data, "CTR round trip")
    # multi-part equals one-shot (output comes at Final)
    data = os.urandom(1000)
    for m in (mech(CKM_AES_CBC_PAD, iv), mech(CKM_AES_CTR, CTR(64, (c_ubyte * 16).from_buffer_copy(iv)))):
        whole = encrypt(m, key, data)
        parts = multi("C_EncryptInit", "C_EncryptUpdate", "C_EncryptFinal", m, key,
                      [data[:10], data[10:500], b"", data[500:]])
        check(parts == whole, "multi-part encryption")
        back = multi("C_DecryptInit", "C_DecryptUpdate", "C_DecryptFinal", m, key,
                     [whole[:7], whole[7:800], whole[800:]])
        check(back == data, "multi-part decryption")


@test
def aes_known_answers():
    value = bytes(range(32))
    key = import_secret(CKK_AES, value)
    if key is None:
        return
    iv = os.urandom(16)
    data = os.urandom(100)
    c = Cipher(algorithms.AES(value), modes.CBC(iv)).encryptor()
    p = c_padding.PKCS7(128).padder()
    check(encrypt(mech(CKM_AES_CBC_PAD, iv), key, data) == c.update(p.update(data) + p.finalize()) + c.finalize(),
          "CBC_PAD known answer")
    c = Cipher(algorithms.AES(value), modes.ECB()).encryptor()
    check(encrypt(mech(CKM_AES_ECB), key, data[:96]) == c.update(data[:96]) + c.finalize(), "ECB known answer")
    c = Cipher(algorithms.AES(value), modes.CTR(iv)).encryptor()
    check(encrypt(mech(CKM_AES_CTR, CTR(128, (c_ubyte * 16).from_buffer_copy(iv))), key, data) ==
          c.update(data) + c.finalize(), "CTR known answer")
    # a counter field that does not wrap in 32 bits gives the same stream
    cb = bytes(12) + b"\x00\x00\x00\x01"
    c = Cipher(algorithms.AES(value), modes.CTR(cb)).encryptor()
    check(encrypt(mech(CKM_AES_CTR, CTR(32, (c_ubyte * 16).from_buffer_copy(cb))), key, data) ==
          c.update(data) + c.finalize(), "CTR 32-bit counter known answer")
    nonce, aad = os.urandom(12), b"header"
    g = GCM(None, 12, 96, None, len(aad), 128)
    ivb, aadb = buf(nonce), buf(aad)
    g.pIv, g.pAAD = ctypes.cast(ivb, c_void_p), ctypes.cast(aadb, c_void_p)
    check(encrypt(mech(CKM_AES_GCM, g), key, data) == AESGCM(value).encrypt(nonce, data, aad), "GCM known answer")
    c = c_cmac.CMAC(algorithms.AES(value))
    c.update(data)
    check(sign(mech(CKM_AES_CMAC), key, data) == c.finalize(), "CMAC known answer")


def gcm_param(iv, aad, tagbits):
    g = GCM(None, len(iv), len(iv) * 8, None, len(aad), tagbits)
    g._iv, g._aad = buf(iv), buf(aad)
    g.pIv = ctypes.cast(g._iv, c_void_p)
    g.pAAD = ctypes.cast(g._aad, c_void_p) if aad else None
    return g


@test
def aes_gcm():
    key = aes_key(16)
    for ivlen, aad, tagbits, length in ((12, b"", 128, 0), (12, b"aad" * 50, 96, 100), (16, b"x", 32, 33),
                                        (60, b"", 128, 5000)):
        iv, data = os.urandom(ivlen), os.urandom(length)
        m = mech(CKM_AES_GCM, gcm_param(iv, aad, tagbits))
        ct = encrypt(m, key, data)
        check(len(ct) == length + tagbits // 8, "GCM output is ciphertext||tag")
        check(decrypt(m, key, ct) == data, "GCM round trip")
        parts = multi("C_DecryptInit", "C_DecryptUpdate", "C_DecryptFinal", m, key, [ct[:3], ct[3:]])
        check(parts == data, "GCM multi-part decryption")
        ok(init("C_DecryptInit", m, key), "DecryptInit")
        b, n = data_args(tamper(ct, len(ct) - 1))
        rv, _ = out_call("C_Decrypt", b, n)
        expect(rv, CKR_ENCRYPTED_DATA_INVALID, "tampered GCM tag")
        op_gone("C_Decrypt", b, n, None, byref(CK_ULONG(0)))
        if length:
            ok(init("C_DecryptInit", m, key), "DecryptInit")
            b, n = data_args(tamper(ct, 0))
            rv, _ = out_call("C_Decrypt", b, n)
            expect(rv, CKR_ENCRYPTED_DATA_INVALID, "tampered GCM ciphertext")
    m = mech(CKM_AES_GCM, gcm_param(os.urandom(12), b"", 128))
    ok(init("C_DecryptInit", m, key), "DecryptInit")
    b, n = data_args(b"short")
    rv, _ = out_call("C_Decrypt", b, n)
    expect(rv, CKR_ENCRYPTED_DATA_LEN_RANGE, "GCM input shorter than the tag")
    for bad in (gcm_param(os.urandom(12), b"", 33), gcm_param(os.urandom(12), b"", 24),
                gcm_param(b"", b"", 128), gcm_param(os.urandom(12), b"", 136)):
        expect(init("C_EncryptInit", mech(CKM_AES_GCM, bad), key), CKR_MECHANISM_PARAM_INVALID, "bad GCM params")
    expect(init("C_EncryptInit", mech(CKM_AES_GCM), key), CKR_MECHANISM_PARAM_INVALID, "no GCM params")


@test
def aes_conventions():
    key = aes_key(32)
    iv = os.urandom(16)
    data = os.urandom(40)
    m = mech(CKM_AES_CBC_PAD, iv)
    ok(init("C_EncryptInit", m, key), "EncryptInit")
    expect(init("C_EncryptInit", m, key), CKR_OPERATION_ACTIVE, "EncryptInit twice")
    b, n = data_args(data)
    on = CK_ULONG(0)
    ok(fn("C_Encrypt")(H, b, n, None, byref(on)), "length query")
    check(on.value == 48, "length query value %d" % on.value)
    small = (c_ubyte * 16)()
    sn = CK_ULONG(16)
    expect(fn("C_Encrypt")(H, b, n, small, byref(sn)), CKR_BUFFER_TOO_SMALL, "too small")
    check(sn.value == 48, "too small tells the length")
    big = (c_ubyte * 48)()
    bn = CK_ULONG(48)
    ok(fn("C_Encrypt")(H, b, n, big, byref(bn)), "operation still active after BUFFER_TOO_SMALL")
    ct = bytes(big[:48])
    op_gone("C_Encrypt", b, n, big, byref(bn))
    # decryption: the length query gives an upper bound, a buffer that fits
    # the plaintext but not the bound still works, and a result computed to
    # learn its length is kept, not computed again
    ok(init("C_DecryptInit", m, key), "DecryptInit")
    b, n = data_args(ct)
    on = CK_ULONG(0)
    ok(fn("C_Decrypt")(H, b, n, None, byref(on)), "decrypt length query")
    check(on.value >= 40, "upper bound")
    exact = (c_ubyte * 40)()
    en = CK_ULONG(40)
    ok(fn("C_Decrypt")(H, b, n, exact, byref(en)), "exact buffer")
    check(bytes(exact[: en.value]) == data, "exact buffer plaintext")
    ok(init("C_DecryptInit", m, key), "DecryptInit")
    sn = CK_ULONG(10)
    expect(fn("C_Decrypt")(H, b, n, small, byref(sn)), CKR_BUFFER_TOO_SMALL, "decrypt too small")
    check(sn.value == 40, "decrypt too small gives the exact length %d" % sn.value)
    en = CK_ULONG(40)
    ok(fn("C_Decrypt")(H, b, n, exact, byref(en)), "kept result")
    check(bytes(exact[: en.value]) == data, "kept result plaintext")
    # the same at Final
    ok(init("C_DecryptInit", m, key), "DecryptInit")
    for part in (ct[:16], ct[16:]):
        b, n = data_args(part)
        on = CK_ULONG(16)
        ok(fn("C_DecryptUpdate")(H, b, n, small, byref(on)), "DecryptUpdate")
    sn = CK_ULONG(8)
    expect(fn("C_DecryptFinal")(H, small, byref(sn)), CKR_BUFFER_TOO_SMALL, "DecryptFinal too small")
    check(sn.value == 40, "DecryptFinal too small gives the exact length")
    sn = CK_ULONG(0)
    ok(fn("C_DecryptFinal")(H, None, byref(sn)), "DecryptFinal length query after running")
    check(sn.value == 40, "the kept result's length")
    en = CK_ULONG(40)
    ok(fn("C_DecryptFinal")(H, exact, byref(en)), "DecryptFinal kept result")
    check(bytes(exact[: en.value]) == data, "DecryptFinal kept plaintext")
    op_gone("C_DecryptFinal", exact, byref(en))
    # errors end the operation
    ok(init("C_EncryptInit", mech(CKM_AES_ECB), key), "EncryptInit")
    b, n = data_args(b"x" * 15)
    rv, _ = out_call("C_Encrypt", b, n)
    expect(rv, CKR_DATA_LEN_RANGE, "ECB partial block")
    op_gone("C_Encrypt", b, n, None, byref(on))
    ok(init("C_DecryptInit", mech(CKM_AES_CBC, iv), key), "DecryptInit")
    rv, _ = out_call("C_Decrypt", b, n)
    expect(rv, CKR_ENCRYPTED_DATA_LEN_RANGE, "CBC partial block")
    bad = encrypt(mech(CKM_AES_CBC, iv), key, b"\x00" * 32)  # no valid padding
    ok(init("C_DecryptInit", m, key), "DecryptInit")
    b, n = data_args(bad)
    rv, _ = out_call("C_Decrypt", b, n)
    expect(rv, CKR_ENCRYPTED_DATA_INVALID, "bad CBC padding")
    # at most 3 MiB of data per operation; more is CKR_DATA_LEN_RANGE
    big = bytes(3 * 1024 * 1024 + 16)
    ok(init("C_EncryptInit", mech(CKM_AES_CBC, iv), key), "EncryptInit")
    b, n = data_args(big)
    rv, _ = out_call("C_Encrypt", b, n)
    expect(rv, CKR_DATA_LEN_RANGE, "4 MiB")
    ok(init("C_EncryptInit", mech(CKM_AES_CBC, iv), key), "EncryptInit")
    half = len(big) // 2
    b1, n1 = data_args(big[:half])
    out = (c_ubyte * 16)()
    on = CK_ULONG(16)
    ok(fn("C_EncryptUpdate")(H, b1, n1, out, byref(on)), "first half")
    on = CK_ULONG(16)
    expect(fn("C_EncryptUpdate")(H, b1, n1, out, byref(on)), CKR_DATA_LEN_RANGE, "second half")
    op_gone("C_EncryptFinal", None, byref(on))
    exactly = bytes(3 * 1024 * 1024)
    ok(init("C_EncryptInit", mech(CKM_AES_CTR, CTR(128, (c_ubyte * 16)())), key), "EncryptInit")
    b, n = data_args(exactly)
    rv, c3 = out_call("C_Encrypt", b, n)
    ok(rv, "3 MiB (the limit)")
    check(len(c3) == len(exactly), "3 MiB output")
    # C_Encrypt cannot finish a multi-part operation
    ok(init("C_EncryptInit", m, key), "EncryptInit")
    b, n = data_args(data)
    out = (c_ubyte * 64)()
    on = CK_ULONG(64)
    ok(fn("C_EncryptUpdate")(H, b, n, out, byref(on)), "EncryptUpdate")
    check(on.value == 0, "Update holds its output back")
    on = CK_ULONG(64)
    expect(fn("C_Encrypt")(H, b, n, out, byref(on)), CKR_OPERATION_ACTIVE, "C_Encrypt after an update")
    # cancelling with a NULL mechanism (3.0)
    ok(init("C_EncryptInit", m, key), "EncryptInit")
    ok(fn("C_EncryptInit")(H, None, hv(key)), "cancel")
    op_gone("C_EncryptFinal", None, byref(on))
    expect(fn("C_EncryptInit")(H, None, hv(key)), CKR_ARGUMENTS_BAD, "NULL mechanism")
    # arguments
    ok(init("C_EncryptInit", m, key), "EncryptInit")
    expect(fn("C_Encrypt")(H, b, n, out, None), CKR_ARGUMENTS_BAD, "NULL length pointer")
    ok(init("C_EncryptInit", m, key), "EncryptInit")
    expect(fn("C_Encrypt")(H, None, CK_ULONG(5), out, byref(on)), CKR_ARGUMENTS_BAD, "NULL data")
    op_gone("C_EncryptFinal", None, byref(on))
    # parameters
    for bad in (mech(CKM_AES_CBC, b"short"), mech(CKM_AES_CBC), mech(CKM_AES_ECB, iv),
                mech(CKM_AES_CTR, CTR(0, (c_ubyte * 16)())), mech(CKM_AES_CTR, CTR(129, (c_ubyte * 16)())),
                mech(CKM_AES_CTR, iv)):
        expect(init("C_EncryptInit", bad, key), CKR_MECHANISM_PARAM_INVALID, "bad parameter")
    # the counter field must not wrap
    cb = (c_ubyte * 16).from_buffer_copy(bytes(15) + b"\xff")
    ok(init("C_EncryptInit", mech(CKM_AES_CTR, CTR(8, cb)), key), "CTR init")
    b, n = data_args(bytes(17))
    rv, _ = out_call("C_Encrypt", b, n)
    expect(rv, CKR_DATA_LEN_RANGE, "CTR counter wrap")
    ok(init("C_EncryptInit", mech(CKM_AES_CTR, CTR(8, cb)), key), "CTR init")
    b, n = data_args(bytes(16))
    ok(out_call("C_Encrypt", b, n)[0], "CTR last counter value")
    # the parameter is copied at Init
    ivb = bytearray(iv)
    mm = mech(CKM_AES_CBC, bytes(ivb))
    ok(init("C_EncryptInit", mm, key), "EncryptInit")
    ctypes.memset(mm.pParameter, 0xAA, 16)
    b, n = data_args(bytes(16))
    rv, c1 = out_call("C_Encrypt", b, n)
    ok(rv, "encrypt")
    check(c1 == encrypt(mech(CKM_AES_CBC, iv), key, bytes(16)), "parameter copied at Init")
    # keys: type and usage
    rsa_pub, rsa_priv = rsa_pair()
    expect(init("C_EncryptInit", mech(CKM_AES_CBC, iv), rsa_pub), CKR_KEY_TYPE_INCONSISTENT, "RSA key for AES")
    noenc = aes_key(16, CKA_ENCRYPT=False)
    expect(init("C_EncryptInit", mech(CKM_AES_CBC, iv), noenc), CKR_KEY_FUNCTION_NOT_PERMITTED, "no CKA_ENCRYPT")
    ok(init("C_DecryptInit", mech(CKM_AES_CBC, iv), noenc), "decrypt allowed")
    fn("C_DecryptInit")(H, None, hv(noenc))
    expect(init("C_EncryptInit", mech(CKM_AES_CBC, iv), 0x7FFFFFF0), CKR_KEY_HANDLE_INVALID, "bad handle")
    expect(init("C_EncryptInit", mech(0x7FFF0000), key), CKR_MECHANISM_INVALID, "unknown mechanism")
    expect(init("C_EncryptInit", mech(CKM_SHA256_HMAC), key), CKR_MECHANISM_INVALID, "MAC for encryption")
    op_gone("C_Encrypt", b, n, None, byref(on))
    op_gone("C_DecryptFinal", None, byref(on))


@test
def aes_cmac():
    key = aes_key(16)
    data = os.urandom(77)
    mac = sign(mech(CKM_AES_CMAC), key, data)
    check(len(mac) == 16, "CMAC length")
    verify(mech(CKM_AES_CMAC), key, data, mac)
    expect(verify_rv(mech(CKM_AES_CMAC), key, data, tamper(mac)), CKR_SIGNATURE_INVALID, "tampered CMAC")
    expect(verify_rv(mech(CKM_AES_CMAC), key, data, mac[:8]), CKR_SIGNATURE_LEN_RANGE, "short CMAC")
    g = mech(CKM_AES_CMAC_GENERAL, ulong_param(8))
    short = sign(g, key, data)
    check(short == mac[:8], "CMAC_GENERAL is the leading bytes")
    verify(mech(CKM_AES_CMAC_GENERAL, ulong_param(8)), key, data, short)
    expect(init("C_SignInit", mech(CKM_AES_CMAC_GENERAL, ulong_param(17)), key), CKR_MECHANISM_PARAM_INVALID,
           "CMAC length 17")
    parts = multi("C_SignInit", "C_SignUpdate", "C_SignFinal", mech(CKM_AES_CMAC), key,
                  [data[:5], data[5:]], outputs=False)
    check(parts == mac, "multi-part CMAC")


@test
def hmacs():
    gkey = generic_key(32)
    value = os.urandom(40)
    known = import_secret(CKK_GENERIC_SECRET, value)
    data = os.urandom(300)
    for m, (g, name) in HMACS.items():
        mac = sign(mech(m), gkey, data)
        check(len(mac) == hashlib.new(name).digest_size, "HMAC length")
        verify(mech(m), gkey, data, mac)
        expect(verify_rv(mech(m), gkey, data, tamper(mac, 3)), CKR_SIGNATURE_INVALID, "tampered HMAC")
        short = sign(mech(g, ulong_param(10)), gkey, data)
        check(short == mac[:10], "HMAC_GENERAL is the leading bytes")
        verify(mech(g, ulong_param(10)), gkey, data, short)
        expect(verify_rv(mech(g, ulong_param(10)), gkey, data, mac), CKR_SIGNATURE_LEN_RANGE, "long HMAC")
        if known is not None:
            want = hmac.new(value, data, name).digest()
            verify(mech(m), known, data, want)  # Python's HMAC checked by the HSM
            check(sign(mech(m), known, data) == want, "HMAC %s known answer" % name)
    expect(init("C_SignInit", mech(CKM_SHA256_HMAC_GENERAL, ulong_param(33)), gkey), CKR_MECHANISM_PARAM_INVALID,
           "HMAC length 33")
    aes = aes_key(16)
    expect(init("C_SignInit", mech(CKM_SHA256_HMAC), aes), CKR_KEY_TYPE_INCONSISTENT, "AES key for HMAC")
    mac = sign(mech(CKM_SHA256_HMAC), gkey, data)
    parts = multi("C_SignInit", "C_SignUpdate", "C_SignFinal", mech(CKM_SHA256_HMAC), gkey,
                  [data[:100], data[100:]], outputs=False)
    check(parts == mac, "multi-part HMAC")
    ok(init("C_VerifyInit", mech(CKM_SHA256_HMAC), gkey), "VerifyInit")
    for part in (data[:1], data[1:]):
        b, n = data_args(part)
        ok(fn("C_VerifyUpdate")(H, b, n), "VerifyUpdate")
    s, sn = data_args(mac)
    ok(fn("C_VerifyFinal")(H, s, sn), "VerifyFinal")


@test
def rsa_signatures():
    pub, priv = rsa_pair(2048)
    lpub = rsa_public(pub)
    data = os.urandom(200)
    # CKM_RSA_PKCS signs the DigestInfo it is given
    di = DIGEST_INFO_SHA256 + hashlib.sha256(data).digest()
    sig = sign(mech(CKM_RSA_PKCS), priv, di)
    check(len(sig) == 256, "RSA signature length")
    lpub.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
    verify(mech(CKM_RSA_PKCS), pub, di, sig)
    expect(verify_rv(mech(CKM_RSA_PKCS), pub, di, tamper(sig, 100)), CKR_SIGNATURE_INVALID, "tampered")
    expect(verify_rv(mech(CKM_RSA_PKCS), pub, tamper(di, 30), sig), CKR_SIGNATURE_INVALID, "other data")
    expect(verify_rv(mech(CKM_RSA_PKCS), pub, di, sig[:-1]), CKR_SIGNATURE_LEN_RANGE, "short signature")
    ok(init("C_SignInit", mech(CKM_RSA_PKCS), priv), "SignInit")
    b, n = data_args(os.urandom(246))
    rv, _ = out_call("C_Sign", b, n)
    expect(rv, CKR_DATA_LEN_RANGE, "RSA_PKCS input over k-11")
    # recovery
    ok(init("C_SignRecoverInit", mech(CKM_RSA_PKCS), priv), "SignRecoverInit")
    b, n = data_args(b"recover me")
    rv, rsig = out_call("C_SignRecover", b, n)
    ok(rv, "SignRecover")
    check(rsig == sign(mech(CKM_RSA_PKCS), priv, b"recover me"), "sign-recover = sign (PKCS#1 v1.5)")
    ok(init("C_VerifyRecoverInit", mech(CKM_RSA_PKCS), pub), "VerifyRecoverInit")
    s, sn = data_args(rsig)
    rv, rec = out_call("C_VerifyRecover", s, sn)
    ok(rv, "VerifyRecover")
    check(rec == b"recover me", "recovered data")
    ok(init("C_VerifyRecoverInit", mech(CKM_RSA_PKCS), pub), "VerifyRecoverInit")
    s, sn = data_args(tamper(rsig, 7))
    rv, _ = out_call("C_VerifyRecover", s, sn)
    expect(rv, CKR_SIGNATURE_INVALID, "tampered recovery")
    # raw RSA
    x = b"\x00" + os.urandom(255)
    xsig = sign(mech(CKM_RSA_X_509), priv, x)
    check(pow(int.from_bytes(xsig, "big"), 65537, lpub.public_numbers().n) == int.from_bytes(x, "big"), "raw")
    verify(mech(CKM_RSA_X_509), pub, x, xsig)
    verify(mech(CKM_RSA_X_509), pub, x[1:], xsig)  # shorter input: left-padded with zeros
    expect(verify_rv(mech(CKM_RSA_X_509), pub, tamper(x, 9), xsig), CKR_SIGNATURE_INVALID, "raw other data")
    ok(init("C_VerifyRecoverInit", mech(CKM_RSA_X_509), pub), "VerifyRecoverInit")
    s, sn = data_args(xsig)
    rv, rec = out_call("C_VerifyRecover", s, sn)
    ok(rv, "raw VerifyRecover")
    check(rec == x, "raw recovery gives the whole block")
    # hash-then-sign, single and multi-part, checked locally
    for m, h in RSA_PKCS_H.items():
        sig = sign(mech(m), priv, data)
        lpub.verify(sig, data, padding.PKCS1v15(), HASHES[h][1])
        verify(mech(m), pub, data, sig)
        parts = multi("C_SignInit", "C_SignUpdate", "C_SignFinal", mech(m), priv, [data[:3], data[3:]],
                      outputs=False)
        check(parts == sig, "multi-part RSA PKCS#1 v1.5 is deterministic")
        expect(verify_rv(mech(m), pub, data + b"!", sig), CKR_SIGNATURE_INVALID, "other data")
    for m, h in RSA_PSS_H.items():
        name, hh, mgf = HASHES[h]
        p = PSS(h, mgf, hashlib.new(name).digest_size)
        sig = sign(mech(m, p), priv, data)
        lpub.verify(sig, data, padding.PSS(padding.MGF1(hh), hashlib.new(name).digest_size), hh)
        verify(mech(m, PSS(h, mgf, hashlib.new(name).digest_size)), pub, data, sig)
        expect(verify_rv(mech(m, PSS(h, mgf, hashlib.new(name).digest_size)), pub, data, tamper(sig, 5)),
               CKR_SIGNATURE_INVALID, "tampered PSS")
    # CKM_RSA_PKCS_PSS: the digest itself, salt 0 and 20, MGF other than the hash
    d = hashlib.sha384(data).digest()
    for slen, mgf, lh in ((0, CKG_MGF1_SHA384, hashes.SHA384()), (20, CKG_MGF1_SHA1, hashes.SHA1())):
        sig = sign(mech(CKM_RSA_PKCS_PSS, PSS(CKM_SHA384, mgf, slen)), priv, d)
        lpub.verify(sig, d, padding.PSS(padding.MGF1(lh), slen), utils.Prehashed(hashes.SHA384()))
        verify(mech(CKM_RSA_PKCS_PSS, PSS(CKM_SHA384, mgf, slen)), pub, d, sig)
    ok(init("C_SignInit", mech(CKM_RSA_PKCS_PSS, PSS(CKM_SHA384, CKG_MGF1_SHA384, 48)), priv), "SignInit")
    b, n = data_args(d[:47])
    rv, _ = out_call("C_Sign", b, n)
    expect(rv, CKR_DATA_LEN_RANGE, "PSS digest of the wrong length")
    for bad in (mech(CKM_SHA256_RSA_PKCS_PSS, PSS(CKM_SHA384, CKG_MGF1_SHA384, 32)),
                mech(CKM_RSA_PKCS_PSS, PSS(CKM_MD5, CKG_MGF1_SHA256, 32)),
                mech(CKM_RSA_PKCS_PSS, PSS(CKM_SHA256, 0x77, 32)),
                mech(CKM_RSA_PKCS_PSS, PSS(CKM_SHA512, CKG_MGF1_SHA512, 200)),
                mech(CKM_RSA_PKCS_PSS)):
        expect(init("C_SignInit", bad, priv), CKR_MECHANISM_PARAM_INVALID, "bad PSS parameter")
    # keys
    expect(init("C_SignInit", mech(CKM_SHA256_RSA_PKCS), pub), CKR_KEY_TYPE_INCONSISTENT, "sign with public")
    ecpub, ecpriv = ec_pair("P-256")
    expect(init("C_SignInit", mech(CKM_SHA256_RSA_PKCS), ecpriv), CKR_KEY_TYPE_INCONSISTENT, "EC key for RSA")
    # C_Sign cannot finish a multi-part operation
    ok(init("C_SignInit", mech(CKM_SHA256_RSA_PKCS), priv), "SignInit")
    b, n = data_args(data)
    ok(fn("C_SignUpdate")(H, b, n), "SignUpdate")
    out = (c_ubyte * 512)()
    on = CK_ULONG(512)
    expect(fn("C_Sign")(H, b, n, out, byref(on)), CKR_OPERATION_ACTIVE, "C_Sign after C_SignUpdate")
    # length conventions for signatures
    ok(init("C_SignInit", mech(CKM_SHA256_RSA_PKCS), priv), "SignInit")
    on = CK_ULONG(0)
    ok(fn("C_Sign")(H, b, n, None, byref(on)), "sign length query")
    check(on.value == 256, "sign length")
    on = CK_ULONG(100)
    expect(fn("C_Sign")(H, b, n, out, byref(on)), CKR_BUFFER_TOO_SMALL, "sign too small")
    on = CK_ULONG(512)
    ok(fn("C_Sign")(H, b, n, out, byref(on)), "sign after too small")
    check(on.value == 256, "signature length")


@test
def rsa_encryption():
    pub, priv = rsa_pair(2048)
    lpub = rsa_public(pub)
    msg = os.urandom(100)
    # PKCS#1 v1.5 (the role of this test is granted PKCS#1 v1.5 decryption)
    ct = encrypt(mech(CKM_RSA_PKCS), pub, msg)
    check(len(ct) == 256, "RSA ciphertext length")
    check(decrypt(mech(CKM_RSA_PKCS), priv, ct) == msg, "PKCS#1 v1.5 round trip")
    check(decrypt(mech(CKM_RSA_PKCS), priv, lpub.encrypt(msg, padding.PKCS1v15())) == msg, "local encryption")
    ok(init("C_DecryptInit", mech(CKM_RSA_PKCS), priv), "DecryptInit")
    b, n = data_args(tamper(ct, 200))
    rv, _ = out_call("C_Decrypt", b, n)
    expect(rv, CKR_ENCRYPTED_DATA_INVALID, "bad PKCS#1 v1.5 ciphertext")
    ok(init("C_DecryptInit", mech(CKM_RSA_PKCS), priv), "DecryptInit")
    b, n = data_args(ct[:-1])
    rv, _ = out_call("C_Decrypt", b, n)
    expect(rv, CKR_ENCRYPTED_DATA_LEN_RANGE, "short RSA ciphertext")
    ok(init("C_EncryptInit", mech(CKM_RSA_PKCS), pub), "EncryptInit")
    b, n = data_args(os.urandom(246))
    rv, _ = out_call("C_Encrypt", b, n)
    expect(rv, CKR_DATA_LEN_RANGE, "RSA_PKCS input over k-11")
    # a plaintext shorter than the bound, asked with a too-small buffer, is kept
    ok(init("C_DecryptInit", mech(CKM_RSA_PKCS), priv), "DecryptInit")
    b, n = data_args(ct)
    small = (c_ubyte * 10)()
    sn = CK_ULONG(10)
    expect(fn("C_Decrypt")(H, b, n, small, byref(sn)), CKR_BUFFER_TOO_SMALL, "too small")
    check(sn.value == 100, "exact length after running once: %d" % sn.value)
    big = (c_ubyte * 100)()
    bn = CK_ULONG(100)
    ok(fn("C_Decrypt")(H, b, n, big, byref(bn)), "kept plaintext")
    check(bytes(big) == msg, "kept plaintext value")
    # raw
    x = b"\x00" + os.urandom(255)
    xc = encrypt(mech(CKM_RSA_X_509), pub, x)
    check(decrypt(mech(CKM_RSA_X_509), priv, xc) == x, "raw round trip")
    # OAEP
    for h, label in ((CKM_SHA256, b""), (CKM_SHA_1, b"label"), (CKM_SHA512, os.urandom(100))):
        name, hh, mgf = HASHES[h]
        lb = buf(label)

        def oaep():
            o = OAEP(h, mgf, CKZ_DATA_SPECIFIED, ctypes.cast(lb, c_void_p) if label else None, len(label))
            return mech(CKM_RSA_PKCS_OAEP, o)
        ct = encrypt(oaep(), pub, msg)
        check(decrypt(oaep(), priv, ct) == msg, "OAEP round trip")
        lc = lpub.encrypt(msg, padding.OAEP(padding.MGF1(hh), hh, label or None))
        check(decrypt(oaep(), priv, lc) == msg, "OAEP from Python")
        ok(init("C_DecryptInit", oaep(), priv), "DecryptInit")
        b, n = data_args(tamper(ct, 50))
        rv, _ = out_call("C_Decrypt", b, n)
        expect(rv, CKR_ENCRYPTED_DATA_INVALID, "bad OAEP ciphertext")
    o = OAEP(CKM_SHA256, CKG_MGF1_SHA256, 0x42, None, 0)
    expect(init("C_EncryptInit", mech(CKM_RSA_PKCS_OAEP, o), pub), CKR_MECHANISM_PARAM_INVALID, "OAEP source")
    ok(init("C_EncryptInit", mech(CKM_RSA_PKCS_OAEP, OAEP(CKM_SHA512, CKG_MGF1_SHA512, 1, None, 0)), pub), "init")
    b, n = data_args(os.urandom(256 - 2 * 64 - 1))
    rv, _ = out_call("C_Encrypt", b, n)
    expect(rv, CKR_DATA_LEN_RANGE, "OAEP input too long")
    expect(init("C_DecryptInit", mech(CKM_RSA_PKCS), pub), CKR_KEY_TYPE_INCONSISTENT, "decrypt with public")


def p1363_to_der(sig):
    h = len(sig) // 2
    return utils.encode_dss_signature(int.from_bytes(sig[:h], "big"), int.from_bytes(sig[h:], "big"))


@test
def ecdsa():
    data = os.urandom(500)
    for curve, lcurve, size in (("P-256", ec.SECP256R1(), 64), ("P-384", ec.SECP384R1(), 96),
                                ("P-521", ec.SECP521R1(), 132)):
        pub, priv = ec_pair(curve)
        lpub = ec.EllipticCurvePublicKey.from_encoded_point(lcurve, ec_point(pub))
        for m, h in ECDSA_H.items():
            sig = sign(mech(m), priv, data)
            check(len(sig) == size, "ECDSA r||s length")
            lpub.verify(p1363_to_der(sig), data, ec.ECDSA(HASHES[h][1]))
            verify(mech(m), pub, data, sig)
            expect(verify_rv(mech(m), pub, data, tamper(sig, 1)), CKR_SIGNATURE_INVALID, "tampered ECDSA")
        for name, lh in (("sha1", hashes.SHA1()), ("sha224", hashes.SHA224()), ("sha256", hashes.SHA256()),
                         ("sha384", hashes.SHA384()), ("sha512", hashes.SHA512())):
            d = hashlib.new(name, data).digest()
            sig = sign(mech(CKM_ECDSA), priv, d)
            lpub.verify(p1363_to_der(sig), d, ec.ECDSA(utils.Prehashed(lh)))
            verify(mech(CKM_ECDSA), pub, d, sig)
        expect(verify_rv(mech(CKM_ECDSA), pub, d, sig[:-1]), CKR_SIGNATURE_LEN_RANGE, "short ECDSA signature")
        ok(init("C_SignInit", mech(CKM_ECDSA), priv), "SignInit")
        b, n = data_args(os.urandom(33))
        rv, _ = out_call("C_Sign", b, n)
        expect(rv, CKR_DATA_LEN_RANGE, "ECDSA over 33 bytes")
        sig = sign(mech(CKM_ECDSA_SHA256), priv, data)
        ok(init("C_VerifyInit", mech(CKM_ECDSA_SHA256), pub), "VerifyInit")
        for part in (data[:250], data[250:]):
            b, n = data_args(part)
            ok(fn("C_VerifyUpdate")(H, b, n), "VerifyUpdate")
        s, sn = data_args(sig)
        ok(fn("C_VerifyFinal")(H, s, sn), "multi-part ECDSA verify")
    # hash-then-sign hashes here: any length, one-shot or in parts
    big = os.urandom(5 * 1024 * 1024)
    sig = sign(mech(CKM_ECDSA_SHA256), priv, big)
    lpub.verify(p1363_to_der(sig), big, ec.ECDSA(hashes.SHA256()))
    ok(init("C_VerifyInit", mech(CKM_ECDSA_SHA256), pub), "VerifyInit")
    for i in range(0, len(big), 1 << 20):
        b, n = data_args(big[i:i + (1 << 20)])
        ok(fn("C_VerifyUpdate")(H, b, n), "VerifyUpdate")
    s, sn = data_args(sig)
    ok(fn("C_VerifyFinal")(H, s, sn), "5 MiB multi-part verify")
    nod = ec_pair("P-256")
    expect(init("C_SignInit", mech(CKM_ECDSA_SHA256), nod[0]), CKR_KEY_TYPE_INCONSISTENT, "sign with public")
    expect(init("C_SignInit", mech(CKM_ECDSA, b"x"), nod[1]), CKR_MECHANISM_PARAM_INVALID, "ECDSA parameter")


@test
def eddsa():
    pub, priv = ec_pair("ED25519")
    lpub = ed25519.Ed25519PublicKey.from_public_bytes(ec_point(pub))
    for data in (b"", os.urandom(1), os.urandom(5000)):
        sig = sign(mech(CKM_EDDSA), priv, data)
        check(len(sig) == 64, "Ed25519 signature length")
        lpub.verify(sig, data)
        verify(mech(CKM_EDDSA), pub, data, sig)
        expect(verify_rv(mech(CKM_EDDSA), pub, data, tamper(sig, 40)), CKR_SIGNATURE_INVALID, "tampered EdDSA")
        parts = multi("C_SignInit", "C_SignUpdate", "C_SignFinal", mech(CKM_EDDSA), priv,
                      [data[:1], data[1:]], outputs=False)
        check(parts == sig, "multi-part EdDSA (deterministic)")
    sig = sign(mech(CKM_EDDSA, EDDSA(0, 0, None)), priv, b"params")
    lpub.verify(sig, b"params")
    ctx = buf(b"ctx")
    expect(init("C_SignInit", mech(CKM_EDDSA, EDDSA(1, 0, None)), priv), CKR_MECHANISM_PARAM_INVALID, "Ed25519ph")
    expect(init("C_SignInit", mech(CKM_EDDSA, EDDSA(0, 3, ctypes.cast(ctx, c_void_p))), priv),
           CKR_MECHANISM_PARAM_INVALID, "Ed25519ctx")
    ecpub, ecpriv = ec_pair("P-256")
    expect(init("C_SignInit", mech(CKM_EDDSA), ecpriv), CKR_KEY_TYPE_INCONSISTENT, "P-256 key for EdDSA")
    expect(verify_rv(mech(CKM_EDDSA), pub, b"x", bytes(63)), CKR_SIGNATURE_LEN_RANGE, "63-byte signature")


def ecdh_mech(point, kdf=CKD_NULL, shared=b""):
    p = ECDH(kdf, len(shared), None, len(point), None)
    p._pt, p._sh = buf(point), buf(shared)
    p.pPublicData = ctypes.cast(p._pt, c_void_p)
    if shared:
        p.pSharedData = ctypes.cast(p._sh, c_void_p)
    return mech(CKM_ECDH1_DERIVE, p)


def derive(base, m, template):
    attrs = (ATTR * len(template))()
    keep = []
    for i, (t, v) in enumerate(template):
        if isinstance(v, bool):
            b = buf(b"\x01" if v else b"\x00")
            n = 1
        elif isinstance(v, int):
            b = CK_ULONG(v)
            n = ctypes.sizeof(b)
        else:
            b, n = buf(v), len(v)
        keep.append(b)
        attrs[i] = ATTR(t, ctypes.cast(byref(b), c_void_p), n)
    h = CK_ULONG(0)
    rv = fn("C_DeriveKey")(H, byref(m), hv(base), attrs, CK_ULONG(len(template)), byref(h))
    return rv, h.value


def same_secret(k1, k2, aes):
    """Two keys the test cannot read are equal when they compute equal results."""
    data = b"the same key?" * 3
    if aes:
        m = lambda: mech(CKM_AES_CBC_PAD, bytes(16))  # noqa: E731
        return encrypt(m(), k1, data) == encrypt(m(), k2, data)
    return sign(mech(CKM_SHA256_HMAC), k1, data) == sign(mech(CKM_SHA256_HMAC), k2, data)


@test
def ecdh():
    a_pub, a_priv = ec_pair("P-256", derive=True)
    b_pub, b_priv = ec_pair("P-256", derive=True)
    aes_t = [(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES), (CKA_VALUE_LEN, 32), (CKA_TOKEN, False),
             (CKA_ENCRYPT, True), (CKA_DECRYPT, True)]
    gen_t = [(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_GENERIC_SECRET), (CKA_TOKEN, False),
             (CKA_SIGN, True), (CKA_VERIFY, True)]
    # raw point one way, DER-wrapped CKA_EC_POINT the other
    rv, ka = derive(a_priv, ecdh_mech(ec_point(b_pub)), aes_t)
    ok(rv, "derive A")
    rv, kb = derive(b_priv, ecdh_mech(attr(a_pub, CKA_EC_POINT)), aes_t)
    ok(rv, "derive B (DER-wrapped point)")
    check(same_secret(ka, kb, True), "ECDH: both sides agree (AES-256, CKD_NULL)")
    for kdf in (CKD_SHA256_KDF, CKD_SHA384_KDF, CKD_SHA512_KDF):
        t = gen_t + [(CKA_VALUE_LEN, 48)]
        rv, ka = derive(a_priv, ecdh_mech(ec_point(b_pub), kdf, b"shared info"), t)
        ok(rv, "derive X9.63 A")
        rv, kb = derive(b_priv, ecdh_mech(ec_point(a_pub), kdf, b"shared info"), t)
        ok(rv, "derive X9.63 B")
        check(same_secret(ka, kb, False), "ECDH X9.63: both sides agree")
        rv, kc = derive(b_priv, ecdh_mech(ec_point(a_pub), kdf, b"other info"), t)
        ok(rv, "derive X9.63 C")
        check(not same_secret(ka, kc, False), "ECDH X9.63: shared info matters")
    rv, kg = derive(a_priv, ecdh_mech(ec_point(b_pub)), gen_t)
    ok(rv, "derive the whole shared secret")
    check(value_len(kg) == 32, "CKD_NULL generic key: the whole secret")
    # X25519
    x_pub, x_priv = ec_pair("X25519")
    y_pub, y_priv = ec_pair("X25519")
    rv, ka = derive(x_priv, ecdh_mech(ec_point(y_pub)), aes_t)
    ok(rv, "X25519 derive A")
    rv, kb = derive(y_priv, ecdh_mech(attr(x_pub, CKA_EC_POINT)), aes_t)
    ok(rv, "X25519 derive B")
    check(same_secret(ka, kb, True), "X25519: both sides agree")
    # errors
    bad_point = bytearray(ec_point(b_pub))
    bad_point[-1] ^= 1
    expect(derive(a_priv, ecdh_mech(bytes(bad_point)), aes_t)[0], CKR_MECHANISM_PARAM_INVALID, "off-curve point")
    expect(derive(a_priv, ecdh_mech(ec_point(b_pub)[:-1]), aes_t)[0], CKR_MECHANISM_PARAM_INVALID, "short point")
    expect(derive(a_priv, ecdh_mech(ec_point(b_pub), CKD_SHA1_KDF), gen_t + [(CKA_VALUE_LEN, 16)])[0],
           CKR_MECHANISM_PARAM_INVALID, "CKD_SHA1_KDF")
    expect(derive(a_priv, ecdh_mech(ec_point(b_pub), CKD_NULL, b"x"), aes_t)[0], CKR_MECHANISM_PARAM_INVALID,
           "shared data with CKD_NULL")
    expect(derive(a_priv, ecdh_mech(ec_point(b_pub), CKD_SHA256_KDF), gen_t)[0], CKR_TEMPLATE_INCOMPLETE,
           "KDF without a length")
    s_pub, s_priv = ec_pair("P-256")  # no CKA_DERIVE
    expect(derive(s_priv, ecdh_mech(ec_point(b_pub)), aes_t)[0], CKR_KEY_FUNCTION_NOT_PERMITTED, "no CKA_DERIVE")
    expect(derive(a_pub, ecdh_mech(ec_point(b_pub)), aes_t)[0], CKR_KEY_TYPE_INCONSISTENT, "public base key")
    expect(derive(a_priv, mech(CKM_ECDH1_DERIVE), aes_t)[0], CKR_MECHANISM_PARAM_INVALID, "no parameter")
    expect(derive(a_priv, mech(CKM_SHA256), aes_t)[0], CKR_MECHANISM_INVALID, "not a derivation")


def wrap(m, wkey, key, size=None):
    return out_call("C_WrapKey", byref(m), hv(wkey), hv(key), size=size)


def unwrap(m, ukey, wrapped, template):
    attrs = (ATTR * len(template))()
    keep = []
    for i, (t, v) in enumerate(template):
        if isinstance(v, bool):
            b, n = buf(b"\x01" if v else b"\x00"), 1
        elif isinstance(v, int):
            b = CK_ULONG(v)
            n = ctypes.sizeof(b)
        else:
            b, n = buf(v), len(v)
        keep.append(b)
        attrs[i] = ATTR(t, ctypes.cast(byref(b), c_void_p), n)
    h = CK_ULONG(0)
    w, wn = data_args(wrapped)
    rv = fn("C_UnwrapKey")(H, byref(m), hv(ukey), w, wn, attrs, CK_ULONG(len(template)), byref(h))
    return rv, h.value


@test
def wrapping():
    kek = aes_key(32)
    target = aes_key(16, CKA_EXTRACTABLE=True)
    secret_t = [(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES), (CKA_TOKEN, False), (CKA_ENCRYPT, True),
                (CKA_DECRYPT, True)]
    # RFC 3394
    n = CK_ULONG(0)
    ok(fn("C_WrapKey")(H, byref(mech(CKM_AES_KEY_WRAP)), hv(kek), hv(target), None, byref(n)), "length query")
    check(n.value == 24, "KW length")
    small = (c_ubyte * 8)()
    n = CK_ULONG(8)
    expect(fn("C_WrapKey")(H, byref(mech(CKM_AES_KEY_WRAP)), hv(kek), hv(target), small, byref(n)),
           CKR_BUFFER_TOO_SMALL, "KW too small")
    rv, w = wrap(mech(CKM_AES_KEY_WRAP), kek, target)
    ok(rv, "KW")
    check(len(w) == 24, "KW output")
    rv, h = unwrap(mech(CKM_AES_KEY_WRAP), kek, w, secret_t)
    ok(rv, "KW unwrap")
    check(same_secret(h, target, True), "KW round trip")
    check(value_len(h) == 16, "unwrapped key length")
    expect(unwrap(mech(CKM_AES_KEY_WRAP), kek, tamper(w, 5), secret_t)[0], CKR_WRAPPED_KEY_INVALID, "tampered KW")
    expect(unwrap(mech(CKM_AES_KEY_WRAP), kek, w[:-1], secret_t)[0], CKR_WRAPPED_KEY_LEN_RANGE, "KW length")
    rv, _ = wrap(mech(CKM_AES_KEY_WRAP, bytes.fromhex("A6A6A6A6A6A6A6A6")), kek, target)
    ok(rv, "KW with the default IV given")
    expect(wrap(mech(CKM_AES_KEY_WRAP, bytes(8)), kek, target)[0], CKR_MECHANISM_PARAM_INVALID, "other KW IV")
    # known answer
    kv, tv = os.urandom(32), os.urandom(24)
    kk = import_secret(CKK_AES, kv, CKA_WRAP=True, CKA_UNWRAP=True)
    kt = import_secret(CKK_AES, tv, CKA_EXTRACTABLE=True)
    if kk is not None and kt is not None:
        rv, w2 = wrap(mech(CKM_AES_KEY_WRAP), kk, kt)
        ok(rv, "KW known")
        check(w2 == keywrap.aes_key_wrap(kv, tv), "KW known answer (RFC 3394)")
        rv, w3 = wrap(mech(CKM_AES_KEY_WRAP_PAD), kk, kt)
        ok(rv, "KWP known")
        check(w3 == keywrap.aes_key_wrap_with_padding(kv, tv), "KWP known answer (RFC 5649)")
    # RFC 5649 with a generic secret of an odd length
    g = generic_key(21, CKA_EXTRACTABLE=True)
    rv, w = wrap(mech(CKM_AES_KEY_WRAP_PAD), kek, g)
    ok(rv, "KWP")
    check(len(w) == 32, "KWP length")
    expect(wrap(mech(CKM_AES_KEY_WRAP), kek, g)[0], CKR_KEY_NOT_WRAPPABLE, "21 bytes under KW")
    rv, h = unwrap(mech(CKM_AES_KEY_WRAP_PAD), kek, w,
                   [(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_GENERIC_SECRET), (CKA_TOKEN, False),
                    (CKA_SIGN, True), (CKA_VERIFY, True)])
    ok(rv, "KWP unwrap")
    check(same_secret(h, g, False), "KWP round trip")
    # private key under KWP (PKCS#8)
    e_pub, e_priv = ec_pair("P-256", extractable=True)
    rv, w = wrap(mech(CKM_AES_KEY_WRAP_PAD), kek, e_priv)
    ok(rv, "KWP private key")
    rv, h = unwrap(mech(CKM_AES_KEY_WRAP_PAD), kek, w,
                   [(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_KEY_TYPE, CKK_EC), (CKA_TOKEN, False), (CKA_SIGN, True)])
    ok(rv, "KWP private unwrap")
    verify(mech(CKM_ECDSA_SHA256), e_pub, b"moved", sign(mech(CKM_ECDSA_SHA256), h, b"moved"))
    # RSA OAEP
    r_pub, r_priv = rsa_pair(2048)

    def oaep():
        return mech(CKM_RSA_PKCS_OAEP, OAEP(CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, None, 0))
    rv, w = wrap(oaep(), r_pub, target)
    ok(rv, "OAEP wrap")
    check(len(w) == 256, "OAEP wrap length")
    rv, h = unwrap(oaep(), r_priv, w, secret_t)
    ok(rv, "OAEP unwrap")
    check(same_secret(h, target, True), "OAEP round trip")
    expect(unwrap(oaep(), r_priv, tamper(w, 9), secret_t)[0], CKR_WRAPPED_KEY_INVALID, "tampered OAEP")
    # a token key needs a read/write session
    ro = CK_ULONG(0)
    ok(fn("C_OpenSession")(CK_ULONG(SLOT), CK_ULONG(CKF_SERIAL_SESSION), None, None, byref(ro)), "RO session")
    rv, w = wrap(mech(CKM_AES_KEY_WRAP), kek, target)
    attrs = (ATTR * 3)()
    cls, kt, tok = CK_ULONG(CKO_SECRET_KEY), CK_ULONG(CKK_AES), c_ubyte(1)
    attrs[0] = ATTR(CKA_CLASS, ctypes.cast(byref(cls), c_void_p), ctypes.sizeof(cls))
    attrs[1] = ATTR(CKA_KEY_TYPE, ctypes.cast(byref(kt), c_void_p), ctypes.sizeof(kt))
    attrs[2] = ATTR(CKA_TOKEN, ctypes.cast(byref(tok), c_void_p), 1)
    hh = CK_ULONG(0)
    wb, wn = data_args(w)
    expect(fn("C_UnwrapKey")(ro, byref(mech(CKM_AES_KEY_WRAP)), hv(kek), wb, wn, attrs, CK_ULONG(3), byref(hh)),
           CKR_SESSION_READ_ONLY, "token key in a read-only session")
    ok(fn("C_CloseSession")(ro), "close RO session")
    expect(unwrap(mech(CKM_AES_KEY_WRAP_PAD), kek, bytes(24), [(CKA_CLASS, CKO_PRIVATE_KEY)])[0],
           CKR_TEMPLATE_INCOMPLETE, "private key without a type")
    expect(unwrap(mech(CKM_AES_KEY_WRAP), kek, w, [(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_KEY_TYPE, CKK_EC)])[0],
           CKR_TEMPLATE_INCONSISTENT, "private key under KW")
    # refusals
    fixed = aes_key(16)  # not extractable
    expect(wrap(mech(CKM_AES_KEY_WRAP), kek, fixed)[0], CKR_KEY_UNEXTRACTABLE, "unextractable")
    expect(wrap(mech(CKM_AES_KEY_WRAP), r_pub, target)[0], CKR_WRAPPING_KEY_TYPE_INCONSISTENT, "RSA key for KW")
    nowrap = aes_key(32, CKA_WRAP=False)
    expect(wrap(mech(CKM_AES_KEY_WRAP), nowrap, target)[0], CKR_KEY_FUNCTION_NOT_PERMITTED, "no CKA_WRAP")
    expect(wrap(mech(CKM_AES_KEY_WRAP), 0x7FFFFFF1, target)[0], CKR_WRAPPING_KEY_HANDLE_INVALID, "bad wrap handle")
    expect(wrap(mech(CKM_AES_KEY_WRAP), kek, 0x7FFFFFF1)[0], CKR_KEY_HANDLE_INVALID, "bad key handle")
    expect(wrap(mech(CKM_AES_CBC, bytes(16)), kek, target)[0], CKR_MECHANISM_INVALID, "CBC wrap")
    expect(unwrap(mech(CKM_AES_KEY_WRAP), r_priv, bytes(24), secret_t)[0], CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
           "RSA key for KW unwrap")


@test
def random_numbers():
    for n in (0, 1, 4096, 4097, 10000):
        b = (c_ubyte * max(n, 1))()
        ok(fn("C_GenerateRandom")(H, b, CK_ULONG(n)), "GenerateRandom %d" % n)
        if n >= 32:
            check(any(b), "random bytes")
    a, b = (c_ubyte * 32)(), (c_ubyte * 32)()
    ok(fn("C_GenerateRandom")(H, a, CK_ULONG(32)), "random")
    ok(fn("C_GenerateRandom")(H, b, CK_ULONG(32)), "random")
    check(bytes(a) != bytes(b), "two random strings differ")
    expect(fn("C_SeedRandom")(H, a, CK_ULONG(32)), CKR_RANDOM_SEED_NOT_SUPPORTED, "seed")
    expect(fn("C_GenerateRandom")(H, None, CK_ULONG(5)), CKR_ARGUMENTS_BAD, "NULL buffer")
    expect(fn("C_GenerateRandom")(CK_ULONG(0x7FFFFFF0), a, CK_ULONG(5)), CKR_SESSION_HANDLE_INVALID, "bad session")


@test
def dual_functions():
    key = aes_key(16)
    iv = bytes(16)
    data = os.urandom(64)
    ok(init("C_DigestInit", mech(CKM_SHA256)), "DigestInit")
    ok(init("C_EncryptInit", mech(CKM_AES_CBC, iv), key), "EncryptInit")
    out = (c_ubyte * 128)()
    for part in (data[:20], data[20:]):
        b, n = data_args(part)
        on = CK_ULONG(128)
        ok(fn("C_DigestEncryptUpdate")(H, b, n, out, byref(on)), "DigestEncryptUpdate")
    rv, ct = out_call("C_EncryptFinal")
    ok(rv, "EncryptFinal")
    rv, dg = out_call("C_DigestFinal")
    ok(rv, "DigestFinal")
    check(dg == hashlib.sha256(data).digest(), "digest of the dual update")
    check(ct == encrypt(mech(CKM_AES_CBC, iv), key, data), "encryption of the dual update")
    gk = generic_key(32)
    ok(init("C_SignInit", mech(CKM_SHA256_HMAC), gk), "SignInit")
    ok(init("C_EncryptInit", mech(CKM_AES_CBC, iv), key), "EncryptInit")
    b, n = data_args(data)
    on = CK_ULONG(128)
    ok(fn("C_SignEncryptUpdate")(H, b, n, out, byref(on)), "SignEncryptUpdate")
    rv, mac = out_call("C_SignFinal")
    ok(rv, "SignFinal")
    ok(out_call("C_EncryptFinal")[0], "EncryptFinal")
    check(mac == sign(mech(CKM_SHA256_HMAC), gk, data), "MAC of the dual update")
    # decryption gives its plaintext at Final; the application digests that
    ok(init("C_DecryptInit", mech(CKM_AES_CBC, iv), key), "DecryptInit")
    ok(init("C_DigestInit", mech(CKM_SHA256)), "DigestInit")
    b, n = data_args(ct)
    on = CK_ULONG(128)
    ok(fn("C_DecryptDigestUpdate")(H, b, n, out, byref(on)), "DecryptDigestUpdate")
    rv, pt = out_call("C_DecryptFinal")
    ok(rv, "DecryptFinal")
    b, n = data_args(pt)
    ok(fn("C_DigestUpdate")(H, b, n), "DigestUpdate")
    rv, dg = out_call("C_DigestFinal")
    check(pt == data and dg == hashlib.sha256(data).digest(), "decrypt-digest")
    on = CK_ULONG(128)
    expect(fn("C_DigestEncryptUpdate")(H, b, n, out, byref(on)), CKR_OPERATION_NOT_INITIALIZED, "no operations")


@test
def messages():
    key = aes_key(32)
    ok(fn("C_MessageEncryptInit")(H, byref(mech(CKM_AES_GCM)), hv(key)), "MessageEncryptInit")
    ok(fn("C_MessageDecryptInit")(H, byref(mech(CKM_AES_GCM)), hv(key)), "MessageDecryptInit")
    for gen in (CKG_NO_GENERATE, CKG_GENERATE_RANDOM):
        for aad, data in ((b"", b""), (b"hdr", os.urandom(100))):
            iv = (c_ubyte * 12).from_buffer_copy(os.urandom(12))
            tag = (c_ubyte * 16)()
            before = bytes(iv)
            p = GCMMSG(ctypes.cast(iv, c_void_p), 12, 0, gen, ctypes.cast(tag, c_void_p), 128)
            a, an = data_args(aad)
            d, dn = data_args(data)
            n = CK_ULONG(0)
            ok(fn("C_EncryptMessage")(H, byref(p), CK_ULONG(ctypes.sizeof(p)), a, an, d, dn, None, byref(n)),
               "EncryptMessage length")
            check(n.value == len(data), "message ciphertext length")
            ct = (c_ubyte * max(len(data), 1))()
            ok(fn("C_EncryptMessage")(H, byref(p), CK_ULONG(ctypes.sizeof(p)), a, an, d, dn, ct, byref(n)),
               "EncryptMessage")
            if gen == CKG_GENERATE_RANDOM:
                check(bytes(iv) != before, "the HSM made the IV")
            c, cn = data_args(bytes(ct[: len(data)]))
            pt = (c_ubyte * max(len(data), 1))()
            pn = CK_ULONG(len(data))
            ok(fn("C_DecryptMessage")(H, byref(p), CK_ULONG(ctypes.sizeof(p)), a, an, c, cn, pt, byref(pn)),
               "DecryptMessage")
            check(bytes(pt[: pn.value]) == data, "message round trip")
            tag[0] ^= 1
            pn = CK_ULONG(len(data))
            expect(fn("C_DecryptMessage")(H, byref(p), CK_ULONG(ctypes.sizeof(p)), a, an, c, cn, pt, byref(pn)),
                   CKR_ENCRYPTED_DATA_INVALID, "tampered message tag")
    # the message operation outlives a failed message
    p = GCMMSG(None, 12, 0, CKG_GENERATE_COUNTER, None, 128)
    iv, tag = (c_ubyte * 12)(), (c_ubyte * 16)()
    p.pIv, p.pTag = ctypes.cast(iv, c_void_p), ctypes.cast(tag, c_void_p)
    d, dn = data_args(b"x")
    n = CK_ULONG(1)
    out = (c_ubyte * 1)()
    expect(fn("C_EncryptMessage")(H, byref(p), CK_ULONG(ctypes.sizeof(p)), None, CK_ULONG(0), d, dn, out, byref(n)),
           CKR_MECHANISM_PARAM_INVALID, "counter IVs not offered")
    p.ivGenerator = CKG_NO_GENERATE
    ok(fn("C_EncryptMessage")(H, byref(p), CK_ULONG(ctypes.sizeof(p)), None, CK_ULONG(0), d, dn, out, byref(n)),
       "still active")
    expect(fn("C_EncryptMessageBegin")(H, byref(p), CK_ULONG(ctypes.sizeof(p)), None, CK_ULONG(0)),
           CKR_FUNCTION_NOT_SUPPORTED, "message in parts")
    ok(fn("C_MessageEncryptFinal")(H), "MessageEncryptFinal")
    ok(fn("C_MessageDecryptFinal")(H), "MessageDecryptFinal")
    expect(fn("C_MessageEncryptFinal")(H), CKR_OPERATION_NOT_INITIALIZED, "final twice")
    expect(fn("C_MessageEncryptInit")(H, byref(mech(CKM_AES_CBC, bytes(16))), hv(key)), CKR_MECHANISM_INVALID,
           "CBC messages")
    # signatures
    pub, priv = ec_pair("P-256")
    ok(fn("C_MessageSignInit")(H, byref(mech(CKM_ECDSA_SHA256)), hv(priv)), "MessageSignInit")
    ok(fn("C_MessageVerifyInit")(H, byref(mech(CKM_ECDSA_SHA256)), hv(pub)), "MessageVerifyInit")
    for data in (b"one", b"two", b""):
        d, dn = data_args(data)
        n = CK_ULONG(0)
        ok(fn("C_SignMessage")(H, None, CK_ULONG(0), d, dn, None, byref(n)), "SignMessage length")
        check(n.value == 64, "message signature length")
        sig = (c_ubyte * 64)()
        ok(fn("C_SignMessage")(H, None, CK_ULONG(0), d, dn, sig, byref(n)), "SignMessage")
        s, sn = data_args(bytes(sig))
        ok(fn("C_VerifyMessage")(H, None, CK_ULONG(0), d, dn, s, sn), "VerifyMessage")
        s, sn = data_args(tamper(bytes(sig), 2))
        expect(fn("C_VerifyMessage")(H, None, CK_ULONG(0), d, dn, s, sn), CKR_SIGNATURE_INVALID, "tampered")
    ok(fn("C_MessageSignFinal")(H), "MessageSignFinal")
    ok(fn("C_MessageVerifyFinal")(H), "MessageVerifyFinal")
    expect(fn("C_SignMessage")(H, None, CK_ULONG(0), d, dn, None, byref(n)), CKR_OPERATION_NOT_INITIALIZED, "ended")


@test
def before_login():
    """Digests and random numbers need no login (the pre-login role has no
    GHSH out of the box: the module then digests locally)."""
    SESS.logout()
    try:
        data = os.urandom(100)
        ok(fn("C_DigestInit")(H, byref(mech(CKM_SHA384))), "DigestInit")
        b, n = data_args(data)
        rv, got = out_call("C_Digest", b, n)
        ok(rv, "C_Digest before login")
        check(got == hashlib.sha384(data).digest(), "digest before login")
        r = (c_ubyte * 64)()
        ok(fn("C_GenerateRandom")(H, r, CK_ULONG(64)), "random before login")
    finally:
        SESS.login(PIN)


def main():
    failed = 0
    for t in TESTS:
        try:
            t()
            print("ok   %s" % t.__name__)
        except Exception as e:  # a test's failure must not hide the others'
            failed += 1
            print("FAIL %s: %s" % (t.__name__, e))
            if not isinstance(e, Fail):
                traceback.print_exc()
            # leave no operation behind for the next test
            for k in ("C_EncryptInit", "C_DecryptInit", "C_SignInit", "C_VerifyInit", "C_SignRecoverInit",
                      "C_VerifyRecoverInit", "C_MessageEncryptInit", "C_MessageDecryptInit",
                      "C_MessageSignInit", "C_MessageVerifyInit"):
                fn(k)(H, None, CK_ULONG(0))
            fn("C_DigestInit")(H, None)
    SESS.logout()
    SESS.closeSession()
    print("%d of %d test groups failed" % (failed, len(TESTS)) if failed else "all %d test groups passed" % len(TESTS))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
