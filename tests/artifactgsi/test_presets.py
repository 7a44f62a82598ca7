"""Dataset presets (the paper's size) and the split content fingerprint that makes two builds
of the same raw data comparable although their pseudonyms differ."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from artifactgsi.presets import PRESETS, Preset, PresetError, implant_sequence, load_preset
from artifactgsi.simulate import SimConfig, config_fingerprint, plan_patients


def test_standard_is_the_papers_size_with_a_stated_mix():
    p = PRESETS["standard"]
    assert (p.implant_patients, p.clean_patients) == (115, 42)
    assert sum(p.mix()) == 115 and p.test_fraction == 0.2
    assert Counter(implant_sequence(p.mix())) == p.implant_mix


def test_every_prefix_of_the_sequence_keeps_the_mix():
    seq = implant_sequence(PRESETS["standard"].mix())
    share = {k: v / 115 for k, v in PRESETS["standard"].implant_mix.items()}
    for n in (10, 23, 50, 115):
        c = Counter(seq[:n])
        for fam, f in share.items():
            assert abs(c[fam] - f * n) < 1.0  # within one patient of the exact share


def test_plans_follow_the_mix_and_the_default_is_unchanged():
    mix = PRESETS["standard"].mix_for(20)
    cfg = SimConfig(patients=20, clean_patients=3, implant_mix=mix, preset="standard")
    implants = Counter(p.implant_type for p in plan_patients(cfg))
    assert implants == {"hip_prosthesis": mix[0], "fracture_fixation": mix[1],
                        "spinal_fixation": mix[2], "none": 3}
    # Without a mix, nothing changes: the three families in turn, same fingerprint.
    default = SimConfig(patients=6)
    assert [p.implant_type for p in plan_patients(default)][:3] == [
        "hip_prosthesis", "fracture_fixation", "spinal_fixation"]
    # Pinned on the ideal scanner: the default's fingerprint also moved, on purpose, when the
    # scanner physics came in (see test_scanners.py).
    assert config_fingerprint(replace(default, scanner_physics=False)) == "697e39be8de15965"
    assert config_fingerprint(cfg) != config_fingerprint(SimConfig(patients=20))


def test_bad_presets_are_named(tmp_path):
    with pytest.raises(PresetError, match="not a preset name"):
        load_preset("standrd")
    f = tmp_path / "p.yaml"
    f.write_text("implant_patients: 3\nclean_patients: 1\nslices: 2\nbogus: 1\n")
    with pytest.raises(PresetError, match="unknown keys \\['bogus'\\]"):
        load_preset(f)
    with pytest.raises(PresetError, match="sums to 2"):
        Preset("x", "", 3, 0, 2, {"hip_prosthesis": 2})
    f.write_text("implant_patients: 3\nclean_patients: 1\nslices: 2\n"
                 "implant_mix: {hip_prosthesis: 1, spinal_fixation: 2}\n")
    assert load_preset(f).mix() == (1, 0, 2)


@pytest.mark.slow
def test_simulate_with_a_preset_file_records_it_and_the_card_names_it(tmp_path):
    from artifactgsi.build import build_dataset
    from artifactgsi.cli import app

    f = tmp_path / "mini.yaml"
    f.write_text("name: mini\nimplant_patients: 3\nclean_patients: 1\nslices: 2\n"
                 "implant_mix: {hip_prosthesis: 2, spinal_fixation: 1}\n")
    res = CliRunner().invoke(app, ["simulate", "--out", str(tmp_path / "raw"), "--preset",
                                   str(f), "--size", "32"])
    assert res.exit_code == 0, res.output
    sim = json.loads((tmp_path / "raw" / "simulation.json").read_text())
    assert sim["preset"] == "mini" and sim["implant_mix"]["hip_prosthesis"] == 2
    rows = (tmp_path / "raw" / "manifest.csv").read_text().splitlines()[1:]
    assert Counter(r.split(",")[1] for r in rows) == {"hip_prosthesis": 2,
                                                     "spinal_fixation": 1, "none": 1}
    build_dataset(tmp_path / "raw", tmp_path / "built", secret=b"k" * 32)
    card = (tmp_path / "built" / "README.md").read_text()
    assert "Preset `mini`: 3 implant patients (2 hip prosthesis, 0 fracture fixation, " \
           "1 spinal fixation) and 1 clean patients, 2 slices each." in card


@pytest.mark.slow
def test_content_fingerprint_ignores_the_key_and_sees_a_pixel(tiny_built, tmp_path):
    """Two builds with different keys: different manifests, the same split content; the
    runner then takes a segmenter trained on one as trained on the other."""
    import shutil

    import numpy as np

    from artifactgsi.build import build_dataset
    from benchmark.data import split_content_sha256

    other = tmp_path / "other"
    build_dataset(tiny_built.raw, other, secret=b"another key" * 3)
    a = json.loads((tiny_built.built / "manifest.json").read_text())
    b = json.loads((other / "manifest.json").read_text())
    assert a != b  # pseudonyms differ, so the files and their hashes do
    for config, splits in a["configs"].items():
        for split in splits:
            fp = split_content_sha256(tiny_built.built, config, split)
            assert fp is not None and len(fp) == 64
            assert fp == split_content_sha256(other, config, split)
    # a changed pixel in one patient's raw data changes that split's fingerprint
    raw2 = tmp_path / "raw2"
    shutil.copytree(tiny_built.raw, raw2)
    import pydicom

    files = sorted(raw2.glob("*/gsi/*.dcm"))
    victim = files[len(files) // 2]  # a middle slice: every build keeps it
    ds = pydicom.dcmread(victim)
    arr = ds.pixel_array.copy()
    arr.flat[arr.size // 2] += np.asarray(7, arr.dtype)
    ds.PixelData = arr.tobytes()
    ds.save_as(victim)
    third = tmp_path / "third"
    build_dataset(raw2, third, secret=tiny_built.secret)
    changed = [(c, s) for c, ss in a["configs"].items() for s in ss
               if split_content_sha256(third, c, s) != split_content_sha256(tiny_built.built,
                                                                            c, s)]
    assert len(changed) == 1 and changed[0][0] == "pairs"
