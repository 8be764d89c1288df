"""The fuzz harness (tests/fuzzing.py) for a bounded time: every loader and every command that
reads a file, mutated inputs, no crash, traceback or hang. Longer runs: python -m tests.fuzzing."""

import pytest

from tests.fuzzing import fuzz

TARGETS = 13


def test_every_file_reader_survives_a_minute_of_mutants(tmp_path):
    result = fuzz(tmp_path, seconds=60, seed=0)
    assert result["findings"] == [], "\n\n".join(f"{f['target']} {f['outcome']} on {f['case']}:\n{f['detail']}"
                                                 for f in result["findings"][:5])
    assert len(result["per_target"]) == TARGETS
    for target, outcomes in result["per_target"].items():
        assert outcomes.get("ok", 0) >= 1, target         # the seed itself runs (every 16th round)
        assert outcomes.get("refused", 0) >= 5, target    # and mutants reach the checks


def test_the_harness_catches_crashes_hangs_tracebacks_and_long_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEWISE_FUZZ_TARGETS", "canary")
    monkeypatch.setenv("EDGEWISE_FUZZ_INPUT_SECONDS", "3")
    result = fuzz(tmp_path, seconds=40, seed=0)
    found = {f["outcome"] for f in result["findings"]}
    assert {"crash", "hang", "traceback"} <= found, result
    assert any("not one line" in f["detail"] for f in result["findings"])
    assert all((tmp_path / "findings" / f["case"].rsplit("/", 1)[-1]).exists() for f in result["findings"])


if __name__ == "__main__":
    pytest.main([__file__])
