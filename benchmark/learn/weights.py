"""One weights-folder format for every trained model, and its base class.

A weights folder (written by :meth:`PretrainedModel.save_pretrained`, read by
:meth:`PretrainedModel.from_pretrained` from a folder or a Hugging Face Hub model repo)::

    config.json        {"format": "marbench-weights/1", "family": "unet",
                        "config": {...every config field...},
                        "model": {"parameters", "image_size", "normalisation", "target"},
                        "training": {"dataset_manifest_sha256", "config_name", steps, ...}}
    model.safetensors  the parameters and buffers (float32)
    README.md          the model card: the sha256 of model.safetensors, the dataset
                       manifest sha256, the parameter count, image size, HU normalisation
                       and target, in a table under Hub metadata

``model`` is derived from the config and the training record when the folder is written;
on loading it is derived again and a folder whose record disagrees (an edited file, another
version's normalisation) is refused. Folders of the earlier per-family formats
(``marbench-lga/1``, ``marbench-deep/1``, ``marbench-segmenter/1``) still load: each family
reads its own earlier layout (:meth:`PretrainedModel.upgrade_legacy`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from artifactgsi.fileio import sha256_file, write_text_atomic

from .checkpoint import cpu_state_dict
from .config import ConfigBase
from .errors import (
    ImageSizeMismatchError,
    IncompatibleWeightsError,
    NormalisationMismatchError,
    WeightsError,
)

FORMAT = "marbench-weights/1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
#: Normalisation kinds this code implements (weights naming another one are refused).
NORMALISATION_KINDS = ("hu_window",)

M = TypeVar("M", bound="PretrainedModel")


def weights_sha256(folder: str | Path) -> str:
    """sha256 of ``folder/model.safetensors`` (what results files record)."""
    return sha256_file(Path(folder) / WEIGHTS_NAME)


def hu_window(hu_min: float, hu_max: float, low: float, high: float) -> dict[str, Any]:
    """The record of a normalisation that clips HU to [hu_min, hu_max] and maps that window
    linearly onto [low, high]."""
    return {"kind": "hu_window", "hu_min": float(hu_min), "hu_max": float(hu_max),
            "range": [float(low), float(high)]}


def is_repo_id(text: str) -> bool:
    """Whether ``text`` reads as a Hub repo id ``org/name`` (not a path)."""
    return text.count("/") == 1 and not text.startswith((".", "/", "~"))


def resolve_weights(source: str | Path, revision: str | None = None, what: str = "model"
                    ) -> Path:
    """A local weights folder, or the snapshot of a Hub model repo id ``org/name`` at
    ``revision`` (downloaded with ``huggingface_hub``, cached).

    Raises:
        WeightsError: neither a folder with ``config.json`` and ``model.safetensors`` nor a
            repo that can be downloaded (the message says which and what to do).
    """
    path = Path(source).expanduser()
    if path.exists():
        if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
            raise WeightsError(f"{path}: not a {what} weights folder (needs {CONFIG_NAME} and "
                               f"{WEIGHTS_NAME}, as written by `marbench train {what}`)")
        return path
    text = str(source)
    if not is_repo_id(text):
        raise WeightsError(f"{what} weights {text!r}: no such folder (nor a Hub repo id "
                           "'org/name')")
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(text, revision=revision,
                                        allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME]))
    except Exception as e:  # offline, unknown repo or revision, authentication
        raise WeightsError(f"{what} weights {text!r}: no such folder, and downloading it as a "
                           f"Hub model repo failed: {type(e).__name__}: {e}") from e
    return resolve_weights(folder, None, what)


def read_meta(folder: Path) -> dict[str, Any]:
    """The JSON object of ``folder/config.json`` (:class:`WeightsError` if it is not one)."""
    path = Path(folder) / CONFIG_NAME
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        why = f"expected a JSON object, got {type(meta).__name__}"
    except json.JSONDecodeError as e:
        meta, why = None, f"not valid JSON ({e})"
    if not isinstance(meta, dict):
        raise WeightsError(f"{path}: {why}")
    return meta


class PretrainedModel(nn.Module):
    """Base class of every trained model: built from a config, saved and loaded as a weights
    folder (see the module doc).

    A family sets :attr:`family` and :attr:`config_class`, builds its network in
    ``__init__(config)`` (after ``super().__init__(config)``) and says what its card records
    through :meth:`normalisation`, :attr:`image_size` and :attr:`target`.

    Attributes:
        config: the config it was built with.
        training_info: provenance recorded under ``training`` (dataset manifest sha256,
            config name, steps, validation scores...), read back on loading.
        weights_sha256: sha256 of the ``model.safetensors`` it was loaded from or saved to.
        source: the folder or Hub repo id it was loaded from.
        format: the format of the folder it was loaded from.
    """

    family: ClassVar[str] = ""
    config_class: ClassVar[type[ConfigBase]] = ConfigBase
    #: Earlier folder formats :meth:`upgrade_legacy` reads.
    legacy_formats: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.training_info: dict[str, Any] = {}
        self.weights_sha256: str | None = None
        self.source: str | None = None
        self.format: str = FORMAT

    # ------------------------------------------------------------------ what the card records
    def normalisation(self) -> dict[str, Any]:
        """How HU become network input (:func:`hu_window`)."""
        raise NotImplementedError

    @property
    def image_size(self) -> int | None:
        """The slice size (px) the weights were trained on, when known."""
        size = self.training_info.get("image_size", getattr(self.config, "image_size", None))
        return None if size is None else int(size)

    @property
    def target(self) -> str | None:
        """What the network was trained to produce (``"gsi"``, ``"clean"``, labels...)."""
        return self.training_info.get("target")

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def model_record(self) -> dict[str, Any]:
        """The ``model`` entry of config.json (and the card)."""
        return {"parameters": self.parameter_count(), "image_size": self.image_size,
                "normalisation": self.normalisation(), "target": self.target}

    # ------------------------------------------------------------------------------ writing
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``model.safetensors``, then ``config.json`` and the card ``README.md`` (each
        atomically) to ``folder``; returns it."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{WEIGHTS_NAME}.{os.getpid()}.tmp"
        # One metadata key: safetensors writes several in no fixed order, and the file's
        # sha256 (what results files record) must not change from one save to the next.
        save_file(cpu_state_dict(self, float32=True), str(tmp), metadata={"format": FORMAT})
        os.replace(tmp, folder / WEIGHTS_NAME)
        self.weights_sha256 = weights_sha256(folder)
        meta = {"format": FORMAT, "family": self.family, "config": self.config.to_dict(),
                "model": self.model_record(), "training": dict(self.training_info)}
        write_text_atomic(folder / CONFIG_NAME, json.dumps(meta, indent=1))
        from .card import model_card

        write_text_atomic(folder / CARD_NAME, model_card(self.family, meta, self.weights_sha256))
        return folder

    # ------------------------------------------------------------------------------ reading
    @classmethod
    def upgrade_legacy(cls, meta: dict[str, Any], where: str) -> dict[str, Any]:
        """A folder of one of :attr:`legacy_formats` as the current layout (``family``,
        ``config``, ``training``; ``model`` when the old folder recorded it)."""
        raise NotImplementedError

    @classmethod
    def from_config(cls: type[M], values: dict[str, Any], where: str) -> M:
        """A new model of this family from the ``config`` of a weights folder."""
        return cls(cls.config_class.from_dict(values, where))

    @classmethod
    def from_pretrained(cls: type[M], source: str | Path, revision: str | None = None,
                        map_location: str | torch.device = "cpu") -> M:
        """Load a weights folder, or a Hub model repo id at ``revision``.

        Raises:
            WeightsError: no weights there, another family's, or tensors that do not match
                the config.
            NormalisationMismatchError: the folder records a normalisation this code does
                not implement, or another than its config implies.
        """
        from safetensors.torch import load_file

        folder = resolve_weights(source, revision, cls.family)
        where = str(folder / CONFIG_NAME)
        meta = read_meta(folder)
        found = meta.get("format")
        if found in cls.legacy_formats:
            meta = {**cls.upgrade_legacy(meta, where), "format": found}
        elif found != FORMAT:
            raise WeightsError(f"{where}: format {found!r}, expected {FORMAT!r}; is this a "
                               f"{cls.family} weights folder (`marbench train {cls.family}`)?")
        if meta.get("family") != cls.family:
            raise WeightsError(f"{where}: these are {meta.get('family')!r} weights, not "
                               f"{cls.family!r} ones")
        model = cls.from_config(dict(meta.get("config") or {}), where)
        model.training_info = dict(meta.get("training") or {})
        model.check_record(meta.get("model"), where)
        state = load_file(str(folder / WEIGHTS_NAME), device=str(map_location))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise WeightsError(f"{folder / WEIGHTS_NAME}: does not match its {CONFIG_NAME}: "
                               f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        model.weights_sha256 = weights_sha256(folder)
        model.source = str(source)
        model.format = str(found)
        return model.eval()

    def check_record(self, record: dict[str, Any] | None, where: str) -> None:
        """Refuse a stored ``model`` record that disagrees with the loaded config."""
        if not record:
            return
        norm = record.get("normalisation") or {}
        if norm.get("kind") not in NORMALISATION_KINDS:
            raise NormalisationMismatchError(
                f"{where}: the weights use HU normalisation {norm.get('kind')!r}; this version "
                f"implements {', '.join(NORMALISATION_KINDS)}. Retrain with this version.")
        mine = self.normalisation()
        if not _same_numbers(norm, mine):
            raise NormalisationMismatchError(
                f"{where}: records normalisation {norm} but its config gives {mine}; the "
                "file was edited or written by another version")


def _same_numbers(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if set(a) != set(b):
        return False
    for k, v in a.items():
        w = b[k]
        if isinstance(v, (int, float)) and isinstance(w, (int, float)):
            if not math.isclose(float(v), float(w)):
                return False
        elif isinstance(v, list) and isinstance(w, list):
            if len(v) != len(w) or not all(math.isclose(float(x), float(y))
                                           for x, y in zip(v, w, strict=True)):
                return False
        elif v != w:
            return False
    return True


def check_compatible(model: PretrainedModel, where: str | Path, *,
                     image_size: int | None = None,
                     normalisation: dict[str, Any] | None = None) -> None:
    """Refuse weights trained for other inputs (e.g. before fine-tuning them).

    Raises:
        ImageSizeMismatchError: ``image_size`` differs from the size the weights were trained
            on.
        NormalisationMismatchError: the weights' HU normalisation differs from
            ``normalisation`` (names each value that differs).
    """
    if normalisation is not None:
        norm = model.normalisation()
        diff = {k: (norm.get(k), v) for k, v in normalisation.items()
                if k != "kind" and not _same_numbers({k: norm.get(k)}, {k: v})}
        if diff:
            got = ", ".join(f"{k}={a} (asked {b})" for k, (a, b) in diff.items())
            raise NormalisationMismatchError(
                f"{where}: the weights were trained with another HU normalisation: {got}. "
                "Use the weights' normalisation, or train new weights with yours.")
    trained = model.image_size
    if image_size is not None and trained is not None and int(trained) != int(image_size):
        raise ImageSizeMismatchError(
            f"{where}: the weights were trained on {trained} px slices, the input is "
            f"{image_size} px. Pixel size changes what the filters see: train weights at "
            f"{image_size} px (the training data's size), or resample the data to {trained} px.")


__all__ = ["CARD_NAME", "CONFIG_NAME", "FORMAT", "WEIGHTS_NAME", "IncompatibleWeightsError",
           "PretrainedModel", "check_compatible", "hu_window", "is_repo_id", "read_meta",
           "resolve_weights", "weights_sha256"]
