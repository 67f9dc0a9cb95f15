"""`hf:REPO[/SUBFOLDER][@REVISION]` SAE ids: downloaded (or found in the cache) through huggingface_hub,
offline mode honoured; the repo, subfolder and resolved commit become the SAE's `source` record."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ...utils.errors import SparsesteerError
from .common import listing

HF_PREFIX = "hf:"
_HF_SPEC = re.compile(r"^hf:(?P<repo>[\w.-]+/[\w.-]+)(?:/(?P<sub>[^@]+?))?/?(?:@(?P<rev>[^@/]+))?$")


def parse_hub_spec(spec: str) -> tuple[str, str | None, str | None]:
    """'hf:org/name/sub/folder@rev' -> ('org/name', 'sub/folder', 'rev')."""
    m = _HF_SPEC.match(spec)
    if not m:
        raise SparsesteerError(f"{spec!r} is not a hub SAE id: expected hf:ORG/NAME[/SUBFOLDER][@REVISION]")
    return m["repo"], m["sub"], m["rev"]


def download(spec: str) -> tuple[Path, dict[str, Any]]:
    """Fetch (or find in the cache) the hub SAE `spec`: its local directory and its source record."""
    from huggingface_hub import snapshot_download

    from ...utils.hub import check_hub, hub_error

    repo, sub, rev = parse_hub_spec(spec)
    patterns = [f"{sub}/*"] if sub else None

    def fetch(local_only: bool) -> str:
        return snapshot_download(repo, revision=rev, allow_patterns=patterns, local_files_only=local_only)

    def cached() -> bool:
        try:
            fetch(True)
            return True
        except Exception:
            return False

    check_hub(repo, what="SAE", flag="--sae", cached=cached, revision=rev)
    try:
        root = Path(fetch(False))
    except (OSError, ValueError) as e:  # huggingface_hub's errors are OSErrors
        raise hub_error(e, "SAE", repo, "--sae", rev) or SparsesteerError(
            f"cannot download the SAE {spec!r} from the Hugging Face hub: {e}"
        ) from None
    path = root / sub if sub else root
    if not path.is_dir():
        raise SparsesteerError(f"{spec}: the repository has no folder {sub!r} (found: {listing(root)})")
    source = {"spec": spec, "hub": repo, "subfolder": sub, "revision": root.name, "requested_revision": rev}
    return path, source
