/*
 * C_GenerateKey and C_GenerateKeyPair: the HSM makes the key (GPGS, GRSA,
 * GECC) under the FTK; a token key goes into a slot the HSM picks in the
 * role's ranges, a session key comes back as a cryptogram.
 */
#include <stdlib.h>
#include <string.h>

#include "pkcs11/p11.h"
#include "pkcs11/p11_attr.h"
#include "pkcs11/p11_log.h"

static CK_RV gen_rv(int r)
{
	switch (r) {
	case KH_ERR_BAD_FIELD:
	case KH_ERR_MISSING_FIELD:
		return CKR_TEMPLATE_INCONSISTENT;
	case KH_ERR_FIPS:
	case KH_ERR_UNSUPPORTED:
		return CKR_KEY_SIZE_RANGE;
	default:
		return p11_rv_from_kh(r);
	}
}

P11_EXPORT CK_RV C_GenerateKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_ATTRIBUTE_PTR pTemplate,
			       CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phKey)
{
	struct p11_session *s;
	struct p11_newkey nk;
	struct kh_buf *req = NULL, *resp = NULL;
	struct kh_frame f;
	CK_KEY_TYPE kt;
	const char *ct;
	CK_RV rv = p11_session_get(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	if (!pMechanism || !phKey || (!pTemplate && ulCount)) {
		p11_session_put(s);
		return CKR_ARGUMENTS_BAD;
	}
	switch (pMechanism->mechanism) {
	case CKM_AES_KEY_GEN:
		kt = CKK_AES;
		break;
	case CKM_GENERIC_SECRET_KEY_GEN:
		kt = CKK_GENERIC_SECRET;
		break;
	default:
		p11_session_put(s);
		return CKR_MECHANISM_INVALID;
	}
	if (pMechanism->ulParameterLen) {
		p11_session_put(s);
		return CKR_MECHANISM_PARAM_INVALID;
	}
	if ((rv = p11_tmpl_parse(pTemplate, ulCount, P11_TMPL_GENERATE, CKO_SECRET_KEY, kt, &nk)) != CKR_OK) {
		p11_session_put(s);
		return rv;
	}
	if (nk.token && !p11_session_rw(s)) {
		rv = CKR_SESSION_READ_ONLY;
		goto out;
	}
	if (nk.priv && !p11_session_logged_in(s)) {
		rv = CKR_USER_NOT_LOGGED_IN; /* PKCS#11 5.1: only public objects before login */
		goto out;
	}
	if (!nk.value_len) {
		rv = CKR_TEMPLATE_INCOMPLETE;
		goto out;
	}
	if (kt == CKK_AES) {
		ct = nk.value_len == 16 ? "4" : nk.value_len == 24 ? "5" : nk.value_len == 32 ? "6" : NULL;
		if (!ct) {
			rv = CKR_ATTRIBUTE_VALUE_INVALID;
			goto out;
		}
	} else {
		if (nk.value_len > 16320) {
			rv = CKR_ATTRIBUTE_VALUE_INVALID;
			goto out;
		}
		ct = "7";
	}
	req = kh_buf_new(32768);
	resp = p11_buf_new();
	int r = req && resp ? KH_OK : KH_ERR_NOMEM;
	if (r == KH_OK) r = kh_msg_begin(req, "GPGS");
	if (r == KH_OK) r = kh_msg_put(req, "CT", ct);
	if (r == KH_OK && kt != CKK_AES) r = kh_msg_put_u64(req, "LN", nk.value_len);
	if (r == KH_OK) r = p11_newkey_put(&nk, req, "CZ", "KF", "SL");
	if (r == KH_OK) r = kh_msg_end(req);
	if (r == KH_OK)
		r = p11_call(s, nk.token ? P11_CALL_PRIMARY : P11_CALL_BALANCE, req, resp, &f);
	if (r != KH_OK) {
		rv = gen_rv(r);
		goto out;
	}
	nk.flags |= P11_F_LOCAL | ((nk.flags & P11_F_SENSITIVE) ? P11_F_ALWAYS_SENSITIVE : 0) |
		    ((nk.flags & P11_F_EXPORTABLE) ? 0 : P11_F_NEVER_EXTRACTABLE);
	rv = p11_obj_from_resp(s, &nk, &f, "SL", "KD", "BG", NULL, phKey);
out:
	kh_buf_free(req);
	kh_buf_free(resp);
	p11_newkey_free(&nk);
	p11_session_put(s);
	return rv;
}

/* Both halves' descriptive attributes differ: set the public one's after
 * generation (GRSA/GECC give both halves the private template's). */
static bool same_desc(const struct p11_newkey *a, const struct p11_newkey *b)
{
	return a->label_len == b->label_len && (!a->label_len || memcmp(a->label, b->label, a->label_len) == 0) &&
	       a->ckaid_len == b->ckaid_len && (!a->ckaid_len || memcmp(a->ckaid, b->ckaid, a->ckaid_len) == 0) &&
	       a->extra_len == b->extra_len && (!a->extra_len || memcmp(a->extra, b->extra, a->extra_len) == 0);
}

static CK_RV set_public_desc(struct p11_session *s, CK_OBJECT_HANDLE h, const struct p11_newkey *pub)
{
	CK_ATTRIBUTE t[2] = {
		{CKA_LABEL, pub->label, pub->label_len},
		{CKA_ID, pub->ckaid, pub->ckaid_len},
	};
	/* C_SetAttributeValue takes the session lock itself */
	pthread_mutex_unlock(&s->mu);
	CK_RV rv = C_SetAttributeValue(s->handle, h, t, 2);
	pthread_mutex_lock(&s->mu);
	return rv;
}

P11_EXPORT CK_RV C_GenerateKeyPair(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
				   CK_ATTRIBUTE_PTR pPublicKeyTemplate, CK_ULONG ulPublicKeyAttributeCount,
				   CK_ATTRIBUTE_PTR pPrivateKeyTemplate, CK_ULONG ulPrivateKeyAttributeCount,
				   CK_OBJECT_HANDLE_PTR phPublicKey, CK_OBJECT_HANDLE_PTR phPrivateKey)
{
	struct p11_session *s;
	struct p11_newkey pub, priv;
	struct kh_buf *req = NULL, *resp = NULL;
	struct kh_frame f;
	CK_KEY_TYPE kt;
	const char *cmd;
	int curve = -1;
	CK_RV rv = p11_session_get(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	memset(&pub, 0, sizeof(pub));
	memset(&priv, 0, sizeof(priv));
	if (!pMechanism || !phPublicKey || !phPrivateKey || (!pPublicKeyTemplate && ulPublicKeyAttributeCount) ||
	    (!pPrivateKeyTemplate && ulPrivateKeyAttributeCount)) {
		p11_session_put(s);
		return CKR_ARGUMENTS_BAD;
	}
	switch (pMechanism->mechanism) {
	case CKM_RSA_PKCS_KEY_PAIR_GEN:
		kt = CKK_RSA;
		cmd = "GRSA";
		break;
	case CKM_EC_KEY_PAIR_GEN:
		kt = CKK_EC;
		cmd = "GECC";
		break;
	case CKM_EC_EDWARDS_KEY_PAIR_GEN:
		kt = CKK_EC_EDWARDS;
		cmd = "GECC";
		break;
	case CKM_EC_MONTGOMERY_KEY_PAIR_GEN:
		kt = CKK_EC_MONTGOMERY;
		cmd = "GECC";
		break;
	default:
		p11_session_put(s);
		return CKR_MECHANISM_INVALID;
	}
	if (pMechanism->ulParameterLen) {
		p11_session_put(s);
		return CKR_MECHANISM_PARAM_INVALID;
	}
	if ((rv = p11_tmpl_parse(pPublicKeyTemplate, ulPublicKeyAttributeCount, P11_TMPL_GEN_PUBLIC, CKO_PUBLIC_KEY, kt,
				 &pub)) != CKR_OK ||
	    (rv = p11_tmpl_parse(pPrivateKeyTemplate, ulPrivateKeyAttributeCount, P11_TMPL_GEN_PRIVATE, CKO_PRIVATE_KEY,
				 kt, &priv)) != CKR_OK)
		goto out;
	if ((pub.token || priv.token) && !p11_session_rw(s)) {
		rv = CKR_SESSION_READ_ONLY;
		goto out;
	}
	if ((pub.priv || priv.priv) && !p11_session_logged_in(s)) {
		rv = CKR_USER_NOT_LOGGED_IN; /* PKCS#11 5.1: only public objects before login */
		goto out;
	}
	if (kt != CKK_RSA) {
		const uint8_t *ep = pub.ec_params ? pub.ec_params : priv.ec_params;
		size_t eplen = pub.ec_params ? pub.ec_params_len : priv.ec_params_len;
		if (ep) {
			curve = p11_curve_from_params(ep, eplen);
			if (curve < 0 || p11_curve_ktype(curve) != kt) {
				rv = CKR_CURVE_NOT_SUPPORTED;
				goto out;
			}
		} else if (kt == CKK_EC_EDWARDS) {
			curve = 3;
		} else if (kt == CKK_EC_MONTGOMERY) {
			curve = 4;
		} else {
			rv = CKR_TEMPLATE_INCOMPLETE;
			goto out;
		}
	} else if (!pub.modulus_bits) {
		rv = CKR_TEMPLATE_INCOMPLETE;
		goto out;
	} else if (pub.modulus_bits != 1024 && pub.modulus_bits != 2048 && pub.modulus_bits != 3072 &&
		   pub.modulus_bits != 4096) {
		rv = CKR_KEY_SIZE_RANGE;
		goto out;
	}
	char pz[8];
	req = kh_buf_new(65536);
	resp = p11_buf_new();
	int r = req && resp ? KH_OK : KH_ERR_NOMEM;
	if (r == KH_OK) r = kh_msg_begin(req, cmd);
	if (kt == CKK_RSA) {
		if (r == KH_OK) r = kh_msg_put_u64(req, "RB", pub.modulus_bits);
		if (r == KH_OK && pub.pubexp_len) {
			size_t i = 0;
			while (i + 1 < pub.pubexp_len && pub.pubexp[i] == 0)
				i++;
			r = kh_msg_put_hex(req, "RA", pub.pubexp + i, pub.pubexp_len - i);
		}
	} else if (r == KH_OK) {
		r = kh_msg_put(req, "RA", p11_curve_hsm(curve));
	}
	if (r == KH_OK) r = p11_newkey_put(&priv, req, "CZ", "KF", "SL");
	p11_usage_letters(pub.usage, pz);
	if (r == KH_OK) r = kh_msg_put(req, "PZ", pz);
	if (r == KH_OK && pub.token) r = kh_msg_put(req, "PS", "*");
	if (r == KH_OK) r = kh_msg_end(req);
	if (r == KH_OK)
		r = p11_call(s, pub.token || priv.token ? P11_CALL_PRIMARY : P11_CALL_BALANCE, req, resp, &f);
	if (r != KH_OK) {
		rv = gen_rv(r);
		goto out;
	}
	priv.flags |= P11_F_LOCAL | ((priv.flags & P11_F_SENSITIVE) ? P11_F_ALWAYS_SENSITIVE : 0) |
		      ((priv.flags & P11_F_EXPORTABLE) ? 0 : P11_F_NEVER_EXTRACTABLE);
	pub.flags = (pub.flags & P11_F_MODIFIABLE) | P11_F_LOCAL;
	CK_OBJECT_HANDLE hpub = 0, hpriv = 0;
	if ((rv = p11_obj_from_resp(s, &priv, &f, "SL", "KD", "RC", "RD", &hpriv)) != CKR_OK)
		goto out;
	if ((rv = p11_obj_from_resp(s, &pub, &f, "PS", "PD", "SD", "RD", &hpub)) != CKR_OK) {
		pthread_mutex_unlock(&s->mu);
		KH_IGNORE(C_DestroyObject(s->handle, hpriv));
		pthread_mutex_lock(&s->mu);
		goto out;
	}
	if (pub.token && !same_desc(&pub, &priv))
		KH_IGNORE(set_public_desc(s, hpub, &pub));
	*phPublicKey = hpub;
	*phPrivateKey = hpriv;
out:
	kh_buf_free(req);
	kh_buf_free(resp);
	p11_newkey_free(&pub);
	p11_newkey_free(&priv);
	p11_session_put(s);
	return rv;
}
