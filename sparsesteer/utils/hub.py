"""Fail fast, once, when the Hugging Face hub cannot be reached.

Without a network, huggingface_hub retries each request for about 30 s and logs every retry; a user
who just typed a hub id waits and reads a wall of warnings. Before the first download of a repository
we open one TCP connection to the hub's endpoint (3 s timeout). Unreachable and cached: we switch
this process to offline mode and say so once. Unreachable and not cached: one error that says how to
use a local directory instead. Behind a proxy (HTTPS_PROXY) the check is left to the proxy.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from urllib.parse import urlparse

from .errors import SparsesteerError

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def reachable(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Can a TCP connection to the endpoint's host be opened? (True behind a configured proxy.)"""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def go_offline() -> None:
    """Offline mode for the rest of this process (huggingface_hub reads the flag at call time)."""
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"


def unreachable_error(what: str, repo_id: str, flag: str) -> SparsesteerError:
    from huggingface_hub import constants

    where = (
        "offline mode is on (HF_HUB_OFFLINE)"
        if offline()
        else f"the Hugging Face hub ({constants.ENDPOINT}) cannot be reached"
    )
    return SparsesteerError(
        f"{what} {repo_id!r} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and {where}. "
        f"Download it on a machine with internet (save_pretrained) and pass its directory with {flag} DIR, "
        "or fix the network / HF_ENDPOINT / proxy settings"
    )


def check_hub(repo_id: str, *, what: str, flag: str, cached: Callable[[], bool]) -> None:
    """Before downloading `repo_id`: fail fast when the hub is unreachable and nothing is cached."""
    from huggingface_hub import constants

    if offline():
        if not cached():
            raise unreachable_error(what, repo_id, flag)
        return
    if reachable(constants.ENDPOINT):
        return
    if not cached():
        raise unreachable_error(what, repo_id, flag)
    log.warning(
        "the Hugging Face hub (%s) cannot be reached: using the local cache of %s (offline mode)",
        constants.ENDPOINT,
        repo_id,
    )
    go_offline()
