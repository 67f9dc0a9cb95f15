"""Messages that must name the real cause and the whole list (issue 20, item 14): the model family, not
the SAE; every suite; an n list that --help says is trimmed; a text cache that is a file; the API
parameter that was wrong; hub failures (a missing revision is not a missing repository, an unknown
layout lists the layouts read, the offline hint fits what is missing); numpy given to an SAE."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sparsesteer.cli import main
from sparsesteer.utils.errors import SparsesteerError


def _hub_exception(cls: type, message: str) -> BaseException:
    """A huggingface_hub error without an HTTP response (its __init__ wants one)."""
    e = cls.__new__(cls)
    Exception.__init__(e, message)
    return e


def test_vs2_blames_the_model_family_not_the_sae(tmp_path, capsys):
    """SigLIP has no CLS token: no SAE can make VS2 work on it, so the SAE's tokens are not the cause."""
    from sparsesteer.models.tiny import make_tiny_siglip
    from sparsesteer.sae import SAEConfig, build

    model = make_tiny_siglip(tmp_path / "siglip")
    sae = build(SAEConfig(arch="topk", d_in=32, n_latents=64, k=4)).save(
        tmp_path / "sae", hook="blocks.2.resid_post", tokens="all"
    )
    argv = ["-q", "steer", "vs2", "--model", str(model), "--sae", str(sae), "--activations", str(tmp_path / "none"),
            "--lam", "1", "--gamma", "2"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "(siglip) has no CLS token" in err and "use a CLIP model" in err and "the SAE" not in err, err


def test_suppression_leaves_out_an_n_above_the_sae_width_as_its_help_says():
    from sparsesteer.experiments.clipsteer.suppression.config import SuppressionOptions
    from sparsesteer.experiments.clipsteer.suppression.run import SuppressionRun

    assert SuppressionOptions.__dataclass_fields__["ns"].default == "1,4,16,64,256"  # the default list
    run = SimpleNamespace(ns=(1, 4, 16, 64, 256), trains=True, sae_path=lambda key: "OUT/sae/block01-patch")
    SuppressionRun.check_ns(run, 64, None)  # the default list with a 64-latent SAE: 256 is left out
    run.ns = (128, 256)
    with pytest.raises(SparsesteerError, match=r"every n \(128, 256\) is larger than the 64 latents"):
        SuppressionRun.check_ns(run, 64, None)


@pytest.mark.parametrize("command", ["interpret", "steer features"])
def test_a_text_cache_that_is_a_file_is_refused_before_any_work(command, tmp_path, capsys):
    afile = tmp_path / "zeroshot-weights.safetensors"
    afile.write_bytes(b"not a folder")
    argv = {
        "interpret": ["interpret", "--sae", "/nonexistent", "--activations", "/nonexistent"],
        "steer features": ["steer", "features", "--model", "nope/nope", "--sae", "/nonexistent", "--latent", "0",
                           "--strength", "1", "--dataset", "folder:/nonexistent"],
    }[command]  # fmt: skip
    assert main(["-q", *argv, "--text-cache", str(afile), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"--text-cache {afile} is a file, not a directory" in err and "File exists" not in err, err


def test_hub_sae_missing_revision_is_not_a_missing_repository(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    from sparsesteer.sae.formats import load_sae
    from sparsesteer.utils import hub

    monkeypatch.setattr(hub, "offline", lambda: False)
    monkeypatch.setattr(hub, "reachable", lambda *a, **k: True)
    raised: list[BaseException] = []

    def download(repo_id, *, revision=None, allow_patterns=None, local_files_only=False):
        raise raised[-1]

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    raised.append(_hub_exception(RevisionNotFoundError, "404 Client Error: Revision Not Found"))
    with pytest.raises(SparsesteerError, match=r"SAE 'org/name' on the Hugging Face hub has no revision 'v9'"):
        load_sae("hf:org/name@v9")
    for cls in (RepositoryNotFoundError, GatedRepoError):
        raised.append(_hub_exception(cls, "401 Client Error: Repository Not Found"))
        with pytest.raises(SparsesteerError, match=r"no SAE repository 'org/name' on the Hugging Face hub \(or it"):
            load_sae("hf:org/name@v9")


def test_offline_hints_name_the_revision_and_fit_the_kind(tmp_path):
    """Offline (tests run with HF_HUB_OFFLINE=1) and not cached: a model's hint is save_pretrained, an
    SAE's a hub download; both name the revision asked for."""
    from sparsesteer.models import load_backbone
    from sparsesteer.sae.formats import load_sae

    with pytest.raises(SparsesteerError) as model:
        load_backbone("someorg/some-clip", revision="v9")
    assert "model 'someorg/some-clip' at revision 'v9' is not in the local Hugging Face cache" in str(model.value)
    assert "save_pretrained" in str(model.value) and "--model DIR" in str(model.value)
    with pytest.raises(SparsesteerError) as sae:
        load_sae("hf:someorg/some-sae/layer_9@v9")
    message = str(sae.value)
    assert "SAE 'someorg/some-sae' at revision 'v9' is not in the local Hugging Face cache" in message
    assert "hf download someorg/some-sae --local-dir DIR" in message and "save_pretrained" not in message


def test_preprocessor_config_not_cached_is_not_missing(monkeypatch):
    """LocalEntryNotFoundError is an EntryNotFoundError: caught second, it said the file did not exist."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    from sparsesteer.data.preprocess import _hub_config

    def not_cached(*args, **kwargs):
        raise LocalEntryNotFoundError("not in the cache and offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", not_cached)
    with pytest.raises(SparsesteerError, match="is not in the local cache and the hub cannot be reached"):
        _hub_config("org/model", None)


def test_an_unknown_layout_lists_the_layouts_read(tmp_path):
    from sparsesteer.sae.formats import LAYOUTS, load_sae

    torch.save({"W_enc": torch.zeros(2, 2)}, tmp_path / "weights.pt")
    with pytest.raises(SparsesteerError) as info:
        load_sae(tmp_path)
    assert "its layout is unknown" in str(info.value) and f"layouts read: {', '.join(LAYOUTS)}" in str(info.value)


def test_sae_encode_of_numpy_says_what_to_pass():
    from sparsesteer.sae import SAEConfig, build

    sae = build(SAEConfig(arch="topk", d_in=8, n_latents=16, k=2))
    with pytest.raises(SparsesteerError, match=r"got numpy.ndarray: pass a torch.Tensor \(torch.from_numpy\(x\)\)"):
        sae.encode(np.zeros((3, 8), np.float32))
    assert sae.encode(torch.zeros(3, 8)).values.shape == (3, 2)
