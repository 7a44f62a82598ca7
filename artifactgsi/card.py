"""The dataset card (``README.md``) of a built ArtifactGSI dataset.

YAML front matter as the Hugging Face Hub and ``datasets.load_dataset`` read it (``configs``
with ``data_files`` per split, ``dataset_info`` with the exact ``Features``, license, tags)
followed by a datasheet-style description (Gebru et al., "Datasheets for Datasets"): what is
in it, how it was collected and processed, registration method and quality, the metal
threshold, de-identification, intended use, and the citation.

Everything comes from the build summary (:func:`artifactgsi.build.build_dataset`), which
holds no identifying value, so the card is safe to publish. It carries no time stamp: the
same build gives the same bytes.
"""

from __future__ import annotations

from typing import Any

from .schema import COLUMN_DOCS, CONFIG_DESCRIPTIONS, IMPLANT_TYPES, features_for

#: The paper's BibTeX: the same citation as the repository's CITATION.cff and README (a test
#: keeps the three equal; the card embeds it so that a built dataset carries it).
CITATION = """\
@inproceedings{han2025reducing,
  title     = {Reducing CT Metal Artifacts by Learning Latent Space Alignment with
               Gemstone Spectral Imaging Data},
  author    = {Han, Wencheng and Guo, Dongqian and Chen, Xiao and Lyu, Pang and Jin, Yi and
               Shen, Jianbing},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern
               Recognition (CVPR)},
  year      = {2025},
  note      = {arXiv:2503.21259}
}"""

def _size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M")):
        if rows < limit:
            return name
    return "1M<n<10M"


def card_metadata(summary: dict[str, Any]) -> dict[str, Any]:
    """The YAML front matter (a dict) for a build summary."""
    from datasets import DatasetInfo, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.splits import SplitDict
    from huggingface_hub import DatasetCardData

    configs, infos = [], {}
    total = 0
    for config, splits in summary["configs"].items():
        configs.append({"config_name": config,
                        "data_files": [{"split": s, "path": f"{config}/{s}-*.parquet"}
                                       for s in splits]})
        split_dict = SplitDict()
        for s, d in splits.items():
            split_dict.add(SplitInfo(name=s, num_bytes=int(d["num_bytes"]),
                                     num_examples=int(d["rows"])))
            total += int(d["rows"])
        shape = tuple(next(iter(splits.values()))["shape"])
        # Sizes matter beyond information: `datasets` caches a local folder under a hash of
        # these infos, so a rebuild with other content must change them (the Parquet bytes do).
        infos[config] = DatasetInfo(
            features=features_for(config, shape), splits=split_dict, config_name=config,
            download_size=sum(int(d["download_bytes"]) for d in splits.values()),
            dataset_size=sum(int(d["num_bytes"]) for d in splits.values()))
    data = DatasetCardData(
        license=summary["license"], pretty_name=summary["pretty_name"],
        task_categories=["image-to-image"], size_categories=[_size_category(total)],
        tags=["medical", "computed-tomography", "metal-artifact-reduction",
              "dual-energy-ct", "gemstone-spectral-imaging"],
        configs=configs,
    )
    DatasetInfosDict(infos).to_dataset_card_data(data)
    return data.to_dict()


def _fmt(st: dict[str, Any]) -> str:
    if not st or not st.get("n"):
        return "n/a"
    return (f"mean {st['mean']:.3f}, median {st['median']:.3f}, 5th percentile "
            f"{st['p05']:.3f}, min {st['min']:.3f} (n = {st['n']})")


