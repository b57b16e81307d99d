/* SPDX-License-Identifier: MIT */
/*
 * Loopback TCP connection rate: connect + accept + close, in one process, for
 * several modes measured side by side. A shared VM's speed drifts by tens of
 * percent within seconds, so the modes take turns in short batches, in a new
 * random order each round, and each mode is compared with the baseline of
 * its own round: the drift is the same for both.
 *
 *   connrate SECONDS BATCH_MS NAME=CGROUP,SETUP,CALLS ...
 *
 * CGROUP: a cgroup directory the process moves into for the mode's batches
 * (its sockets, and the mode's listener made there, belong to it), or "-".
 * SETUP: what the program does itself: "plain"; "keepalive" (SO_KEEPALIVE on
 * the client before connect and on the listener, which accepted sockets
 * inherit); "policy" (likewise the whole default policy: idle 15, interval
 * 15, count 9, user timeout 150000 ms, in the BPF program's order); "go" (the
 * client turns keepalive on after connect, as Go's dialer does).
 * CALLS: "raw" (connect and listen as system calls) or "libc" (through libc,
 * where an LD_PRELOAD library wraps them).
 * Each mode is compared with the first mode, a "go" one with the first "go"
 * mode: those are the baselines (programs that do nothing, and Go's dialer).
 *
 * Prints one line per mode: its name, connections per second over all its
 * batches, its overhead against its baseline, as the median and quartiles of
 * the per-round ratios (percent), its baseline's name, and every connection
 * it made, the warm-up's too (what a BPF program's run count covers).
 *
 * The client closes with SO_LINGER 0 (RST): no TIME_WAIT, so a long run never
 * exhausts ephemeral ports and every batch starts from the same state.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_MODES 16
#define MAX_ROUNDS 4096

enum setup { PLAIN, KEEPALIVE, POLICY, GO };

struct mode {
	char name[128];
	char cgroup[512];
	enum setup setup;
	int libc;
	int baseline;            /* index of the mode it is compared with */
	int listener;
	struct sockaddr_in addr;
	long connections;         /* in the measured batches */
	long made;                /* in every batch, the warm-up too */
	double seconds;
	double rate[MAX_ROUNDS];  /* per round */
};

static struct mode modes[MAX_MODES];
static int mode_count;

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void set_int(int fd, int level, int name, int value)
{
	if (setsockopt(fd, level, name, &value, sizeof(value)) < 0)
		die("setsockopt");
}

/* What a program that configures its own sockets does, before connect or listen. */
static void configure(int fd, enum setup setup)
{
	if (setup == POLICY) {
		set_int(fd, IPPROTO_TCP, TCP_KEEPIDLE, 15);
		set_int(fd, IPPROTO_TCP, TCP_KEEPINTVL, 15);
		set_int(fd, IPPROTO_TCP, TCP_KEEPCNT, 9);
		set_int(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, 150000);
	}
	if (setup == POLICY || setup == KEEPALIVE)
		set_int(fd, SOL_SOCKET, SO_KEEPALIVE, 1);
}

static int do_connect(const struct mode *m, int fd)
{
	if (m->libc)
		return connect(fd, (const struct sockaddr *)&m->addr, sizeof(m->addr));
	return (int)syscall(SYS_connect, fd, &m->addr, sizeof(m->addr));
}

static int do_listen(const struct mode *m, int fd)
{
	return m->libc ? listen(fd, 128) : (int)syscall(SYS_listen, fd, 128);
}

static void enter(const struct mode *m)
{
	char path[600], pid[32];
	int fd, n;

	if (strcmp(m->cgroup, "-") == 0)
		return;
	snprintf(path, sizeof(path), "%s/cgroup.procs", m->cgroup);
	n = snprintf(pid, sizeof(pid), "%d\n", getpid());
	fd = open(path, O_WRONLY);
	if (fd < 0 || write(fd, pid, (size_t)n) != n)
		die(path);
	close(fd);
}

