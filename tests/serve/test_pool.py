"""The pool's residency rules, on runners whose sizes the test sets (loading is the real code path:
the pool measures RSS around `open_runner`, which is replaced here)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from edgewise.serve import pool as pool_module
from edgewise.serve.pool import ModelPool, ModelTooLarge, PoolBusy

MiB = 2**20


class FakeRunner:
    opened: list[str] = []

    def __init__(self, model, size: int, extra: int = 0) -> None:
        time.sleep(0.05)   # a load takes a while: concurrent requests must share it
        FakeRunner.opened.append(model.id)
        self.model, self.nominal_bytes, self.extra, self.closed = model, size, extra, False

    def extra_bytes(self) -> int:
        return self.extra

    def shrink(self) -> int:
        freed, self.extra = self.extra, 0
        return freed

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def folder(tmp_path, monkeypatch):
    sizes = {"a": 30 * MiB, "b": 30 * MiB, "c": 30 * MiB, "huge": 200 * MiB}
    for name in sizes:
        (tmp_path / f"{name}.pth").write_bytes(b"\0" * 1024)
    FakeRunner.opened = []
    monkeypatch.setattr(pool_module, "open_runner", lambda model, threads: FakeRunner(model, sizes[model.id]))
    return tmp_path


def run(coroutine):
    return asyncio.run(coroutine)


def test_loads_on_first_use_and_concurrent_requests_share_one_load(folder):
    async def main():
        pool = ModelPool(folder, 100 * MiB)
        results = await asyncio.gather(*(pool.acquire("a") for _ in range(5)))
        assert FakeRunner.opened == ["a"]
        assert sum(cold for _, cold in results) == 5   # all of them waited for that load
        assert pool.resident["a"].in_flight == 5
        for r, _ in results:
            pool.release(r)
        again, cold = await pool.acquire("a")
        assert not cold and FakeRunner.opened == ["a"]
        pool.release(again)
    run(main())


def test_the_least_recently_used_idle_model_goes_when_a_load_would_pass_the_budget(folder):
    async def main():
        pool = ModelPool(folder, 70 * MiB)
        for name in ("a", "b"):
            r, _ = await pool.acquire(name)
            pool.release(r)
        a, _ = await pool.acquire("a")      # a is now the most recently used
        pool.release(a)
        c, _ = await pool.acquire("c")
        pool.release(c)
        assert set(pool.resident) == {"a", "c"} and pool.evictions == 1
        assert pool.resident_bytes() <= 70 * MiB
    run(main())


def test_a_model_in_flight_or_pinned_is_never_evicted(folder):
    async def main():
        pool = ModelPool(folder, 70 * MiB, pins=("a",))
        a, _ = await pool.acquire("a")
        pool.release(a)
        b, _ = await pool.acquire("b")       # held: in flight
        with pytest.raises(pool_module.PoolBusy):
            await pool.acquire("c")
        assert set(pool.resident) == {"a", "b"}
        pool.release(b)
        c, _ = await pool.acquire("c")
        pool.release(c)
        assert set(pool.resident) == {"a", "c"}   # b went, the pinned a stayed
    run(main())


def test_a_load_waits_for_a_busy_model_to_finish_then_takes_its_room(folder):
    async def main():
        pool = ModelPool(folder, 70 * MiB, room_wait=5.0)
        for name in ("a", "b", "c"):   # measured once: a later load knows its size and makes room first
            r, _ = await pool.acquire(name)
            pool.release(r)
        pool.close()
        a, _ = await pool.acquire("a")
        b, _ = await pool.acquire("b")   # both busy: c must wait
        waiting = asyncio.ensure_future(pool.acquire("c"))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        pool.release(a)
        c, _ = await asyncio.wait_for(waiting, 2.0)
        assert set(pool.resident) == {"b", "c"}
        pool.release(b), pool.release(c)
        pool.room_wait = 0.2
        b2, _ = await pool.acquire("b")
        c2, _ = await pool.acquire("c")
        with pytest.raises(pool_module.PoolBusy, match="stayed busy for 0.2 s"):
            await pool.acquire("a")
    run(main())


def test_a_model_that_cannot_fit_even_alone_is_refused_with_the_figures(folder):
    async def main():
        pool = ModelPool(folder, 100 * MiB)
        with pytest.raises(ModelTooLarge, match=r"huge takes 200 MiB once loaded, more than the whole memory budget"):
            await pool.acquire("huge")
        assert "huge" not in pool.resident and pool.resident_bytes() == 0
        with pytest.raises(ModelTooLarge, match="about 200 MiB"):   # measured once: refused before loading
            await pool.acquire("huge")
        assert FakeRunner.opened == ["huge"]
    run(main())


def test_grown_state_is_shed_before_any_model_and_keep_alive_unloads_idle_models(folder, monkeypatch):
    monkeypatch.setattr(pool_module, "open_runner", lambda model, threads: FakeRunner(model, 30 * MiB, extra=20 * MiB))

    async def main():
        pool = ModelPool(folder, 100 * MiB, keep_alive=0.2)
        for name in ("a", "b"):
            r, _ = await pool.acquire(name)
            pool.release(r)
        assert pool.resident_bytes() == 100 * MiB
        c, _ = await pool.acquire("c")   # room made by dropping states (40 MiB), not a model
        pool.release(c)
        assert set(pool.resident) == {"a", "b", "c"} and pool.evictions == 0
        reaper = asyncio.ensure_future(pool.reap())
        for _ in range(100):   # keep-alive is 0.2 s; each unload collects garbage, slow in a long test session
            if not pool.resident:
                break
            await asyncio.sleep(0.1)
        reaper.cancel()
        assert pool.resident == {}
    run(main())


def test_room_for_a_stream_sheds_idle_models_and_is_refused_when_all_are_busy(folder):
    async def main():
        pool = ModelPool(folder, 100 * MiB)
        a, _ = await pool.acquire("a")
        b, _ = await pool.acquire("b")
        c, _ = await pool.acquire("c")
        pool.release(b)
        pool.make_room(a, 20 * MiB)   # b is idle: it goes
        assert set(pool.resident) == {"a", "c"} and pool.free_bytes() == 40 * MiB
        with pytest.raises(PoolBusy, match="no room for another stream of a"):
            pool.make_room(a, 50 * MiB)   # a and c are busy
        assert set(pool.resident) == {"a", "c"}
    run(main())


def test_an_unknown_model_is_not_found_and_a_new_file_is_found_without_a_restart(folder, monkeypatch):
    async def main():
        pool = ModelPool(folder, 100 * MiB)
        with pytest.raises(pool_module.ModelNotFound):
            await pool.acquire("d")
        (folder / "d.pth").write_bytes(b"\0")
        monkeypatch.setattr(pool_module, "open_runner", lambda model, threads: FakeRunner(model, MiB))
        r, _ = await pool.acquire("d")
        pool.release(r)
        assert FakeRunner.opened == ["d"]
    run(main())


def test_loads_run_one_at_a_time_so_each_measurement_is_its_own(folder, monkeypatch):
    active, most = [0], [0]
    lock = threading.Lock()

    def opening(model, threads):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            return FakeRunner(model, MiB)
        finally:
            with lock:
                active[0] -= 1
    monkeypatch.setattr(pool_module, "open_runner", opening)

    async def main():
        pool = ModelPool(folder, 100 * MiB)
        await asyncio.gather(*(pool.acquire(n) for n in ("a", "b", "c")))
    run(main())
    assert most[0] == 1
