"""The tiny trainings of every trainable family reproduce the loss curves and validation
numbers recorded before their trainers moved onto the training kit
(``benchmarks/bench_learn_curves.py``, fixtures/learn_curves.json), and the shipped demo
weights give the recorded predictions.

On the machine that recorded them the curves match bitwise (run the script with
``--check``); here the tolerance is loose enough for another CPU's float rounding and tight
enough for any change of batches, schedule, seeding or loss."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.helpers.files import load_script

FIXTURE = Path(__file__).parent / "fixtures" / "learn_curves.json"


@pytest.mark.slow  # seven tiny trainings and the two demo models (about a minute)
def test_tiny_trainings_reproduce_their_recorded_curves(tiny_built, tmp_path):
    bench = load_script("bench_learn_curves")
    old = json.loads(FIXTURE.read_text())
    new = bench.run(list(bench.FAMILIES), tiny_built.built.parent)
    for name, ref in old["families"].items():
        got = new["families"][name]
        a = [float.fromhex(v) for v in ref["losses"]]
        b = [float.fromhex(v) for v in got["losses"]]
        assert len(a) == len(b), name
        assert all(math.isclose(x, y, rel_tol=1e-3) for x, y in zip(a, b, strict=True)), name
        assert [e.keys() for e in ref["log"]] == [e.keys() for e in got["log"]], name
        for e, f in zip(ref["log"], got["log"], strict=True):
            for k, v in e.items():
                assert f[k] == pytest.approx(v, rel=1e-3, nan_ok=True), (name, k)
    assert new["shipped"]["lga/weights_sha256"] == old["shipped"]["lga/weights_sha256"]
    assert new["shipped"]["seg/weights_sha256"] == old["shipped"]["seg/weights_sha256"]