static void make_listener(struct mode *m)
{
	socklen_t len = sizeof(m->addr);

	m->addr = (struct sockaddr_in){ .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	m->listener = socket(AF_INET, SOCK_STREAM, 0);
	if (m->listener < 0)
		die("socket");
	configure(m->listener, m->setup);
	if (bind(m->listener, (struct sockaddr *)&m->addr, sizeof(m->addr)) < 0 || do_listen(m, m->listener) < 0 ||
	    getsockname(m->listener, (struct sockaddr *)&m->addr, &len) < 0)
		die("listener");
}

static void one_connection(const struct mode *m)
{
	struct linger rst = { .l_onoff = 1, .l_linger = 0 };
	int client = socket(AF_INET, SOCK_STREAM, 0), accepted;

	if (client < 0)
		die("socket");
	configure(client, m->setup == GO ? PLAIN : m->setup);
	if (do_connect(m, client) < 0)
		die("connect");
	accepted = accept(m->listener, NULL, NULL);
	if (accepted < 0)
		die("accept");
	if (m->setup == GO) {
		set_int(client, SOL_SOCKET, SO_KEEPALIVE, 1);
		set_int(client, IPPROTO_TCP, TCP_KEEPIDLE, 15);
		set_int(client, IPPROTO_TCP, TCP_KEEPINTVL, 15);
	}
	if (setsockopt(client, SOL_SOCKET, SO_LINGER, &rst, sizeof(rst)) < 0)
		die("linger");
	close(client);
	close(accepted);
}

/* One batch of a mode; returns its connections per second. */
static double batch(struct mode *m, double seconds)
{
	double start, elapsed;
	long count = 0;

	enter(m);
	start = now();
	do {
		one_connection(m);
		count++;
		elapsed = now() - start;
	} while (elapsed < seconds);
	m->connections += count;
	m->made += count;
	m->seconds += elapsed;
	return (double)count / elapsed;
}

static int compare(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static void parse(const char *spec)
{
	struct mode *m = &modes[mode_count];
	char setup[32], calls[16];
	const char *equals = strchr(spec, '=');

	if (!equals || mode_count == MAX_MODES ||
	    sscanf(equals + 1, "%511[^,],%31[^,],%15s", m->cgroup, setup, calls) != 3) {
		fprintf(stderr, "connrate: bad mode '%s'\n", spec);
		exit(2);
	}
	snprintf(m->name, sizeof(m->name), "%.*s", (int)(equals - spec), spec);
	m->setup = strcmp(setup, "keepalive") == 0 ? KEEPALIVE : strcmp(setup, "policy") == 0 ? POLICY :
		   strcmp(setup, "go") == 0 ? GO : PLAIN;
	m->libc = strcmp(calls, "libc") == 0;
	m->baseline = 0;
	for (int i = mode_count; m->setup == GO && i >= 0; i--)
		if (modes[i].setup == GO || i == mode_count)
			m->baseline = i;
	mode_count++;
}

int main(int argc, char **argv)
{
	double seconds, batch_seconds, deadline, ratios[MAX_ROUNDS], q[3];
	int order[MAX_MODES], rounds = 0;

	if (argc < 4) {
		fprintf(stderr, "usage: connrate SECONDS BATCH_MS NAME=CGROUP,SETUP,CALLS ...\n");
		return 2;
	}
	seconds = atof(argv[1]);
	batch_seconds = atof(argv[2]) / 1000;
	for (int i = 3; i < argc; i++)
		parse(argv[i]);
	for (int i = 0; i < mode_count; i++) {
		enter(&modes[i]);
		make_listener(&modes[i]);
		batch(&modes[i], batch_seconds);  /* warm-up */
		modes[i].connections = 0;
		modes[i].seconds = 0;
		order[i] = i;
	}
	srand((unsigned)getpid());
	deadline = now() + seconds;
	while (now() < deadline && rounds < MAX_ROUNDS) {
		for (int i = mode_count - 1; i > 0; i--) {
			int j = rand() % (i + 1), t = order[i];

			order[i] = order[j];
			order[j] = t;
		}
		for (int i = 0; i < mode_count; i++)
			modes[order[i]].rate[rounds] = batch(&modes[order[i]], batch_seconds);
		rounds++;
	}
	for (int i = 0; i < mode_count; i++) {
		const struct mode *m = &modes[i], *base = &modes[m->baseline];

		for (int r = 0; r < rounds; r++)
			ratios[r] = (1 - m->rate[r] / base->rate[r]) * 100;
		qsort(ratios, (size_t)rounds, sizeof(double), compare);
		for (int k = 0; k < 3; k++)
			q[k] = ratios[(rounds - 1) * (k + 1) / 4];
		printf("%s\t%.1f\t%.2f\t%.2f\t%.2f\t%s\t%ld\n", m->name, (double)m->connections / m->seconds, q[1], q[0],
		       q[2], base->name, m->made);
	}
	return 0;
}
