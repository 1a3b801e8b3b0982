/*
 * The module's front: C_Initialize / C_Finalize, the function lists and
 * interfaces, slots and tokens, sessions and login. Everything here is
 * bookkeeping; the HSM does the work (through kh_pool), and keys never pass
 * through in clear. A child process after fork() must call C_Initialize
 * again; it then drops what it inherited without touching the parent's
 * connections.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include "pkcs11/p11.h"
#include "pkcs11/p11_log.h"
#include "pkcs11/p11_internal.h"
#include "common/kh_mem.h"
#include "common/kh_pid.h"
#include "common/kh_pool.h"

#define P11_DEFAULT_CFG "/etc/keyhold/fxpkcs11.cfg"
#define P11_SECURE_HEAP (256u * 1024)

static struct {
	pthread_mutex_t mu;
	pthread_cond_t event;       /* C_WaitForSlotEvent sleeps here until C_Finalize */
	bool init;
	pid_t pid;                  /* process that initialised */
	struct p11_config cfg;
	struct p11_slot slots[P11_CFG_MAX_SLOTS];
	size_t nslots;
	struct p11_hmap sessions;   /* handle -> struct p11_session * */
	CK_SESSION_HANDLE next_session;
	unsigned waiters;
} G = {.mu = PTHREAD_MUTEX_INITIALIZER, .event = PTHREAD_COND_INITIALIZER};

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

void p11_lock(void)
{
	pthread_mutex_lock(&G.mu);
}

void p11_unlock(void)
{
	pthread_mutex_unlock(&G.mu);
}

/* fork(): hold the module lock across it so the child never inherits it
 * held by a thread that does not exist there. */
static void atfork_prepare(void)
{
	pthread_mutex_lock(&G.mu);
}

static void atfork_parent(void)
{
	pthread_mutex_unlock(&G.mu);
}

static void atfork_child(void)
{
	pthread_mutex_unlock(&G.mu);
}

