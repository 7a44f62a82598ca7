"""What the supervised image-domain deep baselines share (``unet``, ``dicdnet``, ``oscnet``,
``oscnet_plus``): configs, training data, the training loop, the weights format and the
benchmark method.

* Configs: one dataclass per model family (subclasses of :class:`TrainConfig`), YAML files
  with ``base:`` chains, unknown keys are errors (with a "did you mean").
* Data: rows of the ``pairs`` train split; whole patients are held out for validation (the
  same held-out patients as LGA). The LI image (the shipped :mod:`baselines.li`) is computed
  once per dataset and cached (``data_cache``). Training draws random patches with random
  flips; each step's draws are a pure function of (seed, step, process), so a resumed run
  repeats exactly what the uninterrupted one would have done.
* Targets: ``gsi`` (default) or ``clean``. A built dataset holds no image of the anatomy
  without its implant, so ``clean`` uses the ``ideal`` column: the noise- and artifact-free
  monochromatic image of the same anatomy (metal included). Both the requested target and
  the column used are recorded in the weights and in results files.
* Weights folder (``save_pretrained`` / ``from_pretrained``)::

      config.json        {"format", "family", "config", "training": {...}}
      model.safetensors  parameters

  ``training`` records the target, the column, the dataset manifest sha256, the image size,
  the HU normalisation, the steps and the parameter count.
* HU normalisation: HU clipped to [hu_min, hu_max] and mapped linearly to [0, scale].
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from artifactgsi.schema import HU_MAX, HU_MIN
from benchmark.config_files import dataclass_kwargs, find_config_file, load_values, plain_dict
from benchmark.method import MARInput, MARMethod, MAROutput, PrepareContext

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "marbench-deep/1"
#: Normalisation kinds this code implements (weights naming another one are refused).
NORMALISATION_KINDS = ("hu_window",)
TARGETS = ("gsi", "clean")


# ----------------------------------------------------------------------------- errors


class ConfigError(ValueError):
    """A config file or value is invalid (the message names the file and the key)."""


class TrainError(RuntimeError):
    """A run cannot start or resume as asked (the message says why and what to do)."""


def check_run_folder(out: Path, config: dict[str, Any], resume: bool,
                     per_invocation: tuple[str, ...] = ("time_limit_s",)) -> None:
    """Refuse to start over a run in ``out`` unless ``resume``, to resume nothing, or to
    resume with another config. Keys in ``per_invocation`` (a time budget, a step cap) are
    settings of one invocation, not of the run, and may differ."""
    run_cfg = Path(out) / CONFIG_NAME
    if run_cfg.is_file():
        if not resume:
            raise TrainError(f"{out}: already holds a run; pass --resume to continue it, or "
                             "choose another --out folder")
        old = json.loads(run_cfg.read_text(encoding="utf-8"))
        diff = sorted(k for k in set(old) | set(config)
                      if old.get(k) != config.get(k) and k not in per_invocation)
        if diff:
            raise TrainError(f"{run_cfg}: the run was started with another config (keys "
                             f"{', '.join(diff)}); resume with the same config")
    elif resume:
        raise TrainError(f"{out}: nothing to resume (no {CONFIG_NAME})")


class WeightsError(FileNotFoundError):
    """Weights are missing or unreadable (the message says where it looked and what to do)."""


class IncompatibleWeightsError(WeightsError):
    """Weights were trained for other inputs than the ones given."""


class ImageSizeMismatchError(IncompatibleWeightsError):
    """Weights trained on slices of another size than the ones given."""


class NormalisationMismatchError(IncompatibleWeightsError):
    """Weights trained with another HU normalisation than the one asked for."""


# ----------------------------------------------------------------------------- config


@dataclass
class TrainConfig:
    """Settings every deep baseline shares: data, normalisation and optimisation.

    Subclasses add their model's fields and set ``family``; they document the defaults of
    their ``*-paper`` config.
    """

    family: ClassVar[str] = ""

    variant: str = ""                 # method name the weights are for (unet, dicdnet, ...)
    # ---- data
    target: str = "gsi"               # "gsi" or "clean" (the ``ideal`` column, see module doc)
    image_size: int | None = None     # px; None = the training data's size (recorded)
    hu_min: float = HU_MIN            # HU window mapped to [0, scale] (the dataset window)
    hu_max: float = HU_MAX
    scale: float = 1.0
    patch_size: int = 64              # random square training patches (0 = whole slices)
    flips: bool = True                # random up-down / left-right flips of training patches
    val_fraction: float = 0.2         # share of training patients held out for validation
    val_max_slices: int | None = 64   # validation subset (None = every held-out slice)
    data_cache: str | None = None     # folder for the cached arrays and LI images
    # ---- optimisation
    batch_size: int = 16
    lr: float = 2e-4
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 0.0            # max gradient norm (0 = none)
    max_steps: int = 1000
    lr_schedule: str = "step"         # "step" (x lr_gamma every lr_decay_every), "cosine",
    lr_decay_every: int = 1000        #   "constant"
    lr_gamma: float = 0.5
    lr_final_ratio: float = 0.02      # cosine: final lr / lr
    val_every: int = 100              # steps between validations (and the last step)
    checkpoint_every: int = 100       # steps between resumable checkpoints
    time_limit_s: float | None = None  # stop early (at a checkpoint) after this many seconds
    mixed_precision: str = "no"       # on GPU: "no", "bf16", "fp16"; CPU always fp32
    seed: int = 0
    init_from: str | None = None      # fine-tune from these weights (same size/normalisation)

    def validate(self, where: str = "config") -> TrainConfig:
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"{where}: {key}: {why}")

        if self.target not in TARGETS:
            raise bad("target", f"must be 'gsi' or 'clean', got {self.target!r}")
        if not self.hu_max > self.hu_min:
            raise bad("hu_max", f"must be above hu_min ({self.hu_min})")
        if self.scale <= 0:
            raise bad("scale", "must be > 0")
        if self.image_size is not None and self.image_size < 8:
            raise bad("image_size", "must be >= 8 px or null")
        if self.patch_size < 0 or (self.image_size and self.patch_size > self.image_size):
            raise bad("patch_size", f"must be 0 or up to image_size, got {self.patch_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise bad("val_fraction", "must be in [0, 1)")
        for key in ("batch_size", "max_steps", "lr_decay_every", "val_every",
                    "checkpoint_every"):
            if getattr(self, key) < 1:
                raise bad(key, "must be >= 1")
        if self.lr_schedule not in ("step", "cosine", "constant"):
            raise bad("lr_schedule", f"must be 'step', 'cosine' or 'constant', got "
                      f"{self.lr_schedule!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise bad("mixed_precision", "must be 'no', 'bf16' or 'fp16'")
        return self

    # -------------------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        return plain_dict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> TrainConfig:
        """Defaults overridden by ``values``; unknown keys and wrong types are errors."""
        kw = dataclass_kwargs(cls, values, where, ConfigError, sort_known=True)
        return cls(**kw).validate(where)

    def normalisation(self) -> dict[str, Any]:
        """The HU normalisation as recorded in weights."""
        return {"kind": "hu_window", "hu_min": float(self.hu_min), "hu_max": float(self.hu_max),
                "scale": float(self.scale)}

    def hu_to_model(self, hu: torch.Tensor) -> torch.Tensor:
        """HU -> model units: clip to [hu_min, hu_max], map to [0, scale] (any shape)."""
        return (hu.clamp(self.hu_min, self.hu_max) - self.hu_min) * (
            self.scale / (self.hu_max - self.hu_min))

    def model_to_hu(self, x: torch.Tensor) -> torch.Tensor:
        """Model units -> HU (no clipping: the caller decides)."""
        return x * ((self.hu_max - self.hu_min) / self.scale) + self.hu_min


def config_path(name: str, config_dir: Path, relative_to: Path | None = None) -> Path:
    """The YAML file of a shipped config name or a path (a ``base:`` relative to its file)."""
    return find_config_file(name, config_dir, ConfigError, relative_to=relative_to)


def load_config(cls: type[TrainConfig], config_dir: Path,
                config: str | Path | dict[str, Any] | TrainConfig | None = None,
                overrides: dict[str, Any] | None = None) -> Any:
    """A ``cls`` from a shipped name, a YAML path, a dict, an instance or ``None`` (the
    defaults), with ``overrides`` (e.g. from the command line) applied last."""
    values, where, _ = load_values(
        config, TrainConfig, lambda name, relative_to: config_path(name, config_dir, relative_to),
        ConfigError)
    if overrides:
        values.update(overrides)
        where += " + overrides"
    return cls.from_dict(values, where)


# ----------------------------------------------------------------------------- LI input


def li_image(ordinary_hu: torch.Tensor, metal_mask: torch.Tensor,
             pixel_spacing_mm: torch.Tensor | float) -> torch.Tensor:
    """The shipped LI image (:func:`baselines.li.li`, metal pixels re-inserted):
    (B, 1, H, W) float32 HU; slices without metal come back unchanged."""
    from baselines.li import li

    return li(ordinary_hu.float(), metal_mask.bool(), pixel_spacing_mm)


# ----------------------------------------------------------------------------- data


@dataclass
class SliceArrays:
    """In-memory (or memory-mapped) arrays of training slices, (N, H, W) each.

    ``ordinary``, ``target``, ``li``: int16 HU; ``mask``: bool metal mask.
    ``patients``: the patient id of each slice.
    """

    ordinary: np.ndarray
    target: np.ndarray
    li: np.ndarray
    mask: np.ndarray
    patients: list[str]

    def __len__(self) -> int:
        return int(self.ordinary.shape[0])


def _cache_root(config: TrainConfig) -> Path:
    if config.data_cache:
        return Path(config.data_cache).expanduser()
    base = os.environ.get("ARTIFACTGSI_CACHE") or "~/.cache/artifactgsi"
    return Path(base).expanduser() / "deep-data"


def target_column(split: Any, target: str) -> str:
    """The dataset column that supervises ``target`` (see the module doc)."""
    if target == "gsi":
        return "gsi"
    if not split.has_ideal:
        raise ConfigError(f"{split.where}: target 'clean' needs simulated data with an "
                          "'ideal' column (the artifact-free image of the same anatomy); this "
                          "dataset has none. Train with --target gsi.")
    return "ideal"


def load_slices(split: Any, rows: list[int], config: TrainConfig,
                log: Callable[[str], None] = print) -> SliceArrays:
    """Arrays of ``rows`` of ``split``, with the LI image, from the cache or computed once.

    The cache key is the dataset's manifest sha256 (or its file list), the rows and the LI
    version, so runs with other seeds, targets or models reuse the same LI images.
    """
    column = target_column(split, config.target)
    ident = split.source.manifest_sha256 or ",".join(f"{f.path}:{f.bytes}" for f in split.files)
    from baselines.li import LI

    key = hashlib.sha256(json.dumps([ident, split.config, split.split, rows,
                                     LI.version]).encode()).hexdigest()[:24]
    folder = _cache_root(config) / key
    names = ("ordinary", "gsi", "ideal", "li", "mask")
    if (folder / "done.json").is_file():
        arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in names
                  if (folder / f"{n}.npy").is_file()}
        patients = json.loads((folder / "done.json").read_text())["patients"]
    else:
        arrays, patients = _compute_slices(split, rows, log)
        tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        for n, a in arrays.items():
            np.save(tmp / f"{n}.npy", a)
        (tmp / "done.json").write_text(json.dumps({"patients": patients, "rows": rows}))
        if folder.exists():  # another process finished first: keep theirs
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    if column not in arrays:
        raise ConfigError(f"{split.where}: some training rows have no {column!r} image (real "
                          "patients have none); target 'clean' needs simulated data only. "
                          "Train with --target gsi.")
    return SliceArrays(arrays["ordinary"], arrays[column], arrays["li"], arrays["mask"],
                       patients)


def _compute_slices(split: Any, rows: list[int], log: Callable[[str], None]
                    ) -> tuple[dict[str, np.ndarray], list[str]]:
    cols: dict[str, list[np.ndarray]] = {n: [] for n in ("ordinary", "gsi", "ideal", "li",
                                                         "mask")}
    patients: list[str] = []
    t0 = time.perf_counter()
    chunk = 8
    for i in range(0, len(rows), chunk):
        b = split.batch(rows[i:i + chunk])
        inp = b.input
        li = li_image(inp.ordinary, inp.metal_mask, inp.pixel_spacing_mm)
        cols["ordinary"].append(_int16(inp.ordinary))
        cols["gsi"].append(_int16(b.gsi_hu))
        if b.ideal_hu is not None and bool(b.has_ideal.all()):
            cols["ideal"].append(_int16(b.ideal_hu))
        cols["li"].append(_int16(li))
        cols["mask"].append(inp.metal_mask[:, 0].numpy().astype(bool))
        patients += list(inp.patient_id)
        log(f"LI images: {min(i + chunk, len(rows))}/{len(rows)} slices "
            f"({time.perf_counter() - t0:.0f} s)")
    out = {n: np.concatenate(v) for n, v in cols.items()
           if v and (n != "ideal" or len(v) == len(cols["ordinary"]))}
    return out, patients


def _int16(x: torch.Tensor) -> np.ndarray:
    return np.clip(np.rint(x[:, 0].float().numpy()), -32768, 32767).astype(np.int16)


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The generator of one optimiser step's random draws: a pure function of (seed, step,
    process), so a resumed run draws exactly what the uninterrupted one did."""
    digest = hashlib.sha256(f"deep/{seed}/{step}/{rank}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def sample_batch(data: SliceArrays, config: TrainConfig, generator: torch.Generator
                 ) -> dict[str, torch.Tensor]:
    """A random training batch in HU: ``ordinary``, ``target``, ``li`` (B, 1, P, P) float32
    and ``mask`` (B, 1, P, P) bool; P = patch_size (or the slice size)."""
    n, h, w = data.ordinary.shape
    p = config.patch_size or h
    b = config.batch_size
    idx = torch.randint(0, n, (b,), generator=generator).tolist()
    ys = torch.randint(0, h - p + 1, (b,), generator=generator).tolist()
    xs = torch.randint(0, w - p + 1, (b,), generator=generator).tolist()
    flips = torch.randint(0, 2, (b, 2), generator=generator).tolist()
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("ordinary", "target", "li", "mask")}
    for i, y, x, (fu, fl) in zip(idx, ys, xs, flips, strict=True):
        for k in out:
            a = np.asarray(getattr(data, k)[i, y:y + p, x:x + p])
            if config.flips and fu:
                a = a[::-1]
            if config.flips and fl:
                a = a[:, ::-1]
            out[k].append(np.ascontiguousarray(a))
    res = {k: torch.from_numpy(np.stack(v)[:, None]) for k, v in out.items()}
    for k in ("ordinary", "target", "li"):
        res[k] = res[k].float()
    return res


