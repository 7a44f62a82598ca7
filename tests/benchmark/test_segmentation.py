"""The downstream segmenter: seg-tiny trains and round-trips through save / from_pretrained,
configs refuse bad values, a segmenter for other classes or another HU window is refused,
predictions are scored like the same images read from the dataset, the Table 2 and
sufficiency reports, and the overlay figure."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.learn.split import patient_split
from benchmark.metrics.segmentation import CLASS_NAMES, SUMMARY_KEYS
from benchmark.segmentation import (
    HU_WINDOW,
    SegConfig,
    SegConfigError,
    SegmentationDataError,
    Segmenter,
    SegmenterMismatchError,
    SegmenterNotFoundError,
    TrainError,
    load_config,
    load_segmenter,
    open_labelled,
    segmenter_identity,
    train,
)
from benchmark.segmentation.analysis import evaluate_rows, evaluate_segmenter, score_predictions
from tests.helpers.fakehub import write_manifest

SIZE = 32
IMPLANTS = ["none", "hip_prosthesis", "fracture_fixation", "spinal_fixation"]


def _slice(rng: np.random.Generator, size: int = SIZE) -> dict[str, np.ndarray]:
    """Body, two pelvis blobs (left / right), two femur discs, a metal disc; GSI = ideal +
    noise, ordinary = GSI + streaks."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    c = size / 2
    ideal = np.full((size, size), -1000.0)
    labels = np.zeros((size, size), np.uint8)
    ideal[((yy - c) / (0.45 * size)) ** 2 + ((xx - c) / (0.47 * size)) ** 2 <= 1] = 40.0
    for lab, cx in ((2, 0.3), (3, 0.7)):
        m = ((yy - 0.4 * size) / 4) ** 2 + ((xx - cx * size) / 3) ** 2 <= 1
        ideal[m], labels[m] = 700.0, lab
    for lab, cx in ((4, 0.3), (5, 0.7)):
        m = (yy - 0.7 * size) ** 2 + (xx - cx * size) ** 2 <= 2.5 ** 2
        ideal[m], labels[m] = 900.0, lab
    mx = c + rng.uniform(-3, 3)
    metal = (yy - c) ** 2 + (xx - mx) ** 2 <= 2.0 ** 2
    ideal[metal], labels[metal] = 3000.0, 1
    gsi = ideal + rng.normal(0, 10, ideal.shape)
    theta = np.arctan2(yy - c, xx - mx)
    ordinary = gsi + 300 * np.cos(8 * theta) * np.exp(-np.hypot(yy - c, xx - mx) / 8)
    i16 = {k: np.rint(v).astype(np.int16) for k, v in
           (("ideal", ideal), ("gsi", gsi), ("ordinary", ordinary))}
    return {**i16, "metal_mask": (i16["ordinary"] > 2500).astype(np.uint8), "labels": labels}


def write_seg_dataset(folder: Path, n_train: int = 4, n_test: int = 2, slices: int = 2,
                      labels: bool = True) -> Path:
    """A built ``pairs`` dataset (card, Parquet, manifest) with ``labels``, 32 px."""
    import yaml
    from datasets import Array2D, ClassLabel, Dataset, Features, Value

    shape = (SIZE, SIZE)
    feats = {"patient_id": Value("string"), "slice_index": Value("int32"),
             "ordinary": Array2D(shape, "int16"), "gsi": Array2D(shape, "int16"),
             "metal_mask": Array2D(shape, "uint8"), "ideal": Array2D(shape, "int16"),
             "implant_type": ClassLabel(names=IMPLANTS), "pixel_spacing_mm": Value("float32")}
    if labels:
        feats["labels"] = Array2D(shape, "uint8")
    features = Features(feats)
    rng = np.random.default_rng(0)
    (folder / "pairs").mkdir(parents=True, exist_ok=True)
    for split, n, first in (("train", n_train, 0), ("test", n_test, 100)):
        rows: dict[str, list] = {k: [] for k in features}
        for p in range(n):
            for s in range(slices):
                img = _slice(rng)
                rows["patient_id"].append(f"P{first + p:03d}")
                rows["slice_index"].append(s)
                for k in ("ordinary", "gsi", "metal_mask", "ideal") + (
                        ("labels",) if labels else ()):
                    rows[k].append(img[k])
                rows["implant_type"].append(1 + p % 3)
                rows["pixel_spacing_mm"].append(14.0)
        Dataset.from_dict(rows, features=features).to_parquet(
            folder / "pairs" / f"{split}-00000-of-00001.parquet")
    # The card names the pairs config's files; the manifest lists every file with sha256.
    card = {"configs": [{"config_name": "pairs", "data_files": [
        {"split": s, "path": f"pairs/{s}-*.parquet"} for s in ("train", "test")]}]}
    (folder / "README.md").write_text(f"---\n{yaml.safe_dump(card)}---\n# tiny labelled test "
                                      "dataset\n", encoding="utf-8")
    write_manifest(folder)
    return folder


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory, isolated_datasets_cache) -> Path:
    return write_seg_dataset(tmp_path_factory.mktemp("segdata") / "built")


