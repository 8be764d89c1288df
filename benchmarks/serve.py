"""`edgewise serve` under load, each figure against its peer measured in the same run.

1. HTTP overhead: p50 of the digits model through POST /v2/models/digits/infer (httpx, keep-alive)
   against ONNX Runtime called in-process on the same file, interleaved.
2. Cold load: the first request to a converted 0.1B-shaped int4 RWKV file (load seconds, as the
   server reports them in `usage`, and the client's time to first token).
3. Continuous batching: 8 concurrent streams of the 0.1B-shaped int8 RWKV against one stream,
   aggregate tokens/s (rounds alternate; medians).
4. A follow-up chat turn from its cached state against the same conversation with no cached prefix:
   time to first token.
5. Mixed traffic: 10 models whose files total 3x the budget, Zipf-distributed requests from 16
   concurrent clients for --minutes: errors by kind, the server's peak RSS (sampled every 50 ms)
   against budget + its fixed overhead (measured: after each model served 3 rounds of as many
   requests at once as there are clients, alone, the RSS that no resident model accounts for), and
   whether loads, evictions and residency add up.

6. With --ray (only): the same traffic through `edgewise serve --ray` with 1 and then 2 replicas:
   requests/s, p50, the share of requests that found their model resident, peak residency vs budget.

    python benchmarks/serve.py [--minutes 2] [--clients 16] [--skip-traffic] [--ray]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.ports import free_port  # noqa: E402  (the tests' servers pick their ports the same way)

KEY = "bench"


class Server:
    def __init__(self, models: Path, *flags: str) -> None:
        self.port = free_port()   # below the ephemeral range, where Ray's own ports cannot land
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([sys.executable, "-m", "edgewise.cli", "serve", str(models), "--port",
                                         str(self.port), "--api-key", KEY, *flags],
                                        stderr=subprocess.PIPE, text=True)
        self.headers = {"Authorization": f"Bearer {KEY}"}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(self.process.stderr.read())
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        self.http = httpx.Client(base_url=self.url, headers=self.headers, timeout=300)

    @property
    def rss(self) -> int:
        return psutil.Process(self.process.pid).memory_info().rss

    def metrics(self) -> dict[str, float]:
        values = {}
        for line in self.http.get("/metrics").text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


async def _stream_async(url: str, body: dict, arrivals: list | None = None) -> tuple[float, float, int, dict]:
    """(time to first text, total seconds, tokens, usage) of one streamed completion. The client is
    an asyncio connection read by hand (HTTP/1.1 chunks, then server-sent events): on 2 cores shared
    with the server, 8 streams read by 8 threads woke 8 of them a token step, and their time came
    off the server's decoding; one event loop for all of them wakes once. The perf_counter time of
    each text chunk goes into `arrivals` when given."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    payload = json.dumps({**body, "stream": True, "stream_options": {"include_usage": True}}).encode()
    started, first, usage = time.perf_counter(), None, {}
    writer.write(f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {KEY}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
                 .encode() + payload)
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"{url}: {status.decode().strip()}")
    while (await reader.readline()) not in (b"\r\n", b""):   # the headers: the body is chunked
        pass
    pending, done = b"", False
    while not done:
        size = int((await reader.readline()).strip() or b"0", 16)
        if size == 0:
            break
        pending += (await reader.readexactly(size + 2))[:-2]
        *events, pending = pending.split(b"\r\n\r\n")
        for raw in events:
            if not raw.startswith(b"data: "):
                continue   # a ping
            if raw == b"data: [DONE]":
                done = True
                break
            chunk = json.loads(raw[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            elif chunk.get("choices"):
                now = time.perf_counter()
                first = now - started if first is None else first
                if arrivals is not None:
                    arrivals.append(now)
    writer.close()
    return first or 0.0, time.perf_counter() - started, usage.get("completion_tokens", 0), usage


def _stream(url: str, body: dict, arrivals: list | None = None) -> tuple[float, float, int, dict]:
    return asyncio.run(_stream_async(url, body, arrivals))


# -- the models -------------------------------------------------------------------------------
def make_models(folder: Path, console: Console) -> dict[str, Path]:
    import torch
    from torch import nn

    from edgewise.rwkv import RWKV
    from edgewise.rwkv.synthetic import random_checkpoint
    from edgewise.runtime.onnx import export

    console.print("building the models (0.1B-shaped RWKV, the digits example, MLPs) ...")
    (folder / "raw").mkdir()
    made = {}
    big = random_checkpoint(folder / "raw" / "rwkv-0.1b.pth", layers=12, width=768, vocab=65536,
                            ranks=(64, 64, 32, 128))
    single = folder / "single"
    single.mkdir()
    for q in ("int8", "int4"):
        made[q] = RWKV.load(big, quant=q).save(single / f"rwkv-0.1b-{q}.safetensors")
    subprocess.run([sys.executable, "-m", "edgewise.cli", "compress", "--example", "digits", "--recipe", "int8",
                    "--out", str(single / "digits"), "--seconds", "0.3"], check=True, capture_output=True)
    # ten models for the traffic: 6 ONNX MLPs and 4 RWKV files of different sizes. An MLP takes ~2x
    # its file once loaded (ONNX Runtime keeps its MatMuls' weights pre-packed too): a 3584-wide one
    # (102 MiB of weights) measured 252 MiB on Zen 4 against a 245 MiB budget and was refused whenever
    # asked for. The largest is now 3072 wide (75 MiB); the files total 696 MiB, the budget 232 MiB.
    traffic = folder / "traffic"
    traffic.mkdir()
    torch.manual_seed(0)
    for i, width in enumerate((1024, 1536, 2048, 2560, 2816, 3072)):
        mlp = nn.Sequential(nn.Linear(256, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                            nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)).eval()
        (traffic / f"mlp-{i}").mkdir()
        export(mlp, np.zeros((1, 256), np.float32), traffic / f"mlp-{i}" / "model.onnx")
    for i, (layers, width) in enumerate(((4, 512), (6, 512), (4, 768), (8, 768))):
        raw = random_checkpoint(folder / "raw" / f"r{i}.pth", layers=layers, width=width, vocab=65536, seed=i)
        RWKV.load(raw, quant="int8").save(traffic / f"rwkv-{i}.safetensors")
    made["single"], made["traffic"] = single, traffic
    return made


# -- 1. HTTP overhead -------------------------------------------------------------------------
def http_overhead(server: Server, model: Path, rounds: int = 20, per_round: int = 50) -> dict:
    """Through a keep-alive connection of the standard library's http.client (httpx adds about half a
    millisecond of its own per request here)."""
    import http.client

    from edgewise.runtime.onnx import session

    sess = session(model, 2)
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    payload = json.dumps({"inputs": [{"name": name, "shape": [1, 1, 8, 8], "datatype": "FP32",
                                      "data": x.ravel().tolist()}]})
    connection = http.client.HTTPConnection("127.0.0.1", server.port)
    headers = {**server.headers, "Content-Type": "application/json"}

    def post() -> bytes:
        connection.request("POST", "/v2/models/digits/infer", body=payload, headers=headers)
        return connection.getresponse().read()
    served, direct = [], []
    for _ in range(20):
        post()
    for _ in range(rounds):
        for _ in range(per_round):
            t = time.perf_counter()
            answer = post()
            served.append(time.perf_counter() - t)
        for _ in range(per_round):
            t = time.perf_counter()
            sess.run(None, {name: x})
            direct.append(time.perf_counter() - t)
    expected = sess.run(None, {name: x})[0].ravel()
    same = np.allclose(json.loads(answer)["outputs"][0]["data"], expected, atol=1e-5)
    return {"served_p50_ms": statistics.median(served) * 1e3, "direct_p50_ms": statistics.median(direct) * 1e3,
            "served_p90_ms": float(np.percentile(served, 90)) * 1e3, "same_outputs": same}


# -- 3. batching ------------------------------------------------------------------------------
def batching(server: Server, model: str, streams: int = 8, tokens: int = 64, rounds: int = 3) -> dict:
    """Decode tokens/s of one stream, and of `streams` at once while all of them decode: prompts are
    prefilled one after another as they arrive, so the window runs from the last stream's first text
    to the first stream's last, and each stream's tokens in it are its text chunks there times its
    tokens per chunk (a chunk holds one token's text, or a few tokens' when they end a UTF-8 char)."""
    url = server.url + "/v1/completions"
    body = {"model": model, "max_tokens": tokens, "temperature": 1.0, "top_p": 1.0}
    _stream(url, {**body, "prompt": "warm", "max_tokens": 4})
    one, many = [], []
    for r in range(rounds):
        ttft, seconds, n, _ = _stream(url, {**body, "prompt": f"One stream, round {r}:"})
        one.append((n - 1) / (seconds - ttft))
        arrivals = [[] for _ in range(streams)]

        async def together():
            return await asyncio.gather(*(_stream_async(url, {**body, "prompt": f"Stream {i} of round {r}:", "seed": i},
                                                        arrivals[i]) for i in range(streams)))
        counts = [n for _, _, n, _ in asyncio.run(together())]
        begin, end = max(a[0] for a in arrivals), min(a[-1] for a in arrivals)
        inside = sum(sum(begin < t <= end for t in a) * counts[i] / len(a) for i, a in enumerate(arrivals))
        many.append(inside / (end - begin))
    return {"one_tokens_per_s": statistics.median(one), "many_tokens_per_s": statistics.median(many),
            "streams": streams}


# -- 4. a follow-up turn ----------------------------------------------------------------------
def follow_up(server: Server, model: str) -> dict:
    url = server.url + "/v1/chat/completions"
    words = "the river runs past the old mill and the fox waits by the water for the evening light".split()
    long = " ".join(random.Random(0).choice(words) for _ in range(400))
    first = [{"role": "user", "content": f"Read this and tell me what the fox does: {long}"}]
    body = {"model": model, "max_tokens": 24, "temperature": 0}
    answer = server.http.post(url, json={**body, "messages": first}).json()
    turn = first + [answer["choices"][0]["message"], {"role": "user", "content": "And then?"}]
    cached_ttft, _, _, cached_usage = _stream(url, {**body, "messages": turn, "max_tokens": 4})
    cold_turn = [{"role": "user", "content": "Now read" + turn[0]["content"][4:]}] + turn[1:]   # no cached prefix
    cold_ttft, _, _, cold_usage = _stream(url, {**body, "messages": cold_turn, "max_tokens": 4})
    return {"cached_ttft_s": cached_ttft, "cold_ttft_s": cold_ttft,
            "cached_tokens": cached_usage["prompt_tokens_details"]["cached_tokens"],
            "prompt_tokens": cached_usage["prompt_tokens"], "cold_cached_tokens":
            cold_usage["prompt_tokens_details"]["cached_tokens"]}


# -- 5. mixed traffic ----------------------------------------------------------------------------
X = np.zeros(256, np.float32).tolist()


def request_of(model: str) -> tuple[str, dict]:
    """(path, JSON body) of the traffic's request to `model`: a short completion, or one inference."""
    if model.startswith("rwkv"):
        return "/v1/completions", {"model": model, "prompt": "Hello", "max_tokens": 8}
    return f"/v2/models/{model}/infer", {"inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32", "data": X}]}


