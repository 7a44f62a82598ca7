"""Fixed-seed tiny trainings of every trainable family, and the shipped weights' predictions,
recorded so that a refactoring of the training code can show that no number moved.

    python benchmarks/bench_learn_curves.py --record tests/baselines/fixtures/learn_curves.json
    python benchmarks/bench_learn_curves.py --check tests/baselines/fixtures/learn_curves.json

For each family (``lga-tiny``, ``unet-tiny``, ``dicdnet-tiny``, ``oscnet-tiny``,
``oscnet-plus-tiny``, ``dudodp-tiny``, ``seg-tiny``) it trains on the library's tiny built
dataset (:func:`artifactgsi.testing.tiny_built_dataset`, 32 px, fixed pseudonymisation key)
with one torch thread and records:

- ``losses``: the value of every tensor that ``backward`` was called on, in order (the loss
  of each optimiser step), as ``float.hex`` so that a comparison is bitwise;
- ``weights``: the sha256 of the trained model's tensors (names, dtypes, shapes and bytes,
  not the file, whose header may carry other metadata);
- ``log``: the numbers of ``log.jsonl`` (validation scores; times left out).

Then it applies the shipped demo weights (``weights/lga-cpu-demo``, ``weights/seg-cpu-demo``)
to every slice of the tiny dataset and records the sha256 of the output tensors: LGA's
(B, 1, H, W) float32 HU images, the segmenter's (B, H, W) uint8 label maps and its float32
logits.

``--check`` recomputes everything and prints, per entry, ``bitwise`` or the largest
difference; it exits 1 when a loss differs by more than ``--tol`` (absolute).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: LGA has no shipped tiny config before this script was written; these are the values of the
#: tests' tiny model (tests/baselines/test_lga.py), the same as ``lga-tiny``.
LGA_TINY: dict[str, Any] = dict(
    image_size=32, vae_channels=[8, 16], vae_layers_per_block=1, vae_norm_groups=4,
    vae_mid_attention=False, inv_channels=[8, 16], inv_embed_dim=8, align_channels=[8, 16],
    align_layers_per_block=1, align_norm_groups=4, align_heads=2, align_attention_levels=[1],
    implant_tokens=2, batch_size=2, vae_epochs=1, invariance_epochs=1, align_epochs=2,
    max_steps=3, num_workers=0, lr=1e-3, checkpoint_every=1, val_max_slices=4)

#: family -> (trainer "module:function", config, overrides). The overrides lengthen the tiny
#: runs a little (a dozen steps), so that schedules, checkpoints and validations all show.
FAMILIES: dict[str, tuple[str, Any, dict[str, Any]]] = {
    "lga-tiny": ("baselines.lga.train:train", LGA_TINY,
                 {"max_steps": 6, "vae_epochs": 3, "align_epochs": 3, "val_every": 1}),
    "unet-tiny": ("baselines.unet:train", "unet-tiny",
                  {"max_steps": 12, "val_every": 4, "checkpoint_every": 4}),
    "dicdnet-tiny": ("baselines.dictnet:train_dicdnet", "dicdnet-tiny",
                     {"max_steps": 12, "val_every": 4, "checkpoint_every": 4}),
    "oscnet-tiny": ("baselines.dictnet:train_oscnet", "oscnet-tiny",
                    {"max_steps": 12, "val_every": 4, "checkpoint_every": 4}),
    "oscnet-plus-tiny": ("baselines.dictnet:train_oscnet_plus", "oscnet-plus-tiny",
                         {"max_steps": 12, "val_every": 4, "checkpoint_every": 4}),
    "dudodp-tiny": ("baselines.dudodp.train:train", "dudodp-tiny",
                    {"max_steps": 8, "checkpoint_every": 4}),
    "seg-tiny": ("benchmark.segmentation:train", "seg-tiny", {"batch_size": 2, "epochs": 4}),
}
#: Families whose trainer reads a ``data_cache`` key (the LI images).
DATA_CACHE = ("unet-tiny", "dicdnet-tiny", "oscnet-tiny", "oscnet-plus-tiny")


def _import(target: str) -> Any:
    import importlib

    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@contextlib.contextmanager
def _recording_backward(into: list[str]):
    """Record the value of every tensor ``backward`` is called on."""
    real = torch.autograd.backward

    def backward(tensors, *args, **kwargs):
        t = tensors[0] if isinstance(tensors, (tuple, list)) else tensors
        if t.numel() == 1:
            into.append(float(t.detach().double().item()).hex())
        return real(tensors, *args, **kwargs)

    torch.autograd.backward = backward
    try:
        yield
    finally:
        torch.autograd.backward = real


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of each tensor, names sorted."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _numbers(log: Path) -> list[dict[str, Any]]:
    if not log.is_file():
        return []
    keep = []
    for line in log.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        keep.append({k: v for k, v in entry.items()
                     if k not in ("seconds", "steps_per_s", "train_seconds")
                     and isinstance(v, (int, float)) and not isinstance(v, bool)})
    return keep


def train_family(name: str, data: Path, work: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    target, config, extra = FAMILIES[name]
    overrides = dict(extra)
    if name in DATA_CACHE:
        overrides["data_cache"] = str(work / "li-cache")
    out = work / name
    losses: list[str] = []
    torch.manual_seed(0)
    with _recording_backward(losses), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model_dir = Path(_import(target)(config, str(data), out, overrides=overrides))
    return {"losses": losses,
            "weights": tensors_sha256(load_file(str(model_dir / "model.safetensors"))),
            "log": _numbers(out / "log.jsonl")}


def shipped_predictions(data: Path) -> dict[str, Any]:
    """sha256 of the shipped weights' outputs on every slice of the tiny dataset."""
    from baselines.lga import LGA
    from benchmark.data import open_split
    from benchmark.method import PrepareContext

    out: dict[str, Any] = {}
    lga = LGA(weights=str(REPO / "weights" / "lga-cpu-demo"))
    lga.prepare(PrepareContext())
    seg_mod = _import("benchmark.segmentation:load_segmenter")
    seg = seg_mod(REPO / "weights" / "seg-cpu-demo")
    for split_name in ("train", "test"):
        split = open_split(str(data), split_name)
        images, labels, logits = [], [], []
        for batch in split.iter_batches(4, neighbour_slices=lga.neighbour_slices):
            with torch.no_grad():
                images.append(lga.reduce(batch.input).image)
                labels.append(seg.predict(batch.gsi_hu))
                logits.append(seg.logits(batch.gsi_hu.to(torch.float32)))
        out[f"lga/{split_name}"] = tensors_sha256({"image": torch.cat(images)})
        out[f"seg-labels/{split_name}"] = tensors_sha256({"labels": torch.cat(labels)})
        out[f"seg-logits/{split_name}"] = tensors_sha256({"logits": torch.cat(logits)})
    out["lga/weights_sha256"] = lga.weights_sha256
    out["seg/weights_sha256"] = seg.weights_sha256
    return out