def _simulation_lines(sim: dict[str, Any]) -> list[str]:
    """The "Simulation" section: how a simulated raw tree was made (``simulation.json``)."""
    o, g = sim.get("ordinary_protocol", {}), sim.get("gsi_protocol", {})
    mc = sim.get("gsi_metal_correction", {})
    lines = [
        "## Simulation",
        "",
        f"The raw data were simulated by {sim.get('simulator', 'a simulator')} (settings "
        f"fingerprint `{sim.get('config_fingerprint', 'n/a')}`): procedural patients, a 2D "
        "fan-beam scanner per axial slice, polychromatic spectra and Poisson noise.",
        "",
    ]
    if sim.get("preset"):
        mix = sim.get("implant_mix") or {}
        order = {t: i for i, t in enumerate(IMPLANT_TYPES)}
        parts = ", ".join(f"{mix[k]} {k.replace('_', ' ')}"
                          for k in sorted(mix, key=lambda k: order.get(k, len(order))))
        lines.append(f"- Preset `{sim['preset']}`: {sim.get('patients', 'n/a')} implant "
                     f"patients{f' ({parts})' if parts else ''} and "
                     f"{sim.get('clean_patients', 'n/a')} clean patients, "
                     f"{sim.get('slices', 'n/a')} slices each.")
    if o:
        lines.append(f"- Ordinary series: {o.get('kvp', 'n/a'):g} kVp, water beam-hardening "
                     f"correction, FBP with a {o.get('filter', 'n/a')} filter.")
    if g:
        lines.append(f"- GSI series: rapid {g.get('kvp_low', 0):g}/{g.get('kvp_high', 0):g} "
                     f"kVp switching, {'/'.join(g.get('basis', []))} decomposition, virtual "
                     f"monochromatic image at {g.get('kev', 0):g} keV; projection-based metal "
                     f"correction `{g.get('metal_correction', 'n/a')}`.")
    if mc:
        settings = ", ".join(f"{k} {v:g}" if isinstance(v, int | float) else f"{k} {v}"
                             for k, v in mc.items())
        lines.append("- GSI metal correction (normalised sinogram interpolation, the same "
                     f"implementation as the NMAR baseline's): {settings}.")
    phys = sim.get("scanner_physics")
    if phys:
        for series, p in (("Ordinary", phys.get("ordinary") or {}), ("GSI", phys.get("gsi") or {})):
            lines.append(f"- {series} scanner physics: {_physics_text(p)}.")
    else:
        lines.append("- Scanner physics: ideal scanner (no bowtie, no scatter, a point focal "
                     "spot and one ray per detector channel).")
    return lines


def _physics_text(p: dict[str, Any]) -> str:
    """One line of a ``scanner_physics`` record (bowtie, scatter, blur)."""
    bt, sc, bl = p.get("bowtie"), p.get("scatter"), p.get("blur") or {}
    parts = [f"{bt['material']} bowtie {bt['centre_mm']:g}-{bt['max_mm']:g} mm" if bt
             else "no bowtie"]
    parts.append(f"scatter at {sc['collimation_mm']:g} mm collimation behind an anti-scatter "
                 f"grid (primary / scatter transmission {sc['grid_primary_transmission']:g} / "
                 f"{sc['grid_scatter_transmission']:g}), "
                 f"{'corrected by the scanner' if sc['correction'] else 'uncorrected'}"
                 if sc else "no scatter")
    parts.append(f"focal spot {bl.get('focal_spot_mm', 0):g} mm, "
                 f"{bl.get('detector_aperture_subsamples', 1)} sub-rays per detector channel")
    return "; ".join(parts)