def one_request(http: httpx.Client, model: str) -> httpx.Response:
    path, body = request_of(model)
    return http.post(path, json=body)


def drive(server: Server, ids: list[str], minutes: float, clients: int, console: Console, what: str):
    """Zipf-distributed requests over `ids` from `clients` concurrent clients for `minutes`:
    (status counts, latencies). The same seeds give every server the same traffic."""
    rng = random.Random(0)
    order = ids[:]
    rng.shuffle(order)   # which model is popular is not which is large
    weights = [1 / (rank + 1) ** 1.1 for rank in range(len(order))]
    statuses: dict[str, int] = {}
    latencies: list[float] = []

    async def client(k: int, until: float):
        local = random.Random(k)
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=300) as http:
            while time.monotonic() < until:
                model = local.choices(order, weights)[0]
                path, body = request_of(model)
                started = time.perf_counter()
                r = await http.post(path, json=body)
                latencies.append(time.perf_counter() - started)
                key = str(r.status_code) if r.status_code != 200 else "200"
                if r.status_code not in (200, 503):
                    key += f" {r.text[:120]}"
                statuses[key] = statuses.get(key, 0) + 1
                if r.status_code == 503:
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))

    async def main():
        until = time.monotonic() + minutes * 60
        await asyncio.gather(*(client(k, until) for k in range(clients)))

    console.print(f"traffic: {len(ids)} models, {what}, {clients} clients, {minutes:g} min ...")
    asyncio.run(main())
    return statuses, latencies


