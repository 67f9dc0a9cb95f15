"""The shared result helpers: Markdown tables, JSON + Markdown result files, file digests, settings
hashes and the first difference between two settings."""

import hashlib
import json

import pytest

from sparsesteer.utils import io
from sparsesteer.utils.report import md_table, write_result
from sparsesteer.utils.settings_hash import canonical_json, difference, first_difference, settings_sha256


def test_md_table_alignment_and_escaping():
    text = md_table(["class", "n", "acc"], [["a|b", 3, "50.00"], ["c", 10, "-"]], align="lrr")
    assert text == "| class | n | acc |\n|---|---:|---:|\n| a\\|b | 3 | 50.00 |\n| c | 10 | - |"
    assert md_table(["x"], [], align="c") == "| x |\n|:---:|"
    with pytest.raises(ValueError, match="align"):
        md_table(["x", "y"], [], align="lrx")
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        md_table(["x", "y", "z"], [[1, 2]])


def test_write_result_writes_both_files_atomically(tmp_path):
    j, m = write_result(tmp_path / "new" / "dir", "eval", {"fvu": 0.5}, "# eval\n")
    assert (j.name, m.name) == ("eval.json", "eval.md")
    assert json.loads(j.read_text()) == {"fvu": 0.5} and m.read_text() == "# eval\n"
    assert sorted(p.name for p in j.parent.iterdir()) == ["eval.json", "eval.md"]  # no temporary files left


def test_file_digest_and_its_aliases(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"sparsesteer" * 1000)
    assert io.file_digest(f) == io.sha256_file(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    assert io.file_digest(f, "md5") == io.md5_file(f) == hashlib.md5(f.read_bytes()).hexdigest()
    with pytest.raises(io.SparsesteerError, match="unknown hash algorithm"):
        io.file_digest(f, "nope")


def test_settings_hash_and_first_difference():
    a = {"train": {"lr": 1e-3, "betas": [0.9, 0.999]}, "saes": [{"k": 4}, {"k": 8}], "name": "é"}
    b = {"name": "é", "saes": [{"k": 4}, {"k": 8}], "train": {"betas": [0.9, 0.999], "lr": 1e-3}}
    assert canonical_json(a) == canonical_json(b) and settings_sha256(a) == settings_sha256(b)
    assert settings_sha256(a) == hashlib.sha256(canonical_json(a)).hexdigest()
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})
    assert first_difference(a, b) is None and difference(a, b) is None
    c = json.loads(json.dumps(a))
    c["saes"][1]["k"] = 16
    assert first_difference(a, c) == "saes[1].k: 8 vs 16"
    assert difference(a, c) == ("saes[1].k", 8, 16)
    c = json.loads(json.dumps(a))
    c["train"]["warmup"] = 10
    assert first_difference(a, c) == "train.warmup: <absent> vs 10"
    assert first_difference({"x": 1}, {"x": 1.0}) == "x: 1 vs 1.0"  # different on disk
    assert first_difference({"h": ["a"]}, {"h": ["a", "b"]}) == "h: ['a'] vs ['a', 'b']"
