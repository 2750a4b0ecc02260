"""Upload a finished run's folder (model, processor, card, results) to the Hugging Face Hub."""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path

from huggingface_hub import (
    CommitOperationAdd,
    HfApi,
)
from huggingface_hub.errors import OfflineModeIsEnabled

from ..utils.run_marker import MARKER_NAME, is_complete_run

#: Files of an output directory that make a loadable checkpoint plus its card (top level only: no checkpoints).
PUSH_PATTERNS = (
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "adapter_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "README.md",
    "results.json",
    "stream.json",
)


REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class HubUnreachableError(ConnectionError):
    """The Hugging Face Hub cannot be reached (offline mode or no network): nothing was uploaded."""


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    return constants.is_offline_mode() or env


def _transport_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, OfflineModeIsEnabled, TimeoutError]
    for module in ("httpx2", "httpx"):  # huggingface_hub 2.x uses httpx2, 1.x httpx
        try:
            errors.append(__import__(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def push_output_dir(
    output_dir: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    api: HfApi | None = None,
    commit_message: str | None = None,
):
    """Upload a run's checkpoint, processor files, ``README.md`` and ``results.json`` to ``repo_id`` in one commit.

    Files are the top-level matches of :data:`PUSH_PATTERNS` (no intermediate checkpoints, no pickled
    ``training_args.bin``). Returns the ``CommitInfo`` of ``create_commit``.

    Raises:
        FileNotFoundError: the directory lacks weights, a config, ``README.md`` or ``results.json``.
        HubUnreachableError: offline mode is on (without an injected ``api``) or the Hub cannot be reached.
    """
    root = Path(output_dir)
    names = sorted(p.name for p in root.iterdir() if p.is_file()) if root.is_dir() else []
    chosen = [n for n in names if any(fnmatch.fnmatch(n, pat) for pat in PUSH_PATTERNS)]
    missing = [
        what
        for what, ok in (
            ("model weights (*.safetensors)", any(n.endswith(".safetensors") for n in chosen)),
            ("config.json or adapter_config.json", "config.json" in chosen or "adapter_config.json" in chosen),
            ("README.md", "README.md" in chosen),
            ("results.json", "results.json" in chosen),
        )
        if not ok
    ]
    if not missing and not is_complete_run(os.fspath(root)):
        missing = [f"the completion marker {MARKER_NAME}: its final save did not finish"]
    if missing:
        raise FileNotFoundError(
            f"push: {os.fspath(output_dir)!r} is not a finished hf_budgetcl run (missing {', '.join(missing)})"
        )
    if api is None and _offline():
        raise HubUnreachableError(
            f"push: HF_HUB_OFFLINE is set, so {repo_id!r} cannot be reached and nothing was "
            "uploaded; unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) on a networked machine"
        )
    api = api or HfApi()
    operations = [CommitOperationAdd(path_in_repo=n, path_or_fileobj=str(root / n)) for n in chosen]
    try:
        api.create_repo(repo_id, token=token, private=private, exist_ok=True, repo_type="model")
        return api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or f"Upload hf_budgetcl run {root.name}",
            token=token,
            repo_type="model",
        )
    except _transport_errors() as err:
        raise HubUnreachableError(
            f"push: the Hugging Face Hub is unreachable ({type(err).__name__}: {err}); nothing was uploaded"
        ) from err
