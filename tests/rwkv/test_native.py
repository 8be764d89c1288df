import ctypes
import os
import platform
import subprocess

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from edgewise.errors import EdgewiseError
from edgewise.rwkv import RWKV, RWKVState, native
from edgewise.rwkv.quant import Int4Matrix, Int8Matrix
from tests.rwkv.conftest import cosine, relative_error

PROMPT = [1, 5, 77, 3, 42, 200, 7, 9]
# Every kernel path this machine runs; under tests/rwkv/test_sanitizers.py, the sanitized build it made.
PATHS = ["sanitized"] if os.environ.get("EDGEWISE_KERNELS_LIB") else native.runnable()


def kernels(path):
    return native.library() if path == "sanitized" else native.variant(path)


def _torch_step(model, tokens):
    """Logits and state after `tokens`, all on the torch path, the last token decoded alone."""
    with native.disabled():
        _, state = model.forward(tokens[:-1], use_cache=False)
        logits, after = model.forward(tokens[-1:], state, use_cache=False)
    return state, logits, after


@pytest.mark.parametrize("shape", ["small", "other"])   # "other": width 192, an odd number of int4 groups
@pytest.mark.parametrize("quant", [None, "int8", "int4"])
@pytest.mark.parametrize("path", PATHS)
def test_fused_step_matches_the_torch_path(checkpoints, shape, quant, path):
    model = RWKV.load(checkpoints[shape], quant=quant)
    before, expected, expected_state = _torch_step(model, PROMPT)
    decoder = native.Decoder(model, kernels(path))
    after = model.new_state()
    logits = decoder.step(PROMPT[-1], before, after)
    if quant is None:
        assert relative_error(logits, expected) < 1e-5
        for name in ("att_prev", "ffn_prev", "S"):
            assert torch.allclose(getattr(after, name), getattr(expected_state, name), atol=1e-5)
    else:  # activations differ around quantized matrices: bf16 in torch, fp32 or int8 (int4 x int8) in C
        assert cosine(logits, expected) > 0.999 and np.argmax(logits) == np.argmax(expected)
        for name in ("att_prev", "ffn_prev", "S"):
            assert cosine(getattr(after, name).numpy().ravel(), getattr(expected_state, name).numpy().ravel()) > 0.999


@pytest.mark.parametrize("shape", ["small", "other"])
@pytest.mark.parametrize("path", [p for p in PATHS if kernels(p).ew_features() & 2])   # AVX-512 VNNI builds
def test_both_int4_kernels_of_the_avx512_build_decode_as_torch_does(checkpoints, shape, path):
    """One stream's int4 rows take 512- or 256-bit vectors (Zen 4 runs the 512-bit ones as two halves),
    chosen by a measurement kept per CPU; each must decode as the torch path does, and the kernels'
    name says which one runs."""
    lib = kernels(path)
    before = native.kernels(lib).endswith("-int4ymm")
    model = RWKV.load(checkpoints[shape], quant="int4")
    state, expected, _ = _torch_step(model, PROMPT)
    decoder = native.Decoder(model, lib)
    try:
        assert lib.ew_choose_int4(-1) in (0, 1)   # the measurement itself
        for ymm in (0, 1):
            assert lib.ew_choose_int4(ymm) == ymm and native.kernels(lib).endswith("-int4ymm") == bool(ymm)
            logits = decoder.step(PROMPT[-1], state, model.new_state())
            assert cosine(logits, expected) > 0.999 and np.argmax(logits) == np.argmax(expected)
    finally:
        lib.ew_choose_int4(int(before))


@pytest.mark.parametrize("path", [p for p in PATHS if kernels(p).ew_features() & 2])
def test_the_int4_kernel_choice_is_kept_per_cpu_and_a_damaged_record_measured_again(tmp_path, monkeypatch, path):
    import json

    lib = kernels(path)
    before = native.kernels(lib).endswith("-int4ymm")
    monkeypatch.setenv("EDGEWISE_CACHE_DIR", str(tmp_path))
    try:
        native._choose_int4(lib, "a build")
        [record] = (tmp_path / "kernels").iterdir()
        measured = json.loads(record.read_text())["int4_ymm"]
        assert measured in (0, 1) and native.kernels(lib).endswith("-int4ymm") == bool(measured)
        record.write_text(json.dumps({"int4_ymm": 1 - measured}))   # what another process found: taken as it is
        native._choose_int4(lib, "a build")
        assert native.kernels(lib).endswith("-int4ymm") == (not measured)
        record.write_text("{not json")
        native._choose_int4(lib, "a build")
        assert json.loads(record.read_text())["int4_ymm"] == measured
    finally:
        lib.ew_choose_int4(int(before))


