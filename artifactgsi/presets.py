"""Dataset presets of the simulator: a named size and composition (``artifactgsi simulate
--preset NAME`` or ``--preset FILE.yaml``).

``standard`` is the paper's dataset size: 157 patients, 115 with implants and 42 without
(GE Discovery CT750HD, six body regions, three implant families), split 80/20 by patient,
stratified by implant family (the builder's split). The paper does not report how the 115
implant patients divide among hip prostheses, fracture fixation and spinal fixation; the
preset uses 46 / 40 / 29 (40 / 35 / 25 %): hip prostheses first, because the benchmark's
segmentation classes (pelvis, femora) and four of the six regions are hip and lower limb, and
the dark bands between bilateral femoral heads are the hardest case; fracture fixation next
(plates and screws of the pelvis, femur and knee); spinal fixation last (the two spine
regions). Its seed (2025) draws patients of its own, so models trained on the small seed-0
and seed-1 sets have seen none of them. With 8 slices of 2.5 mm per patient (20 mm around
the implant) the test split holds 23 implant patients and 184 slices, enough for
patient-level tests (the smallest two-sided Wilcoxon p-value with 23 pairs is 2.4e-7) at a
cost that fits a CPU at 128 px.

A preset file is YAML with the same keys as :class:`Preset` (``name`` and the counts); the
command-line options override it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ArtifactGSIError
from .schema import IMPLANT_TYPES

__all__ = ["PRESETS", "Preset", "PresetError", "implant_sequence", "load_preset"]

#: The implant families, in the order of an implant mix.
FAMILIES: tuple[str, ...] = tuple(t for t in IMPLANT_TYPES if t != "none")


class PresetError(ArtifactGSIError, ValueError):
    """An unknown preset name, or a preset file that cannot be used (named)."""


@dataclass(frozen=True)
class Preset:
    """A dataset's size and composition.

    Attributes:
        name: what the card calls it.
        description: one sentence.
        implant_patients: patients with an implant (paired ordinary / GSI series).
        clean_patients: patients without an implant (ordinary series only).
        slices: slices per series (``thickness_mm`` apart).
        implant_mix: implant patients per family (hip_prosthesis, fracture_fixation,
            spinal_fixation); sums to ``implant_patients``.
        test_fraction: share of implant patients in the test split (the builder's split is
            by patient and stratified by family).
        seed: the simulator's dataset seed (``--seed`` overrides it); ``None`` keeps the
            command's default.
    """

    name: str
    description: str
    implant_patients: int
    clean_patients: int
    slices: int
    implant_mix: dict[str, int] = field(default_factory=dict)
    test_fraction: float = 0.2
    seed: int | None = None

    def __post_init__(self) -> None:
        unknown = set(self.implant_mix) - set(FAMILIES)
        if unknown:
            raise PresetError(f"preset {self.name!r}: implant_mix names {sorted(unknown)}; "
                              f"the families are {list(FAMILIES)}")
        if self.implant_mix and sum(self.implant_mix.values()) != self.implant_patients:
            raise PresetError(f"preset {self.name!r}: implant_mix sums to "
                              f"{sum(self.implant_mix.values())}, not implant_patients "
                              f"{self.implant_patients}")
        for k in ("implant_patients", "clean_patients", "slices"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise PresetError(f"preset {self.name!r}: {k} must be a whole number >= 0, "
                                  f"got {v!r}")
        if self.slices < 1:
            raise PresetError(f"preset {self.name!r}: slices must be >= 1")
        if not 0.0 < self.test_fraction < 1.0:
            raise PresetError(f"preset {self.name!r}: test_fraction must be in (0, 1)")

    def mix(self) -> tuple[int, int, int]:
        """Implant patients per family in :data:`FAMILIES` order."""
        return tuple(int(self.implant_mix.get(f, 0)) for f in FAMILIES)  # type: ignore[return-value]

    def mix_for(self, n: int) -> tuple[int, int, int]:
        """The mix scaled to ``n`` implant patients (largest remainder; ties to the first
        family), so ``--patients N`` keeps the preset's composition."""
        mix = self.mix()
        total = sum(mix)
        if total == 0:
            raise PresetError(f"preset {self.name!r} has no implant_mix")
        quota = [m * n / total for m in mix]
        counts = [int(q) for q in quota]
        order = sorted(range(len(mix)), key=lambda i: (counts[i] - quota[i], i))
        for i in order[: n - sum(counts)]:
            counts[i] += 1
        return tuple(counts)  # type: ignore[return-value]

    def record(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, Preset] = {
    "standard": Preset(
        name="standard",
        description="the paper's size: 115 implant + 42 clean patients, 80/20 patient split "
                    "stratified by implant family",
        implant_patients=115, clean_patients=42, slices=8,
        implant_mix={"hip_prosthesis": 46, "fracture_fixation": 40, "spinal_fixation": 29},
        # Its own patients: disjoint from the small demo sets (seeds 0 and 1), so a model
        # trained on those never saw a standard test patient.
        seed=2025),
}


def load_preset(name_or_path: str | Path) -> Preset:
    """A built-in preset by name, or a YAML preset file.

    Raises:
        PresetError: unknown name (with the known ones), unreadable file, unknown keys.
    """
    key = str(name_or_path)
    if key in PRESETS:
        return PRESETS[key]
    path = Path(key)
    if path.suffix.lower() not in (".yaml", ".yml") or not path.is_file():
        raise PresetError(f"--preset {key!r}: not a preset name ({', '.join(PRESETS)}) nor a "
                          "YAML preset file")
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise PresetError(f"{path}: cannot read the preset: {e}") from None
    if not isinstance(raw, dict):
        raise PresetError(f"{path}: a preset file is a mapping of {_keys()}")
    unknown = set(raw) - {f.name for f in fields(Preset)}
    if unknown:
        raise PresetError(f"{path}: unknown keys {sorted(unknown)}; a preset has {_keys()}")
    raw.setdefault("name", path.stem)
    raw.setdefault("description", f"preset file {path.name}")
    try:
        return Preset(**raw)
    except TypeError as e:
        raise PresetError(f"{path}: {e}") from None


def _keys() -> str:
    return ", ".join(f.name for f in fields(Preset))


def implant_sequence(mix: tuple[int, ...]) -> list[str]:
    """The implant family of implant patients 0, 1, 2, ...: the families interleaved in
    proportion (each prefix as close to the mix as whole patients allow), so the first N
    patients of a large preset are a small preset of the same composition."""
    total = sum(mix)
    out: list[str] = []
    given = [0] * len(mix)
    for k in range(1, total + 1):
        # the family furthest behind its share after k patients (ties: the first family)
        j = max(range(len(mix)), key=lambda i: (mix[i] * k / total - given[i], -i))
        given[j] += 1
        out.append(FAMILIES[j])
    return out
