/*
 * What every fuzz target shares: libFuzzer's entry points, and CHECK, which
 * stops the run at a property that does not hold, naming the file and line
 * (libFuzzer then keeps the input as a crash); and the removal of a
 * target's temporary directory.
 */
#ifndef KH_FUZZ_CHECK_H
#define KH_FUZZ_CHECK_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <ftw.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static inline _Noreturn void fuzz_fail(const char *file, int line, const char *what)
{
	fprintf(stderr, "%s:%d: property failed: %s\n", file, line, what);
	abort();
}

#define CHECK(c)                                                                                   \
	do {                                                                                       \
		if (!(c))                                                                          \
			fuzz_fail(__FILE__, __LINE__, #c);                                         \
	} while (0)

static inline int fuzz_remove_one(const char *path, const struct stat *st, int flag,
                                  struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

/* Removes the directory dir and everything in it (a target's throw-away
 * device, at exit). */
static inline void fuzz_remove_tree(const char *dir)
{
	nftw(dir, fuzz_remove_one, 8, FTW_DEPTH | FTW_PHYS);
}

#endif