@pytest.mark.parametrize("quant", [None, "int8", "int4"])
@pytest.mark.parametrize("path", PATHS)
def test_batched_step_matches_each_stream_decoded_alone(checkpoints, quant, path):
    from edgewise.rwkv.state import StateBatch

    model = RWKV.load(checkpoints["other"], quant=quant)
    decoder = native.Decoder(model, kernels(path))
    # 11 streams: int8 blocks of 4, 4, 2 and 1 streams (8, 2 and 1 with VNNI); a block of 8 for the bf16
    # LoRA rows, and 3
    states = [model.forward(PROMPT[:n], use_cache=False)[1] for n in (2, 5, 8, 3, 6, 1, 4, 7, 2, 3, 5)]
    batch = StateBatch.stack(states)
    tokens = [4, 8, 15, 16, 23, 42, 1, 2, 3, 9, 11]
    logits = decoder.step_batch(tokens, batch)
    for b, (token, state) in enumerate(zip(tokens, states)):
        after = model.new_state()
        alone = decoder.step(token, state, after)
        if quant is None:   # the same arithmetic, fp32 throughout
            assert relative_error(logits[b], alone) < 1e-5
            assert torch.allclose(batch.get(b).S, after.S, atol=1e-5)
        else:               # int8 activations on SIMD paths: the batch is a GEMM
            assert cosine(logits[b], alone) > 0.999
            assert cosine(batch.get(b).S.numpy().ravel(), after.S.numpy().ravel()) > 0.999
    with pytest.raises(ValueError, match="shaped"):
        decoder.step_batch(tokens[:2], batch)


@pytest.mark.parametrize("path", PATHS)
def test_steps_from_other_threads_agree_with_the_main_thread(checkpoints, path):
    """A server decodes on its own threads, several at once; the kernels' own team barriers must hold
    there as on the main thread (same logits, no hang)."""
    import concurrent.futures

    from edgewise.rwkv.state import StateBatch

    model = RWKV.load(checkpoints["other"], quant="int8")
    decoder = native.Decoder(model, kernels(path))
    state = model.forward(PROMPT[:5], use_cache=False)[1]

    def run(_):
        batch = StateBatch.stack([state, state])
        for token in (3, 1, 4, 1, 5):
            logits = decoder.step_batch([token, token], batch)
        return logits

    expected = run(None)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        for logits in pool.map(run, range(6), timeout=120):
            assert np.array_equal(logits, expected)


def test_decode_writes_a_new_state_and_keeps_the_given_one(checkpoints):
    model = RWKV.load(checkpoints["small"], quant="int4")
    _, state = model.forward(PROMPT, use_cache=False)
    kept = state.copy()
    first, after = model.forward([13], state, use_cache=False)
    assert torch.equal(kept.S, state.S) and not torch.equal(after.S, state.S)
    again, _ = model.forward([13], state, use_cache=False)
    assert np.array_equal(first, again)


@pytest.mark.parametrize("cls", [Int8Matrix, Int4Matrix])
def test_few_row_products_match_the_dequantized_matrix(cls):
    weight = torch.randn(192, 320, generator=torch.Generator().manual_seed(0))
    matrix = cls(weight)
    dequantized = matrix.dequantized().float()
    assert (dequantized - weight).abs().max() < (0.01 if cls is Int8Matrix else 0.2) * weight.abs().max()
    x = torch.randn(3, 320, generator=torch.Generator().manual_seed(1))
    got, want = matrix(x), x @ dequantized.T
    assert relative_error(got.numpy(), want.numpy()) < 1e-2


def test_int4_nibble_order_round_trips():
    weight = torch.arange(8 * 128, dtype=torch.float32).reshape(8, 128) % 15 - 7   # -7..7 in every group: scale 1
    matrix = Int4Matrix(weight)
    assert torch.equal(matrix.scale, torch.ones(8, 2))
    assert torch.equal(matrix.unpacked().float() - 8, weight)
    assert torch.equal(matrix.dequantized().float(), weight)
    y = matrix(torch.eye(128)[:4])   # the C kernel reads the same order: columns 0..3 of W
    assert torch.equal(y, weight[:, :4].T)