def warm_up(server: Server, ids: list[str], clients: int, rounds: int = 3) -> None:
    """Each model in turn, alone, `rounds` x `clients` requests at once. After one request per model
    the server still grew by about 36 MiB over its first seconds of traffic (allocator and library
    caches, kept after), which a baseline taken then counted as the models' and the budget's."""
    async def main():
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=300) as http:
            for model in ids:
                path, body = request_of(model)
                for _ in range(rounds):
                    await asyncio.gather(*(http.post(path, json=body) for _ in range(clients)))
    asyncio.run(main())


def traffic(folder: Path, minutes: float, clients: int, console: Console) -> dict:
    ids = sorted(p.stem if p.is_file() else p.name for p in folder.iterdir())
    total = sum(sum(f.stat().st_size for f in (p.iterdir() if p.is_dir() else [p])) for p in folder.iterdir())
    budget = total // 3
    server = Server(folder, "--memory-budget", str(budget), "--max-queue", "8", "--keep-alive", "0")
    started_rss = server.rss
    warm_up(server, ids, clients)
    time.sleep(1.0)
    # the fixed overhead: resident memory not held by a resident model (interpreter, torch, ONNX Runtime,
    # the tokenizer, thread pools, and what the allocators keep once each kind of model has served)
    baseline = server.rss - server.http.get("/v1/models").json()["resident_bytes"]
    peak, stop = [server.rss], threading.Event()

    unaccounted = []

    def sample():
        ticks = 0
        while not stop.is_set():
            peak[0] = max(peak[0], server.rss)
            ticks += 1
            if os.environ.get("EDGEWISE_BENCH_TRACE"):
                listed = httpx.get(server.url + "/v1/models", headers=server.headers, timeout=30).json()
                unaccounted.append(((server.rss - listed["resident_bytes"] - listed["reserved_bytes"]) / 2**20,
                                    listed["resident_bytes"] / 2**20, listed["reserved_bytes"] / 2**20,
                                    [(d["id"], round((d["bytes"] or 0) / 2**20), d["in_flight"]) for d in listed["data"]
                                     if d["resident"]]))
            time.sleep(0.05)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    statuses, latencies = drive(server, ids, minutes, clients, console,
                                f"{total / 2**20:.0f} MiB of files, budget {budget / 2**20:.0f} MiB")
    stop.set()
    sampler.join()
    listing = server.http.get("/v1/models").json()
    m = server.metrics()
    loads = {i: m.get(f'edgewise_model_loads_total{{model="{i}"}}', 0) for i in ids}
    evictions = {i: sum(v for k, v in m.items() if k.startswith("edgewise_model_evictions_total") and f'model="{i}"' in k)
                 for i in ids}
    resident = {d["id"]: d["resident"] for d in listing["data"]}
    adds_up = all(loads[i] - evictions[i] == int(resident[i]) for i in ids) and abs(
        m["edgewise_resident_bytes"] - sum(d["bytes"] or 0 for d in listing["data"])) < 1
    code = server.stop()
    return {"models": len(ids), "files_mib": total / 2**20, "budget_mib": budget / 2**20,
            "started_mib": started_rss / 2**20, "baseline_mib": baseline / 2**20, "peak_mib": peak[0] / 2**20, "statuses": statuses,
            "requests": len(latencies), "p50_s": statistics.median(latencies), "p99_s": float(np.percentile(latencies, 99)),
            "loads": int(sum(loads.values())), "evictions": int(sum(evictions.values())), "adds_up": adds_up,
            "exit_code": code, **({"unaccounted_mib": [(round(a), round(b), round(c), d) for a, b, c, d in unaccounted]}
                                   if unaccounted else {})}


