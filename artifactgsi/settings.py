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


def cache_root() -> Path:
    """The folder of this project's own caches (physics tables, training arrays):
    ``$ARTIFACTGSI_CACHE`` if set, else ``~/.cache/artifactgsi``. Nothing else reads that
    variable; Hub downloads have their own (:func:`hub_cache_dir`)."""
    value = os.environ.get("ARTIFACTGSI_CACHE")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "artifactgsi"


def hub_cache_dir() -> Path | None:
    """Where Hub downloads are cached: ``$ARTIFACTGSI_HUB_CACHE`` if set, else ``None``.

    ``None`` means the standard Hugging Face cache (``$HF_HUB_CACHE``, by default
    ``~/.cache/huggingface/hub``), which ``datasets.load_dataset`` shares, so a dataset fetched
    with ``artifactgsi download`` is not fetched again by ``load_dataset``.

    Earlier versions read ``$ARTIFACTGSI_CACHE`` here; when only that is set it is still used
    for downloads, with a ``FutureWarning`` (set ``ARTIFACTGSI_HUB_CACHE`` instead).
    """
    value = os.environ.get("ARTIFACTGSI_HUB_CACHE")
    if not value and os.environ.get("ARTIFACTGSI_CACHE"):
        import warnings

        warnings.warn("ARTIFACTGSI_CACHE is the folder of artifactgsi's own caches; as the Hub "
                      "download cache it is read for the last time in this version: set "
                      "ARTIFACTGSI_HUB_CACHE for downloads", FutureWarning, stacklevel=2)
        value = os.environ["ARTIFACTGSI_CACHE"]
    return Path(value).expanduser() if value else None
