"""The real server in a subprocess, driven by the official `openai` client and httpx."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import httpx
import numpy as np
import onnxruntime as ort
import openai
import pytest

from tests.serve.conftest import KEY, Server, encoder_reference

PROMPT = "The quick brown fox"


def test_models_lists_every_entry_and_what_is_resident(server):
    listing = server.http.get("/v1/models").json()
    ids = {m["id"]: m for m in listing["data"]}
    assert set(ids) == {"chat", "other", "digits", "encoder"}   # notes.txt is not a model
    assert {ids["chat"]["kind"], ids["encoder"]["kind"], ids["digits"]["kind"]} == {"rwkv", "embedding", "onnx"}
    assert listing["budget_bytes"] == 2 * 10**9
    server.openai().completions.create(model="chat", prompt="a", max_tokens=1)
    chat = next(m for m in server.http.get("/v1/models").json()["data"] if m["id"] == "chat")
    assert chat["resident"] and chat["bytes"] >= 60 * 2**20 and not chat["pinned"]   # fp32 emb + head: 64 MiB
    assert [m.id for m in server.openai().models.list()] == list(ids)


def test_completion_and_chat_through_the_openai_client(server):
    client = server.openai()
    done = client.completions.create(model="chat", prompt=PROMPT, max_tokens=12, temperature=0, seed=1)
    assert done.choices[0].finish_reason in ("length", "stop") and done.usage.completion_tokens <= 12
    assert done.usage.prompt_tokens == 4 and done.usage.total_tokens == 4 + done.usage.completion_tokens
    extra = done.usage.model_extra
    assert extra["energy_estimated"] is True and extra["energy_j"] > 0
    again = client.completions.create(model="chat", prompt=PROMPT, max_tokens=12, temperature=0, seed=1)
    assert again.choices[0].text == done.choices[0].text and again.usage.model_extra["cold_load"] is False

    pieces, usage = [], None
    for chunk in client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=10, stream=True, stream_options={"include_usage": True},
                                                temperature=0.8, seed=3):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        else:
            usage = chunk.usage
    assert usage is not None and usage.completion_tokens <= 10 and "".join(pieces)
    whole = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=10, temperature=0.8, seed=3)
    assert whole.choices[0].message.content == "".join(pieces)   # the same seed, streamed or not


def test_text_that_is_not_utf8_is_a_400_for_that_request_only(server):
    bad = server.http.post("/v1/completions", content=b'{"model": "chat", "prompt": "a \\ud800 b", "max_tokens": 2}',
                           headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and "UTF-8" in bad.json()["error"]["message"]
    assert server.openai().completions.create(model="chat", prompt="fine", max_tokens=2).usage.completion_tokens >= 1


def test_a_long_answer_is_whole_however_long_it_takes(server):
    done = server.openai().completions.create(model="chat", prompt="a", max_tokens=1500, temperature=1, seed=2)
    assert done.usage.completion_tokens == 1500 or done.choices[0].finish_reason == "stop"
    assert done.choices[0].finish_reason == "length" and len(done.choices[0].text) > 500


def test_streamed_tokens_are_the_tokens_edgewise_rwkv_generate_gives_with_the_same_seed(server, models_dir):
    flags = dict(temperature=0.9, top_p=0.8, seed=11)
    cli = subprocess.run([sys.executable, "-m", "edgewise.cli", "rwkv", "generate", str(models_dir / "chat.pth"),
                          "--prompt", PROMPT, "--max-tokens", "24", "--temperature", "0.9", "--top-p", "0.8",
                          "--seed", "11"], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    streamed = "".join(c.choices[0].text for c in server.openai().completions.create(
        model="chat", prompt=PROMPT, max_tokens=24, stream=True, **flags))
    assert cli.stdout == PROMPT + streamed + "\n"


def test_a_follow_up_turn_pays_only_for_its_new_tokens(server):
    client = server.openai()
    first = [{"role": "user", "content": "Tell me about foxes and the forests they live in."}]
    answer = client.chat.completions.create(model="other", messages=first, max_tokens=16, temperature=0, seed=0)
    follow = first + [{"role": "assistant", "content": answer.choices[0].message.content},
                      {"role": "user", "content": "And rivers?"}]
    second = client.chat.completions.create(model="other", messages=follow, max_tokens=4, temperature=0)
    cached = second.usage.prompt_tokens_details.cached_tokens
    # everything up to the first answer came from the cache: its prompt and the tokens it generated
    assert cached >= answer.usage.prompt_tokens + answer.usage.completion_tokens - 1
    # new: the last answer token (sampled, never fed) and "\n\nUser: And rivers?\n\nAssistant:"
    assert second.usage.prompt_tokens - cached <= 12


def test_embeddings_match_onnx_runtime_in_process(server, models_dir):
    texts = ["a fox in the forest", "rivers run to the sea and further"]
    got = server.openai().embeddings.create(model="encoder", input=texts)
    vectors = np.array([d.embedding for d in got.data], np.float32)
    expected, tokens = encoder_reference(models_dir, texts)
    assert np.allclose(vectors, expected, atol=1e-5) and got.usage.prompt_tokens == tokens


def test_kserve_v2_infer_metadata_and_health(server, models_dir):
    assert httpx.get(server.url + "/v2/health/ready").json() == {"ready": True}   # public
    meta = server.http.get("/v2/models/digits").json()
    assert meta["inputs"][0]["datatype"] == "FP32" and meta["inputs"][0]["shape"][1:] == [1, 8, 8]
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    name = meta["inputs"][0]["name"]
    answer = server.http.post("/v2/models/digits/infer", json={"id": "r1", "inputs": [
        {"name": name, "shape": [3, 1, 8, 8], "datatype": "FP32", "data": x.ravel().tolist()}]}).json()
    session = ort.InferenceSession(str(models_dir / "digits" / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(None, {name: x})[0]
    out = answer["outputs"][0]
    assert answer["id"] == "r1" and out["shape"] == [3, 10] and out["datatype"] == "FP32"
    assert np.allclose(np.array(out["data"]).reshape(3, 10), expected, atol=1e-5)
    bad = server.http.post("/v2/models/digits/infer", json={"inputs": [
        {"name": name, "shape": [3, 1, 8, 8], "datatype": "FP32", "data": [1.0, 2.0]}]})
    assert bad.status_code == 400 and "does not fill shape" in bad.json()["error"]
    # bodies the raw-ASGI route leaves to FastAPI: one that needs pydantic's coercion answers the same,
    # one that breaks the schema gets its reason
    coerced = server.http.post("/v2/models/digits/infer", json={"id": "r1", "inputs": [
        {"name": name, "shape": ["3", "1", "8", "8"], "datatype": "FP32", "data": x.ravel().tolist()}]})
    assert coerced.status_code == 200 and coerced.json() == answer
    empty = server.http.post("/v2/models/digits/infer", json={"inputs": []})
    assert empty.status_code == 400 and "inputs" in empty.json()["error"]


def test_requests_without_a_key_get_401_and_health_stays_public(server):
    assert httpx.get(server.url + "/v1/models").status_code == 401
    wrong = httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0).models.list()
    assert httpx.get(server.url + "/health").status_code == 200
    assert httpx.get(server.url + "/v2/health/live").status_code == 200


def test_an_oversized_body_gets_413_however_it_is_sent(server):
    big = {"model": "chat", "prompt": "x" * (1 << 20)}
    answer = server.http.post("/v1/completions", json=big)
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "body_too_large"

    def chunks():   # no Content-Length: the limit holds on what arrives
        for _ in range(20):
            yield b"x" * 65536
    chunked = server.http.post("/v1/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413


@pytest.mark.parametrize("path", ["/v2/models/nope/infer", "/v2/models/..%2F..%2Fetc%2Fpasswd/infer",
                                  "/v2/models/%2E%2E/infer"])
def test_unknown_or_escaping_model_ids_get_404(server, path):
    answer = server.http.post(path, json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]})
    assert answer.status_code == 404 and "error" in answer.json()
    with pytest.raises(openai.NotFoundError):
        server.openai().completions.create(model="../chat", prompt="a", max_tokens=1)
    with pytest.raises(openai.NotFoundError):
        server.openai().embeddings.create(model="nope", input="a")


def test_wrong_kind_and_bad_values_are_400_with_the_reason(server):
    client = server.openai()
    with pytest.raises(openai.BadRequestError, match="text encoder"):
        client.completions.create(model="encoder", prompt="a", max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="chat", prompt="a", temperature=-1)
    capped = client.completions.create(model="chat", prompt="a", max_tokens=10**9, temperature=0,
                                       extra_body={"stop": ["\n"]})
    assert capped.usage.completion_tokens <= 4096


def test_a_full_queue_answers_503_with_retry_after(models_dir):
    server = Server(models_dir, "--max-queue", "1")
    try:
        long = threading.Thread(target=lambda: server.http.post("/v1/completions", json={
            "model": "chat", "prompt": "a", "max_tokens": 400, "temperature": 1}))
        long.start()
        for _ in range(100):   # until the first request is in its queue
            if server.metric("edgewise_queue_depth", model="chat") >= 1:
                break
            threading.Event().wait(0.05)
        busy = server.http.post("/v1/completions", json={"model": "chat", "prompt": "b", "max_tokens": 1})
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
        assert busy.json()["error"]["code"] == "queue_full"
        long.join()
    finally:
        server.stop()


def test_a_client_that_goes_away_stops_its_generation(server):
    with server.http.stream("POST", "/v1/completions", json={"model": "chat", "prompt": "a", "max_tokens": 3000,
                                                            "stream": True, "temperature": 1}) as answer:
        lines = answer.iter_lines()
        got = [next(lines) for _ in range(6)]
    assert any(line.startswith("data: ") for line in got)
    for _ in range(100):   # the batcher notices at the next token and the stream leaves
        if server.metric("edgewise_queue_depth", model="chat") == 0:
            break
        threading.Event().wait(0.05)
    assert server.metric("edgewise_queue_depth", model="chat") == 0
    generated = server.metric("edgewise_tokens_total", model="chat", kind="completion")
    threading.Event().wait(0.5)
    assert server.metric("edgewise_tokens_total", model="chat", kind="completion") == generated


def test_metrics_count_requests_tokens_and_resident_bytes(server):
    server.openai().completions.create(model="chat", prompt="a", max_tokens=2)
    assert server.metric("edgewise_requests_total", model="chat", route="completions", status="200") >= 1
    assert server.metric("edgewise_tokens_total", model="chat", kind="completion") >= 2
    resident = server.metric("edgewise_resident_bytes")
    listed = server.http.get("/v1/models").json()
    assert resident == listed["resident_bytes"] == sum(m["bytes"] or 0 for m in listed["data"])
    assert 0 < resident <= server.metric("edgewise_budget_bytes")
    assert server.metric("edgewise_model_loads_total", model="chat") == 1


def test_sigterm_finishes_the_request_in_flight_and_exits_0(models_dir):
    server = Server(models_dir, "--grace", "20s")
    result = {}
    request = threading.Thread(target=lambda: result.update(server.http.post("/v1/completions", json={
        "model": "chat", "prompt": "a", "max_tokens": 60, "temperature": 1}).json()))
    request.start()
    for _ in range(200):
        if server.metric("edgewise_queue_depth", model="chat") >= 1:
            break
        threading.Event().wait(0.05)
    assert server.stop(signal.SIGTERM) == 0
    request.join()
    assert result["usage"]["completion_tokens"] >= 1 and result["choices"][0]["finish_reason"] in ("length", "stop")
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/health")


def test_no_auth_is_refused_off_loopback_and_a_key_is_made_when_none_is_given(models_dir):
    off = subprocess.run([sys.executable, "-m", "edgewise.cli", "serve", str(models_dir), "--no-auth", "--host",
                          "0.0.0.0"], capture_output=True, text=True, timeout=60)
    assert off.returncode == 2 and "only allowed on a loopback address" in off.stderr and "Traceback" not in off.stderr
    made = Server(models_dir, key=None)   # --no-auth on loopback: open
    try:
        assert made.http.get("/v1/models").status_code == 200
    finally:
        made.stop()


@pytest.mark.parametrize("flags, message", [
    (["--memory-budget", "lots"], "--memory-budget 'lots': give a size"),
    (["--keep-alive", "soon"], "--keep-alive 'soon': give a duration"),
    (["--pin", "ghost"], "--pin ghost: no such model"),
])
def test_bad_flags_end_in_one_line_and_exit_2(models_dir, flags, message):
    run = subprocess.run([sys.executable, "-m", "edgewise.cli", "serve", str(models_dir), "--api-key", KEY, *flags],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr


def test_a_broken_model_file_is_a_500_naming_the_model_not_its_path_and_the_rest_still_serve(models_dir, tmp_path):
    folder = tmp_path / "models"
    (folder / "broken").mkdir(parents=True)
    (folder / "broken" / "model.onnx").write_bytes((models_dir / "digits" / "model.onnx").read_bytes()[:500])
    (folder / "cut.pth").write_bytes((models_dir / "chat.pth").read_bytes()[:4000])
    (folder / "digits").symlink_to(models_dir / "digits")
    server = Server(folder)
    try:
        for answer in (server.http.post("/v2/models/broken/infer", json={"inputs": [
                           {"name": "input", "shape": [1], "datatype": "FP32", "data": [1]}]}),
                       server.http.post("/v1/completions", json={"model": "cut", "prompt": "a", "max_tokens": 1})):
            assert answer.status_code == 500 and "cannot be loaded" in answer.text and str(folder) not in answer.text
        meta = server.http.get("/v2/models/digits")
        assert meta.status_code == 200
    finally:
        server.stop()


def test_a_missing_models_folder_is_named(tmp_path):
    run = subprocess.run([sys.executable, "-m", "edgewise.cli", "serve", str(tmp_path / "none"), "--api-key", KEY],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "no such folder" in run.stderr


@pytest.mark.parametrize("argv, message", [
    (["{missing}"], "no such folder"),
    (["{empty}"], "nothing to serve"),
    (["{models}", "--memory-budget", "12XB"], "--memory-budget '12XB'"),
])
def test_bad_input_is_one_line_with_no_key_made_up_first(tmp_path, capsys, argv, message):
    """Without --api-key the server makes up a key and prints it, but only once every input checks out."""
    from edgewise.cli import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "models" / "m").mkdir(parents=True)
    (tmp_path / "models" / "m" / "model.onnx").write_bytes(b"")   # a servable entry, as far as listing goes
    folders = {"missing": tmp_path / "none", "empty": tmp_path / "empty", "models": tmp_path / "models"}
    assert main(["serve", *[a.format(**folders) for a in argv]]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "key" not in err, err


def test_the_openapi_schema_names_every_route(server):
    schema = httpx.get(server.url + "/openapi.json").json()
    assert {"/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/models",
            "/v2/models/{model_id}/infer"} <= set(schema["paths"])
    assert json.dumps(schema)   # plain JSON


def test_an_event_stream_pings_while_quiet_and_a_hang_up_closes_its_generator():
    import asyncio

    from edgewise.serve.app import EventStream

    closed = []

    async def chunks(wait):
        try:
            yield "data: 1\r\n\r\n"
            await asyncio.sleep(wait)   # a long prompt, or a client gone
            yield "data: 2\r\n\r\n"
        finally:
            closed.append(wait)

    async def run(wait, hang_up_after):
        sent, started = [], asyncio.get_running_loop().time()

        async def receive():
            await asyncio.sleep(hang_up_after)
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)
        await EventStream(chunks(wait), ping_s=0.1)({"type": "http"}, receive, send)
        return sent, asyncio.get_running_loop().time() - started

    sent, _ = asyncio.run(run(0.35, 60))
    bodies = [m["body"] for m in sent[1:]]
    assert sent[0]["status"] == 200 and dict(sent[0]["headers"])[b"content-type"].startswith(b"text/event-stream")
    assert b"content-length" not in dict(sent[0]["headers"])
    assert bodies[0] == b"data: 1\r\n\r\n" and bodies[-2:] == [b"data: 2\r\n\r\n", b""]
    assert 2 <= bodies.count(b": ping\r\n\r\n") <= 4 and closed == [0.35]
    sent, seconds = asyncio.run(run(60, 0.2))   # the client leaves long before the generator would end
    assert seconds < 5 and closed == [0.35, 60] and all(m.get("more_body", True) for m in sent[1:])
