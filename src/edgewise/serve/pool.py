"""Which models are resident, within a byte budget that holds.

A model loads on first use; concurrent requests for a missing model share that one load. Its bytes
are measured, not guessed from its file: the process's resident memory before and after the load
and a warm-up run (weights, ONNX Runtime arenas), never less than the tensors it holds; an RWKV
model adds the states it keeps (cached conversations, live streams) as it serves. When a load would
pass the budget, cached states go first, then idle models, least recently used first; a model with
requests in flight is never evicted, and a pinned one only by `close`. A model that cannot fit
even alone is refused. Loads run one at a time, so that each measurement is that model's.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psutil

from edgewise.errors import EdgewiseError
from edgewise.serve.catalog import ModelFile, scan
from edgewise.serve.runners import open_runner

log = logging.getLogger("edgewise.serve")
LOAD_FACTOR = {"rwkv": 1.1, "embedding": 1.6, "onnx": 1.6}   # first-load guess x file bytes, before any measurement
# While it loads, a model holds more than it keeps (ONNX Runtime reads the whole protobuf, copies the
# weights out of it and packs them again). Room for the load's peak is made before it starts: the peak
# measured at an earlier load of that model, else this much x its resident bytes.
LOAD_PEAK = {"rwkv": 1.5, "embedding": 3.0, "onnx": 3.0}
ROOM_WAIT = 10.0   # seconds a load waits for busy models to finish before answering 503


class ModelNotFound(EdgewiseError):
    pass


class ModelTooLarge(EdgewiseError):
    pass


class ModelBroken(EdgewiseError):
    """The model's file cannot be loaded: the server's operator must fix it, not the client."""


class PoolBusy(EdgewiseError):
    """Every resident model that would have to go to make room has requests in flight."""


@dataclass
class Resident:
    model: ModelFile
    runner: object = None
    measured: int = 0           # bytes the load measured
    in_flight: int = 0
    last_used: float = field(default_factory=time.monotonic)
    loaded_at: float = 0.0
    load_seconds: float = 0.0
    loading: asyncio.Future | None = None

    @property
    def bytes(self) -> int:
        return self.measured + (self.runner.extra_bytes() if self.runner is not None else 0)


def _reset_peak_rss() -> None:
    """Start the kernel's count of this process's peak resident memory again (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def tune_malloc(arenas: int = 2, mmap_threshold: int = 512 << 10) -> None:
    """Make the process's RSS follow what is resident (glibc). Cap the malloc arenas (one per thread by
    default, up to 8 per core: memory freed by a thread other than the one that took it stays in that
    thread's arena). Fix the size from which a block is mmap-ed, and so returned to the system when freed:
    glibc raises it to the largest block freed so far, after which cached states come from the heap and
    the heap cannot shrink past them. 512 KiB: a state of a 0.1B model (2.4 MB) is mapped, a token's
    buffers (a vocabulary of floats, 256 KB) are not (at 128 KiB they were, and 8 streams decoded 15%
    slower for the page faults)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, arenas)           # M_ARENA_MAX
        libc.mallopt(-3, mmap_threshold)   # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


TRIM_EVERY = 0.25   # seconds: the least time between two trims of the heap
_last_trim = 0.0


def _trim() -> None:
    """Return the heap's free pages to the system, at most every TRIM_EVERY seconds. Short-lived buffers
    freed between long-lived cached states (about 1 MiB each) leave holes the heap cannot shrink past;
    without this, 8 clients of a small RWKV model for 10 s left 461 MiB that no model held."""
    global _last_trim
    now = time.monotonic()
    if now - _last_trim < TRIM_EVERY:
        return
    _last_trim = now
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):   # not glibc
        pass


def _release_memory() -> None:
    """Give freed memory back to the system, so that the process's RSS follows what is resident."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):   # not glibc
        pass


class ModelPool:
    def __init__(self, models_dir, budget: int, pins: tuple[str, ...] = (), keep_alive: float | None = None,
                 threads: int | None = None, metrics=None, room_wait: float = ROOM_WAIT) -> None:
        self.models_dir, self.budget, self.keep_alive, self.threads = models_dir, budget, keep_alive, threads
        self.room_wait = room_wait
        self.catalog = scan(models_dir)
        unknown = [p for p in pins if p not in self.catalog]
        if unknown:
            raise EdgewiseError(f"--pin {unknown[0]}: no such model in {models_dir}; it has {', '.join(self.catalog)}")
        self.pins = set(pins)
        self.metrics = metrics
        self.resident: dict[str, Resident] = {}
        self.estimates: dict[str, int] = {}   # bytes measured at an earlier load
        self.peaks: dict[str, int] = {}       # bytes a load of it took at its peak, measured
        self._load_lock = asyncio.Lock()
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="edgewise-load")   # every load on one thread
        self._released = asyncio.Event()   # set whenever a request lets go of a model
        self._reserved = 0                 # the peak of the load under way: others may not grow into it
        self.loads = self.evictions = 0

    # -- what there is -----------------------------------------------------------------------
    def find(self, model_id: str) -> ModelFile:
        if model_id not in self.catalog:
            self.catalog = scan(self.models_dir)   # a model copied in since the start
        if model_id not in self.catalog:
            raise ModelNotFound(f"the model {model_id!r} does not exist; GET /v1/models lists the models")
        return self.catalog[model_id]

    def resident_bytes(self) -> int:
        # list() first: a batcher thread asks too (StateCache.room), while the event loop may change the dict
        return sum(r.bytes for r in list(self.resident.values()) if r.runner is not None)

    def free_bytes(self) -> int:
        """What the budget has left, after the resident models and the room kept for a load."""
        return self.budget - self.resident_bytes() - self._reserved

    def make_room(self, r: Resident, need: int) -> None:
        """Room for `need` more bytes of `r` (a stream's state), or PoolBusy: the budget holds while
        the stream runs."""
        if not self._make_room(need, keep=r.model.id):
            raise PoolBusy(f"no room for another stream of {r.model.id} ({need / 2**20:.1f} MiB of state): the "
                           "models that would have to be unloaded are busy")

    @property
    def reserved_bytes(self) -> int:
        """The room kept for the load under way (its peak, as measured before or guessed), else 0."""
        return self._reserved

    def describe(self) -> list[dict]:
        rows = []
        for model_id, model in self.catalog.items():
            r = self.resident.get(model_id)
            loaded = r is not None and r.runner is not None
            rows.append({"id": model_id, "object": "model", "created": int(model.path.stat().st_mtime),
                         "owned_by": "edgewise", "kind": model.kind, "resident": loaded,
                         "bytes": r.bytes if loaded else None, "file_bytes": model.file_bytes,
                         "last_used": time.time() - (time.monotonic() - r.last_used) if loaded else None,
                         "in_flight": r.in_flight if loaded else 0, "pinned": model_id in self.pins})
        return rows

    # -- use -------------------------------------------------------------------------------
    async def acquire(self, model_id: str) -> tuple[Resident, bool]:
        """The resident model (loaded now if needed) with one more request in flight, and whether
        this request paid for the load. Pair with `release`."""
        model = self.find(model_id)
        r = self.resident.get(model_id)
        if r is not None and r.runner is not None:
            r.in_flight += 1
            r.last_used = time.monotonic()
            return r, False
        if r is None:
            r = self.resident[model_id] = Resident(model)
        r.in_flight += 1   # held while waiting: a model being loaded for a request is not evicted
        try:
            if r.loading is None:
                r.loading = asyncio.ensure_future(self._load(r))
            await asyncio.shield(r.loading)
        except BaseException:
            r.in_flight -= 1
            if r.runner is None and self.resident.get(model_id) is r and not r.in_flight:
                self.resident.pop(model_id, None)
            raise
        r.last_used = time.monotonic()
        return r, True

    def release(self, r: Resident) -> None:
        r.in_flight -= 1
        r.last_used = time.monotonic()
        self.enforce()
        _trim()   # what the request freed goes back to the system (once a second at most)
        self._released.set()

    def enforce(self) -> None:
        """Back within budget after a model grew (an RWKV model's cached states): states first."""
        self._make_room(0, keep=None)

    # -- load and evict ----------------------------------------------------------------------
    def _estimate(self, model: ModelFile) -> int:
        return self.estimates.get(model.id) or int(model.file_bytes * LOAD_FACTOR[model.kind])

    async def _load(self, r: Resident) -> None:
        model = r.model
        try:
            async with self._load_lock:
                need = self._estimate(model)
                if need > self.budget:
                    raise ModelTooLarge(f"the model {model.id} needs about {need / 2**20:.0f} MiB, more than the "
                                        f"whole memory budget ({self.budget / 2**20:.0f} MiB); raise --memory-budget")
                peak = self.peaks.get(model.id) or int(need * LOAD_PEAK[model.kind])
                deadline = time.monotonic() + self.room_wait
                while not self._make_room(min(peak, self.budget), keep=model.id):   # wait for busy models
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise PoolBusy(f"no room for {model.id}: the models that would have to be unloaded "
                                       f"stayed busy for {self.room_wait:g} s")
                    self._released.clear()
                    try:
                        await asyncio.wait_for(self._released.wait(), timeout=left)
                    except asyncio.TimeoutError:
                        pass
                self._reserved = min(peak, self.budget)
                before = psutil.Process().memory_info().rss
                _reset_peak_rss()
                started = time.perf_counter()
                try:
                    runner = await asyncio.get_running_loop().run_in_executor(self._loader, open_runner, model,
                                                                              self.threads)
                except EdgewiseError as exc:
                    log.error("cannot load %s: %s", model.id, exc)
                    detail = str(exc).replace(str(model.path), model.id).replace(str(model.path.parent) + "/", "")
                    raise ModelBroken(f"the model {model.id} cannot be loaded ({detail}); the server's log has "
                                      "the path") from None
                finally:
                    self._reserved = 0
                r.load_seconds = time.perf_counter() - started
                measured = max(psutil.Process().memory_info().rss - before, runner.nominal_bytes)
                high = _peak_rss()
                if high is not None:   # the largest seen: a load's peak varies with what the heap has free
                    self.peaks[model.id] = max(self.peaks.get(model.id, 0), high - before, measured)
                r.runner, r.measured, r.loaded_at = runner, measured, time.monotonic()
                if hasattr(runner, "cache"):
                    runner.cache.room = self.free_bytes
                self.estimates[model.id] = measured
                self.loads += 1
                if self.metrics:
                    self.metrics.loaded(model.id, r.load_seconds)
                log.info("loaded %s: %.1f MiB in %.2f s", model.id, measured / 2**20, r.load_seconds)
                if measured > self.budget:
                    self._unload(r)
                    self.evictions += 1
                    if self.metrics:
                        self.metrics.evicted(model.id, reason="too-large")
                    raise ModelTooLarge(f"the model {model.id} takes {measured / 2**20:.0f} MiB once loaded, more "
                                        f"than the whole memory budget ({self.budget / 2**20:.0f} MiB); raise "
                                        "--memory-budget")
                if not self._make_room(0, keep=model.id):   # measured larger than guessed, and the rest is busy
                    self._unload(r)
                    self.evictions += 1
                    if self.metrics:
                        self.metrics.evicted(model.id, reason="no-room")
                    raise PoolBusy(f"no room for {model.id} ({measured / 2**20:.0f} MiB): the models that would "
                                   "have to be unloaded are busy")
        finally:
            r.loading = None

    def _make_room(self, need: int, keep: str | None) -> bool:
        """Free memory until `need` more bytes fit: cached states, then idle models, LRU first."""
        def over() -> bool:
            return self.resident_bytes() + self._reserved + need > self.budget

        if not over():
            return True
        by_age = sorted((r for r in self.resident.values() if r.runner is not None), key=lambda r: r.last_used)
        for r in by_age:
            while over() and r.runner.shrink():
                pass
        for r in by_age:
            if not over():
                break
            if r.model.id != keep and not r.in_flight and r.model.id not in self.pins:
                self._unload(r)
                self.evictions += 1
                if self.metrics:
                    self.metrics.evicted(r.model.id)
        return not over()

    def _unload(self, r: Resident) -> None:
        runner, r.runner = r.runner, None
        self.resident.pop(r.model.id, None)
        runner.close()
        del runner
        _release_memory()
        log.info("unloaded %s", r.model.id)

    async def reap(self) -> None:
        """Unload models idle for longer than keep-alive (pinned ones stay)."""
        while self.keep_alive:
            await asyncio.sleep(min(self.keep_alive / 4, 5.0))
            now = time.monotonic()
            for r in list(self.resident.values()):
                if (r.runner is not None and not r.in_flight and r.model.id not in self.pins
                        and now - r.last_used > self.keep_alive):
                    self._unload(r)
                    if self.metrics:
                        self.metrics.evicted(r.model.id, reason="keep-alive")

    async def load_pins(self) -> None:
        for model_id in sorted(self.pins):
            r, _ = await self.acquire(model_id)
            self.release(r)

    def close(self) -> None:
        for r in list(self.resident.values()):
            if r.runner is not None:
                self._unload(r)
