"""Training of the supervised image-domain deep baselines (``unet``, ``dicdnet``, ``oscnet``,
``oscnet_plus``) with the training kit (:mod:`benchmark.learn`).

* Data: rows of the ``pairs`` train split; whole patients are held out for validation (the
  kit's :func:`~benchmark.learn.split.patient_split`, the same held-out patients as LGA).
  The LI image (the shipped :mod:`baselines.li`) is computed once per dataset and cached
  (``data_cache``, default ``$ARTIFACTGSI_CACHE/deep-data``).
* Batches: random patches with random flips; each step's draws are a pure function of
  (seed, step, process), so a resumed run repeats exactly what the uninterrupted one would
  have done.
* Validation: PSNR (the benchmark's HU window) of the model, of its input and of LI against
  the target on whole held-out slices; the best step's weights are ``OUT/model``.

Run folder (:class:`benchmark.learn.run.Run`)::

    OUT/config.json           the resolved config
    OUT/model/                best validation weights (save_pretrained)
    OUT/checkpoints/last/     model, optimiser, step, best metric (resume-exact)
    OUT/log.jsonl             one line per validation (the learning curve)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from artifactgsi.settings import cache_root
from benchmark.learn.data import to_int16
from benchmark.learn.errors import ConfigError, TrainError
from benchmark.learn.loop import Report, Trainer
from benchmark.learn.rng import seed_everything, step_generator
from benchmark.learn.run import Run
from benchmark.learn.split import evenly_spaced, patient_split
from benchmark.learn.weights import CONFIG_NAME, check_compatible

from .deep_common import DeepModel, TrainConfig, li_image

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

    def subset(self, idx: list[int]) -> SliceArrays:
        ix = np.asarray(idx, dtype=np.int64)
        return SliceArrays(np.asarray(self.ordinary[ix]), np.asarray(self.target[ix]),
                           np.asarray(self.li[ix]), np.asarray(self.mask[ix]),
                           [self.patients[i] for i in idx])


def data_cache_dir(config: TrainConfig) -> Path:
    """Where the LI images are cached: ``data_cache``, else ``$ARTIFACTGSI_CACHE/deep-data``."""
    if config.data_cache:
        return Path(config.data_cache).expanduser()
    return cache_root() / "deep-data"


def target_column(split: Any, target: str) -> str:
    """The dataset column that supervises ``target`` (see :mod:`baselines.deep_common`)."""
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
    folder = data_cache_dir(config) / key
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
        cols["ordinary"].append(to_int16(inp.ordinary[:, 0]))
        cols["gsi"].append(to_int16(b.gsi_hu[:, 0]))
        if b.ideal_hu is not None and bool(b.has_ideal.all()):
            cols["ideal"].append(to_int16(b.ideal_hu[:, 0]))
        cols["li"].append(to_int16(li[:, 0]))
        cols["mask"].append(inp.metal_mask[:, 0].numpy().astype(bool))
        patients += list(inp.patient_id)
        log(f"LI images: {min(i + chunk, len(rows))}/{len(rows)} slices "
            f"({time.perf_counter() - t0:.0f} s)")
    out = {n: np.concatenate(v) for n, v in cols.items()
           if v and (n != "ideal" or len(v) == len(cols["ordinary"]))}
    return out, patients


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


# ----------------------------------------------------------------------------- validation


def _psnr_hu(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-slice PSNR (B,) as the benchmark computes it (HU window [-1024, 3071] -> [0, 1])."""
    from artifactgsi.schema import hu_to_unit01
    from benchmark.metrics.image import psnr

    return psnr(hu_to_unit01(pred.float()), hu_to_unit01(target.float()), data_range=1.0)


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


# ----------------------------------------------------------------------------- training