def test_without_kernels_decode_falls_back_to_torch(checkpoints, monkeypatch, capsys):
    expected, _ = RWKV.load(checkpoints["other"], quant="int4").forward(PROMPT, use_cache=False)
    monkeypatch.setattr(native, "runnable", lambda: [])   # as where nothing was compiled at install
    monkeypatch.delenv("EDGEWISE_KERNELS_LIB", raising=False)
    native.forget()
    try:
        model = RWKV.load(checkpoints["other"], quant="int4")
        _, state = model.forward(PROMPT[:-1], use_cache=False)
        logits, _ = model.forward(PROMPT[-1:], state, use_cache=False)
        assert model.decoder() is None and native.kernels(native.library()) == "torch"
        assert "slower torch path" in capsys.readouterr().err
    finally:
        native.forget()
    assert cosine(logits, expected) > 0.999


def test_an_int4_file_of_the_old_layout_is_refused(tmp_path, checkpoints):
    path = RWKV.load(checkpoints["small"], quant="int4").save(tmp_path / "m.safetensors")
    tensors = load_file(str(path))
    tensors["edgewise-rwkv7"] = tensors["edgewise-rwkv7"][:7]   # written before the layout version
    torch.save(tensors, tmp_path / "old.pt")                   # and in torch's format, as then
    with pytest.raises(EdgewiseError, match="older edgewise.*convert the original checkpoint again"):
        RWKV.load(tmp_path / "old.pt")


def test_the_c_step_refuses_states_it_would_overrun(checkpoints):
    model = RWKV.load(checkpoints["small"])
    state = model.new_state()
    with pytest.raises(EdgewiseError, match="another model shape"):   # forward checks every tensor's shape
        model.forward([1], RWKVState(state.att_prev, torch.zeros(2, 1), state.S))
    decoder = model.decoder()
    with pytest.raises(ValueError, match="output state"):
        decoder.step(1, state, RWKVState(state.att_prev, state.ffn_prev, state.S.transpose(2, 3)))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        decoder.step(320, state, model.new_state())


OTHER_ARCH = "neon" if platform.machine() == "x86_64" else "avx2"


@pytest.mark.parametrize("value, message", [("avx9", "EDGEWISE_KERNELS=avx9: use one of avx512, avx2, neon, portable"),
                                            (OTHER_ARCH, "not built for this machine"),
                                            ("portable", None), ("torch", None)])
def test_edgewise_kernels_forces_a_path(monkeypatch, value, message):
    monkeypatch.setenv("EDGEWISE_KERNELS", value)
    monkeypatch.delenv("EDGEWISE_KERNELS_LIB", raising=False)
    native.forget()
    try:
        if message:
            with pytest.raises(EdgewiseError, match=message):
                native.library()
        else:
            portable = "c-x86-64-v2" if platform.machine() == "x86_64" else "c-portable"
            assert native.kernels(native.library()) == ("torch" if value == "torch" else portable)
    finally:
        native.forget()


def test_a_path_this_cpu_lacks_is_named(monkeypatch):
    monkeypatch.setenv("EDGEWISE_KERNELS", native.installed()[0])
    monkeypatch.delenv("EDGEWISE_KERNELS_LIB", raising=False)
    monkeypatch.setattr(native, "cpu_flags", lambda: frozenset())   # an older CPU
    native.forget()
    try:
        with pytest.raises(EdgewiseError, match="this CPU lacks .*; it runs"):
            native.library()
    finally:
        native.forget()


def _build(tmp_path, *flags):
    out = tmp_path / "lib.so"
    subprocess.run(["gcc", "-O1", "-fopenmp", "-fPIC", "-shared", *flags, str(native.SOURCE), "-o", str(out), "-lm"],
                   check=True)
    return out


@pytest.mark.skipif(subprocess.run(["which", "gcc"], capture_output=True).returncode, reason="needs gcc")
def test_a_stale_or_differently_laid_out_build_is_refused(tmp_path, monkeypatch):
    with pytest.raises(native.KernelError, match="built from another _decode.c; rebuild it"):
        native.load(_build(tmp_path, '-DEW_SOURCE_HASH="0123456789abcdef"'))
    layout = native.layout()
    monkeypatch.setattr(native, "layout", lambda: layout[:-1] + [layout[-1] + 8])   # a field moved
    with pytest.raises(native.KernelError, match="laid out unlike"):
        native.load(_build(tmp_path))


