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


_LOCAL_COPY = {
    "model": "save it with save_pretrained on a machine with internet and pass its directory with {flag} DIR",
    "SAE": "download it on a machine with internet (`hf download {repo} --local-dir DIR`) and pass that directory "
    "(or its SAE's subfolder) with {flag} DIR",
    "dataset": "save it on a machine with internet (datasets.load_dataset('{repo}', ...).save_to_disk(DIR)) and pass "
    "{flag} hf:DIR",
}
"""How to use each kind of hub repository without the hub: a local copy, made as that kind is saved."""


def _named(what: str, repo_id: str, revision: str | None) -> str:
    return f"{what} {repo_id!r}" + (f" at revision {revision!r}" if revision else "")


def unreachable_error(
    what: str,
    repo_id: str,
    flag: str,
    revision: str | None = None,
    cache: str | os.PathLike | None = None,
    offline_too: bool = False,
) -> SparsesteerError:
    """`what` ("model", "SAE", "dataset") `repo_id` (at `revision`) is not in the local cache (`cache`;
    default: huggingface_hub's) and the hub is out of reach (offline mode, or `offline_too`: the
    calling library's own offline flag)."""
    from huggingface_hub import constants

    if offline():
        where = "offline mode is on (HF_HUB_OFFLINE)"
    elif offline_too:
        where = "offline mode is on"
    else:
        where = f"the Hugging Face hub ({constants.ENDPOINT}) cannot be reached"
    how = _LOCAL_COPY.get(what, _LOCAL_COPY["model"]).format(flag=flag, repo=repo_id)
    return SparsesteerError(
        f"{_named(what, repo_id, revision)} is not in the local Hugging Face cache ({cache or constants.HF_HUB_CACHE}) and "
        f"{where}: {how}, or fix the network / HF_ENDPOINT / proxy settings"
    )


def hub_error(
    e: BaseException, what: str, repo_id: str, flag: str, revision: str | None = None
) -> SparsesteerError | None:
    """One line for a huggingface_hub failure, naming its real cause: a revision the repository lacks is
    not a missing repository, and neither is the hub being out of reach. None: not a hub failure."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(e, RevisionNotFoundError):
        return SparsesteerError(f"{what} {repo_id!r} on the Hugging Face hub has no revision {revision!r}; check it")
    if isinstance(e, RepositoryNotFoundError):  # also a gated repository the token may not read
        return SparsesteerError(
            f"no {what} repository {repo_id!r} on the Hugging Face hub (or it is private or gated: log in with "
            f"`hf auth login`); check the id given to {flag}"
        )
    if isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        return unreachable_error(what, repo_id, flag, revision)
    if isinstance(e, HfHubHTTPError):
        return SparsesteerError(f"cannot download {_named(what, repo_id, revision)} from the Hugging Face hub: {e}")
    return None


def check_hub(
    repo_id: str,
    *,
    what: str,
    flag: str,
    cached: Callable[[], bool],
    revision: str | None = None,
    offline_too: bool = False,
    cache: str | os.PathLike | None = None,
) -> None:
    """Before downloading `repo_id` (at `revision`): fail fast when the hub is unreachable, or offline
    mode is on (`offline_too`: the calling library's own flag, e.g. HF_DATASETS_OFFLINE), and nothing
    is cached (in `cache`, named by the error; default: huggingface_hub's cache)."""
    from huggingface_hub import constants

    if offline() or offline_too:
        if not cached():
            raise unreachable_error(what, repo_id, flag, revision, cache, offline_too)
        return
    if reachable(constants.ENDPOINT):
        return
    if not cached():
        raise unreachable_error(what, repo_id, flag, revision, cache)
    log.warning(
        "the Hugging Face hub (%s) cannot be reached: using the local cache of %s (offline mode)",
        constants.ENDPOINT,
        repo_id,
    )
    go_offline()
