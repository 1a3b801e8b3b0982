#!/usr/bin/python3
"""Wycheproof test vectors through libkeyhold-pkcs11.so (PyKCS11 + ctypes).

usage: p11_wycheproof.py [--only TEXT]... [--jobs N] [-v] VECTORS...

Run with /usr/bin/python3 after tests/integration/p11_lib.sh's p11_setup
(P11_MODULE, P11_PIN, FXPKCS11_CFG); test_p11_wycheproof.sh does that.

Each test key is imported with C_CreateObject as a session object, and the
vector runs through the mechanism a PKCS#11 application would use:

  AES-CBC-PKCS5   CKM_AES_CBC_PAD encrypt (valid) and decrypt
  AES-GCM         CKM_AES_GCM encrypt (valid) and decrypt (ciphertext||tag)
  AES-CMAC        CKM_AES_CMAC_GENERAL (the group's tag length): sign, verify
  HMACSHA*        CKM_SHA*_HMAC_GENERAL: sign (valid), verify
  AES-WRAP/KWP    C_UnwrapKey (CKM_AES_KEY_WRAP / _PAD) into an extractable
                  generic secret, C_WrapKey of it back; C_WrapKey of the
                  clear key imported (valid)
  ECDH            C_CreateObject of the private scalar, CKM_ECDH1_DERIVE
                  (CKD_NULL) with the peer's point into a generic secret; the
                  module never reveals it, so CKM_SHA256_HMAC under it is
                  compared with a local HMAC under the expected secret
  XDH (X25519)    the same with CKK_EC_MONTGOMERY keys; small-order peers
                  must be refused
  ECDSA           CKM_ECDSA_SHA* over r||s (P1363 files as given; DER files
                  decoded here, strictly)
  EDDSA           CKM_EDDSA (pure Ed25519)
  RSASSA-PKCS1    CKM_SHA*_RSA_PKCS with the public key from its components
  RSASSA-PSS      CKM_SHA*_RSA_PKCS_PSS with CK_RSA_PKCS_PSS_PARAMS
  RSAES-OAEP      CKM_RSA_PKCS_OAEP decryption (label as pSourceData)
  RSAES-PKCS1     CKM_RSA_PKCS decryption

What counts is wycheproof_excrypt.py's (imported, not copied): every `valid`
vector must succeed with the expected output, every `invalid` one must be
refused, `acceptable` ones may go either way but when accepted must give the
right output. Refusals with another code than the PKCS#11 one the vector
implies are shown as notes (-v shows all codes).

Not expressible through PKCS#11, and so listed as skipped with the reason:
  - HKDF files: the module offers no CKM_HKDF_DERIVE;
  - ECDSA DER signatures that do not decode strictly here, or whose r or s
    does not fit the curve's size: PKCS#11 takes r||s, so the DER decoding is
    the application's (these are all `invalid` vectors; counted apart);
  - ECDH peers whose SubjectPublicKeyInfo is malformed or names another
    curve or explicit parameters: PKCS#11 takes the point alone
    (CK_ECDH1_DERIVE_PARAMS.pPublicData), the curve is the private key's.

Exit status: 0 when every vector behaved, 1 on any failure or a file of a
supported family that could not be run, 2 on a usage or set-up error.
"""
import argparse
import collections
import ctypes
import hashlib
import hmac
import json
import multiprocessing
import os
import sys
import time
from ctypes import Structure, byref, c_ubyte, c_void_p

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import wycheproof_excrypt as W  # noqa: E402
from wycheproof_excrypt import (CHECK_MSG, FileResult, Policy, Unsupported, accepted,  # noqa: E402
                                b, collect, mismatch, wrong)
import p11_session_test as P  # noqa: E402
from p11_session_test import (CK_ULONG, EC_PARAMS, MECH, Module, c_template,  # noqa: E402
                              der_octet_string, hv, rvname)
from PyKCS11 import *  # noqa: F401,F403,E402

# Refusals that say nothing about the vector (the set-up, the module or the
# HSM is at fault): always failures, as wycheproof_excrypt's ENV_ERRORS.
P11_ENV_ERRORS = {"CKR_FUNCTION_REJECTED", "CKR_DEVICE_ERROR", "CKR_GENERAL_ERROR", "CKR_HOST_MEMORY",
                  "CKR_USER_NOT_LOGGED_IN", "CKR_FUNCTION_NOT_SUPPORTED", "CKR_MECHANISM_INVALID",
                  "CKR_SESSION_HANDLE_INVALID", "CKR_KEY_HANDLE_INVALID", "CKR_OBJECT_HANDLE_INVALID",
                  "CKR_OPERATION_ACTIVE", "CKR_OPERATION_NOT_INITIALIZED", "CKR_DEVICE_MEMORY",
                  "CKR_CRYPTOKI_NOT_INITIALIZED", "CKR_KEY_FUNCTION_NOT_PERMITTED", "CKR_ARGUMENTS_BAD",
                  "CKR_BUFFER_TOO_SMALL", "CKR_KEY_UNEXTRACTABLE", "CKR_DEVICE_REMOVED"}
