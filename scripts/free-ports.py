#!/usr/bin/env python3
"""Prints N distinct free TCP ports on 127.0.0.1, separated by spaces (N = 1 when not given).

The ports are taken below the kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768-60999 by default).
A port the kernel hands out for bind(0) comes from that range, and so does the local port of every outgoing
connection, so between picking it and a server binding it a client connection could take it ("Address already
in use"). Below the range only a process binding that very port can collide. Each port is checked free with a
bind without SO_REUSEADDR (a port still in TIME_WAIT is passed over), starting at a random place.
"""
import random
import socket
import sys


def ephemeral_start():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def is_free(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def kernel_chosen(count):
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def main():
    try:
        count = int(sys.argv[1]) if len(sys.argv) > 1 else 1
        if count < 1:
            raise ValueError
    except ValueError:
        sys.exit("free-ports: the argument must be a positive number of ports, got %r" % sys.argv[1])
    low, high = 10000, ephemeral_start()
    if high - low < 2000:
        print(" ".join(map(str, kernel_chosen(count))))
        return
    span = high - low
    candidate = low + random.randrange(span)
    ports = []
    for _ in range(span):
        if is_free(candidate):
            ports.append(candidate)
            if len(ports) == count:
                break
        candidate = low if candidate + 1 >= high else candidate + 1
    if len(ports) < count:
        ports += kernel_chosen(count - len(ports))
    print(" ".join(map(str, ports)))


if __name__ == "__main__":
    main()
