/*
 * One error enum for the whole project, its texts, and its wire codes.
 * Texts are fixed strings: they never carry caller data, so no secret can
 * leak through an error.
 */
#ifndef KH_ERR_H
#define KH_ERR_H

#define KH_MUST_CHECK __attribute__((warn_unused_result))
/* Deliberately drop a KH_MUST_CHECK result (a cast to void does not). */
#define KH_IGNORE(x) do { if (x) { } } while (0)

/* Values are negated wire codes: KH_OK is 0, errors are < 0, and the
 * number after the minus sign is what goes on the wire in ERRO's EC tag. */
enum kh_err {
	KH_OK = 0,
	KH_ERR_INTERNAL = -1,
	KH_ERR_NOMEM = -2,
	KH_ERR_MALFORMED = -3,
	KH_ERR_TOO_LARGE = -4,
	KH_ERR_UNKNOWN_COMMAND = -5,
	KH_ERR_MISSING_FIELD = -6,
	KH_ERR_BAD_FIELD = -7,
	KH_ERR_NOT_LOGGED_IN = -8,
	KH_ERR_COMMAND_NOT_ALLOWED = -9,
	KH_ERR_PERMISSION_DENIED = -10,
	KH_ERR_SLOT_OUT_OF_RANGE = -11,
	KH_ERR_AUTH_FAILED = -12,
	KH_ERR_LOCKED = -13,
	KH_ERR_PASSWORD_CHANGE_REQUIRED = -14,
	KH_ERR_WEAK_PASSWORD = -15,
	KH_ERR_ROLE_MISMATCH = -16,
	KH_ERR_PORT_NOT_ALLOWED = -17,
	KH_ERR_NOT_FOUND = -18,
	KH_ERR_EXISTS = -19,
	KH_ERR_IN_USE = -20,
	KH_ERR_BAD_KCV = -21,
	KH_ERR_CEREMONY_STATE = -22,
	KH_ERR_FRAGMENT_INVALID = -23,
	KH_ERR_FRAGMENT_DUPLICATE = -24,
	KH_ERR_INCOMPLETE = -25,
	KH_ERR_MAJOR_KEY_NOT_LOADED = -26,
	KH_ERR_TLS = -27,
	KH_ERR_CRYPTO = -28,
	KH_ERR_BACKUP_INVALID = -29,
	KH_ERR_STORAGE = -30,
	KH_ERR_BUSY = -31,
	KH_ERR_FIPS = -32,
	KH_ERR_STATE = -33,
	KH_ERR_IO = -34,
	KH_ERR_CONNECT = -35,
	KH_ERR_TLS_HANDSHAKE = -36,
	KH_ERR_TLS_CERT_REQUIRED = -37,
	KH_ERR_TLS_CERT_UNKNOWN_CA = -38,
	KH_ERR_TLS_CERT_EXPIRED = -39,
	KH_ERR_TLS_CERT_REVOKED = -40,
	KH_ERR_CLOSED = -41,
	KH_ERR_TIMEOUT = -42,
	KH_ERR_PROTOCOL = -43,
	KH_ERR_KEY_USAGE = -44,
	KH_ERR_UNSUPPORTED = -45,
	KH_ERR_LOCAL_FILE = -46, /* client side: a local file or terminal could not be used */
	KH_ERR_VERIFY_FAILED = -47,
	KH_ERR_DECRYPT_FAILED = -48, /* one answer for every padding, tag or unwrap failure */
	KH_ERR_LAST = -49
};

/* Short fixed text for an error code (never NULL). */
const char *kh_strerror(int err);
/* Stable symbolic name, e.g. "AUTH_FAILED" (never NULL). */
const char *kh_errname(int err);
/* Wire code (positive) <-> kh_err. Unknown wire codes map to KH_ERR_PROTOCOL. */
int kh_err_to_wire(int err);
int kh_err_from_wire(long code);

#endif