# -- --ray: the same traffic on Ray Serve, 1 replica against 2 -----------------------------------------
def on_ray(folder: Path, minutes: float, clients: int, console: Console) -> list[dict]:
    ids = sorted(p.stem if p.is_file() else p.name for p in folder.iterdir())
    total = sum(sum(f.stat().st_size for f in (p.iterdir() if p.is_dir() else [p])) for p in folder.iterdir())
    budget = total // 3
    rows = []
    for replicas in (1, 2):
        server = Server(folder, "--ray", "--replicas", str(replicas), "--memory-budget", str(budget),
                        "--max-queue", "8", "--keep-alive", "0", "--grace", "5s")
        try:
            for model in ids:
                one_request(server.http, model)
            before = server.http.get("/ray/replicas").json()["replicas"]
            statuses, latencies = drive(server, ids, minutes, clients, console,
                                        f"Ray Serve, {replicas} replica(s), budget {budget / 2**20:.0f} MiB each")
            time.sleep(1.0)   # the replicas' last reports
            after = server.http.get("/ray/replicas").json()["replicas"]
        finally:
            server.stop()

        def total_of(reports, key):
            return sum(sum(r[key].values()) for r in reports.values())
        requests = total_of(after, "requests") - total_of(before, "requests")
        hits = total_of(after, "hits") - total_of(before, "hits")
        rows.append({"replicas": replicas, "ok_per_s": statuses.get("200", 0) / (minutes * 60),
                     "p50_s": statistics.median(latencies), "statuses": statuses,
                     "hit_ratio": hits / max(requests, 1),
                     "peak_vs_budget": max(r["peak_resident_bytes"] for r in after.values()) / budget})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--skip-traffic", action="store_true")
    parser.add_argument("--ray", action="store_true", help="only the Ray Serve comparison: 1 vs 2 replicas")
    options = parser.parse_args()
    console = Console(width=150)
    if options.ray:
        with tempfile.TemporaryDirectory(prefix="edgewise-serve-bench-") as tmp:
            rows = on_ray(make_models(Path(tmp), console)["traffic"], options.minutes, options.clients, console)
        t = Table(title="Ray Serve: the same Zipf traffic, 1 vs 2 replicas (each its own budget)")
        for k in ("replicas", "ok_per_s", "p50_s", "hit_ratio", "peak_vs_budget", "statuses"):
            t.add_row(k, *[f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for r in rows])
        console.print(t)
        console.print(f"2 replicas / 1: {rows[1]['ok_per_s'] / rows[0]['ok_per_s']:.2f}x requests/s on "
                      f"{os.cpu_count()} cores. The replicas share these cores: a second replica here adds room "
                      "for resident models (a budget of its own), not compute; on a second machine it would add "
                      "that machine's cores and memory.")
        return
    from edgewise.measure.machine import describe
    from edgewise.rwkv import native

    lib = native.library()
    console.print(f"CPU: {describe()['cpu']}; RWKV kernels: {native.kernels(lib) if lib else 'torch'}")
    checks = []
    with tempfile.TemporaryDirectory(prefix="edgewise-serve-bench-") as tmp:
        made = make_models(Path(tmp), console)
        server = Server(made["single"], "--memory-budget", "4GB")
        try:
            h = http_overhead(server, made["single"] / "digits" / "model.onnx")
            t = Table(title="1. HTTP overhead, digits int8 through /v2 infer vs ONNX Runtime in-process")
            for k in ("served_p50_ms", "served_p90_ms", "direct_p50_ms"):
                t.add_row(k, f"{h[k]:.3f}")
            console.print(t)
            checks.append(("HTTP p50 within 1 ms of in-process ORT", h["served_p50_ms"] - h["direct_p50_ms"] <= 1.0
                           and h["same_outputs"], f"+{h['served_p50_ms'] - h['direct_p50_ms']:.3f} ms"))

            ttft, total, _, usage = _stream(server.url + "/v1/completions", {"model": "rwkv-0.1b-int4",
                                                                            "prompt": "Hello", "max_tokens": 2})
            console.print(f"2. cold load of the 0.1B int4 file: {usage['load_seconds']:.2f} s (server), "
                          f"first token after {ttft:.2f} s (client)")
            checks.append(("cold load of a converted 0.1B int4 file < 1 s", usage["load_seconds"] < 1.0,
                           f"{usage['load_seconds']:.2f} s"))

            b = batching(server, "rwkv-0.1b-int8")
            ratio = b["many_tokens_per_s"] / b["one_tokens_per_s"]
            console.print(f"3. 0.1B int8 decode: one stream {b['one_tokens_per_s']:.1f} tok/s, "
                          f"{b['streams']} streams {b['many_tokens_per_s']:.1f} tok/s together = {ratio:.2f}x")
            checks.append((f"{b['streams']} streams >= 4x one stream", ratio >= 4, f"{ratio:.2f}x"))

            f = follow_up(server, "rwkv-0.1b-int8")
            console.print(f"4. follow-up turn ({f['prompt_tokens']} prompt tokens, {f['cached_tokens']} from the cache): "
                          f"first token {f['cached_ttft_s'] * 1e3:.0f} ms; the same turn with no cached prefix "
                          f"{f['cold_ttft_s'] * 1e3:.0f} ms ({f['cold_ttft_s'] / f['cached_ttft_s']:.1f}x)")
            new = f["prompt_tokens"] - f["cached_tokens"]
            checks.append(("a follow-up pays only its new tokens", new <= 16 and f["cold_cached_tokens"] == 0,
                           f"{new} new tokens"))
        finally:
            server.stop()
        if not options.skip_traffic:
            r = traffic(made["traffic"], options.minutes, options.clients, console)
            t = Table(title=f"5. mixed traffic: {r['models']} models, {r['files_mib']:.0f} MiB of files, "
                            f"budget {r['budget_mib']:.0f} MiB")
            for k in ("requests", "p50_s", "p99_s", "loads", "evictions", "started_mib", "baseline_mib", "peak_mib",
                      "statuses",
                      "adds_up", "exit_code"):
                t.add_row(k, f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]))
            console.print(t)
            if r.get("unaccounted_mib"):   # EDGEWISE_BENCH_TRACE=1: the samples where RSS ran furthest past the models
                for row in sorted(r["unaccounted_mib"], key=lambda u: -u[0])[:8]:
                    console.print(f"  RSS - resident - reserved = {row[0]} MiB (resident {row[1]}, reserved {row[2]}): "
                                  f"{row[3]}")
            errors = {k: v for k, v in r["statuses"].items() if k not in ("200", "503")}
            over = r["peak_mib"] - r["baseline_mib"]
            checks.append(("no errors but intended 503s", not errors, str(errors or "none")))
            checks.append(("peak RSS within budget + the fixed overhead", over <= r["budget_mib"],
                           f"peak {r['peak_mib']:.0f} MiB - overhead {r['baseline_mib']:.0f} MiB = {over:.0f} MiB "
                           f"vs budget {r['budget_mib']:.0f} MiB"))
            checks.append(("loads - evictions = resident; bytes add up", r["adds_up"], str(r["adds_up"])))
    t = Table(title="goals")
    for name, ok, figure in checks:
        t.add_row(name, "yes" if ok else "NO", figure)
    console.print(t)


if __name__ == "__main__":
    main()
