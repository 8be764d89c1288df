"""`edgewise serve --ray`: the same API on Ray Serve, replicas routed by the model they hold.

Each replica runs the whole single-process server in-process (its pool, its measured byte budget,
its batching) and answers requests through it, so every route, error and limit is the same as
without Ray. An ingress deployment reads which model a request is for (the `model` of an OpenAI
body, the id in a /v2 path) and calls the replicas through Ray Serve model multiplexing
(`multiplexed_model_id`): Ray sends it to a replica that reported holding that model, and a
replica reports a model when its `@serve.multiplexed` loader runs for it. Residency itself is the
pool's, by measured bytes; Ray's per-replica model count is only an upper bound set high.

Replicas also report what they did (requests, whether the model was already resident, resident
bytes against the budget) to a named ledger actor; `GET /ray/replicas` on the ingress shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import time

from edgewise.errors import EdgewiseError

LEDGER = "edgewise-ledger"
NAMESPACE = "edgewise"
APP = "edgewise"
_V2_MODEL = re.compile(r"^/v2/models/([^/]+)")


def model_of(method: str, path: str, body: bytes) -> str:
    """The model a request is for: the id of a /v2/models path, else the `model` of a JSON body."""
    found = _V2_MODEL.match(path)
    if found:
        return found.group(1)
    if method == "POST" and path.startswith("/v1/") and body:
        try:
            model = json.loads(body).get("model")
        except (ValueError, AttributeError):
            return ""
        return model if isinstance(model, str) else ""
    return ""


async def call_asgi(app, method: str, path: str, query: bytes, headers: list, body: bytes):
    """Run one HTTP request through an ASGI app in this process: yields (status, headers) once,
    then the body's chunks as the app sends them (a stream stays a stream)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query,
             "headers": [(k.encode().lower(), v.encode()) for k, v in headers],
             "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 80), "root_path": ""}
    sent = asyncio.Queue()
    received = False
    disconnected = asyncio.Event()

    async def receive():
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        await sent.put(message)

    task = asyncio.ensure_future(app(scope, receive, send))
    task.add_done_callback(lambda _: sent.put_nowait(None))
    try:
        while True:
            message = await sent.get()
            if message is None:
                task.result()   # the app's own exception, if it raised one
                return
            if message["type"] == "http.response.start":
                yield message["status"], [(k.decode(), v.decode()) for k, v in message.get("headers", [])]
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body", False):
                    return
    finally:
        disconnected.set()   # the client went away, or the response ended: the app sees a disconnect
        if not task.done():
            task.cancel()


async def _lifespan(app) -> asyncio.Task:
    """Start an ASGI app's lifespan (pins loaded, the keep-alive reaper running): its task, to keep."""
    inbox, started = asyncio.Queue(), asyncio.get_running_loop().create_future()
    await inbox.put({"type": "lifespan.startup"})

    async def send(message):
        if message["type"].startswith("lifespan.startup") and not started.done():
            started.set_result(message)

    task = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, send))
    message = await started
    if message["type"] != "lifespan.startup.complete":
        raise RuntimeError(message.get("message", "the server failed to start"))
    return task   # the event loop holds tasks weakly: a lifespan nobody references could be collected


