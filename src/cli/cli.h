/*
 * The keyhold CLI: shared types of the command table, the option parser, the
 * output layer and secret input. Secrets never come from argv and never pass
 * through anything here except struct cli_secret (secure heap, wiped).
 */
#ifndef KH_CLI_H
#define KH_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "common/kh_client.h"
#include "common/kh_err.h"
#include "common/kh_frame.h"

/* Exit codes. */
enum cli_rc {
	CLI_OK = 0,
	CLI_REFUSED = 1,  /* the HSM refused a command, or a local step failed */
	CLI_USAGE = 2,
	CLI_CONN = 3,     /* connection or TLS failure */
};

enum cli_optkind { CLI_FLAG, CLI_VALUE, CLI_MULTI };

struct cli_optdef {
	const char *name;  /* long name without "--"; NULL ends a table */
	char shortopt;     /* 0: none */
	enum cli_optkind kind;
	const char *arg;   /* argument name in help, e.g. "FILE" */
	const char *help;
};

#define CLI_MAXOPTS 32
#define CLI_MAXMULTI 32
#define CLI_MAXPOS 64

struct cli_args {
	const struct cli_optdef *defs;
	const char *val[CLI_MAXOPTS];   /* VALUE: the value; FLAG: "" when given */
	struct {
		int opt;
		const char *v;
	} multi[CLI_MAXMULTI];
	size_t nmulti;
	const char *pos[CLI_MAXPOS];
	size_t npos;
};

struct cli;

/* Command flags. */
#define CLI_F_CONN 0x1      /* talks to the HSM (connects on first request) */
#define CLI_F_POS 0x2       /* takes positional arguments */
#define CLI_F_REST 0x4      /* the first positional ends the options: the rest,
			     * options included, are positionals (another command) */

struct cli_cmd {
	const char *name;
	int (*run)(struct cli *cli, struct cli_args *a);
	const struct cli_optdef *opts;
	const char *usage;     /* after the command name */
	const char *summary;
	const struct cli_cmd *sub; /* a group: subcommands (table ends with name NULL) */
	unsigned flags;
};

/* keyhold-guardian: where it is, who logs in, the session (guardian.c). */
struct cli_guardian {
	char *host;              /* NULL: no guardian given */
	unsigned port;
	char *ca;                /* NULL: the HSM's --ca */
	char *user, *pw_fd, *pw_file;
	char *user2, *pw2_fd, *pw2_file;
	struct kh_client *conn;  /* the HTTPS connection, kept alive between requests */
	char *session;           /* secure heap, GD_SESSION_MAX bytes; NULL: not logged in */
	char role[64];
	char login_user[128];
};

struct cli {
	struct kh_client_opts copts;
	char *console, *host, *ca, *cert, *key; /* owned strings behind copts */
	struct kh_client *client;
	bool ever_connected;     /* a lost connection is not silently re-made */
	bool json, keep_going, interactive;
	unsigned lineno;         /* script line, 0 on the command line */
	/* the current command */
	char cmdname[64];
	json_t *out;
	bool out_done;
	struct kh_buf *req, *resp;
	struct kh_frame *frame;
	int req_err;             /* sticky error while building a request */
	char req_errtag[3];
	struct cli_guardian g;
};

/* main.c: top-level table and helpers shared by the command files. */
extern const struct cli_cmd cli_commands[];
int cli_run_argv(struct cli *cli, int argc, char **argv);
/* Replace connection options from parsed connect/global options. */
int cli_set_conn_opts(struct cli *cli, struct cli_args *a);
int cli_connect(struct cli *cli);
/* Connect on first use; a lost connection is reported, not silently re-made. */
int cli_ensure_connected(struct cli *cli);

/* args.c: option parsing and line splitting. */
/* Parse argv against defs; returns CLI_OK or CLI_USAGE (after reporting). */
int cli_parse(struct cli *cli, const struct cli_cmd *cmd, int argc, char **argv,
	      struct cli_args *a);
const char *cli_arg(const struct cli_args *a, const char *name);
bool cli_flag(const struct cli_args *a, const char *name);
size_t cli_arg_count(const struct cli_args *a, const char *name);
const char *cli_arg_multi(const struct cli_args *a, const char *name, size_t i);
/* Decimal within [min, max]; false (after reporting a usage error) otherwise. */
bool cli_arg_u64(struct cli *cli, const struct cli_args *a, const char *name, uint64_t min,
		 uint64_t max, uint64_t *v);
/* Split a line shell-style ('..', "..", backslash, # comments). Returns the
 * number of words (argv NULL-terminated, words in storage) or -1 on an
 * unterminated quote / too many words. */
