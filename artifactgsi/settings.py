"""Project-wide defaults, in one place. Environment variables override them at call time."""

from __future__ import annotations

import os
from pathlib import Path

#: Hugging Face dataset repo of the simulated release (``artifactgsi download`` with no argument).
DEFAULT_REPO_ID = "artifactgsi/ArtifactGSI-Sim"
#: Name and format tag of the file list that every built dataset folder carries.
MANIFEST_FILENAME = "manifest.json"
MANIFEST_FORMAT = "artifactgsi-manifest/1"
#: Dataset card (README.md with YAML front matter) at the root of a built dataset folder.
CARD_FILENAME = "README.md"


def default_repo_id() -> str:
    """``$ARTIFACTGSI_REPO_ID`` if set (e.g. a fork or a private mirror), else the release."""
    return os.environ.get("ARTIFACTGSI_REPO_ID") or DEFAULT_REPO_ID


def hub_cache_dir() -> Path | None:
    """Where downloads are cached: ``$ARTIFACTGSI_CACHE`` if set, else ``None``.

    ``None`` means the standard Hugging Face cache (``$HF_HUB_CACHE``, by default
    ``~/.cache/huggingface/hub``), which ``datasets.load_dataset`` shares, so a dataset fetched
    with ``artifactgsi download`` is not fetched again by ``load_dataset``.
    """
    value = os.environ.get("ARTIFACTGSI_CACHE")
    return Path(value).expanduser() if value else None