W.ENV_ERRORS = W.ENV_ERRORS | P11_ENV_ERRORS

CKM_AES_CMAC_GENERAL = 0x108B
CKM_AES_KEY_WRAP = 0x2109
CKM_AES_KEY_WRAP_PAD = 0x210A
CKM_EDDSA = 0x1057
CKK_EC_EDWARDS = 0x40
CKK_EC_MONTGOMERY = 0x41
CKZ_DATA_SPECIFIED = 1


class P11Err:
    """A refusal, shaped like wycheproof_excrypt's ExcryptError (a .name)."""
    __slots__ = ("rv", "name")

    def __init__(self, rv):
        self.rv = rv
        self.name = rvname(rv)

    def __str__(self):
        return self.name


def rejected(rv, stage):
    return W.rejected(P11Err(rv), stage)


# ------------------------------------------------------------ parameters

class GCM(Structure):
    _fields_ = [("pIv", c_void_p), ("ulIvLen", CK_ULONG), ("ulIvBits", CK_ULONG),
                ("pAAD", c_void_p), ("ulAADLen", CK_ULONG), ("ulTagBits", CK_ULONG)]


class PSS(Structure):
    _fields_ = [("hashAlg", CK_ULONG), ("mgf", CK_ULONG), ("sLen", CK_ULONG)]


class OAEP(Structure):
    _fields_ = [("hashAlg", CK_ULONG), ("mgf", CK_ULONG), ("source", CK_ULONG),
                ("pSourceData", c_void_p), ("ulSourceDataLen", CK_ULONG)]


class ECDH(Structure):
    _fields_ = [("kdf", CK_ULONG), ("ulSharedDataLen", CK_ULONG), ("pSharedData", c_void_p),
                ("ulPublicDataLen", CK_ULONG), ("pPublicData", c_void_p)]


def cbuf(data):
    """An input buffer that is never NULL (PKCS#11 allows NULL for an empty
    input, but not every caller passes it)."""
    return (c_ubyte * max(len(data), 1)).from_buffer_copy(data or b"\0")


def mech(mtype, param=None):
    m = MECH(mtype, None, 0)
    keep = None
    if isinstance(param, (bytes, bytearray)):
        keep = cbuf(bytes(param))
        m.pParameter = ctypes.cast(keep, c_void_p)
        m.ulParameterLen = len(param)
    elif isinstance(param, int):
        keep = CK_ULONG(param)
        m.pParameter = ctypes.cast(byref(keep), c_void_p)
        m.ulParameterLen = ctypes.sizeof(CK_ULONG)
    elif param is not None:
        keep = param
        m.pParameter = ctypes.cast(byref(param), c_void_p)
        m.ulParameterLen = ctypes.sizeof(param)
    m._keep = keep
    return m


def gcm_mech(iv, aad, tag_bits):
    ivb, aadb = cbuf(iv), cbuf(aad)
    p = GCM(ctypes.cast(ivb, c_void_p), len(iv), 8 * len(iv), ctypes.cast(aadb, c_void_p), len(aad), tag_bits)
    m = mech(CKM_AES_GCM, p)
    m._keep2 = (ivb, aadb)
    return m


HASH_MECH = {  # Wycheproof sha -> (CKM_ hash, CKG_MGF1_, HMAC, ECDSA_, RSA_PKCS, RSA_PKCS_PSS)
    "SHA-1": (CKM_SHA_1, CKG_MGF1_SHA1, CKM_SHA_1_HMAC_GENERAL, CKM_ECDSA_SHA1, CKM_SHA1_RSA_PKCS,
              CKM_SHA1_RSA_PKCS_PSS),
    "SHA-224": (CKM_SHA224, CKG_MGF1_SHA224, CKM_SHA224_HMAC_GENERAL, CKM_ECDSA_SHA224, CKM_SHA224_RSA_PKCS,
                CKM_SHA224_RSA_PKCS_PSS),
    "SHA-256": (CKM_SHA256, CKG_MGF1_SHA256, CKM_SHA256_HMAC_GENERAL, CKM_ECDSA_SHA256, CKM_SHA256_RSA_PKCS,
                CKM_SHA256_RSA_PKCS_PSS),
    "SHA-384": (CKM_SHA384, CKG_MGF1_SHA384, CKM_SHA384_HMAC_GENERAL, CKM_ECDSA_SHA384, CKM_SHA384_RSA_PKCS,
                CKM_SHA384_RSA_PKCS_PSS),
    "SHA-512": (CKM_SHA512, CKG_MGF1_SHA512, CKM_SHA512_HMAC_GENERAL, CKM_ECDSA_SHA512, CKM_SHA512_RSA_PKCS,
                CKM_SHA512_RSA_PKCS_PSS),
}