static void install_atfork(void)
{
	pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

CK_RV p11_check_init(void)
{
	/* G.init and G.pid change only in C_Initialize/C_Finalize; a child
	 * that did not re-initialise sees the parent's pid. */
	p11_lock();
	bool ok = G.init && G.pid == kh_pid();
	p11_unlock();
	return ok ? CKR_OK : CKR_CRYPTOKI_NOT_INITIALIZED;
}

const struct p11_config *p11_config(void)
{
	return &G.cfg;
}

CK_RV p11_slot_get(CK_SLOT_ID id, struct p11_slot **out)
{
	CK_RV rv = p11_check_init();
	if (rv != CKR_OK)
		return rv;
	for (size_t i = 0; i < G.nslots; i++) {
		if (G.slots[i].id == id) {
			*out = &G.slots[i];
			return CKR_OK;
		}
	}
	return CKR_SLOT_ID_INVALID;
}

/* ---- sessions ---- */

CK_RV p11_session_get(CK_SESSION_HANDLE h, struct p11_session **out)
{
	p11_lock();
	if (!G.init || G.pid != kh_pid()) {
		p11_unlock();
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	}
	struct p11_session *s = p11_hmap_get(&G.sessions, h);
	if (!s || s->closing) {
		p11_unlock();
		return CKR_SESSION_HANDLE_INVALID;
	}
	s->users++;
	p11_unlock();
	pthread_mutex_lock(&s->mu);
	if (s->closing) {
		pthread_mutex_unlock(&s->mu);
		p11_session_put_ref(s);
		return CKR_SESSION_HANDLE_INVALID;
	}
	*out = s;
	return CKR_OK;
}

/* locked: the caller holds the module lock (state_free), so the active
 * operations' key references are dropped without taking it again. */
static void session_free(struct p11_session *s, bool locked)
{
	for (int k = 0; k < P11_OP_COUNT; k++) {
		if (locked && s->op[k].key) {
			p11_obj_put_locked(s->op[k].key);
			s->op[k].key = NULL;
		}
		p11_op_end(s, (enum p11_op_kind)k);
	}
	free(s->found);
	pthread_mutex_destroy(&s->mu);
	free(s);
}

/* Drop a reference taken by p11_session_get (without the session lock). */
void p11_session_put_ref(struct p11_session *s)
{
	p11_lock();
	bool last = --s->users == 0 && s->closing;
	p11_unlock();
	if (last)
		session_free(s, false);
}

void p11_session_put(struct p11_session *s)
{
	pthread_mutex_unlock(&s->mu);
	p11_session_put_ref(s);
}

bool p11_session_logged_in(const struct p11_session *s)
{
	p11_lock();
	bool in = s->slot->user_logged_in || s->slot->so_logged_in;
	p11_unlock();
	return in;
}

bool p11_session_rw(const struct p11_session *s)
{
	return (s->flags & CKF_RW_SESSION) != 0;
}

void p11_op_end(struct p11_session *s, enum p11_op_kind k)
{
	struct p11_op *op = &s->op[k];
	if (op->param) {
		kh_wipe(op->param, op->param_len);
		free(op->param);
	}
	if (op->key)
		p11_obj_put(op->key);
	kh_buf_free(op->acc);
	EVP_MD_CTX_free(op->md);
	if (op->state && op->free_state)
		op->free_state(op->state);
	if (op->result) {
		kh_wipe(op->result, op->result_len);
		free(op->result);
	}
	memset(op, 0, sizeof(*op));
}

int p11_call(struct p11_session *s, unsigned flags, const struct kh_buf *req, struct kh_buf *resp,
	     struct kh_frame *f)
{
	char err[256] = "";
	int r = kh_pool_call(s->slot->pool, flags, req, resp, f, err, sizeof(err));
	if (r != KH_OK && err[0]) {
		/* the HSM's refusals are the application's business (a signature
		 * that does not verify); a slot that cannot be reached is ours */
		bool transport = p11_rv_from_kh(r) == CKR_DEVICE_ERROR;
		p11_log(transport ? P11_LOG_WARN : P11_LOG_DEBUG, "slot %lu: %s", (unsigned long)s->slot->id, err);
	}
	return r;
}

struct kh_buf *p11_buf_new(void)
{
	return kh_buf_new(2 * P11_MAX_DATA + 65536);
}

/* The one table from the HSM's errors to PKCS#11 return values. */
CK_RV p11_rv_from_kh(int err)
{
	switch (err) {
	case KH_OK:
		return CKR_OK;
	case KH_ERR_NOMEM:
		return CKR_HOST_MEMORY;
	case KH_ERR_NOT_LOGGED_IN:
		return CKR_USER_NOT_LOGGED_IN;
	case KH_ERR_AUTH_FAILED:
	case KH_ERR_ROLE_MISMATCH:
		return CKR_PIN_INCORRECT;
	case KH_ERR_LOCKED:
		return CKR_PIN_LOCKED;
	case KH_ERR_PASSWORD_CHANGE_REQUIRED:
		return CKR_PIN_EXPIRED;
	case KH_ERR_WEAK_PASSWORD:
		return CKR_PIN_LEN_RANGE;
	case KH_ERR_KEY_USAGE:
		return CKR_KEY_FUNCTION_NOT_PERMITTED;
	case KH_ERR_VERIFY_FAILED:
		return CKR_SIGNATURE_INVALID;
	case KH_ERR_DECRYPT_FAILED:
		return CKR_ENCRYPTED_DATA_INVALID;
	case KH_ERR_NOT_FOUND:
		return CKR_OBJECT_HANDLE_INVALID;
	case KH_ERR_COMMAND_NOT_ALLOWED:
	case KH_ERR_PERMISSION_DENIED:
	case KH_ERR_FIPS:
		return CKR_FUNCTION_REJECTED;
	case KH_ERR_SLOT_OUT_OF_RANGE:
		return CKR_DEVICE_MEMORY;
	case KH_ERR_UNSUPPORTED:
	case KH_ERR_UNKNOWN_COMMAND:
		return CKR_MECHANISM_INVALID;
	case KH_ERR_BAD_FIELD:
	case KH_ERR_MISSING_FIELD:
		return CKR_ARGUMENTS_BAD;
	case KH_ERR_TOO_LARGE:
		return CKR_DATA_LEN_RANGE;
	case KH_ERR_MAJOR_KEY_NOT_LOADED:
	case KH_ERR_STATE:
		return CKR_DEVICE_ERROR;
	case KH_ERR_CONNECT:
	case KH_ERR_IO:
	case KH_ERR_CLOSED:
	case KH_ERR_TIMEOUT:
	case KH_ERR_TLS_HANDSHAKE:
	case KH_ERR_TLS_CERT_REQUIRED:
	case KH_ERR_TLS_CERT_UNKNOWN_CA:
	case KH_ERR_TLS_CERT_EXPIRED:
	case KH_ERR_TLS_CERT_REVOKED:
	case KH_ERR_PROTOCOL:
		return CKR_DEVICE_ERROR;
	default:
		return CKR_GENERAL_ERROR;
	}
}

CK_RV p11_out(const uint8_t *data, size_t n, CK_BYTE_PTR out, CK_ULONG_PTR out_len)
{
	if (!out_len)
		return CKR_ARGUMENTS_BAD;
	if (!out) {
		*out_len = n;
		return CKR_OK;
	}
	if (*out_len < n) {
		*out_len = n;
		return CKR_BUFFER_TOO_SMALL;
	}
	if (n)
		memcpy(out, data, n);
	*out_len = n;
	return CKR_OK;
}

void p11_pad(CK_UTF8CHAR *dst, size_t n, const char *src)
{
	size_t l = strlen(src);
	memset(dst, ' ', n);
	memcpy(dst, src, l < n ? l : n);
}

/* ---- initialisation ---- */

/* The pool takes what the module's parser already bounds. */
_Static_assert(P11_CFG_MAX_ADDRS <= KH_POOL_MAX_ADDRS, "a slot's addresses fit a pool");
_Static_assert(sizeof(((struct p11_addr *)0)->host) <= KH_POOL_HOST_MAX + 1,
	       "an <ADDRESS> host fits a pool's");
_Static_assert(P11_CFG_NAME_MAX <= KH_POOL_USER_MAX, "identity names fit a pool's logins");
_Static_assert(P11_CFG_PASS_MAX <= KH_POOL_PASS_MAX, "passwords fit a pool's logins");

/* The one place that turns an <HSM> block into a pool's configuration.
 * name (for the pool's messages) is the caller's; the pool copies what it
 * keeps, so c need not outlive kh_pool_new. */
static void pool_cfg_from_slot(const struct p11_slot_cfg *s, struct kh_pool_cfg *c,
			       char *name, size_t namesz)
{
	memset(c, 0, sizeof(*c));
	snprintf(name, namesz, "slot %lu", s->slot_id);
	c->name = name;
	c->what = "slot"; /* "no address of the slot answered: ..." */
	for (size_t i = 0; i < s->naddr && i < KH_POOL_MAX_ADDRS; i++)
		c->addr[i] = (struct kh_pool_addr){s->addr[i].host, s->addr[i].port};
	c->naddr = s->naddr;
	c->default_port = s->prod_port;
	c->tls = s->tls;
	c->anonymous = s->tls_anonymous;
	c->ca_file = s->ca_file;
	c->cert_file = s->cert_file;
	c->key_file = s->key_file;
	c->key_pass = s->key_pass;
	c->balance = s->load_balance;
	c->connect_timeout_ms = s->connect_timeout_ms;
	c->request_timeout_ms = s->request_timeout_ms;
	c->max_connections = s->max_connections;
}

static void slots_free(bool abandon)
{
	for (size_t i = 0; i < G.nslots; i++) {
		if (abandon)
			kh_pool_abandon(G.slots[i].pool);
		else
			kh_pool_free(G.slots[i].pool);
	}
	memset(G.slots, 0, sizeof(G.slots));
	G.nslots = 0;
}

/* Everything this process holds, without a word to any HSM when abandon
 * (a child's inherited state). Module lock held. */
static void state_free(bool abandon)
{
	size_t it = 0;
	uint64_t key;
	void *val;
	while (p11_hmap_next(&G.sessions, &it, &key, &val)) {
		struct p11_session *s = val;
		s->closing = true;
		if (s->users == 0)
			session_free(s, true);
	}
	p11_hmap_free(&G.sessions);
	p11_objects_free_all();
	slots_free(abandon);
	p11_config_free(&G.cfg);
	G.init = false;
	G.pid = 0;
	pthread_cond_broadcast(&G.event);
}

static CK_RV check_init_args(CK_C_INITIALIZE_ARGS *a)
{
	if (!a)
		return CKR_OK;
	if (a->pReserved)
		return CKR_ARGUMENTS_BAD;
	bool any = a->CreateMutex || a->DestroyMutex || a->LockMutex || a->UnlockMutex;
	bool all = a->CreateMutex && a->DestroyMutex && a->LockMutex && a->UnlockMutex;
	if (any && !all)
		return CKR_ARGUMENTS_BAD;
	/* We lock with the OS's primitives; an application that supplies its
	 * own and forbids ours cannot be served. */
	if (all && !(a->flags & CKF_OS_LOCKING_OK))
		return CKR_CANT_LOCK;
	return CKR_OK;
}

P11_EXPORT CK_RV C_Initialize(CK_VOID_PTR pInitArgs)
{
	char err[512];
	CK_RV rv = check_init_args(pInitArgs);
	if (rv != CKR_OK)
		return rv;
	pthread_once(&atfork_once, install_atfork);
	p11_lock();
	if (G.init && G.pid == kh_pid()) {
		p11_unlock();
		return CKR_CRYPTOKI_ALREADY_INITIALIZED;
	}
	if (G.init) {
		/* a child after fork(): forget the parent's state quietly */
		state_free(true);
		p11_log_reset_after_fork();
	}
	OPENSSL_init_ssl(OPENSSL_INIT_LOAD_SSL_STRINGS, NULL);
	if (!CRYPTO_secure_malloc_initialized())
		(void)kh_mem_init(P11_SECURE_HEAP);

	const char *path = getenv("FXPKCS11_CFG");
	if (!path || !*path)
		path = P11_DEFAULT_CFG;
	if (p11_config_load(path, &G.cfg, err, sizeof(err)) != KH_OK) {
		fprintf(stderr, "keyhold-pkcs11: %s\n", err);
		p11_unlock();
		return CKR_GENERAL_ERROR;
	}
	p11_log_open(G.cfg.log_level, G.cfg.log_file);
	for (size_t i = 0; i < G.cfg.nslots; i++) {
		struct p11_slot *sl = &G.slots[i];
		sl->id = G.cfg.slots[i].slot_id;
		sl->cfg = &G.cfg.slots[i];
		struct kh_pool_cfg pc;
		char name[32];
		pool_cfg_from_slot(sl->cfg, &pc, name, sizeof(name));
		sl->pool = kh_pool_new(&pc, err, sizeof(err));
		if (!sl->pool) {
			fprintf(stderr, "keyhold-pkcs11: %s: slot %lu: %s\n", path, (unsigned long)sl->id, err);
			p11_log(P11_LOG_ERROR, "slot %lu: %s", (unsigned long)sl->id, err);
			G.nslots = i;
			slots_free(false);
			p11_config_free(&G.cfg);
			p11_log_close();
			p11_unlock();
			return CKR_GENERAL_ERROR;
		}
		G.nslots = i + 1;
	}
	G.next_session = 1;
	G.init = true;
	G.pid = kh_pid();
	p11_log(P11_LOG_INFO, "initialised from %s, %zu slot(s)", path, G.nslots);
	p11_unlock();
	return CKR_OK;
}

P11_EXPORT CK_RV C_Finalize(CK_VOID_PTR pReserved)
{
	if (pReserved)
		return CKR_ARGUMENTS_BAD;
	p11_lock();
	if (!G.init || G.pid != kh_pid()) {
		p11_unlock();
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	}
	state_free(false);
	p11_log_close();
	p11_unlock();
	return CKR_OK;
}

P11_EXPORT CK_RV C_GetInfo(CK_INFO_PTR pInfo)
{
	CK_RV rv = p11_check_init();
	if (rv != CKR_OK)
		return rv;
	if (!pInfo)
		return CKR_ARGUMENTS_BAD;
	memset(pInfo, 0, sizeof(*pInfo));
	pInfo->cryptokiVersion.major = 3;
	pInfo->cryptokiVersion.minor = 0;
	p11_pad(pInfo->manufacturerID, sizeof(pInfo->manufacturerID), "Keyhold");
	p11_pad(pInfo->libraryDescription, sizeof(pInfo->libraryDescription), "Keyhold PKCS#11 module");
	pInfo->libraryVersion.major = 0;
	pInfo->libraryVersion.minor = 1;
	return CKR_OK;
}

/* ---- slots and tokens ---- */

P11_EXPORT CK_RV C_GetSlotList(CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList, CK_ULONG_PTR pulCount)
{
	CK_RV rv = p11_check_init();
	if (rv != CKR_OK)
		return rv;
	if (!pulCount)
		return CKR_ARGUMENTS_BAD;
	(void)tokenPresent; /* a configured HSM slot always has its token */
	if (!pSlotList) {
		*pulCount = G.nslots;
		return CKR_OK;
	}
	if (*pulCount < G.nslots) {
		*pulCount = G.nslots;
		return CKR_BUFFER_TOO_SMALL;
	}
	for (size_t i = 0; i < G.nslots; i++)
		pSlotList[i] = G.slots[i].id;
	*pulCount = G.nslots;
	return CKR_OK;
}

P11_EXPORT CK_RV C_GetSlotInfo(CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo)
{
	struct p11_slot *sl;
	CK_RV rv = p11_slot_get(slotID, &sl);
	if (rv != CKR_OK)
		return rv;
	if (!pInfo)
		return CKR_ARGUMENTS_BAD;
	char desc[320];
	memset(pInfo, 0, sizeof(*pInfo));
	snprintf(desc, sizeof(desc), "Keyhold HSM %s:%u%s", sl->cfg->addr[0].host, sl->cfg->addr[0].port,
		 sl->cfg->naddr > 1 ? " (+ others)" : "");
	p11_pad(pInfo->slotDescription, sizeof(pInfo->slotDescription), desc);
	p11_pad(pInfo->manufacturerID, sizeof(pInfo->manufacturerID), "Keyhold");
	pInfo->flags = CKF_TOKEN_PRESENT | CKF_HW_SLOT;
	pInfo->hardwareVersion.major = 0;
	pInfo->hardwareVersion.minor = 1;
	pInfo->firmwareVersion.major = 0;
	pInfo->firmwareVersion.minor = 1;
	return CKR_OK;
}

/* Serial, model and version from the HSM, once per slot (HASH and PRMD:
 * every role may run them, before login too). A slot whose HSMs cannot be
 * reached still describes itself. */
static int ask(struct p11_slot *sl, const char *cmd, struct kh_buf *req, struct kh_buf *resp, struct kh_frame *f)
{
	kh_buf_reset(req);
	int r = kh_msg_begin(req, cmd);
	if (r == KH_OK)
		r = kh_msg_end(req);
	if (r == KH_OK)
		r = kh_pool_call(sl->pool, KH_POOL_BALANCE, req, resp, f, NULL, 0);
	return r;
}

static void token_facts(struct p11_slot *sl)
{
	p11_lock();
	bool have = sl->serial[0] != 0;
	p11_unlock();
	if (have)
		return;
	struct kh_buf *req = kh_buf_new(256), *resp = kh_buf_new(65536);
	struct kh_frame f;
	char sn[17] = "", md[17] = "", vn[17] = "";
	if (req && resp && ask(sl, "HASH", req, resp, &f) == KH_OK) {
		KH_IGNORE(kh_frame_str(&f, "SN", sn, sizeof(sn)));
		if (ask(sl, "PRMD", req, resp, &f) == KH_OK) {
			KH_IGNORE(kh_frame_str(&f, "MD", md, sizeof(md)));
			KH_IGNORE(kh_frame_str(&f, "VN", vn, sizeof(vn)));
		}
	}
	kh_buf_free(req);
	kh_buf_free(resp);
	if (!sn[0])
		return;
	p11_lock();
	memcpy(sl->serial, sn, sizeof(sn));
	snprintf(sl->model, sizeof(sl->model), "%s", md[0] ? md : "keyhold-hsm");
	memcpy(sl->version, vn, sizeof(vn));
	unsigned a = 0, b = 0;
	if (sscanf(vn, "%u.%u", &a, &b) == 2) {
		sl->fw_major = a;
		sl->fw_minor = b;
	}
	p11_unlock();
}

P11_EXPORT CK_RV C_GetTokenInfo(CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo)
{
	struct p11_slot *sl;
	CK_RV rv = p11_slot_get(slotID, &sl);
	if (rv != CKR_OK)
		return rv;
	if (!pInfo)
		return CKR_ARGUMENTS_BAD;
	token_facts(sl);
	memset(pInfo, 0, sizeof(*pInfo));
	p11_lock();
	p11_pad(pInfo->label, sizeof(pInfo->label), sl->cfg->label);
	p11_pad(pInfo->manufacturerID, sizeof(pInfo->manufacturerID), "Keyhold");
	p11_pad(pInfo->model, sizeof(pInfo->model), sl->model[0] ? sl->model : "keyhold-hsm");
	p11_pad(pInfo->serialNumber, sizeof(pInfo->serialNumber), sl->serial[0] ? sl->serial : "unknown");
	pInfo->flags = CKF_RNG | CKF_LOGIN_REQUIRED | CKF_USER_PIN_INITIALIZED | CKF_TOKEN_INITIALIZED;
	pInfo->ulMaxSessionCount = CK_EFFECTIVELY_INFINITE;
	pInfo->ulSessionCount = sl->nsessions;
	pInfo->ulMaxRwSessionCount = CK_EFFECTIVELY_INFINITE;
	pInfo->ulRwSessionCount = sl->nrw_sessions;
	pInfo->ulMaxPinLen = P11_CFG_PASS_MAX;
	pInfo->ulMinPinLen = 1;
	pInfo->ulTotalPublicMemory = CK_UNAVAILABLE_INFORMATION;
	pInfo->ulFreePublicMemory = CK_UNAVAILABLE_INFORMATION;
	pInfo->ulTotalPrivateMemory = CK_UNAVAILABLE_INFORMATION;
	pInfo->ulFreePrivateMemory = CK_UNAVAILABLE_INFORMATION;
	pInfo->hardwareVersion.major = 0;
	pInfo->hardwareVersion.minor = 1;
	pInfo->firmwareVersion.major = (CK_BYTE)sl->fw_major;
	pInfo->firmwareVersion.minor = (CK_BYTE)sl->fw_minor;
	p11_unlock();
	return CKR_OK;
}

P11_EXPORT CK_RV C_WaitForSlotEvent(CK_FLAGS flags, CK_SLOT_ID_PTR pSlot, CK_VOID_PTR pReserved)
{
	CK_RV rv = p11_check_init();
	if (rv != CKR_OK)
		return rv;
	if (!pSlot || pReserved)
		return CKR_ARGUMENTS_BAD;
	/* Tokens are never inserted or removed: an HSM slot always has its
	 * token. A blocking wait lasts until C_Finalize. */
	if (flags & CKF_DONT_BLOCK)
		return CKR_NO_EVENT;
	p11_lock();
	G.waiters++;
	while (G.init && G.pid == kh_pid())
		pthread_cond_wait(&G.event, &G.mu);
	G.waiters--;
	p11_unlock();
	return CKR_CRYPTOKI_NOT_INITIALIZED;
}

P11_EXPORT CK_RV C_InitToken(CK_SLOT_ID slotID, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen, CK_UTF8CHAR_PTR pLabel)
{
	struct p11_slot *sl;
	CK_RV rv = p11_slot_get(slotID, &sl);
	if (rv != CKR_OK)
		return rv;
	if (!pLabel)
		return CKR_ARGUMENTS_BAD;
	/* The key table belongs to the HSM's administrators (keyhold CLI),
	 * not to an application. */
	return CKR_FUNCTION_NOT_SUPPORTED;
}

/* ---- sessions ---- */

P11_EXPORT CK_RV C_OpenSession(CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR pApplication, CK_NOTIFY Notify,
			       CK_SESSION_HANDLE_PTR phSession)
{
	struct p11_slot *sl;
	CK_RV rv = p11_slot_get(slotID, &sl);
	if (rv != CKR_OK)
		return rv;
	if (!phSession)
		return CKR_ARGUMENTS_BAD;
	if (!(flags & CKF_SERIAL_SESSION))
		return CKR_SESSION_PARALLEL_NOT_SUPPORTED;
	struct p11_session *s = calloc(1, sizeof(*s));
	if (!s)
		return CKR_HOST_MEMORY;
	pthread_mutex_init(&s->mu, NULL);
	s->slot = sl;
	s->flags = flags & (CKF_RW_SESSION | CKF_SERIAL_SESSION);
	s->app = pApplication;
	s->notify = Notify;
	p11_lock();
	if (sl->so_logged_in && !(flags & CKF_RW_SESSION)) {
		p11_unlock();
		pthread_mutex_destroy(&s->mu);
		free(s);
		return CKR_SESSION_READ_WRITE_SO_EXISTS;
	}
	s->handle = G.next_session++;
	if (p11_hmap_put(&G.sessions, s->handle, s) != KH_OK) {
		p11_unlock();
		pthread_mutex_destroy(&s->mu);
		free(s);
		return CKR_HOST_MEMORY;
	}
	sl->nsessions++;
	if (flags & CKF_RW_SESSION)
		sl->nrw_sessions++;
	p11_unlock();
	*phSession = s->handle;
	return CKR_OK;
}

/* Take the session out of the table; the last user frees it. When it was
 * the slot's last session the application is logged out (PKCS#11). */
static void session_close(struct p11_session *s, bool *last_on_slot)
{
	struct p11_slot *sl = s->slot;
	p11_lock();
	p11_hmap_del(&G.sessions, s->handle);
	s->closing = true;
	sl->nsessions--;
	if (s->flags & CKF_RW_SESSION)
		sl->nrw_sessions--;
	*last_on_slot = sl->nsessions == 0;
	bool free_now = s->users == 0;
	p11_unlock();
	p11_objects_session_closed(s->handle);
	if (free_now)
		session_free(s, false);
}

static void logout_slot(struct p11_slot *sl)
{
	p11_lock();
	bool was = sl->user_logged_in || sl->so_logged_in;
	sl->user_logged_in = sl->so_logged_in = false;
	p11_unlock();
	if (was) {
		kh_pool_logout(sl->pool);
		p11_objects_logged_out(sl);
	}
}

P11_EXPORT CK_RV C_CloseSession(CK_SESSION_HANDLE hSession)
{
	struct p11_session *s;
	CK_RV rv = p11_session_get(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	struct p11_slot *sl = s->slot;
	bool last;
	pthread_mutex_unlock(&s->mu);
	session_close(s, &last);
	p11_session_put_ref(s);
	if (last)
		logout_slot(sl);
	return CKR_OK;
}

P11_EXPORT CK_RV C_CloseAllSessions(CK_SLOT_ID slotID)
{
	struct p11_slot *sl;
	CK_RV rv = p11_slot_get(slotID, &sl);
	if (rv != CKR_OK)
		return rv;
	for (;;) {
		CK_SESSION_HANDLE h = 0;
		size_t it = 0;
		uint64_t key;
		void *val;
		p11_lock();
		while (p11_hmap_next(&G.sessions, &it, &key, &val)) {
			if (((struct p11_session *)val)->slot == sl) {
				h = (CK_SESSION_HANDLE)key;
				break;
			}
		}
		p11_unlock();
		if (!h)
			break;
		KH_IGNORE(C_CloseSession(h));
	}
	logout_slot(sl);
	return CKR_OK;
}

P11_EXPORT CK_RV C_GetSessionInfo(CK_SESSION_HANDLE hSession, CK_SESSION_INFO_PTR pInfo)
{
	struct p11_session *s;
	CK_RV rv = p11_session_get(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	if (!pInfo) {
		p11_session_put(s);
		return CKR_ARGUMENTS_BAD;
	}
	p11_lock();
	bool user = s->slot->user_logged_in, so = s->slot->so_logged_in;
	p11_unlock();
	bool rw = p11_session_rw(s);
	memset(pInfo, 0, sizeof(*pInfo));
	pInfo->slotID = s->slot->id;
	pInfo->flags = s->flags;
	if (so)
		pInfo->state = CKS_RW_SO_FUNCTIONS;
	else if (user)
		pInfo->state = rw ? CKS_RW_USER_FUNCTIONS : CKS_RO_USER_FUNCTIONS;
	else
		pInfo->state = rw ? CKS_RW_PUBLIC_SESSION : CKS_RO_PUBLIC_SESSION;
	p11_session_put(s);
	return CKR_OK;
}

P11_EXPORT CK_RV C_GetOperationState(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOperationState,
				     CK_ULONG_PTR pulOperationStateLen)
{
	struct p11_session *s;
	CK_RV rv = p11_session_get(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	p11_session_put(s);
	if (!pulOperationStateLen)
		return CKR_ARGUMENTS_BAD;
	/* Operation state would hold key references and gathered data that
	 * only make sense inside this process. */
	return CKR_FUNCTION_NOT_SUPPORTED;
}

P11_EXPORT CK_RV C_SetOperationState(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOperationState,
				     CK_ULONG ulOperationStateLen, CK_OBJECT_HANDLE hEncryptionKey,
				     CK_OBJECT_HANDLE hAuthenticationKey)
{
	struct p11_session *s;
	CK_RV rv = p11_session_get(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	p11_session_put(s);
	if (!pOperationState)
		return CKR_ARGUMENTS_BAD;
	return CKR_FUNCTION_NOT_SUPPORTED;
}

P11_EXPORT CK_RV C_SessionCancel(CK_SESSION_HANDLE hSession, CK_FLAGS flags)
{
	static const struct {
		CK_FLAGS flag;
		enum p11_op_kind k;
	} map[] = {
		{CKF_ENCRYPT, P11_OP_ENCRYPT}, {CKF_DECRYPT, P11_OP_DECRYPT},
		{CKF_DIGEST, P11_OP_DIGEST}, {CKF_SIGN, P11_OP_SIGN},
		{CKF_VERIFY, P11_OP_VERIFY}, {CKF_SIGN_RECOVER, P11_OP_SIGN_RECOVER},
		{CKF_VERIFY_RECOVER, P11_OP_VERIFY_RECOVER},
		{CKF_ENCRYPT, P11_OP_MSG_ENCRYPT}, {CKF_DECRYPT, P11_OP_MSG_DECRYPT},
		{CKF_SIGN, P11_OP_MSG_SIGN}, {CKF_VERIFY, P11_OP_MSG_VERIFY},
	};
	struct p11_session *s;
	CK_RV rv = p11_session_get(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (flags & map[i].flag)
			p11_op_end(s, map[i].k);
	p11_session_put(s);
	return CKR_OK;
}

/* ---- login ---- */

static CK_RV login_creds(struct p11_slot *sl, CK_USER_TYPE type, const char *user, size_t user_len,
			 CK_UTF8CHAR_PTR pin, CK_ULONG pin_len)
{
	const struct p11_slot_cfg *c = sl->cfg;
	struct kh_pool_cred cr[2];
	size_t n = 0;
	char name[P11_CFG_NAME_MAX + 1];

	if (type == CKU_SO) {
		if (!c->so_opr[0])
			return CKR_USER_TYPE_INVALID;
		snprintf(name, sizeof(name), "%s", c->so_opr);
	} else if (user && user_len) {
		if (user_len > P11_CFG_NAME_MAX)
			return CKR_ARGUMENTS_BAD;
		memcpy(name, user, user_len);
		name[user_len] = 0;
	} else {
		snprintf(name, sizeof(name), "%s", c->crypto_opr);
	}
	cr[n].user = name;
	if (pin && pin_len) {
		if (pin_len > P11_CFG_PASS_MAX)
			return CKR_PIN_LEN_RANGE;
		cr[n].pw = (const char *)pin;
		cr[n].pwlen = pin_len;
	} else if (type == CKU_USER && !user_len && c->crypto_opr_pass) {
		/* no PIN from the application: the configured password */
		cr[n].pw = c->crypto_opr_pass;
		cr[n].pwlen = strlen(c->crypto_opr_pass);
	} else {
		return CKR_PIN_INCORRECT;
	}
	n++;
	if (type == CKU_USER && c->crypto_opr2[0]) {
		if (!c->crypto_opr2_pass)
			return CKR_PIN_INCORRECT;
		cr[n].user = c->crypto_opr2;
		cr[n].pw = c->crypto_opr2_pass;
		cr[n].pwlen = strlen(c->crypto_opr2_pass);
		n++;
	}
	int r = kh_pool_login(sl->pool, cr, n);
	if (r != KH_OK)
		p11_log(P11_LOG_WARN, "slot %lu: login as %s: %s", (unsigned long)sl->id, name, kh_errname(r));
	return p11_rv_from_kh(r);
}

static CK_RV do_login(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin,
		      CK_ULONG ulPinLen, CK_UTF8CHAR_PTR pUsername, CK_ULONG ulUsernameLen)
{
	struct p11_session *s;
	CK_RV rv = p11_session_get(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	struct p11_slot *sl = s->slot;
	if (!pPin && ulPinLen) {
		rv = CKR_ARGUMENTS_BAD;
		goto out;
	}
	if (userType != CKU_USER && userType != CKU_SO && userType != CKU_CONTEXT_SPECIFIC) {
		rv = CKR_USER_TYPE_INVALID;
		goto out;
	}
	p11_lock();
	bool user = sl->user_logged_in, so = sl->so_logged_in;
	bool ro_exists = false;
	if (userType == CKU_SO) {
		size_t it = 0;
		uint64_t key;
		void *val;
		while (p11_hmap_next(&G.sessions, &it, &key, &val)) {
			struct p11_session *o = val;
			if (o->slot == sl && !(o->flags & CKF_RW_SESSION))
				ro_exists = true;
		}
	}
	p11_unlock();

	if (userType == CKU_CONTEXT_SPECIFIC) {
		/* Re-authentication for the operation in progress: no key of this
		 * token asks for it (CKA_ALWAYS_AUTHENTICATE is false), but the
		 * PIN is still checked against the HSM. */
		bool active = false;
		for (int k = 0; k < P11_OP_COUNT; k++)
			active |= s->op[k].active;
		if (!user && !so)
			rv = CKR_USER_NOT_LOGGED_IN;
		else if (!active)
			rv = CKR_OPERATION_NOT_INITIALIZED;
		else
			rv = login_creds(sl, CKU_USER, (const char *)pUsername, ulUsernameLen, pPin, ulPinLen);
		goto out;
	}
	if ((userType == CKU_USER && user) || (userType == CKU_SO && so)) {
		rv = CKR_USER_ALREADY_LOGGED_IN;
		goto out;
	}
	if (user || so) {
		rv = CKR_USER_ANOTHER_ALREADY_LOGGED_IN;
		goto out;
	}
	if (userType == CKU_SO && ro_exists) {
		rv = CKR_SESSION_READ_ONLY_EXISTS;
		goto out;
	}
	rv = login_creds(sl, userType, (const char *)pUsername, ulUsernameLen, pPin, ulPinLen);
	if (rv == CKR_OK) {
		p11_lock();
		if (userType == CKU_SO)
			sl->so_logged_in = true;
		else
			sl->user_logged_in = true;
		p11_unlock();
	}
out:
	p11_session_put(s);
	return rv;
}

P11_EXPORT CK_RV C_Login(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen)
{
	return do_login(hSession, userType, pPin, ulPinLen, NULL, 0);
}

P11_EXPORT CK_RV C_LoginUser(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin,
			     CK_ULONG ulPinLen, CK_UTF8CHAR_PTR pUsername, CK_ULONG ulUsernameLen)
{
	if (!pUsername && ulUsernameLen)
		return CKR_ARGUMENTS_BAD;
	return do_login(hSession, userType, pPin, ulPinLen, pUsername, ulUsernameLen);
}

P11_EXPORT CK_RV C_Logout(CK_SESSION_HANDLE hSession)
{
	struct p11_session *s;
	CK_RV rv = p11_session_get(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	struct p11_slot *sl = s->slot;
	p11_lock();
	bool in = sl->user_logged_in || sl->so_logged_in;
	p11_unlock();
	p11_session_put(s);
	if (!in)
		return CKR_USER_NOT_LOGGED_IN;
	logout_slot(sl);
	return CKR_OK;
}

P11_EXPORT CK_RV C_InitPIN(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen)
{
	struct p11_session *s;
	CK_RV rv = p11_session_get(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	if (!pPin && ulPinLen)
		rv = CKR_ARGUMENTS_BAD;
	else if (!s->slot->so_logged_in)
		rv = CKR_USER_NOT_LOGGED_IN;
	else
		/* identities are managed by the HSM's administrators (IDMD
		 * needs two of them); an SO login here has one */
		rv = CKR_FUNCTION_NOT_SUPPORTED;
	p11_session_put(s);
	return rv;
}

P11_EXPORT CK_RV C_SetPIN(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pOldPin, CK_ULONG ulOldLen,
			  CK_UTF8CHAR_PTR pNewPin, CK_ULONG ulNewLen)
{
	struct p11_session *s;
	CK_RV rv = p11_session_get(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	struct p11_slot *sl = s->slot;
	struct kh_buf *req = NULL, *resp = NULL;
	struct kh_frame f;
	if ((!pOldPin && ulOldLen) || (!pNewPin && ulNewLen) || !ulOldLen || !ulNewLen) {
		rv = CKR_ARGUMENTS_BAD;
		goto out;
	}
	if (ulOldLen > P11_CFG_PASS_MAX || ulNewLen > P11_CFG_PASS_MAX) {
		rv = CKR_PIN_LEN_RANGE;
		goto out;
	}
	if (!p11_session_rw(s)) {
		rv = CKR_SESSION_READ_ONLY;
		goto out;
	}
	p11_lock();
	bool so = sl->so_logged_in, user = sl->user_logged_in;
	p11_unlock();
	const char *who = so ? sl->cfg->so_opr : sl->cfg->crypto_opr;
	req = kh_buf_new(4096);
	resp = kh_buf_new(65536);
	if (!req || !resp) {
		rv = CKR_HOST_MEMORY;
		goto out;
	}
	if (kh_msg_begin(req, "CHPW") != KH_OK || kh_msg_put(req, "ID", who) != KH_OK ||
	    kh_msg_put_hex(req, "PW", pOldPin, ulOldLen) != KH_OK ||
	    kh_msg_put_hex(req, "NP", pNewPin, ulNewLen) != KH_OK || kh_msg_end(req) != KH_OK) {
		rv = CKR_HOST_MEMORY;
		goto out;
	}
	int r = p11_call(s, P11_CALL_PRIMARY, req, resp, &f);
	rv = p11_rv_from_kh(r);
	if (rv == CKR_OK && (user || so))
		/* connections opened from now on log in with the new password */
		KH_IGNORE(kh_pool_set_password(sl->pool, who, (const char *)pNewPin, ulNewLen));
out:
	kh_buf_free(req);
	kh_buf_free(resp);
	p11_session_put(s);
	return rv;
}

/* ---- parallel functions (legacy) ---- */

P11_EXPORT CK_RV C_GetFunctionStatus(CK_SESSION_HANDLE hSession)
{
	struct p11_session *s;
	CK_RV rv = p11_session_get(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	p11_session_put(s);
	return CKR_FUNCTION_NOT_PARALLEL;
}

P11_EXPORT CK_RV C_CancelFunction(CK_SESSION_HANDLE hSession)
{
	struct p11_session *s;
	CK_RV rv = p11_session_get(hSession, &s);
	if (rv != CKR_OK)
		return rv;
	p11_session_put(s);
	return CKR_FUNCTION_NOT_PARALLEL;
}

/* ---- function lists and interfaces ---- */

#define P11_FN_240                                                                                       \
	C_Initialize, C_Finalize, C_GetInfo, C_GetFunctionList, C_GetSlotList, C_GetSlotInfo,            \
	    C_GetTokenInfo, C_GetMechanismList, C_GetMechanismInfo, C_InitToken, C_InitPIN, C_SetPIN,    \
	    C_OpenSession, C_CloseSession, C_CloseAllSessions, C_GetSessionInfo, C_GetOperationState,    \
	    C_SetOperationState, C_Login, C_Logout, C_CreateObject, C_CopyObject, C_DestroyObject,       \
	    C_GetObjectSize, C_GetAttributeValue, C_SetAttributeValue, C_FindObjectsInit, C_FindObjects, \
	    C_FindObjectsFinal, C_EncryptInit, C_Encrypt, C_EncryptUpdate, C_EncryptFinal,              \
	    C_DecryptInit, C_Decrypt, C_DecryptUpdate, C_DecryptFinal, C_DigestInit, C_Digest,          \
	    C_DigestUpdate, C_DigestKey, C_DigestFinal, C_SignInit, C_Sign, C_SignUpdate, C_SignFinal,  \
	    C_SignRecoverInit, C_SignRecover, C_VerifyInit, C_Verify, C_VerifyUpdate, C_VerifyFinal,    \
	    C_VerifyRecoverInit, C_VerifyRecover, C_DigestEncryptUpdate, C_DecryptDigestUpdate,         \
	    C_SignEncryptUpdate, C_DecryptVerifyUpdate, C_GenerateKey, C_GenerateKeyPair, C_WrapKey,    \
	    C_UnwrapKey, C_DeriveKey, C_SeedRandom, C_GenerateRandom, C_GetFunctionStatus,              \
	    C_CancelFunction, C_WaitForSlotEvent

static CK_FUNCTION_LIST fl_240 = {{2, 40}, P11_FN_240};

static CK_FUNCTION_LIST_3_0 fl_300 = {
	{3, 0}, P11_FN_240,
	C_GetInterfaceList, C_GetInterface, C_LoginUser, C_SessionCancel,
	C_MessageEncryptInit, C_EncryptMessage, C_EncryptMessageBegin, C_EncryptMessageNext,
	C_MessageEncryptFinal, C_MessageDecryptInit, C_DecryptMessage, C_DecryptMessageBegin,
	C_DecryptMessageNext, C_MessageDecryptFinal, C_MessageSignInit, C_SignMessage,
	C_SignMessageBegin, C_SignMessageNext, C_MessageSignFinal, C_MessageVerifyInit,
	C_VerifyMessage, C_VerifyMessageBegin, C_VerifyMessageNext, C_MessageVerifyFinal,
};

static CK_CHAR iface_name[] = "PKCS 11";
static CK_INTERFACE interfaces[] = {
	{iface_name, &fl_300, 0},
	{iface_name, &fl_240, 0},
};
#define NIFACES (sizeof(interfaces) / sizeof(interfaces[0]))

P11_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList)
{
	if (!ppFunctionList)
		return CKR_ARGUMENTS_BAD;
	*ppFunctionList = &fl_240;
	return CKR_OK;
}

P11_EXPORT CK_RV C_GetInterfaceList(CK_INTERFACE_PTR pInterfacesList, CK_ULONG_PTR pulCount)
{
	if (!pulCount)
		return CKR_ARGUMENTS_BAD;
	if (!pInterfacesList) {
		*pulCount = NIFACES;
		return CKR_OK;
	}
	if (*pulCount < NIFACES) {
		*pulCount = NIFACES;
		return CKR_BUFFER_TOO_SMALL;
	}
	memcpy(pInterfacesList, interfaces, sizeof(interfaces));
	*pulCount = NIFACES;
	return CKR_OK;
}

P11_EXPORT CK_RV C_GetInterface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion,
				CK_INTERFACE_PTR_PTR ppInterface, CK_FLAGS flags)
{
	if (!ppInterface)
		return CKR_ARGUMENTS_BAD;
	for (size_t i = 0; i < NIFACES; i++) {
		const CK_VERSION *v = interfaces[i].pFunctionList;
		if (pInterfaceName && strcmp((const char *)pInterfaceName, (const char *)iface_name) != 0)
			continue;
		if (pVersion && (pVersion->major != v->major || pVersion->minor != v->minor))
			continue;
		if ((interfaces[i].flags & flags) != flags)
			continue;
		*ppInterface = &interfaces[i];
		return CKR_OK;
	}
	return CKR_ARGUMENTS_BAD;
}
