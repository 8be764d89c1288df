import pytest
import torch

from edgewise.errors import EdgewiseError
from edgewise.rwkv import checkpoint


def test_dims_come_from_shapes(checkpoints):
    _, dims = checkpoint.load(checkpoints["small"])
    assert (dims.layers, dims.width, dims.heads, dims.head_size, dims.vocab, dims.ffn) == (2, 128, 2, 64, 320, 512)
    _, dims = checkpoint.load(checkpoints["other"])  # layer 0 without v0/v1/v2 dummies
    assert (dims.layers, dims.width, dims.heads, dims.vocab) == (3, 192, 3, 512)


def _edited(tmp_path, source, change):
    weights = torch.load(source, weights_only=True)
    change(weights)
    torch.save(weights, tmp_path / "edited.pth")
    return tmp_path / "edited.pth"


def test_other_versions_and_damage_are_named(tmp_path, checkpoints):
    def to_v6(w):
        for key in [k for k in w if k.endswith(("att.r_k", "att.k_a"))]:
            del w[key]
        w["blocks.0.att.time_maa_x"] = torch.zeros(1, 1, 128)

    cases = [(to_v6, "an RWKV x060 checkpoint; edgewise runs RWKV-7"),
             (lambda w: w.pop("blocks.1.att.key.weight"), "missing tensor blocks.1.att.key.weight"),
             (lambda w: w.__setitem__("blocks.0.ffn.value.weight", torch.zeros(128, 100)),
              "blocks.0.ffn.value.weight has shape [128, 100], expected [128, 512]"),
             (lambda w: (w.clear(), w.__setitem__("fc.weight", torch.zeros(2, 2))), "not an RWKV checkpoint"),
             (lambda w: w.__setitem__("blocks.foo.ln1.weight", torch.zeros(128)), "blocks.foo... have no layer number")]
    for change, message in cases:
        with pytest.raises(EdgewiseError, match=message.replace("[", r"\[").replace("]", r"\]")):
            checkpoint.load(_edited(tmp_path, checkpoints["small"], change))


def test_a_pickle_with_code_is_refused(tmp_path, monkeypatch):
    import os

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch PWNED",))

    monkeypatch.chdir(tmp_path)
    torch.save({"emb.weight": torch.zeros(2, 2), "x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(EdgewiseError, match="refused to unpickle"):
        checkpoint.load(tmp_path / "evil.pth")
    assert not (tmp_path / "PWNED").exists()


def test_safetensors_checkpoints_load(tmp_path, checkpoints):
    from safetensors.torch import save_file
    weights = torch.load(checkpoints["small"], weights_only=True)
    save_file(weights, str(tmp_path / "m.safetensors"))
    assert checkpoint.load(tmp_path / "m.safetensors")[1].layers == 2


def test_vectors_of_any_singleton_shape_and_layer_0_dummies_load(tmp_path, checkpoints):
    """Released files store vectors as [1, 1, C]; some carry v LoRA dummies in layer 0 that it never
    reads. Mixed forms load and run (found by tests/fuzzing.py: they failed in torch.stack)."""
    from edgewise.rwkv import RWKV

    def mixed(w):
        w["blocks.1.att.x_r"] = w["blocks.1.att.x_r"].reshape(1, 128)
        w["blocks.1.att.x_k"] = w["blocks.1.att.x_k"].reshape(1, 1, 128)
        w["blocks.0.att.v1"], w["blocks.0.att.v2"] = torch.zeros(128, 3), torch.zeros(3, 64)   # unused: any shape
        w["blocks.0.att.v0"] = torch.zeros(5)

    model = RWKV.load(_edited(tmp_path, checkpoints["small"], mixed))
    logits, _ = model.forward([1, 2, 3], use_cache=False)
    expected, _ = RWKV.load(checkpoints["small"]).forward([1, 2, 3], use_cache=False)
    assert abs(logits - expected).max() < 1e-4


def test_a_lora_of_rank_0_or_integer_vectors_are_named(tmp_path, checkpoints):
    cases = [(lambda w: (w.__setitem__("blocks.1.att.w1", torch.zeros(128, 0)),
                         w.__setitem__("blocks.1.att.w2", torch.zeros(0, 128))), "blocks.1.att.w1 has rank 0"),
             (lambda w: w.__setitem__("blocks.0.ln1.bias", torch.zeros(128, dtype=torch.int64)),
              "blocks.0.ln1.bias holds torch.int64, not floating point")]
    for change, message in cases:
        with pytest.raises(EdgewiseError, match=message):
            checkpoint.load(_edited(tmp_path, checkpoints["small"], change))
