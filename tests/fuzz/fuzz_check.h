/*
 * What every fuzz target shares: libFuzzer's entry points, and CHECK, which
 * stops the run at a property that does not hold, naming the file and line
 * (libFuzzer then keeps the input as a crash).
 */
#ifndef KH_FUZZ_CHECK_H
#define KH_FUZZ_CHECK_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

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

#endif