def run_training(config: TrainConfig, model_class: type[DeepModel], data: str | Path,
                 out: str | Path, *, resume: bool = False, reinsert_metal: bool = False,
                 tag: str = "deep", config_name: str | None = None) -> Path:
    """Train ``model_class(config)`` on the ``pairs`` train split of ``data`` into the run
    folder ``out`` (see the module doc); returns ``OUT/model``, the best validation
    weights."""
    from benchmark.data import open_split

    out = Path(out)
    run = Run(out, config, resume=resume, tag=tag, mixed_precision=config.mixed_precision,
              per_invocation=("time_limit_s",))
    split = open_split(data, "train")
    ids = [split.slice_id(r)[0] for r in split.order]
    train_pos, val_pos = patient_split(ids, config.val_fraction, where=split.where)
    rows = sorted(split.order)
    at = {r: i for i, r in enumerate(rows)}
    arrays = load_slices(split, rows, config, log=run.say)
    train_data = arrays.subset([at[split.order[i]] for i in train_pos])
    val_data = arrays.subset(evenly_spaced([at[split.order[i]] for i in val_pos],
                                           config.val_max_slices))
    size = _check_size(train_data, config, split.where)
    column = target_column(split, config.target)
    run.say(f"{len(train_data)} training slices, {len(val_data)} validation slices "
            f"({size} px), target {config.target!r} (column {column!r}); "
            f"{run.accelerator.num_processes} process(es) on {run.device}")

    seed_everything(config.seed)  # layers initialise from the global generator
    net = model_class(config)
    if config.init_from:
        init = model_class.from_pretrained(config.init_from)
        check_compatible(init, config.init_from, image_size=size,
                         normalisation=config.normalisation())
        net.load_state_dict(init.state_dict())
        run.say(f"initialised from {config.init_from}")
    net.training_info = {
        "target": config.target, "target_column": column, "config_name": config_name,
        "data_source": split.source.source, "data_revision": split.source.revision,
        "dataset_manifest_sha256": split.source.manifest_sha256, "image_size": size,
        "train_patients": len(set(train_data.patients)),
        "val_patients": len(set(val_data.patients)), "init_from": config.init_from}
    net.to(run.device)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, betas=config.adam_betas,
                           weight_decay=config.weight_decay)
    trainer = Trainer(run, net, opt, total_steps=config.max_steps, lr_at=config.lr_at,
                      checkpoint_dir=out / "checkpoints",
                      checkpoint_every=config.checkpoint_every, grad_clip=config.grad_clip,
                      time_limit_s=config.time_limit_s)
    best_dir = out / "model"

    def batches() -> Iterator[dict[str, torch.Tensor]]:
        while True:
            g = step_generator("deep", config.seed, trainer.step, run.process_index)
            yield {k: v.to(run.device) for k, v in sample_batch(train_data, config, g).items()}

    def evaluate() -> tuple[float | None, dict[str, Any]]:
        if not run.is_main:
            return None, {}
        v = validate(net, val_data, run.device, reinsert_metal)
        return v["psnr"], v

    def keep_best(metric: float, details: dict[str, Any]) -> None:
        net.training_info.update(steps=trainer.step, best_step=trainer.step, val_psnr=metric)
        net.save_pretrained(best_dir)

    def report(r: Report) -> dict[str, Any]:
        v = r.details
        run.say(f"step {r.step}/{config.max_steps} loss {r.train_loss:.4g} val PSNR "
                f"{v['psnr']:.2f} dB (input {v['psnr_input']:.2f}, LI {v['psnr_li']:.2f}) "
                f"{r.seconds:.0f} s")
        return {"step": r.step, "lr": r.lr, "train_loss": r.train_loss, "val_psnr": v["psnr"],
                "val_psnr_input": v["psnr_input"], "val_psnr_li": v["psnr_li"],
                "best_step": trainer.state["best_step"], "seconds": r.seconds}

    trainer.module.train()
    trainer.fit(batches(), lambda batch, step: trainer.module(net.to_units(batch)),
                validates=lambda s: s % config.val_every == 0, validate=evaluate,
                on_best=keep_best, report=report, progress=tag)
    if run.is_main and (best_dir / CONFIG_NAME).is_file():
        finish_record(best_dir, steps_done=trainer.step, finished=not trainer.stopped_early,
                      train_seconds=trainer.state["seconds"])
    run.end()
    return best_dir


def _check_size(data: SliceArrays, config: TrainConfig, where: str) -> int:
    """The (square) slice size, checked against ``image_size`` and ``patch_size``."""
    size = int(data.ordinary.shape[-1])
    if data.ordinary.shape[-2] != size:
        raise TrainError(f"{where}: slices are {data.ordinary.shape[-2:]} px; the deep "
                         "baselines need square slices")
    if config.image_size is not None and config.image_size != size:
        raise TrainError(f"{where}: slices are {size} px but the config asks image_size "
                         f"{config.image_size}; pass --image_size {size} (or null)")
    if config.patch_size > size:
        raise TrainError(f"patch_size {config.patch_size} exceeds the {size} px slices; pass "
                         f"--patch_size {size} or less (0 = whole slices)")
    return size


def finish_record(folder: Path, **values: Any) -> None:
    """Add ``values`` to the ``training`` record of the weights folder's config.json."""
    from artifactgsi.fileio import write_text_atomic

    meta = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    meta["training"].update(values)
    write_text_atomic(folder / CONFIG_NAME, json.dumps(meta, indent=1))
