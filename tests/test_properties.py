"""Property-based tests (hypothesis) of the parsers every command goes through and of the cache
reader: any input gives either a valid result or one SparsesteerError (never another exception),
valid inputs round-trip, and the cache reader returns exactly the rows written, on random shard
layouts, token selections and read ranges."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sparsesteer.utils.errors import SparsesteerError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True), st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip


# ------------------------------------------------------------------------------------ config
@dataclasses.dataclass(frozen=True)
class Toy:
    """A config with one field of every kind utils/config.py converts."""

    n: int = 1
    """an int"""
    x: float = 0.5
    """a float"""
    flag: bool = False
    """a bool"""
    name: str = "a"
    """a string"""
    mode: Literal["set", "add"] = "set"
    """a choice"""
    sizes: tuple[int, ...] = (1, 2)
    """a list of ints"""
    maybe: int | None = None
    """an optional int"""


toys = st.builds(
    Toy,
    n=st.integers(-(10**9), 10**9),
    x=st.floats(allow_nan=False, allow_infinity=False),
    flag=st.booleans(),
    name=st.text(max_size=10),
    mode=st.sampled_from(["set", "add"]),
    sizes=st.lists(st.integers(-1000, 1000), max_size=4).map(tuple),
    maybe=st.none() | st.integers(-5, 5),
)


@SETTINGS
@given(toys)
def test_config_round_trips_through_dict_and_json(toy):
    import json

    from sparsesteer.utils.config import from_dict, to_dict

    assert from_dict(Toy, to_dict(toy)) == toy
    assert from_dict(Toy, json.loads(json.dumps(to_dict(toy)))) == toy


@SETTINGS
@given(st.dictionaries(st.sampled_from([f.name for f in dataclasses.fields(Toy)] + ["nn", "Mode"]), json_values))
def test_config_from_any_json_is_a_config_or_one_clear_error(data):
    from sparsesteer.utils.config import from_dict

    try:
        toy = from_dict(Toy, data)
    except SparsesteerError as e:
        assert str(e).startswith("Toy") and "\n" not in str(e)
        return
    assert isinstance(toy.n, int) and isinstance(toy.x, float) and isinstance(toy.flag, bool)
    assert toy.mode in ("set", "add") and all(isinstance(s, int) for s in toy.sizes)


@SETTINGS
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "lr",
                "steps",
                "batch_size",
                "epochs",
                "seed",
                "warmup_steps",
                "grad_clip",
                "adam_betas",
                "decay",
                "bf16",
                "checkpoint_every",
            ]
        ),
        json_values,
        max_size=4,
    )
)
def test_train_config_from_any_json_is_a_config_or_one_clear_error(data):  # fmt: skip
    """The real TrainConfig, whose __post_init__ checks ranges: still only SparsesteerError."""
    from sparsesteer.sae.config import TrainConfig
    from sparsesteer.utils.config import from_dict

    try:
        from_dict(TrainConfig, data, where="train config")
    except SparsesteerError as e:
        assert "\n" not in str(e)


@SETTINGS
@given(
    st.lists(
        st.sampled_from(["--n", "--x", "--flag", "--no-flag", "--mode", "--sizes", "--maybe", "--name"])
        .flatmap(
            lambda flags: st.tuples(
                st.just(flags),
                st.lists(
                    st.text(alphabet="0123456789.,-e+naifsetd ", max_size=6), min_size=len(flags), max_size=len(flags)
                ),
            )
        )
        .map(lambda p: p),
        max_size=1,
    )
)
def test_config_flags_give_a_config_or_a_usage_error(pairs):  # fmt: skip
    import argparse

    from sparsesteer.utils.config import add_arguments, from_args

    for flags, values in pairs:
        argv = []
        for f, v in zip(flags, values):
            argv += [f] if f in ("--flag", "--no-flag") else [f, v]
        parser = argparse.ArgumentParser(exit_on_error=False)
        add_arguments(parser, Toy)
        try:
            args = parser.parse_args(argv)
            toy = from_args(Toy, args)
        except (SparsesteerError, argparse.ArgumentError):
            continue
        except SystemExit as e:  # argparse's own refusal (a value that looks like a flag)
            assert e.code == 2
            continue
        assert isinstance(toy, Toy)


# ------------------------------------------------------------------------------------ dataset specs
@SETTINGS
@given(st.text(max_size=30))
def test_parse_spec_any_text(text):
    from sparsesteer.data.registry import PREFIXES, dataset_names, parse_spec

    try:
        spec = parse_spec(text)
    except SparsesteerError as e:
        assert "\n" not in str(e).strip()
        return
    assert spec.kind in ("builtin", "folder", "hf", "typo")
    if spec.kind == "builtin":
        assert spec.arg in dataset_names()
    else:
        assert text.strip() == f"{spec.kind}:{spec.arg}" and f"{spec.kind}:" in PREFIXES


@SETTINGS
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20))
def test_parse_spec_folder_and_hub_paths_round_trip(path):
    from sparsesteer.data.registry import parse_spec

    assume(path.strip() == path)
    assert parse_spec(f"folder:{path}") == ("folder", path)
    assert parse_spec(f"hf:{path}") == ("hf", path)


@SETTINGS
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz=,.-0123456789:", max_size=30))
def test_parse_typo_specs(text):
    from sparsesteer.data.registry import parse_spec

    try:
        spec = parse_spec("typo:" + text)
    except SparsesteerError:
        return
    assert spec.kind == "typo"


# ------------------------------------------------------------------------------------ hook names, tokens
@SETTINGS
@given(st.integers(0, 200), st.sampled_from(["resid_pre", "attn_out", "mlp_out", "resid_post"]), st.integers(1, 201))
def test_hook_names_round_trip_and_check_the_range(block, kind, n_blocks):
    from sparsesteer.models.hook_names import HookPoint, hook_name

    name = hook_name(block, kind)
    assert HookPoint.parse(name) == HookPoint(kind, block) and str(HookPoint.parse(name)) == name
    if block < n_blocks:
        assert HookPoint.parse(name, n_blocks).block == block
    else:
        with pytest.raises(SparsesteerError, match=f"block index {block} out of range"):
            HookPoint.parse(name, n_blocks)


@SETTINGS
@given(st.one_of(st.text(max_size=25), st.from_regex(r"blocks\.-?[0-9]{1,3}\.[a-z_]{3,10}", fullmatch=True)))
def test_hook_parse_any_text(text):
    from sparsesteer.models.hook_names import HookPoint

    try:
        hp = HookPoint.parse(text, n_blocks=12)
    except SparsesteerError as e:
        assert "\n" not in str(e)
        return
    assert HookPoint.parse(str(hp), n_blocks=12) == hp  # the canonical name parses to the same point
    assert hp.block is None or 0 <= hp.block < 12


@SETTINGS
@given(st.text(max_size=20))
def test_check_tokens_any_text(text):
    from sparsesteer.models.hook_names import TOKEN_SELECTIONS, check_tokens

    if text in TOKEN_SELECTIONS:
        assert check_tokens(text) == text
    else:
        with pytest.raises(SparsesteerError, match="unknown token selection"):
            check_tokens(text)


@SETTINGS
@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=8))
def test_patch_token_lists_round_trip(indices):
    from sparsesteer.steering.settings import parse_tokens

    assert parse_tokens("patch:" + ",".join(map(str, indices))) == tuple(indices)
    assert parse_tokens(" patch: " + " , ".join(map(str, indices)) + " ") == tuple(indices)


@SETTINGS
@given(st.text(alphabet="patchmskl:,0123456789 -.x/", max_size=20))
def test_token_selection_any_text(text):
    from sparsesteer.steering.settings import parse_tokens

    try:
        tokens = parse_tokens(text)
    except SparsesteerError as e:
        assert "\n" not in str(e)
        return
    assert tokens in ("cls", "patch", "all") or (isinstance(tokens, tuple) and tokens) or tokens.ndim == 2


@SETTINGS
@given(st.text(alphabet="0123456789,- al", max_size=15), st.none() | st.integers(1, 30))
def test_block_lists_any_text(text, n_blocks):
    from sparsesteer.experiments.clipsteer.sparsity.config import parse_blocks

    try:
        blocks = parse_blocks(text, n_blocks)
    except SparsesteerError:
        return
    assert list(blocks) == sorted(set(blocks)) and all(b >= 0 for b in blocks)
    if n_blocks is not None:
        assert all(b < n_blocks for b in blocks)


# ------------------------------------------------------------------------------------ cache reader
@st.composite
def layouts(draw):
    """A random cache: images, kept token positions (CLS = 0 kept or not), shard sizes, hooks, dtype."""
    n_images = draw(st.integers(1, 12))
    n_tokens = draw(st.integers(1, 6))
    tokens = draw(st.sampled_from(["all", "patch", "positions"]) if n_tokens > 1 else st.just("all"))
    if tokens == "all":
        positions = list(range(n_tokens))
    elif tokens == "patch":
        positions = list(range(1, n_tokens))
    else:
        positions = sorted(draw(st.sets(st.integers(0, n_tokens - 1), min_size=1)))
    cuts = sorted(draw(st.sets(st.integers(1, n_images - 1), max_size=4))) if n_images > 1 else []
    sizes = np.diff([0, *cuts, n_images]).tolist()
    d = draw(st.integers(1, 5))
    dtype = draw(st.sampled_from(["float32", "float16", "bfloat16"]))
    n_hooks = draw(st.integers(1, 2))
    return n_images, tokens, positions, sizes, d, dtype, n_hooks


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layouts(), st.data())
def test_cache_reader_returns_exactly_the_rows_written(layout, data):
    import torch

    from sparsesteer.activations.cache import ActivationCache, CacheSettings, CacheWriter

    n_images, tokens, positions, sizes, d, dtype, n_hooks = layout
    hooks = tuple(f"blocks.{i}.resid_post" for i in range(n_hooks))
    rng = np.random.default_rng(len(positions) * 100 + n_images)
    s = CacheSettings(
        hooks=hooks, d={h: d for h in hooks}, tokens="all" if 0 in positions else "patch",
        token_positions=tuple(positions), cls_position=0, n_images=n_images, dtype=dtype,
        model={"id": "m"}, dataset={"name": "x"}, split="train",
    )  # fmt: skip
    m = len(positions)
    full = {h: rng.normal(size=(n_images * m, d)).astype(np.float32) for h in hooks}
    labels = rng.integers(0, 3, n_images)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c"
        with CacheWriter.open(path, s) as w:
            first = 0
            for size in sizes:
                rows = slice(first * m, (first + size) * m)
                w.write_shard({h: full[h][rows] for h in hooks}, np.repeat(np.arange(first, first + size), m),
                              np.tile(positions, size))  # fmt: skip
                first += size
            w.finish(labels)
        cache = ActivationCache.open(path, verify="all")
        assert cache.n_shards == len(sizes) and cache.n_rows == n_images * m
        want_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
        keep = data.draw(st.sets(st.sampled_from(positions), min_size=1).map(sorted), label="tokens kept")
        for h in hooks:
            view = cache.rows(h, tokens=keep)
            sel = np.isin(np.tile(positions, n_images), keep)
            expect = torch.from_numpy(full[h][sel]).to(want_dtype)
            assert view.n_rows == int(sel.sum()) and view.d == d
            a = data.draw(st.integers(0, view.n_rows), label="start")
            b = data.draw(st.integers(a, view.n_rows), label="stop")
            got = view.read(a, b)
            assert got.dtype == want_dtype and torch.equal(got, expect[a:b])
            np.testing.assert_array_equal(view.labels(a, b), np.repeat(labels, m)[sel][a:b])
            assert torch.equal(view.read_all().x, expect)
