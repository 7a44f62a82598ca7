"""The root exception of the ``artifactgsi`` package (a leaf module: imports nothing).

Every error that ``artifactgsi`` raises on purpose derives from :class:`ArtifactGSIError`, so a
caller can catch all of them at once::

    try:
        build_dataset(raw, out)
    except ArtifactGSIError as err:
        print(err)  # names the file / patient / field and what to do

Subclasses also keep a built-in base where older code caught that (``DicomError``,
``BuildError``, ``RegistrationError`` and ``DatasetFolderError`` are ``ValueError`` too;
``HubTransferError`` is an ``OSError``).
"""

from __future__ import annotations


class ArtifactGSIError(Exception):
    """Base of every error ``artifactgsi`` raises on purpose; the message says what to do."""


class ConfigError(ArtifactGSIError, ValueError):
    """An argument or setting is out of range or unknown (names it and the allowed values)."""


class HubTransferError(ArtifactGSIError, OSError):
    """A download or upload stopped (connection dropped, server gone); the message says how
    to resume."""


__all__ = ["ArtifactGSIError", "ConfigError", "HubTransferError"]
