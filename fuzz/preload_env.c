// SPDX-License-Identifier: MIT
/*
 * libFuzzer target for the preload libraries' environment parsing: the
 * input is up to nine NUL-separated values, given to TCP_KEEPIDLE ...
 * LIBKEEPALIVE_DEBUG, and ka_load() reads them as the libraries do when they
 * load. Whatever it accepts must be within the option's range (0 = system
 * default), and the derived user timeout within 0..INT_MAX; a refused value
 * keeps the default. Built with clang's -fsanitize=fuzzer,address,undefined.
 */
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../preload/keepalive_options.c"

static const char *const variables[] = {
	KA_KEEPIDLE_ENV, KA_KEEPINTVL_ENV, KA_KEEPCNT_ENV, KA_USER_TIMEOUT_ENV, KA_SYNCNT_ENV,
	KA_MAXSEG_ENV, KA_WINDOW_CLAMP_ENV, KA_DEFER_ACCEPT_ENV, KA_DEBUG_ENV,
};
#define N_VARIABLES (sizeof(variables) / sizeof(variables[0]))

/* The defaults, as the table has them before anything is read. */
static struct ka_option defaults[N_OPTIONS];

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	for (size_t i = 0; i < N_VARIABLES; i++)
		unsetenv(variables[i]);
	ka_load();  /* nothing set: the defaults, derived user timeout included */
	memcpy(defaults, options, sizeof(options));
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1);
	size_t start = 0, field = 0;

	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	for (size_t i = 0; i < N_VARIABLES; i++)
		unsetenv(variables[i]);
	for (size_t i = 0; i <= size && field < N_VARIABLES; i++) {
		if (i == size || text[i] == '\0') {
			if (field != N_VARIABLES - 1 || i > start)  /* debug: only when there is something */
				setenv(variables[field], text + start, 1);
			field++;
			start = i + 1;
		}
	}
	memcpy(options, defaults, sizeof(options));
	options[USER_TIMEOUT].value = KA_USER_TIMEOUT_DEFAULT;
	ka_load();
	for (int i = 0; i < N_OPTIONS; i++) {
		const struct ka_option *option = &options[i];

		if (option->value != 0 && (option->value < option->min || option->value > option->max))
			abort();  /* accepted out of range */
	}
	if (options[USER_TIMEOUT].value < 0)
		abort();  /* the derived user timeout must have been resolved */
	free(text);
	return 0;
}
