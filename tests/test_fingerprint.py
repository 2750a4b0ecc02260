"""The base-weights fingerprint results.json records: same files, same hash; one changed byte, another."""

from hf_budgetcl.models.fingerprint import weights_fingerprint


def test_fingerprint_follows_the_safetensors_bytes_only(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "model-00001-of-00002.safetensors").write_bytes(b"first shard")
        (folder / "model-00002-of-00002.safetensors").write_bytes(b"second shard")
    (b / "config.json").write_text("{}")  # not weights: ignored
    fa, fb = weights_fingerprint(str(a)), weights_fingerprint(str(b))
    assert fa["path"] == str(a) and len(fa["weights_sha256"]) == 16
    assert fa["weights_sha256"] == fb["weights_sha256"]
    (b / "model-00002-of-00002.safetensors").write_bytes(b"second shard!")
    assert weights_fingerprint(str(b))["weights_sha256"] != fa["weights_sha256"]
    # the same bytes under other shard names: another hash (names are part of it)
    (b / "model-00002-of-00002.safetensors").write_bytes(b"second shard")
    (b / "model-00002-of-00002.safetensors").rename(b / "model-00003-of-00003.safetensors")
    assert weights_fingerprint(str(b))["weights_sha256"] != fa["weights_sha256"]
    # above the size cap only the size is recorded: no multi-GB read at every start
    assert weights_fingerprint(str(a), max_bytes=10) == {"path": str(a), "weights_sha256": None, "weights_bytes": 23}


def test_a_hub_id_or_a_folder_without_weights_has_no_hash(tmp_path):
    assert weights_fingerprint("HuggingFaceTB/SmolVLM-256M-Instruct") == {
        "path": "HuggingFaceTB/SmolVLM-256M-Instruct",
        "weights_sha256": None,
        "weights_bytes": 0,
    }
    assert weights_fingerprint(str(tmp_path))["weights_sha256"] is None