def _decode(decoder, token, state, out, logits):
    """ew_decode called directly, as a caller with a bug would, bypassing Decoder.step's checks."""
    lib = decoder.lib
    status = lib.ew_decode(ctypes.byref(decoder.model), token, ctypes.byref(native._state(state)),
                           ctypes.byref(out), logits.ctypes.data, logits.size, 1)
    return status, lib.ew_problem().decode()


@pytest.mark.parametrize("path", PATHS)
def test_the_c_step_checks_its_own_inputs(checkpoints, path):
    model = RWKV.load(checkpoints["small"], quant="int4")
    decoder = native.Decoder(model, kernels(path))
    state, out, logits = model.new_state(), model.new_state(), np.zeros(model.dims.vocab, np.float32)
    assert _decode(decoder, 1, state, native._state(out), logits)[0] == 0
    assert _decode(decoder, 320, state, native._state(out), logits) == (3, "token 320 is outside the vocabulary 0..319")
    assert _decode(decoder, -1, state, native._state(out), logits)[0] == 3
    small = native._state(out)
    small.S_size -= 1
    status, problem = _decode(decoder, 1, state, small, logits)
    assert status == 4 and "state buffer" in problem
    assert _decode(decoder, 1, state, native._state(out), logits[:-1])[0] == 4

    layer = decoder.model.layer[1]
    for field, value, problem in [("fk.rows", 64, "layer 1 fk: 64 x 128, expected 512 x 128"),
                                  ("fk.data_bytes", 100, "layer 1 fk: data smaller than its shape"),
                                  ("r.scale_count", 1, "layer 1 r: fewer scales than its shape"),
                                  ("r.kind", 7, "layer 1 r: unknown kind"),
                                  ("mix.size", 128, "layer 1 mix: vector smaller than the width"),
                                  ("v1.rows", 0, "layer 1 v1: no rows")]:
        part, name = field.split(".")
        kept = getattr(getattr(layer, part), name)
        setattr(getattr(layer, part), name, value)
        try:
            assert _decode(decoder, 1, state, native._state(out), logits) == (2, problem)
            with pytest.raises(ValueError, match=problem):
                decoder.step(1, state, out)
        finally:
            setattr(getattr(layer, part), name, kept)
    for field, value in [("heads", 3), ("ffn", 10**9), ("vocab", 10**6), ("head_size", 2048)]:
        kept = getattr(decoder.model, field)
        setattr(decoder.model, field, value)
        try:
            assert _decode(decoder, 1, state, native._state(out), logits)[0] == 2
        finally:
            setattr(decoder.model, field, kept)
    layer.r.scale += 2   # a float read from an odd address
    assert _decode(decoder, 1, state, native._state(out), logits) == (2, "layer 1 r: misaligned data")
    layer.r.scale -= 2
    assert _decode(decoder, 1, state, native._state(out), logits)[0] == 0   # all restored: it runs again


@pytest.mark.parametrize("path", PATHS)
def test_the_c_matmul_checks_its_buffers(path):
    lib = kernels(path)
    weight, keep = torch.randn(8, 64), []
    matrix = native.dense(weight, keep)
    x, y = torch.randn(3, 64), torch.empty(3, 8)
    assert lib.ew_matmul(ctypes.byref(matrix), x.data_ptr(), x.numel(), 3, y.data_ptr(), y.numel(), 1) == 0
    assert torch.allclose(y, x @ weight.T, atol=1e-5)
    assert lib.ew_matmul(ctypes.byref(matrix), x.data_ptr(), x.numel() - 1, 3, y.data_ptr(), y.numel(), 1) == 4
    assert lib.ew_matmul(ctypes.byref(matrix), x.data_ptr(), x.numel(), 3, y.data_ptr(), 23, 1) == 4
    matrix.kind = native.INT4   # 8 x 64 int4 needs 256 bytes and 8 scales: no scales given
    assert lib.ew_matmul(ctypes.byref(matrix), x.data_ptr(), x.numel(), 3, y.data_ptr(), y.numel(), 1) == 2
    assert "fewer scales" in lib.ew_problem().decode()


