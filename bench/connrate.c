/* SPDX-License-Identifier: MIT */
/*
 * Loopback TCP connection rate: connect + accept + close, one process, for a
 * given time. Prints connections per second. With --go the client sets
 * keepalive itself after connect, as Go's dialer does.
 *
 * The client closes with SO_LINGER 0 (RST): no TIME_WAIT, so a long run never
 * exhausts ephemeral ports and every round starts from the same state.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void set_int(int fd, int level, int name, int value)
{
	if (setsockopt(fd, level, name, &value, sizeof(value)) < 0) {
		perror("setsockopt");
		exit(1);
	}
}

int main(int argc, char **argv)
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct linger rst = { .l_onoff = 1, .l_linger = 0 };
	socklen_t len = sizeof(addr);
	double seconds, start, elapsed;
	long count = 0;
	int go, listener;

	if (argc < 2) {
		fprintf(stderr, "usage: connrate SECONDS [--go]\n");
		return 2;
	}
	seconds = atof(argv[1]);
	go = argc > 2 && strcmp(argv[2], "--go") == 0;
	listener = socket(AF_INET, SOCK_STREAM, 0);
	if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
	    listen(listener, 128) < 0 || getsockname(listener, (struct sockaddr *)&addr, &len) < 0) {
		perror("listener");
		return 1;
	}
	start = now();
	do {
		int client = socket(AF_INET, SOCK_STREAM, 0), accepted;

		if (client < 0 || connect(client, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
			perror("connect");
			return 1;
		}
		accepted = accept(listener, NULL, NULL);
		if (accepted < 0) {
			perror("accept");
			return 1;
		}
		if (go) {
			set_int(client, SOL_SOCKET, SO_KEEPALIVE, 1);
			set_int(client, IPPROTO_TCP, TCP_KEEPIDLE, 15);
			set_int(client, IPPROTO_TCP, TCP_KEEPINTVL, 15);
		}
		if (setsockopt(client, SOL_SOCKET, SO_LINGER, &rst, sizeof(rst)) < 0) {
			perror("linger");
			return 1;
		}
		close(client);
		close(accepted);
		count++;
		elapsed = now() - start;
	} while (elapsed < seconds);
	printf("%.1f\n", (double)count / elapsed);
	return 0;
}
