"""Free loopback ports, so that concurrent clusters, test runs and benchmarks never collide."""

from __future__ import annotations

import contextlib
import random
import socket

from keel.errors import LocalStackError

HOST = "127.0.0.1"


def free_port() -> int:
    """A port the kernel just found free on the loopback address."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# Below Linux's ephemeral range (32768-60999 by default): a port chosen there can be taken
# by an outgoing connection between the check and a slow broker's bind.
BASE_LOW, BASE_HIGH = 10000, 32700


def free_base_port(brokers: int = 1, low: int = BASE_LOW, high: int = BASE_HIGH) -> int:
    """A base port at which every node of a `brokers`-node cluster finds its two ports free,
    so that concurrent clusters (test runs, fault tests) on one host never collide."""
    for _ in range(200):
        base = random.randrange(low, high - 100 * brokers, 2)
        ports = [base + 100 * i + offset for i in range(brokers) for offset in (0, 1)]
        try:
            with contextlib.ExitStack() as stack:
                for port in ports:
                    sock = stack.enter_context(socket.socket())
                    sock.bind((HOST, port))
            return base
        except OSError:
            continue
    raise LocalStackError(f"no free ports for a {brokers}-broker cluster between {low} and {high}")
