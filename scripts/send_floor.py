#!/usr/bin/env python3
"""What one small loopback TCP write costs on this machine: the floor under a group fan-out
(BENCHMARKS.md, "A commit hands its envelopes over first").

A group message to 1,000 connected members is 1,000 Deliver frames, one `send(2)` per member
connection, and on loopback each send also runs the receiving side's TCP input and the wake-up
of whoever waits on that socket, on the sending core. This probe times exactly that, without
the broker: it opens CONNS loopback connections, writes SIZE bytes to each in turn and reports
the time per send, with

  - nobody waiting: the bytes pile up in the receive buffers (drained between rounds);
  - a reader waiting: a separate process in epoll_wait on every connection, reading each
    frame as it arrives (what the load generator's members do), so every send can wake it;

and the reading side's cost too: a `recv(2)` of a frame already waiting, per connection
(what the load generator pays per delivery, on the same cores).

Times include CPython's loop (~0.03 µs per call here, printed as `loop`); the probe runs on
whatever cores the scheduler gives it, like the broker does.

    scripts/send_floor.py [--conns 500] [--size 220] [--rounds 20]
"""

import argparse
import os
import select
import socket
import statistics
import time

from benchlib import raise_nofile  # scripts/ is sys.path[0] when run as a script


def connections(n):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(n)
    clients, servers = [], []
    for _ in range(n):
        c = socket.create_connection(listener.getsockname())
        s, _ = listener.accept()
        for x in (c, s):
            x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        clients.append(c)
        servers.append(s)
    listener.close()
    return clients, servers


def reader(clients, ready_fd, done_fd):
    """Child process: says it is ready on `ready_fd`, then reads whatever arrives on any
    connection until `done_fd` says stop."""
    ep = select.epoll()
    for c in clients:
        ep.register(c.fileno(), select.EPOLLIN)
    ep.register(done_fd, select.EPOLLIN)
    os.write(ready_fd, b"r")
    while True:
        for fd, _ in ep.poll():
            if fd == done_fd:
                os._exit(0)
            os.read(fd, 65536)


def rounds(servers, msg, n, drain=None):
    per_send = []
    for _ in range(n):
        t0 = time.perf_counter()
        for s in servers:
            s.send(msg)
        per_send.append((time.perf_counter() - t0) / len(servers) * 1e6)
        if drain:
            drain()
        else:
            time.sleep(0.02)  # let the reader catch up: each round starts with it asleep
    return per_send


def loop_cost(servers, msg, n):
    per = []
    for _ in range(n):
        t0 = time.perf_counter()
        for s in servers:
            len(msg)
        per.append((time.perf_counter() - t0) / len(servers) * 1e6)
    return statistics.median(per)


def show(label, per):
    print(f"{label:<16} median {statistics.median(per):6.1f} µs/call   min {min(per):6.1f}   "
          f"max {max(per):6.1f}   ({len(per)} rounds)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", type=int, default=500)
    ap.add_argument("--size", type=int, default=220, help="bytes per send (a 64 B group Deliver is 220)")
    ap.add_argument("--rounds", type=int, default=20)
    a = ap.parse_args()
    raise_nofile()
    msg = b"x" * a.size

    clients, servers = connections(a.conns)
    recv_rounds = []
    buf = bytearray(1 << 16)

    def drain():
        t0 = time.perf_counter()
        for c in clients:
            c.recv_into(buf)
        recv_rounds.append((time.perf_counter() - t0) / len(clients) * 1e6)

    drain_rounds = rounds(servers, msg, a.rounds, drain)

    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        for s in servers:
            s.close()
        reader(clients, ready_w, done_r)
    for c in clients:
        c.close()
    os.read(ready_r, 1)  # the child waits on every connection now
    waiting_rounds = rounds(servers, msg, a.rounds)
    os.write(done_w, b"x")
    os.waitpid(pid, 0)

    print(f"{a.conns} loopback connections, {a.size} B per send, {os.cpu_count()} CPUs")
    show("nobody waiting", drain_rounds)
    show("reader waiting", waiting_rounds)
    show("recv (waiting)", recv_rounds)
    print(f"{'loop':<16} median {loop_cost(servers, msg, a.rounds):6.2f} µs/call")


if __name__ == "__main__":
    main()