# ----------------------------------------------------------------------------- models


class DeepModel(nn.Module):
    """Base class of the deep baselines' networks.

    Subclasses implement :meth:`restore_units` (model units in and out) and :meth:`losses`.
    ``training_info`` is what ``save_pretrained`` records besides the config.
    """

    family: ClassVar[str] = ""
    uses_li: ClassVar[bool] = True

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        self.config = config
        self.training_info: dict[str, Any] = {}

    def restore_units(self, x_ma: torch.Tensor, li: torch.Tensor, metal: torch.Tensor
                      ) -> torch.Tensor:
        """(B, 1, H, W) model units and bool metal mask -> (B, 1, H, W) restored image."""
        raise NotImplementedError

    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training losses of a batch of model-unit tensors (``loss`` is optimised)."""
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.losses(batch)

    def to_units(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c = self.config
        return {"ordinary": c.hu_to_model(batch["ordinary"]),
                "target": c.hu_to_model(batch["target"]),
                "li": c.hu_to_model(batch["li"]), "mask": batch["mask"]}

    @torch.no_grad()
    def restore(self, ordinary_hu: torch.Tensor, metal_mask: torch.Tensor,
                li_hu: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) HU -> (B, 1, H, W) float32 HU."""
        c = self.config
        out = self.restore_units(c.hu_to_model(ordinary_hu.float()),
                                 c.hu_to_model(li_hu.float()), metal_mask.bool())
        return c.model_to_hu(out.float()).clamp(c.hu_min, c.hu_max)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------------------ weights
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` atomically; returns ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "family": self.family, "config": self.config.to_dict(),
                "training": {**self.training_info, "parameters": self.parameter_count(),
                             "normalisation": self.config.normalisation()}}
        state = {k: v.detach().float().contiguous().cpu() if v.is_floating_point()
                 else v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        tmp = folder / f".{WEIGHTS_NAME}.tmp"
        save_file(state, str(tmp), metadata={"format": FORMAT})
        os.replace(tmp, folder / WEIGHTS_NAME)
        tmp = folder / f".{CONFIG_NAME}.tmp"
        tmp.write_text(json.dumps(meta, indent=1), encoding="utf-8")
        os.replace(tmp, folder / CONFIG_NAME)
        return folder


def read_weights_meta(folder: Path) -> dict[str, Any]:
    meta = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{folder / CONFIG_NAME}: not a deep-baseline weights config "
                           f"(expected format {FORMAT!r}, got {meta.get('format')!r})")
    return meta


def check_compatible(meta: dict[str, Any], where: Path, *, image_size: int | None = None,
                     normalisation: dict[str, Any] | None = None) -> None:
    """Refuse weights trained for other inputs.

    Raises:
        ImageSizeMismatchError: ``image_size`` differs from the size the weights were trained
            on.
        NormalisationMismatchError: the weights' HU normalisation is of a kind this code does
            not implement, or differs from ``normalisation``.
    """
    info = meta.get("training", {})
    norm = info.get("normalisation") or {}
    if norm.get("kind") not in NORMALISATION_KINDS:
        raise NormalisationMismatchError(
            f"{where}: the weights use HU normalisation {norm.get('kind')!r}; this version "
            f"implements {', '.join(NORMALISATION_KINDS)}. Retrain with this version.")
    if normalisation is not None:
        diff = {k: (norm.get(k), v) for k, v in normalisation.items()
                if k != "kind" and not math.isclose(float(norm.get(k, math.nan)), float(v))}
        if diff:
            got = ", ".join(f"{k}={a} (asked {b})" for k, (a, b) in diff.items())
            raise NormalisationMismatchError(
                f"{where}: the weights were trained with another HU normalisation: {got}. "
                "Use the weights' normalisation, or train new weights with yours.")
    trained = info.get("image_size")
    if image_size is not None and trained is not None and int(trained) != int(image_size):
        raise ImageSizeMismatchError(
            f"{where}: the weights were trained on {trained} px slices, the input is "
            f"{image_size} px. Pixel size changes what the filters see: train weights at "
            f"{image_size} px (the training data's size), or resample the data to {trained} px.")


def resolve_weights(source: str | Path, what: str) -> Path:
    """A local weights folder (``config.json`` + ``model.safetensors``)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise WeightsError(f"{what} weights {str(source)!r}: no such folder")
    if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
        raise WeightsError(f"{path}: not a {what} weights folder (needs {CONFIG_NAME} and "
                           f"{WEIGHTS_NAME}, as written by `marbench train {what}`)")
    return path


def locate_weights(weights: str | Path | None, env: str, ctx: PrepareContext, what: str,
                   untrained: Callable[[str], Exception]) -> Path:
    """The weights folder a method's ``prepare`` loads: its ``weights`` option, else ``$env``,
    else ``<cache_dir>/weights``; ``untrained(why)`` is raised when none is usable."""
    source = weights or os.environ.get(env) or (
        Path(ctx.cache_dir) / "weights" if ctx.cache_dir is not None else None)
    if source is None:
        raise untrained("no weights location given")
    try:
        return resolve_weights(source, what)
    except WeightsError as e:
        raise untrained(str(e)) from e


def load_model(folder: Path, build: Callable[[dict[str, Any], str], DeepModel],
               map_location: str | torch.device = "cpu") -> DeepModel:
    """Read a weights folder with ``build(config_dict, where) -> model``."""
    from safetensors.torch import load_file

    meta = read_weights_meta(folder)
    check_compatible(meta, folder)
    model = build(meta["config"], str(folder / CONFIG_NAME))
    state = load_file(str(folder / WEIGHTS_NAME), device=str(map_location))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(f"{folder / WEIGHTS_NAME}: does not match its config.json: "
                           f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.training_info = {k: v for k, v in meta.get("training", {}).items()
                           if k not in ("parameters", "normalisation")}
    return model


def weights_sha256(folder: Path) -> str:
    """sha256 of ``model.safetensors`` (recorded in results files)."""
    h = hashlib.sha256()
    with open(folder / WEIGHTS_NAME, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- training


def lr_at(config: TrainConfig, step: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based): a pure function of the step."""
    if config.lr_schedule == "constant":
        return config.lr
    if config.lr_schedule == "step":
        return config.lr * config.lr_gamma ** (step // config.lr_decay_every)
    t = min(step, config.max_steps - 1) / max(config.max_steps - 1, 1)
    lo = config.lr * config.lr_final_ratio
    return lo + 0.5 * (config.lr - lo) * (1.0 + math.cos(math.pi * t))


def _psnr_hu(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-slice PSNR (B,) as the benchmark computes it (HU window [-1024, 3071] -> [0, 1])."""
    from benchmark.metrics.image import psnr

    def unit(x: torch.Tensor) -> torch.Tensor:
        return (x.float().clamp(-1024.0, 3071.0) + 1024.0) / 4095.0

    return psnr(unit(pred), unit(target), data_range=1.0)


@torch.no_grad()
def validate(model: DeepModel, data: SliceArrays, device: torch.device,
             reinsert_metal: bool, batch: int = 8) -> dict[str, float]:
    """Mean PSNR (dB, benchmark window) of the model, the input and LI against the target on
    whole validation slices."""
    was = model.training
    model.eval()
    got: dict[str, list[torch.Tensor]] = {"psnr": [], "psnr_input": [], "psnr_li": []}
    for i in range(0, len(data), batch):
        sl = slice(i, i + batch)
        o = torch.from_numpy(np.asarray(data.ordinary[sl], np.float32))[:, None]
        t = torch.from_numpy(np.asarray(data.target[sl], np.float32))[:, None]
        li = torch.from_numpy(np.asarray(data.li[sl], np.float32))[:, None]
        m = torch.from_numpy(np.asarray(data.mask[sl]))[:, None]
        out = model.restore(o.to(device), m.to(device), li.to(device)).cpu()
        if reinsert_metal:
            out = torch.where(m, o, out)
        got["psnr"].append(_psnr_hu(out, t))
        got["psnr_input"].append(_psnr_hu(o, t))
        got["psnr_li"].append(_psnr_hu(li, t))
    model.train(was)
    return {k: float(torch.cat(v).mean()) for k, v in got.items()}


def _save_checkpoint(folder: Path, model: nn.Module, opt: torch.optim.Optimizer,
                     state: dict[str, Any]) -> None:
    """Model, optimiser and loop state, replaced atomically (``last`` is never partial)."""
    from safetensors.torch import save_file

    tmp = folder.with_name("last.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
              str(tmp / "model.safetensors"))
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
    old = folder.with_name("last.old")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old.exists():
        import shutil

        shutil.rmtree(old)


def _find_checkpoint(ckpt: Path) -> Path | None:
    for name in ("last", "last.old"):  # last.old: a crash between the two renames
        if (ckpt / name / "state.json").is_file():
            return ckpt / name
    return None


def run_training(config: TrainConfig, build: Callable[[TrainConfig], DeepModel],
                 load: Callable[[Path], DeepModel], data: str | Path, out: str | Path, *,
                 resume: bool = False, reinsert_metal: bool = False, tag: str = "deep"
                 ) -> Path:
    """Train ``build(config)`` on the ``pairs`` train split of ``data`` into ``out``.

    Output folder::

        OUT/config.json           the resolved config
        OUT/model/                best validation weights (save_pretrained)
        OUT/checkpoints/last/     model, optimiser, step, best metric (resume-exact)
        OUT/log.jsonl             one line per validation (the learning curve)

    Returns ``OUT/model``.
    """
    from accelerate import Accelerator

    from baselines.lga.data import patient_split
    from benchmark.data import open_split

    out = Path(out)
    cuda = torch.cuda.is_available()
    acc = Accelerator(cpu=not cuda, mixed_precision=config.mixed_precision if cuda else "no")
    say = acc.print
    run_cfg = out / "config.json"
    check_run_folder(out, config.to_dict(), resume)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        tmp = run_cfg.with_suffix(".tmp")
        tmp.write_text(json.dumps(config.to_dict(), indent=1), encoding="utf-8")
        os.replace(tmp, run_cfg)

    split = open_split(data, "train")
    train_rows, val_rows = patient_split(split, config.val_fraction, None)
    arrays = load_slices(split, sorted(set(train_rows) | set(val_rows)), config,
                         log=lambda s: say(f"[{tag}] {s}"))
    pos = {r: i for i, r in enumerate(sorted(set(train_rows) | set(val_rows)))}
    train_data = _subset(arrays, [pos[r] for r in train_rows])
    val_idx = [pos[r] for r in val_rows]
    if config.val_max_slices is not None and len(val_idx) > config.val_max_slices:
        pick = np.linspace(0, len(val_idx) - 1, config.val_max_slices).round().astype(int)
        val_idx = [val_idx[i] for i in pick]
    val_data = _subset(arrays, val_idx)
    size = int(train_data.ordinary.shape[-1])
    if train_data.ordinary.shape[-2] != size:
        raise TrainError(f"{split.where}: slices are {train_data.ordinary.shape[-2:]} px; the "
                         "deep baselines need square slices")
    if config.image_size is not None and config.image_size != size:
        raise TrainError(f"{split.where}: slices are {size} px but the config asks image_size "
                         f"{config.image_size}; pass --image_size {size} (or null)")
    if config.patch_size > size:
        raise TrainError(f"patch_size {config.patch_size} exceeds the {size} px slices; pass "
                         f"--patch_size {size} or less (0 = whole slices)")
    say(f"[{tag}] {len(train_data)} training slices, {len(val_data)} validation slices "
        f"({size} px), target {config.target!r} (column "
        f"{target_column(split, config.target)!r}); {acc.num_processes} process(es) on "
        f"{acc.device}")

    torch.manual_seed(config.seed)  # layers initialise from the global generator
    model = build(config)
    if config.init_from:
        src = resolve_weights(config.init_from, config.variant)
        meta = read_weights_meta(src)
        check_compatible(meta, src, image_size=size, normalisation=config.normalisation())
        init = load(src)
        model.load_state_dict(init.state_dict())
        say(f"[{tag}] initialised from {src}")
    model.training_info = {
        "target": config.target, "target_column": target_column(split, config.target),
        "data_source": split.source.source, "data_revision": split.source.revision,
        "data_manifest_sha256": split.source.manifest_sha256, "image_size": size,
        "train_patients": len(set(train_data.patients)),
        "val_patients": len(set(val_data.patients)), "init_from": config.init_from}
    model.to(acc.device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.adam_betas,
                           weight_decay=config.weight_decay)
    ckpt = out / "checkpoints" / "last"
    st: dict[str, Any] = {"step": 0, "best_metric": None, "best_step": None, "seconds": 0.0}
    last = _find_checkpoint(out / "checkpoints") if resume else None
    if last is not None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(last / "model.safetensors"),
                                        device=str(acc.device)))
        opt.load_state_dict(torch.load(last / "optimizer.pt", map_location=acc.device,
                                       weights_only=True))
        st = json.loads((last / "state.json").read_text(encoding="utf-8"))
        say(f"[{tag}] resumed from {last} at step {st['step']}")
    model, opt = acc.prepare(model, opt)
    net: DeepModel = acc.unwrap_model(model)
    best_dir = out / "model"

    def log(entry: dict[str, Any]) -> None:
        if acc.is_main_process:
            with open(out / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")

    t0 = time.perf_counter() - float(st.get("seconds", 0.0))
    running, n_run = 0.0, 0
    model.train()
    stopped_early = False
    while st["step"] < config.max_steps:
        step = st["step"]
        for group in opt.param_groups:
            group["lr"] = lr_at(config, step)
        g = step_generator(config.seed, step, acc.process_index)
        batch = {k: v.to(acc.device) for k, v in sample_batch(train_data, config, g).items()}
        with acc.autocast():
            losses = model(net.to_units(batch))  # forward = losses (DDP syncs there)
        acc.backward(losses["loss"])
        if config.grad_clip > 0:
            acc.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        st["step"] = step + 1
        running += float(losses["loss"].detach())
        n_run += 1
        over = config.time_limit_s is not None and time.perf_counter() - t0 > config.time_limit_s
        if st["step"] % config.val_every == 0 or st["step"] >= config.max_steps or over:
            st["seconds"] = round(time.perf_counter() - t0, 2)
            if acc.is_main_process:
                v = validate(net, val_data, acc.device, reinsert_metal)
                better = st["best_metric"] is None or v["psnr"] > st["best_metric"]
                if better:
                    st["best_metric"], st["best_step"] = v["psnr"], st["step"]
                    net.training_info.update(steps=st["step"], best_step=st["step"],
                                             val_psnr=v["psnr"])
                    net.save_pretrained(best_dir)
                log({"step": st["step"], "lr": lr_at(config, step),
                     "train_loss": running / max(n_run, 1), "val_psnr": v["psnr"],
                     "val_psnr_input": v["psnr_input"], "val_psnr_li": v["psnr_li"],
                     "best_step": st["best_step"], "seconds": st["seconds"]})
                say(f"[{tag}] step {st['step']}/{config.max_steps} loss "
                    f"{running / max(n_run, 1):.4g} val PSNR {v['psnr']:.2f} dB (input "
                    f"{v['psnr_input']:.2f}, LI {v['psnr_li']:.2f}) {st['seconds']:.0f} s")
            running, n_run = 0.0, 0
        if (st["step"] % config.checkpoint_every == 0 or st["step"] >= config.max_steps
                or over):
            st["seconds"] = round(time.perf_counter() - t0, 2)
            if acc.is_main_process:
                _save_checkpoint(ckpt, net, opt, st)
            acc.wait_for_everyone()
        if over:
            stopped_early = True
            say(f"[{tag}] time limit {config.time_limit_s} s reached at step {st['step']}; "
                "--resume continues")
            break
    acc.wait_for_everyone()
    if acc.is_main_process and (best_dir / CONFIG_NAME).is_file():
        meta = json.loads((best_dir / CONFIG_NAME).read_text(encoding="utf-8"))
        meta["training"].update(steps_done=st["step"], finished=not stopped_early,
                                train_seconds=st["seconds"])
        tmp = best_dir / f".{CONFIG_NAME}.tmp"
        tmp.write_text(json.dumps(meta, indent=1), encoding="utf-8")
        os.replace(tmp, best_dir / CONFIG_NAME)
    acc.end_training()
    return best_dir


def _subset(a: SliceArrays, idx: list[int]) -> SliceArrays:
    ix = np.asarray(idx, dtype=np.int64)
    return SliceArrays(np.asarray(a.ordinary[ix]), np.asarray(a.target[ix]),
                       np.asarray(a.li[ix]), np.asarray(a.mask[ix]),
                       [a.patients[i] for i in idx])


# ----------------------------------------------------------------------------- the method


def _flag(value: object, name: str, method: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{method}: option {name}={value!r} is not a boolean (true / false)")


class DeepMARMethod(MARMethod):
    """Base of the deep baselines as benchmark methods (needs trained weights).

    Options (constructor keywords, stored under the same names):
        weights: weights folder (``OUT/model`` of ``marbench train NAME``); default
            ``$MARBENCH_<NAME>_WEIGHTS``, then ``<method cache>/weights``.
        device: ``"cpu"``, ``"cuda"``... (default: the runner's device).
        batch_size: slices per forward pass.
        reinsert_metal: copy the input's metal pixels into the output (default: the
            family's default, see the subclass).
        target: ``"gsi"`` or ``"clean"``: checked against the weights (error if different);
            after ``prepare`` it holds the weights' target, which results files record.
    """

    version = "1"
    default_reinsert_metal: ClassVar[bool] = False

    def __init__(self, weights: str | None = None, device: str | None = None,
                 batch_size: int = 8, reinsert_metal: bool | None = None,
                 target: str | None = None) -> None:
        self.weights = weights
        self.device = device
        self.batch_size = int(batch_size)
        self.reinsert_metal = (self.default_reinsert_metal if reinsert_metal is None
                               else _flag(reinsert_metal, "reinsert_metal", self.name))
        if target is not None and target not in TARGETS:
            raise ValueError(f"{self.name}: option target must be 'gsi' or 'clean', got "
                             f"{target!r}")
        self.target = target
        self.model: DeepModel | None = None
        self.weights_sha256 = None

    # subclasses: read a weights folder into a model
    def load_weights(self, folder: Path) -> DeepModel:
        raise NotImplementedError

    def _untrained(self, why: str) -> WeightsError:
        env = f"MARBENCH_{self.name.upper()}_WEIGHTS"
        return WeightsError(
            f"{self.name} has no trained weights ({why}). Train it first: `marbench train "
            f"{self.name} --config {self.name.replace('_', '-')}-cpu --data DATA --out RUN`, "
            f"then `marbench run --method {self.name} -O weights=RUN/model`, or set ${env}. "
            "It never runs with random weights.")

    def prepare(self, ctx: PrepareContext) -> None:
        folder = locate_weights(self.weights, f"MARBENCH_{self.name.upper()}_WEIGHTS", ctx,
                                self.name, self._untrained)
        model = self.load_weights(folder)
        got = model.training_info.get("target")
        if self.target is not None and got != self.target:
            raise IncompatibleWeightsError(
                f"{folder}: the weights were trained with target {got!r}, option target is "
                f"{self.target!r}; give weights trained with --target {self.target}")
        self.target = got
        self.device = str(self.device or ctx.device)
        self.model = model.to(self.device).eval()
        self.weights = str(folder)
        self.weights_sha256 = weights_sha256(folder)

    def reduce(self, batch: MARInput) -> MAROutput:
        if self.model is None:
            raise self._untrained("prepare() was not called")
        size = self.model.training_info.get("image_size")
        h, w = batch.ordinary.shape[-2:]
        if size is not None and (h != size or w != size):
            raise ImageSizeMismatchError(
                f"{self.name}: the weights ({self.weights}) were trained on {size} px slices; "
                f"{batch.describe_slice(0)} is {h} x {w} px. Train weights on data of this "
                f"size (image_size is taken from the training data).")
        outs = []
        for i in range(0, batch.batch_size, self.batch_size):
            sl = slice(i, i + self.batch_size)
            o, m = batch.ordinary[sl], batch.metal_mask[sl]
            li = (li_image(o, m, batch.pixel_spacing_mm[sl]) if self.model.uses_li
                  else o)
            dev = torch.device(self.device)
            out = self.model.restore(o.to(dev), m.to(dev), li.to(dev)).float().cpu()
            if self.reinsert_metal:
                out = torch.where(m, o, out)
            outs.append(out)
        return MAROutput(image=torch.cat(outs).to(batch.ordinary.device))



