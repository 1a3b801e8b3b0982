/*
 * Secret input: a terminal prompt without echo, a descriptor (one line per
 * secret) or a file. Secrets live only on the secure heap and are wiped; they
 * are never echoed, logged, put in history or taken from argv.
 */
#include "cli/cli.h"
#include "common/kh_mem.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#define SECRET_MAX 8192

/* The terminal state to restore if a signal arrives while echo is off. */
static int tty_fd = -1;
static struct termios tty_saved;

static void tty_restore_on_signal(int sig)
{
	if (tty_fd >= 0)
		(void)tcsetattr(tty_fd, TCSAFLUSH, &tty_saved);
	signal(sig, SIG_DFL);
	raise(sig);
}

bool cli_have_tty(void)
{
	int fd = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		return false;
	close(fd);
	return true;
}

static int secret_alloc(struct cli *cli, struct cli_secret *s, size_t cap)
{
	s->p = kh_secure_alloc(cap);
	if (s->p == NULL)
		return cli_fail(cli, KH_ERR_NOMEM, "out of secure memory");
	s->cap = cap;
	s->len = 0;
	return CLI_OK;
}

void secret_free(struct cli_secret *s)
{
	if (s->p)
		kh_secure_free(s->p, s->cap);
	s->p = NULL;
	s->len = s->cap = 0;
}

/* One line from fd, byte by byte so that the next secret stays unread. */
static int read_line_fd(struct cli *cli, struct cli_secret *s, int fd, const char *what)
{
	for (;;) {
		char ch;
		ssize_t r = read(fd, &ch, 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return cli_fail(cli, KH_ERR_LOCAL_FILE, "cannot read %s: %s", what, strerror(errno));
		if (r == 0) {
			if (s->len == 0)
				return cli_usage(cli, "no %s left to read on descriptor %d", what, fd);
			break;
		}
		if (ch == '\n')
			break;
		if (s->len + 1 >= s->cap) {
			kh_wipe(&ch, 1);
			return cli_usage(cli, "%s too long", what);
		}
		s->p[s->len++] = ch;
	}
	if (s->len && s->p[s->len - 1] == '\r')
		s->p[--s->len] = '\0';
	s->p[s->len] = '\0';
	return CLI_OK;
}

int secret_read_whole(struct cli *cli, struct cli_secret *s, const char *path)
{
	int fd, rc;

	if ((rc = secret_alloc(cli, s, SECRET_MAX)) != CLI_OK)
		return rc;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return cli_fail(cli, KH_ERR_LOCAL_FILE, "cannot open %s: %s", path, strerror(errno));
	for (;;) {
		ssize_t r = read(fd, s->p + s->len, s->cap - 1 - s->len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rc = cli_fail(cli, KH_ERR_LOCAL_FILE, "cannot read %s: %s", path, strerror(errno));
			break;
		}
		if (r == 0)
			break;
		s->len += (size_t)r;
		if (s->len == s->cap - 1) {
			rc = cli_usage(cli, "%s is too large for a secret", path);
			break;
		}
	}
	close(fd);
	s->p[s->len] = '\0';
	return rc;
}

bool secret_next_line(struct cli_secret *all, size_t *pos, const char **line, size_t *len)
{
	while (*pos < all->len) {
		size_t b = *pos, e = b;
		while (e < all->len && all->p[e] != '\n')
			e++;
		*pos = e < all->len ? e + 1 : e;
		size_t n = e - b;
		while (n && (all->p[b + n - 1] == '\r' || all->p[b + n - 1] == ' ' ||
			     all->p[b + n - 1] == '\t'))
			n--;
		while (n && (all->p[b] == ' ' || all->p[b] == '\t')) {
			b++;
			n--;
		}
		if (n == 0 || all->p[b] == '#')
			continue;
		*line = all->p + b;
		*len = n;
		return true;
	}
	return false;
}

/* Prompt on /dev/tty with echo off. */
static int read_tty(struct cli *cli, struct cli_secret *s, const char *prompt)
{
	struct termios t;
	struct sigaction sa, old_int, old_term;
	FILE *tty = NULL;
	int fd = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY), rc = CLI_OK;

	if (fd < 0)
		return cli_usage(cli, "no terminal to read a secret from: use the -fd or -file "
			       "option (see --help)");
	if (tcgetattr(fd, &t) < 0) {
		close(fd);
		return cli_usage(cli, "no terminal to read a secret from");
	}
	tty = fdopen(fd, "w");
	if (tty == NULL) {
		close(fd);
		return cli_fail(cli, KH_ERR_LOCAL_FILE, "cannot use the terminal");
	}
	fprintf(tty, "%s", prompt);
	fflush(tty);
	tty_saved = t;
	tty_fd = fd;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = tty_restore_on_signal;
	sigaction(SIGINT, &sa, &old_int);
	sigaction(SIGTERM, &sa, &old_term);
	t.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
	t.c_lflag |= ICANON;
	if (tcsetattr(fd, TCSAFLUSH, &t) < 0) {
		rc = cli_fail(cli, KH_ERR_LOCAL_FILE, "cannot turn off echo: %s", strerror(errno));
		goto out;
	}
	rc = read_line_fd(cli, s, fd, "secret");
	(void)tcsetattr(fd, TCSAFLUSH, &tty_saved);
	fprintf(tty, "\n");
	fflush(tty);
out:
	sigaction(SIGINT, &old_int, NULL);
	sigaction(SIGTERM, &old_term, NULL);
	tty_fd = -1;
	fclose(tty);
	return rc;
}

