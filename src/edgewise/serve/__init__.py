"""`edgewise serve`: many compressed models behind one OpenAI-compatible endpoint (and KServe v2),
in a fixed memory budget on one small machine. See `app` (routes), `pool` (residency and the
budget), `batching` (RWKV streams advanced together) and `runners` (one per kind of model)."""

from __future__ import annotations

import ipaddress
import re
import secrets
import signal
import sys

from edgewise.errors import EdgewiseError

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "ms": 1e-3}


def parse_bytes(text: str, flag: str = "--memory-budget") -> int:
    """"2GB", "512MiB", "1.5g", "100000" -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise EdgewiseError(f"{flag} {text!r}: give a size such as 2GB, 512MiB or 1.5GiB")
    return int(float(match.group(1)) * _UNITS[unit])


def parse_seconds(text: str, flag: str = "--keep-alive") -> float | None:
    """"5m", "30s", "1h", "250ms" -> seconds; "0", "never" or "forever" -> None (never)."""
    if text.strip().lower() in ("0", "never", "forever", "-1"):
        return None
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if not match or unit not in _SECONDS or float(match.group(1)) <= 0:
        raise EdgewiseError(f"{flag} {text!r}: give a duration such as 30s, 5m or 1h, or 0 for never")
    return float(match.group(1)) * _SECONDS[unit]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port(host: str, port: int) -> None:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise EdgewiseError(f"cannot listen on {host}:{port} ({exc.strerror}): give another --port or --host"
                                ) from None


def serve(models_dir: str, host: str = "127.0.0.1", port: int = 8000, memory_budget: str = "2GB",
          api_key: str | None = None, no_auth: bool = False, pins: tuple[str, ...] = (), keep_alive: str = "5m",
          max_queue: int = 32, max_body: str = "1MiB", max_tokens: int = 4096, threads: int | None = None,
          grace: str = "30s", device: str | None = None, log_level: str = "warning", ray: bool = False,
          replicas: int = 2, ray_address: str | None = None) -> None:
    """Run the server until SIGINT or SIGTERM (then: stop accepting, finish what is in flight within
    `grace`, exit)."""
    import torch
    import uvicorn

    from edgewise.measure import energy
    from edgewise.serve.app import Settings, create_app
    from edgewise.serve.catalog import scan
    from edgewise.serve.pool import tune_malloc

    tune_malloc()
    if no_auth and api_key:
        raise EdgewiseError("--no-auth and --api-key contradict each other: give one")
    if no_auth and not is_loopback(host):
        raise EdgewiseError(f"--no-auth is only allowed on a loopback address, not {host}: give --api-key KEY")
    # every check a user's input can fail, before a key is made up and printed: a bad folder or flag
    # then ends in its one line
    scan(models_dir)
    settings = Settings(models_dir=models_dir, budget=parse_bytes(memory_budget), api_key=None if no_auth else api_key,
                        pins=tuple(pins), keep_alive=parse_seconds(keep_alive), max_queue=max_queue,
                        max_body=parse_bytes(max_body, "--max-body"), max_tokens=max_tokens, threads=threads,
                        device=energy.profile(device or energy.DEFAULT_PROFILE).name)
    _check_port(host, port)
    grace_s = parse_seconds(grace, "--grace") or 0
    if not no_auth and not api_key:
        settings.api_key = api_key = secrets.token_urlsafe(24)
        print(f"edgewise serve: no --api-key given; this run's key is {api_key}\n"
              f"  (send it as 'Authorization: Bearer {api_key}', or set EDGEWISE_API_KEY)", file=sys.stderr)
    if threads:
        torch.set_num_threads(threads)
    if ray or ray_address:
        from edgewise.serve.ray_serve import run as run_on_ray
        run_on_ray(settings, host, port, replicas, ray_address, grace_s)
        return
    app, _ = create_app(settings)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=int(grace_s),
                            access_log=False, lifespan="on")
    print(f"edgewise serve: {models_dir} on http://{host}:{port} (budget {memory_budget})", file=sys.stderr, flush=True)
    # uvicorn stops on SIGTERM (no new connections, requests in flight get `grace`), then raises the
    # signal again for the handler it found: this one, so that a requested stop exits 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.Server(config).run()
