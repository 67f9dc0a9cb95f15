"""Concept vocabularies: the file rules (comments, blanks, repeats, limit), the built-ins, bad input."""

from __future__ import annotations

import pytest

from sparsesteer.data import classnames
from sparsesteer.data.vocab import BUILTIN_VOCABS, load_vocab, parse_vocab
from sparsesteer.utils.errors import SparsesteerError


def test_file_rules(tmp_path):
    f = tmp_path / "words.txt"
    f.write_text("# a comment\n  dog \n\ncat\ndog\nred car\n#x\ncat\nbird\n", encoding="utf-8")
    v = load_vocab(str(f))
    assert v.concepts == ("dog", "cat", "red car", "bird")  # stripped, first occurrence kept, file order
    assert (v.n_lines, v.n_duplicates, v.limit, v.source) == (6, 2, None, str(f))
    # limit = the first N concept lines (comments and blanks do not count), then repeats dropped
    v3 = load_vocab(str(f), limit=3)
    assert v3.concepts == ("dog", "cat") and (v3.n_lines, v3.n_duplicates) == (3, 1)
    assert v.describe()["sha256"] == parse_vocab("dog\ncat\nred car\nbird\n", "x").sha256


def test_builtins():
    assert set(BUILTIN_VOCABS) == {"imagenet1k", "cifar100"}
    assert load_vocab("cifar100").concepts == tuple(classnames("cifar100"))
    names = classnames("imagenet1k")  # label order, as shipped: 1,000 names with two repeats
    assert len(names) == 1000 and (names[0], names[1], names[999]) == ("tench", "goldfish", "toilet paper")
    assert [i for i, n in enumerate(names) if n in ("missile", "sunglasses")] == [657, 744, 836, 837]
    v = load_vocab("imagenet1k")
    assert len(v) == 998 and v.n_duplicates == 2 and v.concepts[:2] == ("tench", "goldfish")


def test_an_existing_file_wins_over_a_builtin_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cifar100").write_text("sun\nmoon\n")
    assert load_vocab("cifar100").concepts == ("sun", "moon")


@pytest.mark.parametrize(
    "text,match",
    [
        ("", "is empty"),
        ("# only comments\n\n   \n", "is empty"),
        ("cat\ncat\n  cat\n", r"single distinct concept 'cat' \(3 lines\)"),
    ],
)
def test_empty_or_duplicate_only(tmp_path, text, match):
    f = tmp_path / "v.txt"
    f.write_text(text)
    with pytest.raises(SparsesteerError, match=match):
        load_vocab(str(f))


def test_missing_file_and_bad_limit(tmp_path):
    with pytest.raises(
        SparsesteerError, match=r"no such file, and not a built-in vocabulary \(did you mean 'imagenet1k'"
    ):
        load_vocab("imagenet")
    with pytest.raises(SparsesteerError, match="is not a file"):
        load_vocab(str(tmp_path))
    with pytest.raises(SparsesteerError, match="positive integer"):
        load_vocab("cifar100", limit=0)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\nthé\n".encode("latin-1"))
    with pytest.raises(SparsesteerError, match="not UTF-8"):
        load_vocab(str(bad))