# ----------------------------------------------------------------------------- CLI

TRAINERS = {"unet": "baselines.unet:train", "dicdnet": "baselines.dictnet:train_dicdnet",
            "oscnet": "baselines.dictnet:train_oscnet",
            "oscnet_plus": "baselines.dictnet:train_oscnet_plus"}


def main(argv: list[str] | None = None) -> None:
    """``python -m baselines.deep_common NAME --config C --data D --out O [-O key=value]``:
    the same training as ``marbench train NAME``, runnable under ``accelerate launch``
    (multi-GPU: ``accelerate launch --multi_gpu --num_processes 4 -m baselines.deep_common
    oscnet --config oscnet-paper ...``)."""
    import argparse
    import importlib

    p = argparse.ArgumentParser(prog="python -m baselines.deep_common",
                                description="Train a deep baseline (unet, dicdnet, oscnet, "
                                "oscnet_plus); works under `accelerate launch`.")
    p.add_argument("name", choices=sorted(TRAINERS))
    p.add_argument("--config", required=True, help="shipped config name or YAML path")
    p.add_argument("--data", required=True, help="built dataset folder or Hub repo id")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("-O", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="config override (repeatable); values are read as JSON when they "
                   "parse (numbers, true/false), else as text")
    a = p.parse_args(argv)
    from artifactgsi.cli_common import KeyValueError, parse_key_values

    try:
        overrides = parse_key_values(a.option, option="-O")
    except KeyValueError as e:
        p.error(str(e))
    module, _, attr = TRAINERS[a.name].partition(":")
    trainer = getattr(importlib.import_module(module), attr)
    folder = trainer(a.config, a.data, Path(a.out), resume=a.resume, overrides=overrides)
    if os.environ.get("RANK", "0") == "0":  # one line per run, not per process
        print(folder)


if __name__ == "__main__":
    main()