def run(families: list[str], data_root: Path | None) -> dict[str, Any]:
    """Train ``families`` and apply the shipped weights on the tiny dataset under
    ``data_root`` (built there if needed); torch's thread count and the ``datasets`` cache
    are restored afterwards."""
    import datasets

    from artifactgsi.testing import tiny_built_dataset

    threads, hf_cache = torch.get_num_threads(), datasets.config.HF_DATASETS_CACHE
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="learn-curves-") as tmp:
            work = Path(tmp)
            datasets.config.HF_DATASETS_CACHE = str(work / "hf-datasets")
            built = tiny_built_dataset(data_root or work / "tiny").built
            result: dict[str, Any] = {"torch": torch.__version__, "families": {}}
            for name in families:
                print(f"[curves] {name} ...", flush=True)
                result["families"][name] = train_family(name, built, work)
            print("[curves] shipped weights ...", flush=True)
            result["shipped"] = shipped_predictions(built)
    finally:
        torch.set_num_threads(threads)
        datasets.config.HF_DATASETS_CACHE = hf_cache
    return result


def _hexf(v: str) -> float:
    return float.fromhex(v)


def compare(old: dict[str, Any], new: dict[str, Any], tol: float) -> bool:
    ok = True
    for name, ref in old["families"].items():
        got = new["families"].get(name)
        if got is None:
            continue
        a, b = [_hexf(v) for v in ref["losses"]], [_hexf(v) for v in got["losses"]]
        if len(a) != len(b):
            print(f"{name:18s} losses: {len(b)} steps, expected {len(a)}")
            ok = False
            continue
        diff = max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0.0)
        same = ref["losses"] == got["losses"]
        verdict = "bitwise" if same else f"max |diff| {diff:.3g}"
        if diff > tol or (math.isnan(diff)):
            ok = False
        w = "same" if ref["weights"] == got["weights"] else "DIFFERENT"
        log = "same" if ref["log"] == got["log"] else "DIFFERENT"
        print(f"{name:18s} {len(a):3d} losses {verdict}; weights {w}; log numbers {log}")
    for key, ref in old.get("shipped", {}).items():
        got = new.get("shipped", {}).get(key)
        same = got == ref
        ok &= same
        print(f"{key:24s} {'same' if same else 'DIFFERENT'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--record", type=Path, help="write the numbers to this JSON file")
    g.add_argument("--check", type=Path, help="compare with the numbers in this JSON file")
    p.add_argument("--families", nargs="*", default=list(FAMILIES))
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder for the tiny dataset (reused when already built)")
    p.add_argument("--tol", type=float, default=1e-6, help="largest loss difference allowed")
    a = p.parse_args(argv)
    result = run(a.families, a.data_root)
    if a.record:
        a.record.parent.mkdir(parents=True, exist_ok=True)
        a.record.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"written: {a.record}")
        return 0
    old = json.loads(a.check.read_text(encoding="utf-8"))
    return 0 if compare(old, result, a.tol) else 1


if __name__ == "__main__":
    raise SystemExit(main())