def deployments(settings, replicas: int, grace_s: float = 30.0):
    """The Ray Serve application: an ingress and `replicas` replicas of the server."""
    import ray
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse

    @ray.remote(num_cpus=0)
    class Ledger:
        """What each replica reports: its requests per model, hits (model already resident), loads."""

        def __init__(self):
            self.replicas: dict[str, dict] = {}

        def record(self, replica: str, report: dict) -> None:
            self.replicas[replica] = report

        def all(self) -> dict:
            return self.replicas

    @serve.deployment(num_replicas=replicas, ray_actor_options={"num_cpus": 0},
                      max_ongoing_requests=max(8, settings.max_queue), graceful_shutdown_timeout_s=grace_s,
                      graceful_shutdown_wait_loop_s=0.5)
    class Replica:
        def __init__(self):
            from edgewise.serve.app import create_app

            self.app, inner = create_app(settings)
            self.server = inner.state.server
            self.name = serve.get_replica_context().replica_tag
            self.ledger = Ledger.options(name=LEDGER, namespace=NAMESPACE, get_if_exists=True,
                                         lifetime="detached").remote()
            self.report = {"pid": os.getpid(), "requests": {}, "hits": {}, "peak_resident_bytes": 0,
                           "budget_bytes": settings.budget}
            self._lifespan = None

        async def _started(self):
            if self._lifespan is None:   # the first requests, however many arrive at once, share one start
                self._lifespan = asyncio.ensure_future(_lifespan(self.app))
            await self._lifespan

        @serve.multiplexed(max_num_models_per_replica=1024)
        async def get_model(self, model_id: str) -> str:
            """Ray's record that this replica holds `model_id`; the pool loads it on the request, by bytes."""
            return model_id

        def _forget_evicted(self) -> None:
            """Ray's list of this replica's models follows the pool: a model the budget evicted is
            dropped from it, so Ray stops routing its requests here as if it were resident. (Ray keeps
            the list in its multiplexing wrapper, `ray==2.60.0`; elsewhere this does nothing.)"""
            wrapper = getattr(self, "__serve_multiplex_wrapper", None)
            models = getattr(wrapper, "models", None)
            if models is None:
                return
            resident = {m for m, r in self.server.pool.resident.items() if r.runner is not None}
            gone = [m for m in models if m not in resident]
            for model in gone:
                models.pop(model, None)
            if gone and hasattr(wrapper, "_push_multiplexed_replica_info"):
                wrapper._push_multiplexed_replica_info = True

        async def handle(self, method: str, path: str, query: bytes, headers: list, body: bytes):
            await self._started()
            model_id = serve.get_multiplexed_model_id()
            if model_id:
                await self.get_model(model_id)
                resident = self.server.pool.resident.get(model_id)
                hit = resident is not None and resident.runner is not None
                self.report["requests"][model_id] = self.report["requests"].get(model_id, 0) + 1
                self.report["hits"][model_id] = self.report["hits"].get(model_id, 0) + int(hit)
            async for part in call_asgi(self.app, method, path, query, headers, body):
                yield part
            if model_id:
                self._forget_evicted()
                self.report["peak_resident_bytes"] = max(self.report["peak_resident_bytes"],
                                                         self.server.pool.resident_bytes())
                self.report["resident"] = {m: r.bytes for m, r in self.server.pool.resident.items()
                                           if r.runner is not None}
                self.report["resident_bytes"] = self.server.pool.resident_bytes()
                self.ledger.record.remote(self.name, self.report)

    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
    class Ingress:
        def __init__(self, replica):
            self.replica = replica
            self.ledger = Ledger.options(name=LEDGER, namespace=NAMESPACE, get_if_exists=True,
                                         lifetime="detached").remote()

        async def __call__(self, request: Request):
            path = request.url.path
            if path == "/health":
                return JSONResponse({"status": "ok"})
            if path == "/ray/replicas":
                return JSONResponse({"replicas": await self.ledger.all.remote(), "budget_bytes": settings.budget})
            body = await request.body()
            model_id = model_of(request.method, path, body)
            handle = self.replica.options(stream=True, multiplexed_model_id=model_id)
            parts = handle.handle.remote(request.method, path, request.url.query.encode(),
                                         list(request.headers.items()), body)
            status, headers = await parts.__anext__()

            async def rest():
                async for chunk in parts:
                    yield chunk
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            return StreamingResponse(rest(), status_code=status, headers=dict(headers))

    return Ingress.bind(Replica.bind())


