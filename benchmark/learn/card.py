"""The model card (``README.md``) of a weights folder: Hub metadata, then one table of what a
reader needs to trust and reuse the weights (their sha256, the training data's manifest sha256,
parameter count, image size, HU normalisation, target), then how to load them."""

from __future__ import annotations

from typing import Any


def _normalisation_text(norm: dict[str, Any]) -> str:
    if norm.get("kind") != "hu_window":
        return str(norm)
    low, high = norm.get("range", [0.0, 1.0])
    return (f"HU clipped to [{norm['hu_min']:g}, {norm['hu_max']:g}] and mapped linearly to "
            f"[{low:g}, {high:g}]")


def model_card(family: str, meta: dict[str, Any], sha256: str) -> str:
    """The card of a weights folder whose ``config.json`` is ``meta`` and whose
    ``model.safetensors`` has ``sha256``."""
    from huggingface_hub import ModelCardData

    model, training = meta.get("model") or {}, meta.get("training") or {}
    data = ModelCardData(library_name="marbench", tags=["ct", "metal-artifact-reduction",
                                                        "marbench", family])
    size = model.get("image_size")
    rows = [
        ("format", f"`{meta.get('format')}`"),
        ("family", f"`{family}`"),
        ("weights", f"`model.safetensors`, sha256 `{sha256}`"),
        ("parameters", f"{model.get('parameters', 0):,}".replace(",", " ")),
        ("image size", f"{size} px" if size else "any"),
        ("normalisation", _normalisation_text(model.get("normalisation") or {})),
        ("target", str(model.get("target"))),
        ("training data", "dataset manifest sha256 "
                          f"`{training.get('dataset_manifest_sha256') or 'unknown'}`"),
    ]
    if training.get("config_name"):
        rows.append(("config", f"`{training['config_name']}` (every value in config.json)"))
    lines = ["---", data.to_yaml(), "---", "", f"# MARBench `{family}` weights", "",
             "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "Written by `save_pretrained` of the MARBench training kit "
              "(`benchmark.learn`). Load with `from_pretrained(FOLDER_OR_REPO_ID)` of the "
              "family's model class, or run the method with `marbench run --method NAME "
              "-O weights=FOLDER_OR_REPO_ID`.", ""]
    return "\n".join(lines)
