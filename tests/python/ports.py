"""A TCP port for a node started later to listen on (a discovery port).

Binding port 0 and releasing what the kernel chose hands out a port of the
ephemeral range, which the kernel may give next to any socket bound to port 0
(every node's shard listeners are) or to an outgoing connection: a node's own
shard then holds the discovery port its meta server was meant to bind, and
the cluster never forms. Ports below the range are only taken by explicit
binds. (The Rust tests use peercache_engine::cluster::ports the same way.)
"""

import random
import socket


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host="127.0.0.1"):
    """A port of ``host`` free a moment ago, below the ephemeral range (or,
    where that range starts too low to leave room, one the kernel picks)."""
    high = _ephemeral_low()
    low = max(1024, min(10_000, high - 1000))
    if high <= low:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            return s.getsockname()[1]
    for _ in range(200):
        port = random.randrange(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}..{high} on {host}")
