"""artifactgsi.schema and artifactgsi.errors: the dataset contract in one leaf module, checked
against what the real builder writes (a tiny dataset simulated and built by the library)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from artifactgsi import schema
from artifactgsi.build import BuildError
from artifactgsi.dicom import DicomError
from artifactgsi.errors import ArtifactGSIError, HubTransferError
from artifactgsi.hub import DatasetCardError, DatasetFolderError, ManifestError
from artifactgsi.register import RegistrationError

PACKAGE = Path(schema.__file__).resolve().parent


def test_schema_is_a_leaf_without_torch():
    tree = ast.parse(Path(schema.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("artifactgsi"), \
                ast.dump(node)
        if isinstance(node, ast.Import):
            assert not any(a.name.startswith(("artifactgsi", "torch")) for a in node.names)
    # Importing it loads neither torch nor any other module of the project.
    code = ("import sys, artifactgsi.schema; "
            "print(sorted(m for m in sys.modules if m.startswith(('torch', 'artifactgsi.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=PACKAGE.parent).stdout.strip()
    assert out == "['artifactgsi.schema']"


def test_built_shards_have_exactly_the_schema_features(tiny_built):
    for path in sorted(tiny_built.built.rglob("*.parquet")):
        config = path.parent.name
        table = pq.read_table(path)
        shape = tuple(np.asarray(table.column("ordinary")[0].as_py()).shape)
        expected = schema.features_for(config, shape)
        assert table.schema.names == list(schema.columns_for(config)), path
        assert table.schema.remove_metadata() == expected.arrow_schema.remove_metadata(), path


def test_every_column_is_documented_once():
    documented = [c.strip() for names, _ in schema.COLUMN_DOCS for c in names.split(",")]
    assert len(documented) == len(set(documented))
    assert set(documented) == {c for config in schema.CONFIG_SPLITS
                               for c in schema.columns_for(config)}
    for config in schema.CONFIG_SPLITS:
        assert set(schema.columns_for(config)) <= set(documented)
        assert config in schema.CONFIG_DESCRIPTIONS


def test_card_quotes_the_column_docs_and_the_simulation(tiny_built):
    card = (tiny_built.built / "README.md").read_text()
    for names, meaning in schema.COLUMN_DOCS:
        assert f"| `{names}` | {meaning} |" in card
    # The simulator's GSI metal correction settings, as recorded in the raw tree.
    assert "## Simulation" in card and "metal_hu 2500" in card and "trace_threshold_px" in card
    # ... and its scanner physics (bowtie, scatter, blur).
    assert "scanner physics: aluminium bowtie 2.5-36 mm; scatter at 40 mm collimation" in card


def test_hu_to_unit01_matches_the_formula_for_numpy_and_torch():
    hu = np.array([-3000.0, -1024.0, 0.0, 1000.0, 3071.0, 5000.0])
    expected = (np.minimum(np.maximum(hu, -1024), 3071) + 1024) / 4095
    np.testing.assert_allclose(schema.hu_to_unit01(hu), expected, rtol=0, atol=1e-12)
    t = schema.hu_to_unit01(torch.tensor(hu, dtype=torch.float64))
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), expected, rtol=0, atol=1e-12)
    back = schema.unit01_to_hu(schema.hu_to_unit01(hu))
    np.testing.assert_allclose(back, np.clip(hu, -1024, 3071), atol=1e-9)
    assert (schema.HU_MIN, schema.HU_MAX, schema.METAL_THRESHOLD_HU) == (-1024, 3071, 2500)


def test_implant_index_refuses_unknown_names():
    assert [schema.implant_index(t) for t in schema.IMPLANT_TYPES] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="unknown implant type 'pacemaker'"):
        schema.implant_index("pacemaker")


def test_patient_record_round_trip_and_validation(tiny_built):
    import json

    rec = schema.PatientRecord(pseudonym="Pabc", role="pairs", implant_type="hip_prosthesis",
                               body_region="hip", rows=3, shape=[32, 32], match_score=[0.9])
    assert schema.PatientRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec
    assert "skipped" not in rec.to_dict()
    with pytest.raises(ValueError, match="unknown field"):
        schema.PatientRecord.from_dict({**rec.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="implant_type 'pacemaker'"):
        schema.PatientRecord(pseudonym="P", role="pairs", implant_type="pacemaker",
                             body_region="hip")


def test_every_error_derives_from_the_root_and_keeps_its_old_base():
    for cls in (DicomError, BuildError, RegistrationError, DatasetFolderError, ManifestError,
                DatasetCardError):
        assert issubclass(cls, ArtifactGSIError) and issubclass(cls, ValueError), cls
    assert issubclass(HubTransferError, OSError)


def test_no_message_or_docstring_cites_documents_outside_the_repository():
    root = PACKAGE.parent
    files = [*PACKAGE.rglob("*.py"), root / "baselines" / "li.py", root / "baselines" / "nmar.py"]
    for path in files:
        text = path.read_text()
        assert "DESIGN" not in text and "REFERENCES" not in text, path