@pytest.mark.parametrize("quant", ["int8", "int4"])
@pytest.mark.parametrize("gemm", ["int8", "fp32", "bf16"])
def test_prefill_in_every_gemm_matches_decoding_token_by_token(checkpoints, monkeypatch, quant, gemm):
    from edgewise.rwkv import quant as quant_module
    monkeypatch.setattr(quant_module, "prefill_gemm", lambda kind="int8": (gemm, "forced by the test"))
    monkeypatch.setattr(quant_module, "TILE", 96)   # several tiles, the last one short
    model = RWKV.load(checkpoints["other"], quant=quant)
    tokens = list(range(1, 40))   # more than DEQUANTIZE_ROWS: the GEMM path
    prefilled = model.logits_all(tokens)
    stepwise = model.logits_all(tokens, stepwise=True)
    assert cosine(prefilled[-1], stepwise[-1]) > 0.999 and np.argmax(prefilled[-1]) == np.argmax(stepwise[-1])


@pytest.mark.parametrize("path", PATHS)
def test_the_c_wkv_recurrence_matches_torch_and_checks_its_buffers(path):
    from edgewise.rwkv import runtime
    g = torch.Generator().manual_seed(0)
    T, H, N = 37, 3, 64
    r, k, v, kk, a = (torch.randn(T, H * N, generator=g) for _ in range(5))
    w = torch.rand(T, H * N, generator=g) * 0.5 + 0.5
    S = torch.randn(H, N, N, generator=g)
    expected_S = S.clone()
    with native.disabled():
        expected = runtime._wkv(expected_S, r, w, k, v, kk, a, H, N)
    got = native.wkv(kernels(path), S, r, w, k, v, kk, a)
    assert relative_error(got.numpy(), expected.numpy()) < 1e-5
    assert relative_error(S.numpy(), expected_S.numpy()) < 1e-5
    lib = kernels(path)
    y = torch.empty(T, H * N)
    status = lib.ew_wkv(T, H, N, S.data_ptr(), *(t.data_ptr() for t in (r, w, k, v, kk, a, y)), S.numel() - 1,
                        r.numel(), 1)
    assert status == 4 and "wkv: a buffer is smaller" in lib.ew_problem().decode()
    assert lib.ew_wkv(T + 1, H, N, S.data_ptr(), *(t.data_ptr() for t in (r, w, k, v, kk, a, y)), S.numel(),
                      r.numel(), 1) == 4


@pytest.mark.skipif("avx512" not in native.runnable() or not native.variant("avx512").ew_use_amx(1),
                    reason="AMX tiles: a Xeon from Sapphire Rapids on, with a kernel that grants them")
@pytest.mark.parametrize("kind", [Int8Matrix, Int4Matrix])
def test_amx_tiles_sum_the_integers_the_vnni_kernels_sum(kind):
    """Both multiply the same int8 activations by the same int8 rows (int4 ones: nibble - 8), span by
    span; only the order of float additions differs (VNNI's unsigned trick subtracts a large shift).
    37 tokens: two blocks of 16 and a part; 200 rows: 32 at a time and 8 left to VNNI; int4 192 inputs:
    a pair of groups and one alone. The decode batches (test_batched_step_...) take the same tiles."""
    lib = native.variant("avx512")
    g = torch.Generator().manual_seed(1)
    matrix = kind(torch.randn(200, 192, generator=g) * 0.1)
    view = native.describe(matrix, keep := [])
    x = torch.cat([torch.randn(20, 192, generator=g), torch.relu(torch.randn(17, 192, generator=g) * 3) ** 2])
    try:
        assert "-amx" in native.kernels(lib)
        amx = native.matmul(lib, view, x, int8_activations=True)
        lib.ew_use_amx(0)
        vnni = native.matmul(lib, view, x, int8_activations=True)
    finally:
        lib.ew_use_amx(os.environ.get("EDGEWISE_AMX", "1").strip() != "0")
    assert relative_error(amx.numpy(), vnni.numpy()) < 1e-5   # int8 against fp32 activations: ~1e-2