def hm(name, i):
    if name not in HASH_MECH:
        raise Unsupported(f"hash {name}")
    return HASH_MECH[name][i]


# ------------------------------------------------------------ the module, per worker process

class Ctx:
    """One worker's module, an anchor session that keeps the login, and a
    session per file (closing it destroys the file's session objects)."""

    def __init__(self):
        self.m = Module()
        self.anchor = self.m.open(login=True)
        self.s = None
        self.h = None

    def begin(self):
        self.s = self.m.open()
        self.h = CK_ULONG(hv(self.s.session))

    def end(self):
        try:
            self.s.closeSession()
        except PyKCS11Error:
            pass
        self.s = None

    def f(self, name):
        return self.m.fn(name)

    def create(self, tmpl):
        arr, keep = c_template(tmpl)
        out = CK_ULONG(0)
        rv = self.f("C_CreateObject")(self.h, arr, CK_ULONG(len(tmpl)), byref(out))
        del keep
        return rv, out.value

    def run(self, init, call, m, key, data, outsize):
        """Init + one call with an output buffer of outsize -> (rv, bytes)."""
        rv = self.f(init)(self.h, byref(m), CK_ULONG(key))
        if rv != CKR_OK:
            return rv, None
        d = cbuf(data)
        out = (c_ubyte * max(outsize, 1))()
        n = CK_ULONG(outsize)
        rv = self.f(call)(self.h, d, CK_ULONG(len(data)), out, byref(n))
        if rv == CKR_BUFFER_TOO_SMALL:  # the operation stays active: end it
            self.f(init)(self.h, None, CK_ULONG(0))
        return rv, bytes(out[:n.value]) if rv == CKR_OK else None

    def verify(self, m, key, data, sig):
        rv = self.f("C_VerifyInit")(self.h, byref(m), CK_ULONG(key))
        if rv != CKR_OK:
            return rv
        return self.f("C_Verify")(self.h, cbuf(data), CK_ULONG(len(data)), cbuf(sig), CK_ULONG(len(sig)))

    def unwrap(self, m, kek, wrapped, tmpl):
        arr, keep = c_template(tmpl)
        out = CK_ULONG(0)
        rv = self.f("C_UnwrapKey")(self.h, byref(m), CK_ULONG(kek), cbuf(wrapped), CK_ULONG(len(wrapped)),
                                   arr, CK_ULONG(len(tmpl)), byref(out))
        return rv, out.value

    def wrap(self, m, kek, key, outsize=1024):
        out = (c_ubyte * outsize)()
        n = CK_ULONG(outsize)
        rv = self.f("C_WrapKey")(self.h, byref(m), CK_ULONG(kek), CK_ULONG(key), out, byref(n))
        return rv, bytes(out[:n.value]) if rv == CKR_OK else None

    def derive(self, m, base, tmpl):
        arr, keep = c_template(tmpl)
        out = CK_ULONG(0)
        rv = self.f("C_DeriveKey")(self.h, byref(m), CK_ULONG(base), arr, CK_ULONG(len(tmpl)), byref(out))
        return rv, out.value

    def hmac_check(self, key, expected, stage):
        rv, mac = self.run("C_SignInit", "C_Sign", mech(CKM_SHA256_HMAC), key, CHECK_MSG, 32)
        if rv != CKR_OK:
            return wrong(stage, f"HMAC under the derived key failed: {rvname(rv)}")
        want = hmac.new(expected, CHECK_MSG, hashlib.sha256).digest()
        if mac != want:
            return wrong(stage, f"derived key differs from the expected secret (HMAC {mac.hex()[:32]}..., "
                                f"expected {want.hex()[:32]}...)")
        return accepted()


class KeyCache:
    def __init__(self, ctx):
        self.ctx = ctx
        self.keys = {}

    def get(self, ident, tmpl_fn):
        if ident not in self.keys:
            self.keys[ident] = self.ctx.create(tmpl_fn())
        return self.keys[ident]


def secret_tmpl(value, kt, **usage):
    t = [(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, kt), (CKA_VALUE, value), (CKA_TOKEN, False)]
    return t + [(getattr(P, "CKA_" + k.upper()), v) for k, v in usage.items()]


def key_or_refusal(k):
    rv, h = k
    return (None, rejected(rv, "import")) if rv != CKR_OK else (h, None)


# ------------------------------------------------------------ families
# Each: (ctx, data, skips) -> [(test, outcome, Policy)]; skips counts the
# vectors not expressible through PKCS#11 by reason.