def render_card(summary: dict[str, Any]) -> str:
    """``README.md`` text (YAML front matter + prose) for a build summary."""
    import yaml

    meta = card_metadata(summary)
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=100)
    reg = summary["registration"]
    rc = summary["registration_config"]
    lines = [f"---\n{front}---", "", f"# {summary['pretty_name']}", ""]
    lines += [
        "Paired ordinary and Gemstone Spectral Imaging (GSI) CT slices of patients with metal "
        "implants, for metal artifact reduction (MAR) research, in the layout of the "
        "ArtifactGSI dataset of Han et al. (CVPR 2025). GSI (rapid kVp switching dual-energy "
        "CT, reconstructed as a virtual monochromatic image) shows far fewer metal artifacts "
        "than the ordinary single-energy scan of the same patient; the GSI slice is the "
        "reference a MAR method is scored against.",
        "",
        "## Contents",
        "",
        "| config | split | rows (slices) | patients | implant types (patients) |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for config, splits in summary["configs"].items():
        for split, d in splits.items():
            kinds = ", ".join(f"{k} {v}" for k, v in d["implant_types"].items())
            lines.append(f"| {config} | {split} | {d['rows']} | {d['patients']} | {kinds} |")
    lines += [""]
    for config in summary["configs"]:
        lines.append(f"- **{config}**: {CONFIG_DESCRIPTIONS[config]}.")
    lines += [
        "",
        "```python",
        "from datasets import load_dataset",
        "pairs = load_dataset(\"path/or/repo\", \"pairs\", split=\"test\")",
        "pairs = pairs.with_format(\"numpy\", dtype=None)  # dtype=None keeps int16 HU exact",
        "```",
        "",
        "`datasets` caches a local folder under its name and this card's sizes; after "
        "rebuilding into the same folder, load with `download_mode=\"force_redownload\"`.",
        "",
        "### Columns",
        "",
        "| column | meaning |",
        "| --- | --- |",
    ]
    lines += [f"| `{c}` | {m} |" for c, m in COLUMN_DOCS]
    scanners = ", ".join(summary["scanners"]) or "n/a"
    kvp = ", ".join(f"{v:g}" for v in summary["kvp"]) or "n/a"
    kev = ", ".join(f"{v:g}" for v in summary["gsi_kev"]) or "n/a"
    split = summary["split"]
    lines += [
        "",
        "## Collection and processing",
        "",
        f"- Scanners: {scanners}. Ordinary scans at {kvp} kVp; GSI images at {kev} keV.",
        "- Source: one ordinary and one GSI DICOM series per implant patient, acquired in one "
        "session; only an ordinary series for patients without implant and for the "
        "generalization set. HU are kept exactly (int16).",
        "- **Slice matching** (paper Eq. 1): each ordinary slice is paired with the GSI slice "
        "of maximal normalised cross-correlation (NCC, body only, metal excluded, HU clipped "
        "to [-1000, 1500]) after resampling onto the GSI grid with the DICOM geometry. Where "
        "both series share a frame of reference the search is limited to "
        f"{rc['window_slices']} slice(s) either side of the z-nearest GSI slice and weighted by "
        f"a z prior ({rc['z_prior']} NCC per slice of distance), the patient's z shift is "
        "estimated once per series, and matches are kept strictly monotone in z by dynamic "
        "programming. Matching is repeated once after compensating the in-plane motion "
        "found on the best pair.",
        "- **Registration** (paper Eq. 2): a 2D affine transform per slice, SimpleITK, "
        "correlation metric with metal masked out, regular-step gradient descent on a "
        f"{len(rc['shrink_factors'])}-level pyramid (shrink {tuple(rc['shrink_factors'])}), "
        "linear interpolation, starting from the motion found on the best-matching pair "
        "(itself registered from the DICOM geometry).",
        f"- **Quality**: {reg['patients']} patients, {reg['ordinary_slices']} ordinary "
        f"slices, {reg['matched_slices']} matched, {reg['unmatched_ordinary_slices']} without a "
        "GSI match (outside the GSI range, or left out by the monotone constraint); "
        f"{reg['flagged_slices']} matched slices were **left out** because "
        f"their match score was below {rc['min_match_score']}, their registration NCC below "
        f"{rc['min_ncc']}, or the transform moved the body by more than "
        f"{rc['max_displacement_mm']} mm. In {reg['patients_with_z_shift']} patient(s) the "
        "slice correspondence was shifted by whole slices against the DICOM positions "
        "(patient motion along z between the scans).",
        f"  - match score (Eq. 1): {_fmt(reg['match_score'])}",
        f"  - NCC with DICOM geometry only: {_fmt(reg['ncc_before_registration'])}",
        f"  - NCC after registration: {_fmt(reg['registration_ncc'])}",
        f"- **Metal mask** (paper Eq. 8): registered ordinary HU > "
        f"{summary['metal_threshold_hu']:g} HU. Cortical bone stays below about 2000 HU at "
        "120 kVp while titanium, the least attenuating implant metal, exceeds it.",
        f"- **Split**: {split['by']}, test fraction {split['test_fraction']:g}, seed "
        f"{split['seed']}; no patient is in two splits.",
    ]
    if summary["skipped"]:
        lines += ["", "Patients left out:", ""]
        lines += [f"- `{s['patient']}`: {s['reason']}" for s in summary["skipped"]]
    if summary.get("simulation"):
        lines += ["", *_simulation_lines(summary["simulation"])]
    lines += [
        "",
        "## De-identification",
        "",
        "No DICOM header is published. Only technical values (pixel spacing, slice thickness, "
        "kVp, keV, manufacturer, model) are copied from the headers; names, ids, dates, "
        "institutions, physicians, accession numbers, descriptions and private tags never "
        "are (stricter than the DICOM PS3.15 Basic Application Level Confidentiality "
        "Profile, which this allow-list covers). Patient ids are replaced by keyed "
        "HMAC-SHA256 pseudonyms; series with burned-in annotation are refused.",
        "",
        "## Intended use and limitations",
        "",
        "- Training and benchmarking MAR methods (MARBench, protocol marbench-v1: evaluate at "
        "512 x 512, HU clipped to [-1024, 3071]), and segmentation next to metal.",
        "- The GSI image is a better reference than the ordinary one, not ground truth: it has "
        "residual artifacts of its own. Only simulated data have an `ideal` image.",
        "- Registration cannot undo motion within a slice or deformation; see the quality "
        "statistics above and filter on `registration_ncc` if needed.",
        "- Not for clinical diagnosis.",
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
        f"Built by {summary['builder']}.",
        "",
    ]
    return "\n".join(lines)