@pytest.mark.parametrize("kind", [Int8Matrix, Int4Matrix])
@pytest.mark.parametrize("path", PATHS)
def test_prefill_gemm_with_int8_activations_matches_the_dequantized_product(kind, path):
    lib = kernels(path)
    g = torch.Generator().manual_seed(0)
    matrix = kind(torch.randn(70, 192, generator=g) * 0.1)   # rows past a block of 32, an odd row, 3 groups
    view = native.describe(matrix, keep := [])
    weights = matrix.dequantized(slice(None), torch.float32)
    # relu^2-like activations too: heavy tails are why activations are quantized per group of 64
    for x in (torch.randn(11, 192, generator=g), torch.relu(torch.randn(9, 192, generator=g) * 3) ** 2):
        got = native.matmul(lib, view, x, int8_activations=True)   # 4-token blocks and the 1-token edge
        expected = x @ weights.T
        assert relative_error(got.numpy(), expected.numpy()) < 0.02
        assert cosine(got.numpy().ravel(), expected.numpy().ravel()) > 0.9995
    y = torch.empty(11, 70)
    assert lib.ew_gemm_q8(ctypes.byref(view), x.data_ptr(), x.numel(), 11, y.data_ptr(), y.numel(), 1) == 4
    assert lib.ew_gemm_q8(ctypes.byref(view), x.data_ptr(), x.numel(), 9, y.data_ptr(), 9 * 70 - 1, 1) == 4
    dense = native.dense(torch.randn(8, 64), keep)
    assert lib.ew_gemm_q8(ctypes.byref(dense), x.data_ptr(), x.numel(), 1, y.data_ptr(), y.numel(), 1) == 2
    assert "not int8 or int4" in lib.ew_problem().decode()


@pytest.mark.parametrize("kind", [Int8Matrix, Int4Matrix])
@pytest.mark.parametrize("path", PATHS)
def test_c_dequantization_is_torchs_and_checks_its_rows(kind, path):
    lib = kernels(path)
    matrix = kind(torch.randn(40, 128, generator=torch.Generator().manual_seed(1)))
    view = native.describe(matrix, [])
    assert torch.equal(native.dequantize(lib, view, range(5, 29)), matrix.dequantized(slice(5, 29), torch.float32))
    out = torch.empty(40, 128)
    assert lib.ew_dequantize(ctypes.byref(view), 30, 11, out.data_ptr(), out.numel(), 1) == 4   # past the last row
    assert lib.ew_dequantize(ctypes.byref(view), 0, 40, out.data_ptr(), out.numel() - 1, 1) == 4


@pytest.mark.parametrize("path", PATHS)
def test_int4_rows_in_blocks_and_the_rows_left_over_match_the_dequantized_product(path):
    g = torch.Generator().manual_seed(2)
    matrix = Int4Matrix(torch.randn(7, 192, generator=g))   # a block of 4 rows (AVX2, x86-64-v2), then 3 left over
    x = torch.randn(1, 192, generator=g)
    got = native.matmul(kernels(path), native.describe(matrix, []), x)
    expected = x @ matrix.dequantized(slice(None), torch.float32).T
    assert cosine(got.numpy().ravel(), expected.numpy().ravel()) > 0.999 and relative_error(got.numpy(), expected.numpy()) < 0.02


@pytest.mark.parametrize("path", PATHS)
def test_the_c_sampler_draws_the_tokens_numpy_draws(path):
    from edgewise.rwkv.sampling import Sampler, Sampling, _draw

    rng = np.random.default_rng(3)
    vocab, rows = 65536 + 100, 48   # a last block of 100: not a whole 256
    logits = (rng.standard_normal((rows, vocab)) * rng.uniform(0.3, 8, (rows, 1))).astype(np.float32)
    logits[5, 1234] = logits[5].max() + 1   # a greedy row with its maximum inside, and one at the end
    logits[6, -1] = logits[6].max() + 1
    temperature = np.array([0.0 if b in (5, 6) else rng.choice([0.3, 1.0, 1.7]) for b in range(rows)], np.float32)
    u = rng.random(rows)
    got = native.sample(kernels(path), logits, temperature, u)
    expected = [int(np.argmax(row)) if t == 0 else _draw(np.exp((row - row.max()) * np.float32(1 / t)), v)
                for row, t, v in zip(logits, temperature, u)]
    assert got.tolist() == expected and got[5] == 1234 and got[6] == vocab - 1

    # a server's step: rows whose samplers read the whole vocabulary go to C, the others stay in numpy
    from edgewise.rwkv.sampling import draw
    settings = [Sampling(temperature=1.0, top_p=1.0, seed=1), Sampling(top_p=0.5, seed=2),
                Sampling(temperature=0), Sampling(temperature=1.0, top_p=1.0, presence_penalty=0.5, seed=4)]
    alone = [Sampler(s, vocab)._here(row) for s, row in zip(settings, logits)]
    assert draw([Sampler(s, vocab) for s in settings], logits[:4]) == alone
    logits[2, 7] = np.nan
    assert native.sample(kernels(path), logits[:3], temperature[:3], u[:3]) is None
