"""`edgewise serve --ray`: the same API on a local Ray cluster, two replicas routed by model."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.ports import free_port
from tests.serve.conftest import Server, encoder_reference
from tests.serve.test_app import PROMPT

pytest.importorskip("ray.serve", reason="Ray Serve is an optional extra: pip install 'edgewise[ray]'")

BUDGET = 300_000_000


@pytest.fixture(scope="module")
def on_ray(models_dir):
    s = Server(models_dir, "--ray", "--replicas", "2", "--memory-budget", str(BUDGET), "--grace", "5s",
               startup_s=180)
    yield s
    assert s.stop() == 0


def test_serve_joins_an_existing_cluster_and_leaves_it_running(models_dir, tmp_path):
    """`--ray-address`: a cluster someone else started (`ray start --head`, with token authentication,
    as Ray >= 2.59 starts one once a token exists); on SIGTERM edgewise takes down its own application
    only. Runs before the module's local cluster starts: one Ray at a time."""
    import os
    import secrets


    ray = [str(Path(sys.executable).parent / "ray")]
    port = free_port()
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    started = subprocess.run([*ray, "start", "--head", "--port", str(port), "--num-cpus", "2",
                              "--include-dashboard=false", "--disable-usage-stats"],
                             capture_output=True, text=True, timeout=120, env={**os.environ, **token})
    assert started.returncode == 0, started.stderr
    address = f"127.0.0.1:{port}"
    try:
        no_token = subprocess.run([sys.executable, "-m", "edgewise.cli", "serve", str(models_dir), "--no-auth",
                                   "--ray-address", address], capture_output=True, text=True, timeout=180,
                                  env={k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")})
        assert no_token.returncode == 2 and "set RAY_AUTH_MODE=token" in no_token.stderr, no_token.stderr
        assert no_token.stderr.count("\n") == 1 and "Traceback" not in no_token.stderr

        s = Server(models_dir, "--ray-address", address, "--replicas", "1", "--memory-budget", str(BUDGET),
                   "--grace", "5s", startup_s=180, env=token)
        try:
            text = s.openai().completions.create(model="chat", prompt=PROMPT, max_tokens=4,
                                                 temperature=0).choices[0].text
            assert text and _replicas(s, 1)
        finally:
            assert s.stop() == 0
        status = subprocess.run([*ray, "status", "--address", address], capture_output=True, text=True,
                                timeout=60, env={**os.environ, **token})
        assert status.returncode == 0, status.stderr   # the cluster is still up
    finally:
        subprocess.run([*ray, "stop", "--force"], capture_output=True, timeout=120)


def test_a_port_taken_after_the_check_is_one_line_and_exit_2(models_dir):
    """Free when edgewise checks it, taken before Ray Serve's proxy binds it (by another process, or by one
    of Ray's own, which bind ports the kernel hands out): one line naming the port, not Ray's traceback."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = ("import sys, edgewise.serve as s; from edgewise.cli import main; "
                "s._check_port = lambda host, port: None; sys.exit(main(sys.argv[1:]))")
        run = subprocess.run([sys.executable, "-c", code, "serve", str(models_dir), "--ray", "--no-auth",
                              "--port", str(port)], capture_output=True, text=True, timeout=180)
    assert run.returncode == 2, run.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in run.stderr and "another --port" in run.stderr, run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr


def _replicas(server, at_least: int = 0) -> dict:
    """The replicas' own reports, once they count `at_least` requests (a report follows its response)."""
    deadline = time.monotonic() + 10
    while True:
        replicas = server.http.get("/ray/replicas").json()["replicas"]
        if sum(sum(r["requests"].values()) for r in replicas.values()) >= at_least or time.monotonic() > deadline:
            return replicas
        time.sleep(0.1)


def test_completions_and_embeddings_through_ray_are_the_single_process_ones(on_ray, models_dir):
    cli = subprocess.run([sys.executable, "-m", "edgewise.cli", "rwkv", "generate", str(models_dir / "chat.pth"),
                          "--prompt", PROMPT, "--max-tokens", "12", "--temperature", "0.9", "--top-p", "0.8",
                          "--seed", "11"], capture_output=True, text=True, timeout=120)
    client = on_ray.openai()
    flags = dict(max_tokens=12, temperature=0.9, top_p=0.8, seed=11)
    whole = client.completions.create(model="chat", prompt=PROMPT, **flags).choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(model="chat", prompt=PROMPT,
                                                                             stream=True, **flags))
    assert cli.stdout == PROMPT + whole + "\n" and streamed == whole
    texts = ["a fox in the forest", "rivers run to the sea"]
    got = np.array([d.embedding for d in client.embeddings.create(model="encoder", input=texts).data], np.float32)
    assert np.allclose(got, encoder_reference(models_dir, texts)[0], atol=1e-5)
    assert on_ray.http.post("/v1/completions", json={"model": "chat", "prompt": "a"},
                            headers={"Authorization": "Bearer wrong"}).status_code == 401   # the replicas' auth


def test_requests_land_on_replicas_that_hold_their_model_and_budgets_hold(on_ray):
    client = on_ray.openai()
    models = ("chat", "other", "encoder")

    def one(model):
        if model == "encoder":
            client.embeddings.create(model=model, input="warm")
        else:
            client.completions.create(model=model, prompt="Hi", max_tokens=2, temperature=0)
    for model in models:   # warm-up: each model loaded somewhere, and reported
        one(model)
    before = _replicas(on_ray)
    for _ in range(10):
        for model in models:
            one(model)
    after = _replicas(on_ray, sum(sum(r["requests"].values()) for r in before.values()) + 10 * len(models))
    assert len(after) == 2, after   # both replicas ran
    for model in models:
        requests = sum(r["requests"].get(model, 0) for r in after.values()) - sum(
            r["requests"].get(model, 0) for r in before.values())
        hits = sum(r["hits"].get(model, 0) for r in after.values()) - sum(
            r["hits"].get(model, 0) for r in before.values())
        assert requests == 10 and hits / requests >= 0.9, (model, hits, requests, after)
    for replica in after.values():
        assert 0 < replica["peak_resident_bytes"] <= replica["budget_bytes"] == BUDGET


@pytest.mark.parametrize("argv, message", [
    (["serve", "/nonexistent-models", "--ray", "--no-auth"], "/nonexistent-models: no such folder"),
    (["serve", "{models}", "--ray-address", "127.0.0.1:1", "--no-auth"], "--ray-address 127.0.0.1:1: nothing answers"),
])
def test_bad_ray_input_is_one_line_before_any_cluster_starts(models_dir, capsys, argv, message):
    from edgewise.cli import main

    assert main([a.format(models=models_dir) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