def fam_aes_cbc(ctx, data, skips):
    kc = KeyCache(ctx)
    out = []
    for g in data["testGroups"]:
        for t in g["tests"]:
            k, bad = key_or_refusal(kc.get(t["key"], lambda: secret_tmpl(b(t["key"]), CKK_AES,
                                                                         encrypt=True, decrypt=True)))
            pol = Policy(expect={"CKR_ENCRYPTED_DATA_INVALID", "CKR_ENCRYPTED_DATA_LEN_RANGE"})
            if bad:
                out.append((t, bad, pol))
                continue
            iv, msg, ct = b(t["iv"]), b(t["msg"]), b(t["ct"])
            o = None
            if t["result"] == "valid":
                rv, got = ctx.run("C_EncryptInit", "C_Encrypt", mech(CKM_AES_CBC_PAD, iv), k, msg, len(msg) + 32)
                if rv != CKR_OK:
                    o = rejected(rv, "C_Encrypt")
                elif got != ct:
                    o = mismatch("C_Encrypt", "ciphertext", got, ct)
            if o is None:
                rv, got = ctx.run("C_DecryptInit", "C_Decrypt", mech(CKM_AES_CBC_PAD, iv), k, ct, len(ct) + 16)
                if rv != CKR_OK:
                    o = rejected(rv, "C_Decrypt")
                elif got != msg:
                    o = mismatch("C_Decrypt", "plaintext", got, msg)
                else:
                    o = accepted()
            out.append((t, o, pol))
    return out


def fam_aes_gcm(ctx, data, skips):
    kc = KeyCache(ctx)
    out = []
    for g in data["testGroups"]:
        tl = g["tagSize"]
        for t in g["tests"]:
            iv, aad, msg, ct, tag = (b(t[x]) for x in ("iv", "aad", "msg", "ct", "tag"))
            pol = Policy(expect={"CKR_ENCRYPTED_DATA_INVALID"} if iv else {"CKR_MECHANISM_PARAM_INVALID"})
            k, bad = key_or_refusal(kc.get(t["key"], lambda: secret_tmpl(b(t["key"]), CKK_AES,
                                                                         encrypt=True, decrypt=True)))
            if bad:
                out.append((t, bad, pol))
                continue
            o = None
            if t["result"] == "valid":
                rv, got = ctx.run("C_EncryptInit", "C_Encrypt", gcm_mech(iv, aad, tl), k, msg, len(msg) + 16)
                if rv != CKR_OK:
                    o = rejected(rv, "C_Encrypt")
                elif got != ct + tag:
                    o = mismatch("C_Encrypt", "ciphertext||tag", got, ct + tag)
            if o is None:
                rv, got = ctx.run("C_DecryptInit", "C_Decrypt", gcm_mech(iv, aad, tl), k, ct + tag, len(ct) + 16)
                if rv != CKR_OK:
                    o = rejected(rv, "C_Decrypt")
                elif got != msg:
                    o = mismatch("C_Decrypt", "plaintext", got, msg)
                else:
                    o = accepted()
            out.append((t, o, pol))
    return out


def fam_mac(ctx, data, skips, kt, mech_type):
    kc = KeyCache(ctx)
    out = []
    for g in data["testGroups"]:
        ml = g["tagSize"] // 8
        for t in g["tests"]:
            pol = Policy(expect={"CKR_SIGNATURE_INVALID", "CKR_SIGNATURE_LEN_RANGE"})
            k, bad = key_or_refusal(kc.get(t["key"], lambda: secret_tmpl(b(t["key"]), kt, sign=True, verify=True)))
            if bad:
                out.append((t, bad, pol))
                continue
            msg, tag = b(t["msg"]), b(t["tag"])
            o = None
            if t["result"] == "valid":
                rv, got = ctx.run("C_SignInit", "C_Sign", mech(mech_type, ml), k, msg, 64)
                if rv != CKR_OK:
                    o = rejected(rv, "C_Sign")
                elif got != tag:
                    o = mismatch("C_Sign", "MAC", got, tag)
            if o is None:
                rv = ctx.verify(mech(mech_type, ml), k, msg, tag)
                o = accepted() if rv == CKR_OK else rejected(rv, "C_Verify")
            out.append((t, o, pol))
    return out


