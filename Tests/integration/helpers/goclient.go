// SPDX-License-Identifier: MIT

// goclient: a statically linked Go client, as Go services are: it dials
// HOST:PORT with net.Dial (whose dialer turns keepalive on with Go's own
// values right after connecting), prints the connected socket's options as
// JSON on stdout, and exits.
package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"syscall"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: goclient HOST:PORT")
		os.Exit(2)
	}
	conn, err := net.Dial("tcp", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	raw, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	options := map[string]int{}
	raw.Control(func(fd uintptr) {
		read := func(level, name int) int {
			value, err := syscall.GetsockoptInt(int(fd), level, name)
			if err != nil {
				return -1
			}
			return value
		}
		options["keepalive"] = read(syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
		options["keepidle"] = read(syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE)
		options["keepintvl"] = read(syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL)
		options["keepcnt"] = read(syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT)
		options["user_timeout"] = read(syscall.IPPROTO_TCP, 18) // TCP_USER_TIMEOUT
	})
	json.NewEncoder(os.Stdout).Encode(options)
}