@pytest.fixture(scope="module")
def trained(seg_data, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return train("seg-tiny", seg_data, tmp_path_factory.mktemp("segrun") / "run",
                 overrides={"max_steps": 3, "batch_size": 2})


def _tiny_cfg(**kw) -> SegConfig:
    cfg, _ = load_config("seg-tiny", kw)
    return cfg


# ----------------------------------------------------------------------------- configs


def test_shipped_configs_load_and_differ_only_where_intended():
    cpu, name = load_config("seg-cpu")
    paper, _ = load_config("seg-paper")
    assert name == "seg-cpu" and cpu.image_size == 128 and paper.image_size == 512
    for c in (cpu, paper):
        assert c.classes == CLASS_NAMES and tuple(c.hu_window) == HU_WINDOW
        assert c.input == "gsi" and c.ce_weight > 0 and c.dice_weight > 0
    assert train.configs == ["seg-tiny", "seg-cpu", "seg-paper"]


def test_wrong_input_and_unknown_keys_are_refused(seg_data, tmp_path):
    with pytest.raises(SegConfigError, match="input: must be one of gsi, ordinary.*'mono'"):
        train("seg-tiny", seg_data, tmp_path / "r", overrides={"input": "mono"})
    with pytest.raises(SegConfigError, match="did you mean 'batch_size'"):
        load_config("seg-tiny", {"batchsize": 2})
    with pytest.raises(SegConfigError,
                       match=r"image_size: 44 px must be a multiple of 2\*\*encoder_depth = 8"):
        load_config("seg-tiny", {"image_size": 44})
    with pytest.raises(SegConfigError, match="no such file"):
        load_config("seg-nope")
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_patient_split_holds_out_whole_patients():
    ids = ["A", "A", "B", "B", "C", "D", "D", "E"]
    tr, va = patient_split(ids, 0.2)
    assert {ids[i] for i in tr}.isdisjoint({ids[i] for i in va})
    assert sorted(tr + va) == list(range(len(ids)))
    assert len({ids[i] for i in va}) == 1  # ceil(0.2 * 5)
    assert patient_split(list(reversed(ids)), 0.2)[1] != []  # order-independent choice
    assert {ids[::-1][i] for i in patient_split(ids[::-1], 0.2)[1]} == {ids[i] for i in va}


# ----------------------------------------------------------------------------- training


@pytest.mark.slow  # trains seg-tiny (a few seconds, more on a busy machine)
def test_seg_tiny_trains_and_round_trips(trained, seg_data, tmp_path):
    meta = json.loads((trained / "config.json").read_text())
    model = meta["model"]
    assert meta["format"] == "marbench-weights/1" and meta["family"] == "segmenter"
    assert model["input"] == "gsi" and model["classes"] == list(CLASS_NAMES)
    assert model["normalisation"] == {"kind": "hu_window", "hu_min": HU_WINDOW[0],
                                      "hu_max": HU_WINDOW[1], "range": [0.0, 1.0]}
    from artifactgsi.hub import sha256_file

    meta = meta["training"]
    assert meta["dataset_manifest_sha256"] == sha256_file(seg_data / "manifest.json")
    assert set(meta["validation"]) == set(SUMMARY_KEYS)
    assert meta["config_name"] == "seg-tiny" and meta["trained_steps"] >= 1
    assert meta["val_patients"] == 1 and meta["train_patients"] == 3
    log = [json.loads(line) for line in (trained.parent / "log.jsonl").read_text().splitlines()]
    assert log and log[-1]["step"] == 3

    seg = load_segmenter(trained)
    ident = segmenter_identity(seg)
    assert ident["weights_sha256"] == sha256_file(trained / "model.safetensors")
    assert ident["input"] == "gsi" and ident["config_name"] == "seg-tiny"
    # save -> load gives the same weights file and the same labels.
    again = Segmenter.from_pretrained(seg.save_pretrained(tmp_path / "copy"))
    assert again.weights_sha256 == seg.weights_sha256
    x = torch.from_numpy(open_labelled(seg_data, "test").arrays([0, 1], ("gsi",))["gsi"]
                         .astype(np.float32))[:, None]
    a, b = seg.predict(x), again.predict(x)
    assert a.shape == (2, SIZE, SIZE) and a.dtype == torch.uint8 and torch.equal(a, b)
    # The validation scores recorded are the held-out patient's, recomputed here.
    ls = open_labelled(seg_data, "train")
    _, val = patient_split(ls.patient_ids, 0.2)
    rec = evaluate_rows(seg, ls, val, "gsi").summary()
    for k in SUMMARY_KEYS:
        v = meta["validation"][k]
        assert (math.isnan(v) and math.isnan(rec[k])) or v == pytest.approx(rec[k], abs=1e-9)


@pytest.mark.slow  # trains seg-tiny (a few seconds, more on a busy machine)
def test_run_folder_is_not_overwritten_and_resume_needs_a_run(trained, seg_data, tmp_path):
    run = trained.parent
    with pytest.raises(TrainError, match="already holds a run"):
        train("seg-tiny", seg_data, run, overrides={"max_steps": 3, "batch_size": 2})
    with pytest.raises(TrainError, match="different config.*max_steps"):
        train("seg-tiny", seg_data, run, resume=True, overrides={"max_steps": 4,
                                                                 "batch_size": 2})
    with pytest.raises(TrainError, match="nothing to resume"):
        train("seg-tiny", seg_data, tmp_path / "new", resume=True)
    # Resuming a finished run trains nothing more and saves the same weights.
    before = load_segmenter(trained).weights_sha256
    train("seg-tiny", seg_data, run, resume=True, overrides={"max_steps": 3, "batch_size": 2})
    assert load_segmenter(trained).weights_sha256 == before


def test_dataset_without_labels_is_refused(tmp_path):
    data = write_seg_dataset(tmp_path / "nolabels", n_train=2, n_test=1, slices=1,
                             labels=False)
    with pytest.raises(SegmentationDataError, match="no 'labels' column"):
        open_labelled(data, "train")


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("field,value,match", [
    ("classes", ("background", "metal", "pelvis", "femur"), "trained on classes"),
    ("hu_window", (-200.0, 1800.0), "input HU window is \\[-200.0, 1800.0\\]"),
])
def test_other_classes_or_window_are_refused(tmp_path, field, value, match):
    folder = Segmenter(_tiny_cfg(**{field: list(value)})).save_pretrained(tmp_path / "m")
    with pytest.raises(SegmenterMismatchError, match=match):
        load_segmenter(folder)
    # Loading as a model still works (the check is the benchmark's, not the format's).
    assert Segmenter.from_pretrained(folder).config.image_size == SIZE


def test_edited_config_and_missing_folder_are_refused(tmp_path):
    folder = Segmenter(_tiny_cfg()).save_pretrained(tmp_path / "m")
    meta = json.loads((folder / "config.json").read_text())
    meta["model"]["normalisation"]["hu_max"] = 1500.0
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(SegmenterMismatchError, match="normalisation.*was edited"):
        load_segmenter(folder)
    with pytest.raises(SegmenterNotFoundError, match="not a segmenter weights folder"):
        load_segmenter(tmp_path)
    with pytest.raises(SegmenterNotFoundError, match="no such folder"):
        load_segmenter(tmp_path / "nothing" / "here")


# ----------------------------------------------------------------------------- scoring


def test_predictions_are_scored_like_the_same_images(seg_data, tmp_path):
    """A predictions file holding the GSI images scores exactly as GSI read from the data."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    seg = Segmenter(_tiny_cfg())
    seg.save_pretrained(tmp_path / "m")
    seg = load_segmenter(tmp_path / "m")
    ls = open_labelled(seg_data, "test")
    gsi = ls.arrays(list(range(len(ls.rows))), ("gsi",))["gsi"]
    (tmp_path / "run" / "predictions").mkdir(parents=True)
    pq.write_table(pa.table({"patient_id": ls.patient_ids[::-1],
                             "slice_index": ls.slice_index[::-1],
                             "prediction": [g.tolist() for g in gsi[::-1]]}),
                   tmp_path / "run" / "predictions" / "test-00000-of-00001.parquet")
    got = score_predictions(seg, ls, tmp_path / "run")
    ref = evaluate_segmenter(seg, ls, image="gsi")
    for k in SUMMARY_KEYS:
        assert (math.isnan(got.summary[k]) and math.isnan(ref.summary[k])) or \
            got.summary[k] == pytest.approx(ref.summary[k])
    assert got.per_patient.keys() == ref.per_patient.keys() == {"P100", "P101"}


def test_sufficiency_reports_both_segmenters(seg_data, tmp_path):
    from benchmark.segmentation.analysis import sufficiency

    g = Segmenter(_tiny_cfg()).save_pretrained(tmp_path / "g")
    o = Segmenter(_tiny_cfg(input="ordinary")).save_pretrained(tmp_path / "o")
    res = sufficiency(str(seg_data), out=tmp_path / "suff", gsi_model=g, ordinary_model=o)
    ev = evaluate_segmenter(load_segmenter(o), seg_data, image="ordinary")
    assert res["ordinary"]["miou"] == pytest.approx(ev.summary["miou"], nan_ok=True)
    md = (tmp_path / "suff" / "sufficiency.md").read_text()
    assert "0.9265" in md and "0.9213" in md
    with pytest.raises(ValueError, match="trained on 'gsi'"):
        sufficiency(str(seg_data), out=tmp_path / "s2", gsi_model=g, ordinary_model=g)


def test_segmentation_table_layout():
    from benchmark.segmentation.report import segmentation_table

    nan = float("nan")
    li = {"iou.metal": 0.1, "iou.l_pelvis": 0.7, "iou.r_pelvis": 0.6, "iou.l_femur": 0.5,
          "iou.r_femur": 0.4, "miou": 0.46,
          "per_implant": {"spinal_fixation": {"iou.metal": 0.2, "iou.l_pelvis": nan,
                                              "iou.r_pelvis": nan, "iou.l_femur": nan,
                                              "iou.r_femur": nan, "miou": 0.2}}}
    md = segmentation_table([("li", li)], paper=True)
    lines = md.splitlines()
    head = next(line for line in lines if line.startswith("| method"))
    assert head.split("|")[2:8] == [" metal ", " L pelvis ", " R pelvis ", " L femur ",
                                    " R femur ", " mIoU "]
    assert "| li | 0.1000 | 0.7000 | 0.6000 | 0.5000 | 0.4000 | 0.4600 |" in lines
    assert "| paper: GSI | 0.8944 | 0.9273 | 0.9115 | 0.9442 | 0.9302 | 0.9215 |" in lines
    assert "| paper: LGA | 0.8582 | 0.8999 | 0.9059 | 0.9232 | 0.9013 | 0.8977 |" in lines
    assert "**implant: spinal_fixation**" in md
    assert "| li | 0.2000 | — | — | — | — | 0.2000 |" in lines
    assert "paper" not in segmentation_table([("li", li)], paper=False)


def test_overlay_figure(tmp_path):
    from benchmark.segmentation.figures import (
        CLASS_COLOURS,
        OverlaySlice,
        overlay_figure,
        overlay_rgb,
    )

    img = _slice(np.random.default_rng(1))
    rgb = overlay_rgb(img["gsi"], img["labels"], alpha=1.0)
    assert np.allclose(rgb[img["labels"] == 1], CLASS_COLOURS[0])
    bg = img["labels"] == 0
    assert np.allclose(rgb[bg][:, 0], rgb[bg][:, 1])  # background stays grey

    class Truth:  # a segmenter that returns the reference labels
        def predict(self, x):
            return torch.from_numpy(np.repeat(img["labels"][None], x.shape[0], 0))

    path = overlay_figure(Truth(), [OverlaySlice("P1 slice 0", {
        k: img[k].astype(np.float32) for k in ("ordinary", "gsi", "ideal")}, img["labels"])],
        tmp_path / "fig.png", title="test")
    from PIL import Image

    w, h = Image.open(path).size
    assert w > 3 * h / 2 and not list(tmp_path.glob(".*tmp*"))


def test_segmentation_table_recomputes_from_results_per_slice_counts():
    """Rows come from the per-slice counts of a results file (``segmentation[image]``),
    summed per class: not from any stored summary."""
    from benchmark.metrics.segmentation import count_rows, slice_counts
    from benchmark.results import MethodRecord, Results, SliceRecord
    from benchmark.segmentation.report import collect_rows, segmentation_table

    ref = torch.zeros(2, 4, 4, dtype=torch.long)
    ref[:, :2, :2] = 1
    ref[1, 3, :] = 4
    pred = ref.clone()
    pred[0, 0, 2] = 1           # slice 0: metal 4 / 5
    pred[1, 3, :2] = 0          # slice 1: left femur 2 / 4
    method_rows = count_rows(*slice_counts(pred, ref))
    gsi_rows = count_rows(*slice_counts(ref, ref))
    slices = [SliceRecord(patient_id="P1", slice_index=i, implant_type=t, metal_pixels=4,
                          scores={}, segmentation={"method": method_rows[i],
                                                   "gsi": gsi_rows[i]})
              for i, t in enumerate(["hip_prosthesis", "spinal_fixation"])]
    res = Results.model_construct(method=MethodRecord.model_construct(name="li"),
                                  per_slice=slices)
    methods, refs, warnings = collect_rows([("li.json", res)])
    assert not warnings and [r.label for r in methods + refs] == ["li", "GSI (reference)"]
    li = methods[0].overall
    assert li["iou.metal"] == pytest.approx(8 / 9)        # (4 + 4) / (5 + 4)
    assert li["iou.l_femur"] == pytest.approx(0.5)
    assert math.isnan(li["iou.r_pelvis"])
    assert li["miou"] == pytest.approx((8 / 9 + 0.5) / 2)
    assert methods[0].per_implant["hip_prosthesis"]["iou.metal"] == pytest.approx(0.8)
    assert refs[0].overall["miou"] == 1.0
    assert "| GSI (reference) | 1.0000 | — | — | 1.0000 | — | 1.0000 |" in \
        segmentation_table([("li.json", res)]).splitlines()


def test_runner_scores_like_the_segmenter_on_its_own_and_names_a_foreign_segmenter(
        trained, seg_data, tmp_path):
    """`marbench run --segmenter`: identity's output is the ordinary image and GSI is GSI, so
    the run's summaries equal evaluate_segmenter on those columns (a separate code path); a
    segmenter trained on another dataset is scored with a recorded, printed caveat."""
    from types import SimpleNamespace

    from benchmark.run import run_benchmark
    from benchmark.run.scoring import load_segmenter_for as _segmenter

    res = run_benchmark("identity", str(seg_data), "test", tmp_path / "run", lpips=None,
                        clinical=False, figure=False, verbose=False, segmenter=trained)
    seg = res.segmentation
    assert seg.available and seg.note is None and seg.n_slices > 0
    model = load_segmenter(trained)
    for image, column in (("method", "ordinary"), ("gsi", "gsi")):
        ref = evaluate_segmenter(model, seg_data, image=column)
        for k in SUMMARY_KEYS:
            assert seg.summary[image][k] == pytest.approx(ref.summary[k], nan_ok=True), k
    own = model.meta["dataset_manifest_sha256"]
    assert own and seg.segmenter["dataset_manifest_sha256"] == own
    other = SimpleNamespace(has_labels=True, source=SimpleNamespace(manifest_sha256="f" * 64))
    _, record = _segmenter(trained, other, torch.device("cpu"))
    assert record.available and "trained on another dataset, or another build" in record.note
    same = SimpleNamespace(has_labels=True, source=SimpleNamespace(manifest_sha256=own))
    assert _segmenter(trained, same, torch.device("cpu"))[1].note is None


def test_shipped_demo_segmenter_is_seg_cpu_on_gsi_and_named_in_its_card():
    """`make demo` scores with weights/seg-cpu-demo: the seg-cpu config as it stands, trained on
    GSI images with the benchmark's classes and HU window, and the card names its sha256."""
    from artifactgsi.fileio import sha256_file

    root = Path(__file__).resolve().parents[2] / "weights" / "seg-cpu-demo"
    seg = load_segmenter(root)
    assert seg.input == "gsi" and seg.config == load_config("seg-cpu")[0]
    assert seg.meta["config_name"] == "seg-cpu" and seg.meta["validation"]["miou"] > 0
    # An empty field of view (air) holds no anatomy: the instrument finds none.
    pred = seg.predict(torch.full((1, 1, 128, 128), -1000.0))
    assert pred.shape == (1, 128, 128) and not pred.any()
    assert sha256_file(root / "model.safetensors") in (root / "README.md").read_text()