def fam_keywrap(ctx, data, skips, mech_type):
    kc = KeyCache(ctx)
    out = []
    utmpl = [(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_GENERIC_SECRET), (CKA_EXTRACTABLE, True),
             (CKA_TOKEN, False)]
    for g in data["testGroups"]:
        for t in g["tests"]:
            pol = Policy(expect={"CKR_WRAPPED_KEY_INVALID", "CKR_WRAPPED_KEY_LEN_RANGE"})
            kek, bad = key_or_refusal(kc.get(t["key"], lambda: secret_tmpl(b(t["key"]), CKK_AES, wrap=True,
                                                                           unwrap=True)))
            if bad:
                out.append((t, bad, pol))
                continue
            ct, msg = b(t["ct"]), b(t["msg"])
            rv, u = ctx.unwrap(mech(mech_type), kek, ct, utmpl)
            if rv != CKR_OK:
                out.append((t, rejected(rv, "C_UnwrapKey"), pol))
                continue
            o = None
            rv, w = ctx.wrap(mech(mech_type), kek, u)
            if rv != CKR_OK:
                o = wrong("C_WrapKey", f"wrapping the unwrapped key back failed: {rvname(rv)}")
            elif w != ct:
                o = mismatch("C_WrapKey", "re-wrapped key", w, ct)
            ctx.f("C_DestroyObject")(ctx.h, CK_ULONG(u))
            if o is None and t["result"] == "valid":
                rv, c = ctx.create(secret_tmpl(msg, CKK_GENERIC_SECRET, extractable=True))
                if rv != CKR_OK:
                    o = wrong("C_CreateObject", f"importing the clear key failed: {rvname(rv)}")
                else:
                    rv, w = ctx.wrap(mech(mech_type), kek, c)
                    ctx.f("C_DestroyObject")(ctx.h, CK_ULONG(c))
                    if rv != CKR_OK:
                        o = wrong("C_WrapKey", f"wrapping the clear key failed: {rvname(rv)}")
                    elif w != ct:
                        o = mismatch("C_WrapKey", "wrapped key", w, ct)
            out.append((t, o or accepted(), pol))
    return out


# -- ECDH

OID_EC_PUBLIC_KEY = bytes.fromhex("06072a8648ce3d0201")
CURVE_OID = {"secp256r1": EC_PARAMS["P-256"], "secp384r1": EC_PARAMS["P-384"], "secp521r1": EC_PARAMS["P-521"]}
CURVE_SIZE = {"secp256r1": 32, "secp384r1": 48, "secp521r1": 66}