def _check_reachable(address: str) -> None:
    """Fail at once on a cluster address nothing answers at (Ray itself retries for minutes)."""
    import socket

    where = address.removeprefix("ray://")
    host, _, port = where.rpartition(":")
    if address == "auto" or not port.isdigit():
        return   # "auto" and bare names: Ray finds the cluster (and says so when it cannot)
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=3).close()
    except OSError as exc:
        raise EdgewiseError(f"--ray-address {address}: nothing answers there ({exc.strerror or exc}); give the "
                            "address of a running Ray cluster (ray start --head prints it)") from None


@contextlib.contextmanager
def _stderr_kept():
    """Keep what this process (C++ included) writes to stderr; yields a function returning it."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile("w+") as kept:
        os.dup2(kept.fileno(), 2)
        text = []
        try:
            yield lambda: "".join(text)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            kept.seek(0)
            text.append(kept.read())


def run(settings, host: str, port: int, replicas: int, address: str | None, grace_s: float) -> None:
    """Start (or join, with `address`) a Ray cluster, deploy, serve until SIGINT/SIGTERM."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise EdgewiseError("--ray needs Ray Serve: pip install 'edgewise[ray]'") from None
    if replicas < 1:
        raise EdgewiseError(f"--replicas {replicas}: give 1 or more")
    from edgewise.serve.catalog import scan

    scan(settings.models_dir)   # a missing or empty folder: one line here, not a failed deployment in Ray
    if address:
        _check_reachable(address)
    with _stderr_kept() as said:   # Ray's C++ client logs each failed attempt to connect, a line a second
        try:
            ray.init(address=address, namespace=NAMESPACE, include_dashboard=False, logging_level="ERROR",
                     log_to_driver=False, configure_logging=True)
            failure = None
        except Exception as exc:   # no cluster at the address, a port taken, a token it wants, ...
            failure = str(exc).splitlines()[0]
    if failure:
        hint = ""
        if "InvalidAuthToken" in said() or "AuthenticationError" in failure:
            # Ray >= 2.59 starts a cluster with token authentication once ~/.ray/auth_token exists, and
            # sends no token to an address given explicitly unless told to
            hint = ("; the cluster uses token authentication: set RAY_AUTH_MODE=token and its token in "
                    "RAY_AUTH_TOKEN or ~/.ray/auth_token (ray get-auth-token prints it on the head node)")
        raise EdgewiseError(f"--ray{' --ray-address ' + address if address else ''}: cannot start or reach "
                            f"the cluster ({failure}){hint}")
    elif said().strip():
        print(said().rstrip(), file=sys.stderr)
    import signal
    import threading

    # ray.init installs a SIGTERM handler that exits with status 15 on the spot; ours goes in now, before the
    # deployment, because Ray's proxy can answer /health before serve.run returns: a SIGTERM then must still
    # take the clean way out below (delete the application, exit 0), not Ray's.
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        serve.start(http_options={"host": host, "port": port}, detached=False)
    except Exception as exc:   # free when checked, but taken since: by another process, or by one of Ray's
        ray.shutdown()         # own (its agents and workers bind ports the kernel hands out)
        if "Failed to bind" not in str(exc):
            raise
        raise EdgewiseError(f"cannot listen on {host}:{port}: Ray Serve's proxy could not bind it (taken since "
                            "edgewise checked it); give another --port") from None
    serve.run(deployments(settings, replicas, grace_s), name=APP, route_prefix="/")
    print(f"edgewise serve: {settings.models_dir} on http://{host}:{port} through Ray Serve, {replicas} "
          f"replica(s), each with budget {settings.budget} bytes", file=sys.stderr, flush=True)
    try:
        while not stop:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    # Replicas get `grace` to finish what is in flight; past that (a replica stuck in a load), exit anyway.
    threading.Timer(grace_s + 15, lambda: os._exit(0)).start()
    if address:
        serve.delete(APP)   # someone else's cluster: take down this application only
    else:
        serve.shutdown()
    ray.shutdown()
    os._exit(0)
