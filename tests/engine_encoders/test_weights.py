"""Safe lazy checkpoint reading and strict loading: bad files and mismatched tensors fail naming file and keys."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from backend.scail2.errors import CheckpointError
from backend.scail2.loaders.weights import load_into, meta_init, open_state_dict


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)
        self.register_buffer("steps", torch.arange(5), persistent=False)


def _weights(**overrides):
    state = {
        "first.weight": torch.randn(3, 4),
        "first.bias": torch.randn(3),
        "norm.weight": torch.randn(3),
        "norm.bias": torch.randn(3),
    }
    state.update(overrides)
    return state


@pytest.mark.parametrize("container", ["plain", "module", "state_dict"])
def test_torch_file_opens_lazily_in_any_container(tmp_path, container):
    state = _weights()
    path = tmp_path / "model.pt"
    torch.save(state if container == "plain" else {container: state, "iteration": 7}, path)
    lazy = open_state_dict(path)
    assert set(lazy) == set(state)
    assert lazy["first.weight"].shape == (3, 4)
    torch.testing.assert_close(lazy.read("first.bias"), state["first.bias"])


def test_load_into_meta_model_casts_and_keeps_buffers(tmp_path):
    state = _weights()
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    with meta_init():
        model = TwoLayer()
    assert model.first.weight.is_meta and not model.steps.is_meta
    load_into(model, open_state_dict(path), dtype=torch.bfloat16, keep_fp32=lambda k: k.startswith("norm."))
    assert model.first.weight.dtype == torch.bfloat16
    assert model.norm.weight.dtype == torch.float32
    torch.testing.assert_close(model.norm.bias, state["norm.bias"])
    torch.testing.assert_close(model.first.weight.float(), state["first.weight"].bfloat16().float())
    assert torch.equal(model.steps, torch.arange(5))
    assert not any(p.is_meta for p in model.parameters())


def test_load_into_reads_each_tensor_once_and_never_keeps_file_views(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"module": _weights()}, path)
    lazy = open_state_dict(path)
    reads = []
    counted = lazy.convert(
        lambda source: {k: r.derive(r.shape, lambda t, k=k: reads.append(k) or t) for k, r in source.items()}
    )
    with meta_init():
        model = TwoLayer()
    load_into(model, counted)
    assert sorted(reads) == sorted(lazy)
    source_tensor = lazy.read("first.weight")
    assert model.first.weight.data_ptr() != source_tensor.data_ptr()


def test_strict_loading_names_missing_unexpected_and_misshaped_keys(tmp_path):
    state = _weights(**{"first.weight": torch.randn(3, 5), "extra.weight": torch.randn(2)})
    del state["norm.bias"]
    path = tmp_path / "wrong.safetensors"
    save_file(state, str(path))
    with meta_init():
        model = TwoLayer()
    with pytest.raises(CheckpointError) as error:
        load_into(model, open_state_dict(path))
    message = str(error.value)
    assert str(path) in message
    assert "Missing 1 tensors: norm.bias" in message
    assert "Unexpected 1 tensors: extra.weight" in message
    assert "first.weight: expected [3, 4], found [3, 5]" in message


def test_errors_after_key_conversion_name_the_file_key(tmp_path):
    path = tmp_path / "renamed.safetensors"
    save_file({"old.first.weight": torch.randn(3, 4)}, str(path))
    lazy = open_state_dict(path).rename(lambda k: k.replace("old.", "new."))
    with meta_init():
        model = TwoLayer()
    with pytest.raises(CheckpointError, match=r"new\.first\.weight \(file key old\.first\.weight\)"):
        load_into(model, lazy)


def _bad_files(tmp_path):
    good_pt = tmp_path / "good.pt"
    torch.save({"module": _weights()}, good_pt)
    good_st = tmp_path / "good.safetensors"
    save_file(_weights(), str(good_st))
    files = {}
    for name, source in (("half.pt", good_pt), ("half.safetensors", good_st)):
        data = source.read_bytes()
        files[name] = data[: len(data) // 2]
    files["empty.pth"] = b""
    files["empty.safetensors"] = b""
    files["notes.pth"] = b"this is a text file renamed to .pth\n"
    files["notes.safetensors"] = b"this is a text file renamed to .safetensors\n"
    paths = []
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        paths.append(path)
    return paths


def test_truncated_empty_and_foreign_files_fail_naming_the_file(tmp_path):
    for path in _bad_files(tmp_path):
        with pytest.raises(CheckpointError) as error:
            lazy = open_state_dict(path)
            with meta_init():
                model = TwoLayer()
            load_into(model, lazy)  # a file that opens must still fail when its bytes are read
        assert str(path) in str(error.value), path


def test_safetensors_cut_inside_the_data_fails_naming_the_file(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file(_weights(), str(path))
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        open_state_dict(path)


class Payload:
    """Stands for any class a malicious or foreign pickle could name."""

    def __init__(self):
        self.ran = True


def test_arbitrary_python_objects_are_never_unpickled(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"module": _weights(), "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match=r"refused to load.*Payload"):
        open_state_dict(path)


def test_training_checkpoint_extras_are_tolerated(tmp_path):
    """SAT-style saves carry the run's arguments and RNG states next to "module"; those plain data load."""
    path = tmp_path / "sat.pt"
    extras = {"args": argparse.Namespace(lr=1.0, dims=[1, 2]), "np_rng_state": np.random.get_state()}
    torch.save({"iteration": 3, "module": _weights(), **extras}, path)
    assert set(open_state_dict(path)) == set(_weights())


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        open_state_dict(tmp_path / "weights.onnx")
    with pytest.raises(CheckpointError, match="file not found"):
        open_state_dict(tmp_path / "absent.pt")
    (tmp_path / "nothing.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty \(0 bytes\)"):
        open_state_dict(tmp_path / "nothing.pt")


def test_no_tensors_in_file(tmp_path):
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(CheckpointError, match="contains no tensors"):
        open_state_dict(path)


def test_sharded_safetensors_index(tmp_path):
    state = _weights()
    save_file({k: state[k] for k in ("first.weight", "first.bias")}, str(tmp_path / "m-1.safetensors"))
    save_file({k: state[k] for k in ("norm.weight", "norm.bias")}, str(tmp_path / "m-2.safetensors"))
    weight_map = {"first.weight": "m-1.safetensors", "first.bias": "m-1.safetensors",
                  "norm.weight": "m-2.safetensors", "norm.bias": "m-2.safetensors"}  # fmt: skip
    import json

    index = tmp_path / "m.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    assert set(open_state_dict(index)) == set(state)
    (tmp_path / "m-2.safetensors").unlink()
    with pytest.raises(CheckpointError, match="m-2.safetensors"):
        open_state_dict(index)