def der_read(buf, pos):
    """-> (tag, content, next position) of a strict DER TLV, or None."""
    if pos + 2 > len(buf):
        return None
    tag, n = buf[pos], buf[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 3 or pos + k > len(buf) or buf[pos] == 0:
            return None
        n = int.from_bytes(buf[pos:pos + k], "big")
        if n < 0x80:
            return None
        pos += k
    if pos + n > len(buf):
        return None
    return tag, buf[pos:pos + n], pos + n


def spki_point(der, curve):
    """The point of a named-curve EC SubjectPublicKeyInfo for `curve`, or
    None when the SPKI is malformed or is not for that curve."""
    r = der_read(der, 0)
    if not r or r[0] != 0x30 or r[2] != len(der):
        return None
    body = r[1]
    a = der_read(body, 0)
    if not a or a[0] != 0x30:
        return None
    bs = der_read(body, a[2])
    if not bs or bs[0] != 0x03 or bs[2] != len(body):
        return None
    if a[1] != OID_EC_PUBLIC_KEY + CURVE_OID[curve]:
        return None
    if not bs[1] or bs[1][0] != 0:
        return None
    return bs[1][1:]


def ec_private_tmpl(curve_params, d, size, kt=CKK_EC):
    return [(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_KEY_TYPE, kt), (CKA_EC_PARAMS, curve_params),
            (CKA_VALUE, d.to_bytes(size, "big") if isinstance(d, int) else d), (CKA_DERIVE, True),
            (CKA_TOKEN, False)]


def ecdh_derive(ctx, key, point, shared, size_hint=None):
    pt = cbuf(point)
    p = ECDH(CKD_NULL, 0, None, len(point), ctypes.cast(pt, c_void_p))
    m = mech(CKM_ECDH1_DERIVE, p)
    m._pt = pt
    tmpl = [(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_GENERIC_SECRET), (CKA_SIGN, True), (CKA_TOKEN, False)]
    rv, k = ctx.derive(m, key, tmpl)
    if rv != CKR_OK:
        return rejected(rv, "C_DeriveKey")
    o = ctx.hmac_check(k, shared, "C_DeriveKey")
    ctx.f("C_DestroyObject")(ctx.h, CK_ULONG(k))
    return o


def fam_ecdh(ctx, data, skips):
    kc = KeyCache(ctx)
    out = []
    for g in data["testGroups"]:
        curve = g["curve"]
        if curve not in CURVE_OID:
            raise Unsupported(f"curve {curve}")
        if g.get("encoding", "asn") != "asn":
            raise Unsupported(f"public key encoding {g['encoding']}")
        size = CURVE_SIZE[curve]
        for t in g["tests"]:
            pol = Policy(expect={"CKR_MECHANISM_PARAM_INVALID"})
            point = spki_point(b(t["public"]), curve)
            if point is None:
                skips["peer SubjectPublicKeyInfo malformed or for another curve (PKCS#11 takes the point "
                      "alone)" + (" [a valid vector!]" if t["result"] == "valid" else "")] += 1
                continue
            d = int(t["private"], 16)
            if d.bit_length() > 8 * size:
                skips["private scalar wider than the curve"] += 1
                continue
            k, bad = key_or_refusal(kc.get(t["private"], lambda: ec_private_tmpl(CURVE_OID[curve], d, size)))
            if bad:
                out.append((t, bad, pol))
                continue
            out.append((t, ecdh_derive(ctx, k, point, b(t["shared"])), pol))
    return out


def fam_x25519(ctx, data, skips):
    kc = KeyCache(ctx)
    out = []
    for g in data["testGroups"]:
        if g["curve"] != "curve25519":
            raise Unsupported(f"curve {g['curve']}")
        for t in g["tests"]:
            low = "LowOrderPublic" in t["flags"] or t["shared"] == "00" * 32
            pol = Policy(must_reject=low, expect={"CKR_MECHANISM_PARAM_INVALID"},
                         note="a peer of small order (all-zero secret)")
            k, bad = key_or_refusal(kc.get(t["private"], lambda: ec_private_tmpl(
                EC_PARAMS["X25519"], b(t["private"]), 32, CKK_EC_MONTGOMERY)))
            if bad:
                out.append((t, bad, pol))
                continue
            out.append((t, ecdh_derive(ctx, k, b(t["public"]), b(t["shared"])), pol))
    return out


# -- signatures

def der_sig_to_raw(sig, size):
    """Strict DER ECDSA-Sig-Value -> r||s of 2*size bytes, or None."""
    r = der_read(sig, 0)
    if not r or r[0] != 0x30 or r[2] != len(sig):
        return None
    vals = []
    pos = 0
    body = r[1]
    for _ in range(2):
        x = der_read(body, pos)
        if not x or x[0] != 0x02 or not x[1]:
            return None
        c = x[1]
        if c[0] & 0x80:
            return None  # negative
        if len(c) > 1 and c[0] == 0 and not c[1] & 0x80:
            return None  # not minimal
        v = int.from_bytes(c, "big")
        if v.bit_length() > 8 * size:
            return None
        vals.append(v)
        pos = x[2]
    if pos != len(body):
        return None
    return vals[0].to_bytes(size, "big") + vals[1].to_bytes(size, "big")


def fam_verify(ctx, data, skips, key_tmpl, mech_fn, sig_fn=None):
    """key_tmpl(g) -> template of the public key; mech_fn(g) -> MECH;
    sig_fn(g, sig) -> the signature PKCS#11 takes, or None (skipped)."""
    out = []
    for g in data["testGroups"]:
        rv, k = ctx.create(key_tmpl(g))
        for t in g["tests"]:
            pol = Policy(expect={"CKR_SIGNATURE_INVALID", "CKR_SIGNATURE_LEN_RANGE"})
            if rv != CKR_OK:
                out.append((t, wrong("C_CreateObject", f"importing the public key failed: {rvname(rv)}"), pol))
                continue
            sig = b(t["sig"])
            if sig_fn:
                sig = sig_fn(g, sig)
                if sig is None:
                    if t["result"] == "valid":
                        out.append((t, wrong("DER", "a valid signature that does not decode here"), pol))
                    else:
                        skips["DER signature not strictly decodable to r||s here (the application's job in "
                              "PKCS#11; %s)" % t["result"]] += 1
                    continue
            r = ctx.verify(mech_fn(g), k, b(t["msg"]), sig)
            out.append((t, accepted() if r == CKR_OK else rejected(r, "C_Verify"), pol))
    return out


def ec_pub_tmpl(g):
    pk = g["publicKey"]
    curve = pk["curve"]
    if curve not in CURVE_OID:
        raise Unsupported(f"curve {curve}")
    return [(CKA_CLASS, CKO_PUBLIC_KEY), (CKA_KEY_TYPE, CKK_EC), (CKA_EC_PARAMS, CURVE_OID[curve]),
            (CKA_EC_POINT, der_octet_string(b(pk["uncompressed"]))), (CKA_VERIFY, True), (CKA_TOKEN, False)]


def ed_pub_tmpl(g):
    pk = g["publicKey"]
    if pk.get("curve") != "edwards25519":
        raise Unsupported(f"curve {pk.get('curve')}")
    return [(CKA_CLASS, CKO_PUBLIC_KEY), (CKA_KEY_TYPE, CKK_EC_EDWARDS), (CKA_EC_PARAMS, EC_PARAMS["Ed25519"]),
            (CKA_EC_POINT, der_octet_string(b(pk["pk"]))), (CKA_VERIFY, True), (CKA_TOKEN, False)]


def _int_bytes(h):
    v = int(h, 16)
    return v.to_bytes(max(1, (v.bit_length() + 7) // 8), "big")


def rsa_pub_tmpl(g):
    from cryptography.hazmat.primitives.serialization import load_der_public_key
    pn = load_der_public_key(b(g["publicKeyDer"])).public_numbers()
    return [(CKA_CLASS, CKO_PUBLIC_KEY), (CKA_KEY_TYPE, CKK_RSA),
            (CKA_MODULUS, pn.n.to_bytes((pn.n.bit_length() + 7) // 8, "big")),
            (CKA_PUBLIC_EXPONENT, pn.e.to_bytes((pn.e.bit_length() + 7) // 8, "big")),
            (CKA_VERIFY, True), (CKA_TOKEN, False)]


def rsa_priv_tmpl(g):
    from cryptography.hazmat.primitives.serialization import load_der_private_key
    k = load_der_private_key(b(g["privateKeyPkcs8"]), None)
    pr = k.private_numbers()
    pn = pr.public_numbers

    def i(v):
        return v.to_bytes((v.bit_length() + 7) // 8, "big")
    return [(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_KEY_TYPE, CKK_RSA), (CKA_MODULUS, i(pn.n)),
            (CKA_PUBLIC_EXPONENT, i(pn.e)), (CKA_PRIVATE_EXPONENT, i(pr.d)), (CKA_PRIME_1, i(pr.p)),
            (CKA_PRIME_2, i(pr.q)), (CKA_EXPONENT_1, i(pr.dmp1)), (CKA_EXPONENT_2, i(pr.dmq1)),
            (CKA_COEFFICIENT, i(pr.iqmp)), (CKA_DECRYPT, True), (CKA_TOKEN, False)]


def pss_mech(g):
    if g.get("mgf", "MGF1") != "MGF1":
        raise Unsupported(f"MGF {g['mgf']}")
    return mech(hm(g["sha"], 5), PSS(hm(g["sha"], 0), hm(g.get("mgfSha", g["sha"]), 1), g["sLen"]))


def fam_rsa_decrypt(ctx, data, skips, mech_fn):
    out = []
    for g in data["testGroups"]:
        rv, k = ctx.create(rsa_priv_tmpl(g))
        size = g.get("keySize", 4096) // 8 + 8
        for t in g["tests"]:
            pol = Policy(expect={"CKR_ENCRYPTED_DATA_INVALID", "CKR_ENCRYPTED_DATA_LEN_RANGE"})
            if rv != CKR_OK:
                out.append((t, rejected(rv, "import"), pol))
                continue
            r, got = ctx.run("C_DecryptInit", "C_Decrypt", mech_fn(g, t), k, b(t["ct"]), size)
            if r != CKR_OK:
                o = rejected(r, "C_Decrypt")
            elif got != b(t["msg"]):
                o = mismatch("C_Decrypt", "plaintext", got, b(t["msg"]))
            else:
                o = accepted()
            out.append((t, o, pol))
    return out


def oaep_mech(g, t):
    if g.get("mgf", "MGF1") != "MGF1":
        raise Unsupported(f"MGF {g['mgf']}")
    label = b(t["label"])
    lb = cbuf(label)
    p = OAEP(hm(g["sha"], 0), hm(g.get("mgfSha", g["sha"]), 1), CKZ_DATA_SPECIFIED,
             ctypes.cast(lb, c_void_p) if label else None, len(label))
    m = mech(CKM_RSA_PKCS_OAEP, p)
    m._lb = lb
    return m


def family_for(data):
    """-> function(ctx, data, skips), or a string: why PKCS#11 cannot run it."""
    alg = data.get("algorithm", "")
    schema = data.get("schema", "")
    if alg == "AES-CBC-PKCS5":
        return fam_aes_cbc
    if alg == "AES-GCM":
        return fam_aes_gcm
    if alg == "AES-CMAC":
        return lambda c, d, s: fam_mac(c, d, s, CKK_AES, CKM_AES_CMAC_GENERAL)
    if alg.startswith("HMACSHA"):
        sha = {"HMACSHA1": "SHA-1", "HMACSHA224": "SHA-224", "HMACSHA256": "SHA-256", "HMACSHA384": "SHA-384",
               "HMACSHA512": "SHA-512"}.get(alg)
        if not sha:
            return f"no HMAC mechanism for {alg} in this runner"
        return lambda c, d, s: fam_mac(c, d, s, CKK_GENERIC_SECRET, hm(sha, 2))
    if alg == "AES-WRAP":
        return lambda c, d, s: fam_keywrap(c, d, s, CKM_AES_KEY_WRAP)
    if alg == "AES-KWP":
        return lambda c, d, s: fam_keywrap(c, d, s, CKM_AES_KEY_WRAP_PAD)
    if alg == "ECDH" and schema == "ecdh_test_schema_v1.json":
        return fam_ecdh
    if alg == "XDH":
        return fam_x25519
    if alg.startswith("HKDF"):
        return "the module offers no HKDF mechanism (CKM_HKDF_DERIVE is not in its table)"
    if alg == "ECDSA" and schema == "ecdsa_verify_schema_v1.json":
        return lambda c, d, s: fam_verify(c, d, s, ec_pub_tmpl, lambda g: mech(hm(g["sha"], 3)),
                                          lambda g, sig: der_sig_to_raw(sig, EC_COORD_BY_CURVE[
                                              g["publicKey"]["curve"]]))
    if alg == "ECDSA" and schema == "ecdsa_p1363_verify_schema_v1.json":
        return lambda c, d, s: fam_verify(c, d, s, ec_pub_tmpl, lambda g: mech(hm(g["sha"], 3)))
    if alg == "EDDSA":
        return lambda c, d, s: fam_verify(c, d, s, ed_pub_tmpl, lambda g: mech(CKM_EDDSA))
    if alg == "RSASSA-PKCS1-v1_5":
        return lambda c, d, s: fam_verify(c, d, s, rsa_pub_tmpl, lambda g: mech(hm(g["sha"], 4)))
    if alg == "RSASSA-PSS":
        return lambda c, d, s: fam_verify(c, d, s, rsa_pub_tmpl, pss_mech)
    if alg == "RSAES-OAEP":
        return lambda c, d, s: fam_rsa_decrypt(c, d, s, oaep_mech)
    if alg == "RSAES-PKCS1-v1_5":
        return lambda c, d, s: fam_rsa_decrypt(c, d, s, lambda g, t: mech(CKM_RSA_PKCS))
    return f"no PKCS#11 mapping for {alg} ({schema})"


EC_COORD_BY_CURVE = {"secp256r1": 32, "secp384r1": 48, "secp521r1": 66}

# ------------------------------------------------------------ driver

CTX = None


def run_file(args):
    path, strict = args
    global CTX
    name = os.path.basename(path)
    fr = FileResult(name)
    skips = collections.Counter()
    t0 = time.monotonic()
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        fr.skipped = f"cannot read: {e}"
        return fr, skips
    fam = family_for(data)
    if isinstance(fam, str):
        fr.skipped = fam
        fr.must_support = False
        return fr, skips
    try:
        if CTX is None:
            CTX = Ctx()
        CTX.begin()
        try:
            items = fam(CTX, data, skips)
        finally:
            CTX.end()
    except Unsupported as e:
        fr.skipped = f"unsupported parameter: {e}"
        return fr, skips
    except PyKCS11Error as e:
        fr.skipped = f"the module failed: {e}"
        return fr, skips
    for t, outcome, policy in items:
        fr.add(t, outcome, policy, strict)
    fr.seconds = time.monotonic() - t0
    return fr, skips


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("vectors", nargs="+", help="Wycheproof JSON files or directories")
    ap.add_argument("--only", action="append", default=[], help="run only files whose name contains TEXT")
    ap.add_argument("--jobs", type=int, default=6, help="worker processes, one module and session each")
    ap.add_argument("--show", type=int, default=5, help="failures shown per file (default 5)")
    ap.add_argument("--strict-errors", action="store_true",
                    help="a refusal with another code than the vector implies is a failure")
    ap.add_argument("-v", "--verbose", action="store_true", help="show the return codes of refusals")
    a = ap.parse_args(argv)
    files = collect(a.vectors, a.only)
    if not files:
        print("no vector files", file=sys.stderr)
        return 2
    for v in ("P11_MODULE", "P11_PIN", "FXPKCS11_CFG"):
        if v not in os.environ:
            print(f"{v} is not set", file=sys.stderr)
            return 2
    total = collections.Counter()
    all_skips = collections.Counter()
    bad_skips = []
    t0 = time.monotonic()
    order = sorted(files, key=lambda f: -os.path.getsize(f))
    # fork: the parent never loads the module, so each worker's first
    # C_Initialize is its own
    with multiprocessing.get_context("fork").Pool(max(1, a.jobs)) as pool:
        res = dict(zip(order, pool.map(run_file, [(f, a.strict_errors) for f in order], chunksize=1)))
    for f in files:
        fr, skips = res[f]
        if fr.skipped:
            tag = "SKIPPED" if fr.must_support else "skipped"
            print(f"{fr.name}: {tag}: {fr.skipped}")
            if fr.must_support:
                bad_skips.append(fr.name)
            continue
        print(fr.line())
        for why, n in sorted(skips.items()):
            print(f"    skipped {n} vectors: {why}")
            all_skips[why] += n
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
    acc = total["acceptable_accepted"] + total["acceptable_refused"]
    print(f"total: {total['valid']} valid ok, {total['invalid']} invalid rejected, {acc} acceptable, "
          f"{total['failures']} failures, {sum(all_skips.values())} vectors not expressible in PKCS#11 "
          f"({total['files']} files run, {len(bad_skips)} could not be run, {time.monotonic() - t0:.1f} s)")
    if bad_skips:
        print("files of supported families that were not run: " + ", ".join(bad_skips))
    valid_skipped = sum(n for why, n in all_skips.items() if "valid vector!" in why)
    return 1 if total["failures"] or bad_skips or valid_skipped else 0


if __name__ == "__main__":
    sys.exit(main())