int cli_split(const char *line, char *storage, size_t storagesz, char **argv, int maxargs);
void cli_print_help(const struct cli_cmd *cmd, const char *path);
void cli_print_group_help(const struct cli_cmd *table, const char *path);

/* output.c */
void out_begin(struct cli *cli, const char *name);
void out_str(struct cli *cli, const char *key, const char *label, const char *val);
void out_strn(struct cli *cli, const char *key, const char *label, const char *val, size_t n);
void out_int(struct cli *cli, const char *key, const char *label, long long v);
void out_bool(struct cli *cli, const char *key, const char *label, bool v);
void out_null(struct cli *cli, const char *key, const char *label, const char *text);
/* A text-mode line on stdout (nothing in JSON mode). */
void out_text(struct cli *cli, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Append v (reference stolen) to the JSON array under key. */
void out_append(struct cli *cli, const char *key, json_t *v);
/* Print the JSON object of a successful command. */
void out_end(struct cli *cli);
/* Report a failure; returns the exit code for err. err may be 0 for a usage
 * error. */
int cli_fail(struct cli *cli, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int cli_usage(struct cli *cli, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A failure reported by keyhold-guardian: its error name and reason as
 * sent, with the HTTP status and the admit code of a refused device. */
int cli_fail_guardian(struct cli *cli, int err, const char *name, int status, const char *reason,
		      const char *admit);
/* Set key to v (reference stolen) in the JSON output. */
void out_json(struct cli *cli, const char *key, json_t *v);
/* End a command whose result was printed but is a failure (a check that
 * found disagreement): JSON mode prints the output object with "ok":false
 * and the error; text mode the error on stderr. Returns the exit code. */
int out_end_error(struct cli *cli, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Report a failure of a kh_client call (HSM refusal or connection). */
int cli_client_fail(struct cli *cli, int err);
int cli_rc_of(int err);

/* request.c: build a request with a sticky error, call, read fields. */
void cli_req(struct cli *cli, const char *cmd);
void cli_put(struct cli *cli, const char *tag, const char *val);
void cli_put_u64(struct cli *cli, const char *tag, uint64_t v);
void cli_put_hex(struct cli *cli, const char *tag, const uint8_t *d, size_t n);
/* Text as hex (CN, SAN and other values that may hold reserved bytes). */
void cli_put_texthex(struct cli *cli, const char *tag, const char *s);
/* Send the request and read the answer; reports failures. Returns CLI_OK or
 * the exit code. */
int cli_call(struct cli *cli);
/* As cli_call, but returns the kh_err and reports nothing (caller decides). */
int cli_call_quiet(struct cli *cli);
const struct kh_field *cli_field(struct cli *cli, const char *tag);
/* Copy a text field (empty string if absent, truncated to sz). */
const char *cli_fstr(struct cli *cli, const char *tag, char *buf, size_t sz);
bool cli_fyes(struct cli *cli, const char *tag);
long long cli_fnum(struct cli *cli, const char *tag, long long dflt);
/* Out a text field as a string (JSON null / "-" when absent). */
void cli_out_field(struct cli *cli, const char *tag, const char *key, const char *label);
void cli_out_fnum(struct cli *cli, const char *tag, const char *key, const char *label);
void cli_out_fyn(struct cli *cli, const char *tag, const char *key, const char *label);
/* Decode a hex field into malloc'd memory (free with cli_free_bytes). */
int cli_fhex(struct cli *cli, const char *tag, uint8_t **out, size_t *n);
void cli_free_bytes(uint8_t *p, size_t n);

/* files.c */
/* Whole file into malloc'd memory (max bytes). Reports failures. */
int cli_read_file(struct cli *cli, const char *path, size_t max, uint8_t **out, size_t *n);
/* Write a file with the given mode; excl: never overwrite. Reports failures. */
int cli_write_file(struct cli *cli, const char *path, const uint8_t *d, size_t n, int mode,
		   bool excl);

/* secret.c: secrets on the secure heap. */
struct cli_secret {
	char *p;      /* NUL-terminated, secure heap */
	size_t len;
	size_t cap;
};
/* Read one secret: from fd_opt (a descriptor number: one line), file_opt (the
 * whole file, one trailing newline stripped) or, when both are NULL, a
 * terminal prompt without echo (twice when confirm). Reports failures. */
int secret_get(struct cli *cli, struct cli_secret *s, const char *fd_opt, const char *file_opt,
	       const char *prompt, bool confirm);
/* Line n of a multi-line secret source already read whole (components). */
int secret_read_whole(struct cli *cli, struct cli_secret *s, const char *path);
bool secret_next_line(struct cli_secret *all, size_t *pos, const char **line, size_t *len);
void secret_free(struct cli_secret *s);
/* A non-secret line from the terminal with echo (e.g. the identity name). */
int cli_prompt_line(struct cli *cli, const char *prompt, char *out, size_t outsz);
bool cli_have_tty(void);

/* guardian.c: keyhold-guardian's REST API. */
#define GD_SESSION_MAX 130
#define GD_DEFAULT_PORT 8080
/* jansson's memory wiped on free (login answers hold the session). Call
 * before any jansson use. */
void gd_json_init(void);
/* The global --guardian, --guardian-ca, --user, --password-*, --user2,
 * --password2-* options (and env KEYHOLD_GUARDIAN). */
int gd_set_opts(struct cli *cli, struct cli_args *a);
/* Log in (once per process) before a guardian command reads its own secrets. */
int gd_begin(struct cli *cli);
/* One API call: method, target ("/api/groups"), an optional JSON body
 * (borrowed). On 2xx *out (when not NULL) gets the parsed answer (NULL for
 * an empty body); anything else is reported (the server's error and reason)
 * and its exit code returned. */
int gd_call(struct cli *cli, const char *method, const char *target, json_t *body, json_t **out);
/* Open a relay to device id's Admin port and run the HSM client's TLS and
 * probe inside it: on success the HSM client becomes cli->client. */
int gd_relay(struct cli *cli, long long id, const char *host, unsigned admin_port);
/* Log out and drop the connection (at exit; failures are ignored). */
void gd_end(struct cli *cli);
/* Resolve --group (an id or a name) to an id. */
int gd_group_id(struct cli *cli, const char *v, long long *id);
/* An id option: a decimal from 1. */
bool gd_id_arg(struct cli *cli, struct cli_args *a, const char *name, long long *id);
/* Members of a JSON answer, with defaults. */
long long gd_jint(json_t *o, const char *key, long long dflt);
const char *gd_jstr(json_t *o, const char *key, const char *dflt);
bool gd_jbool(json_t *o, const char *key);
/* on|off (also yes|no, true|false) into *v (-1 when absent); false after
 * a usage error. */
bool gd_onoff_arg(struct cli *cli, struct cli_args *a, const char *name, int *v);
/* A table of device objects (text mode). */
void gd_print_devices(struct cli *cli, json_t *arr);
/* "YYYY-MM-DD hh:mm:ss" (UTC) of a time in ms since the epoch. */
void gd_time_text(long long ms, char *out, size_t outsz);

/* Command groups. */
extern const struct cli_cmd cli_session_cmds[];   /* login, logout, password */
extern const struct cli_cmd cli_password_cmds[];
extern const struct cli_cmd cli_misc_cmds[];
extern const struct cli_cmd cli_settings_cmds[];
extern const struct cli_cmd cli_majorkey_cmds[];
extern const struct cli_cmd cli_role_cmds[];
extern const struct cli_cmd cli_identity_cmds[];
extern const struct cli_cmd cli_tls_cmds[];
extern const struct cli_cmd cli_tlsports_cmds[];
extern const struct cli_cmd cli_audit_cmds[];
extern const struct cli_cmd cli_group_cmds[];    /* keyhold-guardian */
extern const struct cli_cmd cli_device_cmds[];
extern const struct cli_cmd cli_user_cmds[];
int cmd_events(struct cli *cli, struct cli_args *a);
int cmd_metrics(struct cli *cli, struct cli_args *a);
int cmd_remote(struct cli *cli, struct cli_args *a);
extern const struct cli_optdef cli_events_opts[], cli_metrics_opts[], cli_remote_opts[];

int cmd_login(struct cli *cli, struct cli_args *a);
int cmd_logout(struct cli *cli, struct cli_args *a);
int cmd_status(struct cli *cli, struct cli_args *a);
int cmd_echo(struct cli *cli, struct cli_args *a);
int cmd_rand(struct cli *cli, struct cli_args *a);
int cmd_time(struct cli *cli, struct cli_args *a);
int cmd_hash(struct cli *cli, struct cli_args *a);
int cmd_restrictions(struct cli *cli, struct cli_args *a);
int cmd_keytable(struct cli *cli, struct cli_args *a);
int cmd_selftest(struct cli *cli, struct cli_args *a);
int cmd_send(struct cli *cli, struct cli_args *a);
int cmd_backup(struct cli *cli, struct cli_args *a);
int cmd_restore(struct cli *cli, struct cli_args *a);

extern const struct cli_optdef cli_login_opts[], cli_logout_opts[], cli_none_opts[],
	cli_echo_opts[], cli_rand_opts[], cli_time_opts[], cli_keytable_opts[], cli_send_opts[],
	cli_backup_opts[], cli_restore_opts[];

#endif
