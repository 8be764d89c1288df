import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from edgewise.errors import EdgewiseError
from edgewise.runtime import torch as torch_runtime
from tests.conftest import tiny_classifier


class _Payload:
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED",))


def test_state_dict_and_safetensors_load(tmp_path):
    model = tiny_classifier()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    for name in ("w.pt", "w.safetensors"):
        loaded = torch_runtime.load_state(tiny_classifier(), tmp_path / name)
        x = np.ones((2, 6), np.float32)
        assert np.allclose(torch_runtime.predict(loaded, x), torch_runtime.predict(model, x))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_with_code_is_refused_and_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"weight": torch.zeros(2), "payload": _Payload()}, tmp_path / "evil.pt")
    (tmp_path / "raw.pt").write_bytes(pickle.dumps(_Payload()))
    for name in ("evil.pt", "raw.pt"):
        with pytest.raises(EdgewiseError, match="refused to unpickle"):
            torch_runtime.load_weights(tmp_path / name)
    assert not (tmp_path / "PWNED").exists()


def test_whole_model_pickle_is_refused(tmp_path):
    torch.save(tiny_classifier(), tmp_path / "model.pt")
    with pytest.raises(EdgewiseError, match="refused to unpickle.*state_dict"):
        torch_runtime.load_weights(tmp_path / "model.pt")


def test_truncated_and_misfit_weights_are_named(tmp_path):
    torch.save(tiny_classifier().state_dict(), tmp_path / "w.pt")
    data = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(EdgewiseError, match="not a readable PyTorch weights file"):
        torch_runtime.load_weights(tmp_path / "cut.pt")
    with pytest.raises(EdgewiseError, match="do not fit the model"):
        torch_runtime.load_state(tiny_classifier(features=7), tmp_path / "w.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad}")
    with pytest.raises(EdgewiseError, match="not a valid safetensors file"):
        torch_runtime.load_weights(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("content", [b"root:x:0:0:root:/root:/bin/bash\n",   # a text file
                                     b"\x80\x02q\x00."])                     # a corrupt pickle
def test_a_file_that_is_no_weights_is_named(tmp_path, content):
    (tmp_path / "x.pth").write_bytes(content)
    with pytest.raises(EdgewiseError, match="not a readable PyTorch weights file"):
        torch_runtime.load_weights(tmp_path / "x.pth")


def test_a_zip_whose_end_record_spans_disks_is_named(tmp_path):
    import struct  # zipfile.is_zipfile raises (not returns False) on this end record: found by tests/fuzzing.py
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, 0, 2)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0, 0, 0, 0, 0)
    (tmp_path / "w.pt").write_bytes(b"\0" * 64 + locator + end)
    with pytest.raises(EdgewiseError, match="not a readable PyTorch weights file .zipfiles that span multiple disks"):
        torch_runtime.load_weights(tmp_path / "w.pt")
