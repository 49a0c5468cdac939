"""Model identity: the weights fingerprint hashes every tensor, is stored beside the model, and keeps an oracle from
mixing two models."""

import json
import os
import struct

import pytest
from safetensors.torch import load_file

from m3.data.granularity import write_split
from m3.loading import load_m3_model
from oracle_data import OracleMismatchError, build_oracle, load_oracle, read_manifest
from oracle_data.store import model_fingerprint, shard_file, update_manifest

from .damage import copy_tiny_m3, flip_middle_weight


@pytest.fixture(scope="module")
def split_2(tmp_path_factory):
    """Two granularity images, a question per family each (one shard per image)."""
    return write_split(tmp_path_factory.mktemp("data"), "test", num_images=2, seed=0)


def test_a_weight_changed_mid_file_is_refused_when_a_killed_build_resumes(tmp_path, split_2):
    """The fault campaign's case: rows of two models in one oracle marked complete. The tiny model's file is
    2.4 MB, so its middle is outside the first and last MiB that the old fingerprint hashed."""
    model = copy_tiny_m3(tmp_path / "model")
    out = tmp_path / "oracle"
    settings = dict(shard_size=4, batch_size=4, max_new_tokens=2, progress=False)
    build_oracle(model, split_2, out, **settings)
    (out / shard_file(1)).unlink()  # as if killed after its first shard
    update_manifest(out, read_manifest(out), complete=False)
    kept = load_oracle(out, allow_incomplete=True).num_rows
    flip_middle_weight(model / "model.safetensors")
    with pytest.raises(OracleMismatchError, match="fingerprint"):
        build_oracle(model, split_2, out, **settings)
    assert load_oracle(out, allow_incomplete=True).num_rows == kept  # nothing was added


def _write_reordered(source, destination) -> None:
    """The same tensors as ``source`` in a safetensors file whose header and data are in reverse name order."""
    tensors = load_file(source)
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors, reverse=True):
        data = tensors[name].contiguous().numpy().tobytes()
        shape = list(tensors[name].shape)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    destination.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def test_the_fingerprint_hashes_tensors_not_files(tmp_path):
    """Independent of sharding and header order; changed by any byte of any tensor."""
    model = load_m3_model(copy_tiny_m3(tmp_path / "base"))
    model.save_pretrained(tmp_path / "one")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="1MB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    reference = model_fingerprint(tmp_path / "one")["weights_sha256"]
    assert model_fingerprint(tmp_path / "sharded")["weights_sha256"] == reference
    reordered = copy_tiny_m3(tmp_path / "reordered")
    _write_reordered(tmp_path / "one" / "model.safetensors", reordered / "model.safetensors")
    assert model_fingerprint(reordered)["weights_sha256"] == reference
    flip_middle_weight(tmp_path / "one" / "model.safetensors")
    assert model_fingerprint(tmp_path / "one")["weights_sha256"] != reference


def test_saving_stores_the_fingerprint_and_a_changed_file_is_rehashed(tmp_path, monkeypatch):
    from m3 import fingerprint

    model = load_m3_model(copy_tiny_m3(tmp_path / "base"))
    model.save_pretrained(tmp_path / "saved")
    stored = json.loads((tmp_path / "saved" / fingerprint.FINGERPRINT_NAME).read_text())
    assert stored["files"]["model.safetensors"]["size"] == (tmp_path / "saved" / "model.safetensors").stat().st_size
    calls = []
    original = fingerprint.hash_tensors
    monkeypatch.setattr(fingerprint, "hash_tensors", lambda *a: calls.append(a) or original(*a))
    assert fingerprint.weights_fingerprint(tmp_path / "saved")["weights_sha256"] == stored["weights_sha256"]
    assert calls == []  # read from the stored file, not rehashed
    flip_middle_weight(tmp_path / "saved" / "model.safetensors")
    later = os.stat(tmp_path / "saved" / "model.safetensors").st_mtime_ns + 10**9
    os.utime(tmp_path / "saved" / "model.safetensors", ns=(later, later))
    changed = fingerprint.weights_fingerprint(tmp_path / "saved")
    assert len(calls) == 1 and changed["weights_sha256"] != stored["weights_sha256"]
    assert json.loads((tmp_path / "saved" / fingerprint.FINGERPRINT_NAME).read_text()) == changed


def test_a_read_only_model_folder_keeps_its_fingerprint_in_the_user_cache(tmp_path, monkeypatch):
    from m3 import fingerprint

    model = copy_tiny_m3(tmp_path / "model")
    monkeypatch.setenv("M3_CACHE_DIR", str(tmp_path / "cache"))

    def read_only(path, record):
        if path.parent == model:
            raise PermissionError(13, "Read-only file system", str(path))
        return original(path, record)

    original = fingerprint.write_record
    monkeypatch.setattr(fingerprint, "write_record", read_only)
    first = fingerprint.weights_fingerprint(model)
    assert not (model / fingerprint.FINGERPRINT_NAME).exists()
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 1
    monkeypatch.setattr(fingerprint, "hash_tensors", lambda *a: pytest.fail("rehashed"))
    assert fingerprint.weights_fingerprint(model) == first
