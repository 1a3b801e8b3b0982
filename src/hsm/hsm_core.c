/*
 * Device lifecycle. The device key file is the root of the sealing chain
 * (major keys at rest, the audit MAC key): it is created once, 0600, and is
 * only ever read into the secure heap.
 */
#include "hsm/hsm_core.h"
#include "hsm/keyobj.h"
#include "hsm/selftest.h"
#include "hsm/audit.h"
#include "hsm/audit.h"
#include "hsm/db.h"
#include "hsm/majorkey.h"
#include "hsm/roles.h"
#include "hsm/tls.h"
#include "common/kh_log.h"
#include "common/kh_mem.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>

#define DEVKEY_LEN 32

static int read_full(int fd, uint8_t *p, size_t n)
{
	while (n) {
		ssize_t r = read(fd, p, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

static int write_full(int fd, const uint8_t *p, size_t n)
{
	while (n) {
		ssize_t r = write(fd, p, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

static int load_device_key(struct kh_hsm *hsm)
{
	char path[4200];
	int fd, r = KH_OK;

	snprintf(path, sizeof(path), "%s/device.key", hsm->datadir);
	hsm->device_key = kh_secure_alloc(DEVKEY_LEN);
	if (hsm->device_key == NULL)
		return KH_ERR_NOMEM;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd >= 0) {
		struct stat st;
		if (fstat(fd, &st) != 0 || st.st_size != DEVKEY_LEN ||
		    read_full(fd, hsm->device_key, DEVKEY_LEN) != 0) {
			log_warnx("%s: unreadable or wrong size", path);
			r = KH_ERR_IO;
		} else if (st.st_mode & 077) {
			log_warnx("%s: mode %o is too open (want 0600)", path, st.st_mode & 0777);
			r = KH_ERR_IO;
		}
		close(fd);
		return r;
	}
	if (errno != ENOENT) {
		log_warn("%s", path);
		return KH_ERR_IO;
	}
	/* first start: make a new device key */
	if (RAND_priv_bytes(hsm->device_key, DEVKEY_LEN) != 1)
		return KH_ERR_CRYPTO;
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		log_warn("%s", path);
		return KH_ERR_IO;
	}
	if (write_full(fd, hsm->device_key, DEVKEY_LEN) != 0 || fsync(fd) != 0) {
		log_warn("%s", path);
		r = KH_ERR_IO;
	}
	close(fd);
	log_info("created device key %s", path);
	return r;
}

static int derive_audit_key(struct kh_hsm *hsm)
{
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	EVP_KDF_CTX *kctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
	OSSL_PARAM params[4];
	int r = KH_ERR_CRYPTO;

	hsm->audit_key = kh_secure_alloc(32);
	if (hsm->audit_key == NULL || kctx == NULL)
		goto out;
	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
	params[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, hsm->device_key, DEVKEY_LEN);
	params[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO,
						      (char *)"keyhold audit mac v1", 20);
	params[3] = OSSL_PARAM_construct_end();
	if (EVP_KDF_derive(kctx, hsm->audit_key, 32, params) == 1)
		r = KH_OK;
out:
	EVP_KDF_CTX_free(kctx);
	EVP_KDF_free(kdf);
	return r;
}

static int ensure_serial(struct kh_hsm *hsm)
{
	if (kh_db_setting_get_str(hsm->db, "serial", hsm->serial, sizeof(hsm->serial)) == KH_OK)
		return KH_OK;
	uint8_t rnd[5];
	if (RAND_bytes(rnd, sizeof(rnd)) != 1)
		return KH_ERR_CRYPTO;
	uint64_t v = 0;
	for (size_t i = 0; i < sizeof(rnd); i++)
		v = (v << 8) | rnd[i];
	snprintf(hsm->serial, sizeof(hsm->serial), "KH%010llu",
		 (unsigned long long)(v % 10000000000ull));
	return kh_db_setting_put_str(hsm->db, "serial", hsm->serial);
}

void kh_hsm_reload_settings(struct kh_hsm *hsm)
{
	/* read first, publish under hsm->mu: never hold hsm->mu across a
	 * database access (lock order: db, then hsm->mu) */
	bool fips = kh_db_setting_get_int(hsm->db, "fips", 0) != 0;
	bool p11 = kh_db_setting_get_int(hsm->db, "pkcs11", 1) != 0;
	int lt = (int)kh_db_setting_get_int(hsm->db, "lockout_threshold", 5);
	int ls = (int)kh_db_setting_get_int(hsm->db, "lockout_seconds", 300);
	int64_t off = kh_db_setting_get_int(hsm->db, "clock_offset", 0);
	pthread_mutex_lock(&hsm->mu);
	hsm->fips = fips;
	hsm->pkcs11 = p11;
	hsm->lockout_threshold = lt;
	hsm->lockout_seconds = ls;
	hsm->clock_offset = off;
	pthread_mutex_unlock(&hsm->mu);
}

time_t kh_hsm_now(struct kh_hsm *hsm)
{
	pthread_mutex_lock(&hsm->mu);
	int64_t off = hsm->clock_offset;
	pthread_mutex_unlock(&hsm->mu);
	return time(NULL) + (time_t)off;
}

int kh_hsm_open(struct kh_hsm *hsm, const char *datadir, bool volatile_mk)
{
	char path[4200];
	int r;

	memset(hsm, 0, sizeof(*hsm));
	hsm->lock_fd = -1;
	pthread_mutex_init(&hsm->mu, NULL);
	hsm->volatile_mk = volatile_mk;
	hsm->started = time(NULL);
	if (strlen(datadir) >= sizeof(hsm->datadir))
		return KH_ERR_BAD_FIELD;
	snprintf(hsm->datadir, sizeof(hsm->datadir), "%s", datadir);
	if (mkdir(datadir, 0700) != 0 && errno != EEXIST) {
		log_warn("mkdir %s", datadir);
		return KH_ERR_IO;
	}
	/* one device, one process: two daemons on one data dir would each
	 * believe they own the database and the console socket */
	snprintf(path, sizeof(path), "%s/keyhold.lock", datadir);
	hsm->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (hsm->lock_fd < 0) {
		log_warn("%s", path);
		return KH_ERR_IO;
	}
	if (flock(hsm->lock_fd, LOCK_EX | LOCK_NB) != 0) {
		log_warnx("data dir %s is in use by another keyhold-hsm", datadir);
		close(hsm->lock_fd);
		hsm->lock_fd = -1;
		return KH_ERR_BUSY;
	}
	if ((r = load_device_key(hsm)) != KH_OK)
		return r;
	if ((r = derive_audit_key(hsm)) != KH_OK)
		return r;
	snprintf(path, sizeof(path), "%s/keyhold.db", datadir);
	if ((r = kh_db_open(path, &hsm->db)) != KH_OK)
		return r;
	(void)chmod(path, 0600);
	if ((r = ensure_serial(hsm)) != KH_OK)
		return r;
	kh_hsm_reload_settings(hsm);
	kh_keycache_init(hsm);
	if ((r = kh_roles_bootstrap(hsm)) != KH_OK) {
		log_warnx("cannot create the built-in roles: %s", kh_strerror(r));
		return r;
	}
	if ((r = kh_mk_init(hsm)) != KH_OK) {
		log_warnx("cannot restore major keys: %s", kh_strerror(r));
		return r;
	}
	if ((r = kh_tls_init(hsm)) != KH_OK) {
		log_warnx("cannot set up TLS: %s", kh_strerror(r));
		return r;
	}
	return KH_OK;
}

void kh_hsm_close(struct kh_hsm *hsm)
{
	kh_tls_free(hsm);
	kh_keycache_free(hsm);
	kh_mk_free(hsm);
	kh_db_close(hsm->db);
	hsm->db = NULL;
	kh_secure_free(hsm->device_key, DEVKEY_LEN);
	kh_secure_free(hsm->audit_key, 32);
	hsm->device_key = hsm->audit_key = NULL;
	if (hsm->lock_fd >= 0)
		close(hsm->lock_fd);
	hsm->lock_fd = -1;
	pthread_mutex_destroy(&hsm->mu);
}

int kh_hsm_selftest(struct kh_hsm *hsm, struct kh_selftest_result *res)
{
	char text[96];
	int r = kh_selftest_run(res);
	if (r == KH_OK)
		return KH_OK;
	atomic_store(&hsm->error_state, 1);
	snprintf(text, sizeof(text), "%u of %u failed, first %s", res->failed, res->run,
		 res->first_failed);
	KH_IGNORE(kh_audit_append(hsm, "-", "selftest.fail", text));
	return r;
}
