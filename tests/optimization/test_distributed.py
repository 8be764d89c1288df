"""Several `edgewise optimize` workers on one study in a real PostgreSQL server."""

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests.optimization.test_search import _optimize_process
from tests.ports import free_port

STUDY = "edgewise-breast-cancer-latency"


def _pg(program: str) -> str | None:
    found = shutil.which(program) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of its own on a loopback port, for this module; stopped and removed after."""
    initdb, pg_ctl = _pg("initdb"), _pg("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL is not installed (make test-deps installs Debian's postgresql)")
    folder = tempfile.mkdtemp(prefix="edgewise-pg-")   # not under pytest's tmp: the server's user must reach it
    as_server = []
    if os.geteuid() == 0:   # PostgreSQL refuses to run as root: Debian's package made a postgres user
        runuser = shutil.which("runuser", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        if not runuser:
            pytest.skip("running as root without runuser (util-linux): cannot start PostgreSQL as its own user")
        shutil.chown(folder, "postgres")
        as_server = [runuser, "-u", "postgres", "--"]
    data, port = os.path.join(folder, "data"), free_port()
    subprocess.run([*as_server, initdb, "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"],
                   check=True, capture_output=True)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*as_server, pg_ctl, "-D", data, "-o", options, "-l", os.path.join(folder, "log"), "-w", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_server, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_share_one_study_without_running_a_recipe_twice(postgres, tmp_path):
    import optuna

    trials = 6
    workers = [_optimize_process(tmp_path / name, postgres, trials) for name in ("a", "b")]
    for worker in workers:
        assert worker.wait(timeout=600) == 0, worker.communicate()[1][-4000:]   # the whole traceback
    study = optuna.load_study(study_name=STUDY, storage=postgres)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    recipes = [t.user_attrs["recipe"] for t in complete]
    assert len(complete) == trials and len(set(recipes)) == trials   # the shared count, no recipe twice
    ran_by = {t.user_attrs["worker"] for t in complete}
    assert len(ran_by) == 2, ran_by   # both did some of the work
    for name in ("a", "b"):   # each worker's report covers the whole study
        card = json.loads((tmp_path / name / "card.json").read_text())
        assert card["trials"] == trials and sorted(card["workers"]) == sorted(ran_by)
        assert sorted(t["recipe"] for t in json.loads((tmp_path / name / "candidates.json").read_text())) == sorted(recipes)

    report = subprocess.run([sys.executable, "-m", "edgewise.cli", "optimize", "--example", "breast-cancer",
                             "--study", postgres, "--report-only", "--out", str(tmp_path / "report")],
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    assert len(optuna.load_study(study_name=STUDY, storage=postgres).trials) == len(study.trials)   # ran none
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "shared by 2 workers" in markdown and all(w in markdown for w in ran_by)
    assert json.loads((tmp_path / "report" / "card.json").read_text())["trials"] == trials


def test_report_only_needs_a_study_with_trials(postgres, tmp_path, capsys):
    from edgewise.cli import main

    assert main(["optimize", "--report-only"]) == 2
    assert "--report-only reports a stored study: give --study URL too" in capsys.readouterr().err
    assert main(["optimize", "--example", "digits", "--report-only", "--study", postgres, "--out", str(tmp_path)]) == 2
    assert "no completed trials of digits to report" in capsys.readouterr().err