int secret_get(struct cli *cli, struct cli_secret *s, const char *fd_opt, const char *file_opt,
	       const char *prompt, bool confirm)
{
	int rc;

	s->p = NULL;
	s->len = s->cap = 0;
	if (fd_opt && file_opt)
		return cli_usage(cli, "give a secret by descriptor or by file, not both");
	if (file_opt) {
		if ((rc = secret_read_whole(cli, s, file_opt)) != CLI_OK)
			goto fail;
		if (s->len && s->p[s->len - 1] == '\n')
			s->p[--s->len] = '\0';
		if (s->len && s->p[s->len - 1] == '\r')
			s->p[--s->len] = '\0';
		return CLI_OK;
	}
	if ((rc = secret_alloc(cli, s, SECRET_MAX)) != CLI_OK)
		return rc;
	if (fd_opt) {
		char *end = NULL;
		long fd = strtol(fd_opt, &end, 10);
		if (*fd_opt == '\0' || *end != '\0' || fd < 0 || fd > 1000000) {
			rc = cli_usage(cli, "bad descriptor number '%s'", fd_opt);
			goto fail;
		}
		if ((rc = read_line_fd(cli, s, (int)fd, "secret")) != CLI_OK)
			goto fail;
		return CLI_OK;
	}
	if ((rc = read_tty(cli, s, prompt)) != CLI_OK)
		goto fail;
	if (confirm) {
		struct cli_secret again = {0};
		char p2[160];
		snprintf(p2, sizeof(p2), "Repeat %s", prompt);
		if ((rc = secret_alloc(cli, &again, SECRET_MAX)) != CLI_OK)
			goto fail;
		rc = read_tty(cli, &again, p2);
		if (rc == CLI_OK && (again.len != s->len || !kh_ct_equal(again.p, s->p, s->len)))
			rc = cli_usage(cli, "the two entries differ");
		secret_free(&again);
		if (rc != CLI_OK)
			goto fail;
	}
	return CLI_OK;
fail:
	secret_free(s);
	return rc;
}

int cli_prompt_line(struct cli *cli, const char *prompt, char *out, size_t outsz)
{
	int fd = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY);
	size_t n = 0;

	if (fd < 0)
		return cli_usage(cli, "no terminal to ask on: give the value as an option");
	if (write(fd, prompt, strlen(prompt)) < 0) {
		close(fd);
		return cli_fail(cli, KH_ERR_LOCAL_FILE, "cannot use the terminal");
	}
	for (;;) {
		char ch;
		ssize_t r = read(fd, &ch, 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0 || ch == '\n')
			break;
		if (n + 1 < outsz)
			out[n++] = ch;
	}
	close(fd);
	while (n && (out[n - 1] == '\r' || out[n - 1] == ' '))
		n--;
	out[n] = '\0';
	if (n == 0)
		return cli_usage(cli, "no value given");
	return CLI_OK;
}
