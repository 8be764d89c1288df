"""A free loopback port for a server a test starts, from below the kernel's ephemeral range.

A port the kernel hands out (`bind(("127.0.0.1", 0))`) comes from the ephemeral range, the range every
other process also draws from when it binds port 0 or connects. Ray does that for its many ports (GCS,
raylet, object manager, agents): between a test picking such a port and Ray Serve's proxy binding it, Ray
itself may take it. Below that range, above Ray's worker ports (10002-19999), only a server told a number
binds.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

RAY_WORKER_PORTS_END = 19999


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768   # Linux's default


def free_port() -> int:
    """A port free on 127.0.0.1 now, outside the ephemeral range (falls back to one in it)."""
    low, high = RAY_WORKER_PORTS_END + 1, _ephemeral_start() - 1
    for port in random.sample(range(low, high + 1), min(200, max(high - low + 1, 0))):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
