"""The hidden track's test helpers: throwaway method packages, hand-made seasons and
evaluations, and the sandbox's skip.

Each package is a real installable project (pyproject.toml + one module, setuptools backend)
that registers its methods under the ``marbench.methods`` entry-point group, as a third party
would ship one. Good methods are deterministic and differ in quality; hostile ones try what
the sandbox forbids.
"""

from __future__ import annotations

import os
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import pytest

from leaderboard.board import BoardSlice
from leaderboard.efficiency import Efficiency
from leaderboard.hidden import EVALUATION_FILE, Evaluation, PackageRecord, SliceScores
from leaderboard.sandbox import sandbox_unavailable
from leaderboard.season import SeasonCard

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "{version}"
dependencies = ["torch>=2", "numpy"]

[project.entry-points."marbench.methods"]
{entry_points}

[tool.setuptools]
py-modules = ["{module}"]
"""

#: module name -> source. ``Scale`` pulls HU toward water, ``Smooth`` averages 3 x 3 with a
#: kernel read from its weights file (safetensors), ``Inpaint`` sets metal pixels to a
#: constant: three methods with different scores on any CT slice.
GOOD = {
    "mar_scale": '''
        from benchmark.method import MARMethod, MAROutput

        class Scale(MARMethod):
            """Pull HU toward water by a factor."""
            name = "scale"
            version = "1"

            def __init__(self, factor: float = 0.9):
                self.factor = factor

            def reduce(self, batch):
                return MAROutput(image=batch.ordinary * self.factor)
        ''',
    "mar_smooth": '''
        import torch
        import torch.nn.functional as F
        from benchmark.method import MARMethod, MAROutput

        class Smooth(MARMethod):
            """3 x 3 smoothing with a kernel from the weights (a safetensors file)."""
            name = "smooth"
            version = "2"

            def __init__(self, weights: str = ""):
                self.weights = weights
                self.kernel = None

            def prepare(self, ctx):
                from pathlib import Path
                from safetensors.torch import load_file
                w = Path(self.weights)
                w = next(w.glob("*.safetensors")) if w.is_dir() else w  # a folder or a file
                self.kernel = load_file(str(w))["kernel"].reshape(1, 1, 3, 3)

            def reduce(self, batch):
                x = F.pad(batch.ordinary, (1, 1, 1, 1), mode="replicate")
                return MAROutput(image=F.conv2d(x, self.kernel.to(x.dtype)))
        ''',
    "mar_inpaint": '''
        import torch
        from benchmark.method import MARMethod, MAROutput

        class Inpaint(MARMethod):
            """Metal pixels set to a constant HU."""
            name = "inpaint"
            version = "1"

            def __init__(self, fill_hu: float = 40.0):
                self.fill_hu = fill_hu

            def reduce(self, batch):
                out = batch.ordinary.clone()
                out[batch.metal_mask] = self.fill_hu
                return MAROutput(image=out)
        ''',
}

#: module -> source of methods that try what the sandbox forbids. ``Reader`` opens the path it
#: is given (the hidden set's Parquet file), ``Caller`` opens a connection, ``Sleeper`` never
#: ends.
HOSTILE = {
    "mar_reader": '''
        from benchmark.method import MARMethod, MAROutput

        class Reader(MARMethod):
            name = "reader"
            version = "1"

            def __init__(self, target: str = ""):
                self.target = target

            def prepare(self, ctx):
                with open(self.target, "rb") as f:  # the hidden references, if it could
                    self.stolen = f.read()

            def reduce(self, batch):
                return MAROutput(image=batch.ordinary)
        ''',
    "mar_caller": '''
        import socket
        from benchmark.method import MARMethod, MAROutput

        class Caller(MARMethod):
            name = "caller"
            version = "1"

            def prepare(self, ctx):
                socket.create_connection(("203.0.113.7", 443), timeout=5).sendall(b"hi")

            def reduce(self, batch):
                return MAROutput(image=batch.ordinary)
        ''',
    "mar_sleeper": '''
        import time
        from benchmark.method import MARMethod, MAROutput

        class Sleeper(MARMethod):
            name = "sleeper"
            version = "1"

            def prepare(self, ctx):
                time.sleep(3600)

            def reduce(self, batch):
                return MAROutput(image=batch.ordinary)
        ''',
}

CLASSES = {"mar_scale": "Scale", "mar_smooth": "Smooth", "mar_inpaint": "Inpaint",
           "mar_reader": "Reader", "mar_caller": "Caller", "mar_sleeper": "Sleeper"}


def write_package(root: Path, module: str, version: str = "1.0") -> Path:
    """``root/<dist>/`` with pyproject.toml and ``<module>.py``; its entry point is the
    class's ``name``."""
    source = textwrap.dedent({**GOOD, **HOSTILE}[module])
    cls = CLASSES[module]
    ep = {"Scale": "scale", "Smooth": "smooth", "Inpaint": "inpaint", "Reader": "reader",
          "Caller": "caller", "Sleeper": "sleeper"}[cls]
    dist = module.replace("_", "-")
    d = root / dist
    d.mkdir(parents=True)
    (d / "pyproject.toml").write_text(PYPROJECT.format(
        dist=dist, version=version, module=module,
        entry_points=f'{ep} = "{module}:{cls}"'))
    (d / f"{module}.py").write_text(source)
    return d


def write_smoothing_weights(path: Path) -> Path:
    """A safetensors file with a 3 x 3 kernel (9 parameters), centre-weighted."""
    import torch
    from safetensors.torch import save_file

    k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"kernel": k}, str(path))
    return path


CARD = """\
name: {name}
authors: [Test Author]
code: https://example.org/{name}
licence: MIT
track: {track}
no_test_patients: {no_test}
{extra}"""


def write_card(path: Path, name: str, track: str = "classic", no_test: bool = True,
               extra: str = "") -> Path:
    path.write_text(CARD.format(name=name, track=track, no_test=str(no_test).lower(),
                                extra=extra))
    return path


def require_sandbox() -> None:
    """Skip without a sandbox here; fail under CI=true, where it must work."""
    why = sandbox_unavailable()
    if why is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"the sandbox must work in CI: {why}")
    pytest.skip(f"no sandbox on this machine: {why}")


# ----------------------------------------------------------------------------- hand-made entries

SEASON_SLICES = [("Pa", 0, "hip_prosthesis"), ("Pa", 1, "hip_prosthesis"),
                 ("Pb", 0, "spinal_fixation"), ("Pb", 1, "spinal_fixation"),
                 ("Pc", 0, "hip_prosthesis")]


def season_card(name: str = "s1") -> SeasonCard:
    """A season's card with :data:`SEASON_SLICES` (the images never exist)."""
    return SeasonCard(name=name, created_utc=datetime(2026, 1, 1, tzinfo=timezone.utc),  # noqa: UP017
                      preset="standard", simulate={"size": 32}, seed_sha256="5" * 64,
                      manifest_sha256="6" * 64, image_shape=(32, 32), n_patients=3,
                      slices=[BoardSlice(patient_id=p, slice_index=s, implant_type=t,
                                         comparisons=["method_vs_gsi"])
                              for p, s, t in SEASON_SLICES])


def evaluation(method: str, offset: float, status: str = "scored", reason: str | None = None,
                message: str | None = None, season: str = "s1") -> Evaluation:
    """An ``evaluation.json`` as `leaderboard evaluate` writes it, with PSNR rising with
    ``offset`` (``status`` "failed": no score, the ``reason`` and ``message``)."""
    per_slice = [SliceScores(patient_id=p, slice_index=s, implant_type=t,
                             scores={"method_vs_gsi": {"psnr": 30 + offset + 0.1 * i,
                                                       "ssim": 0.8 + offset / 100}})
                 for i, (p, s, t) in enumerate(SEASON_SLICES)] if status == "scored" else []
    return Evaluation(season=season, season_manifest_sha256="6" * 64, status=status,
                      reason=reason, message=message, method=method, version="1",
                      package=PackageRecord(file=f"{method}-1.whl", sha256="7" * 64),
                      per_slice=per_slice,
                      efficiency=Efficiency(seconds_per_slice=0.5 + offset, wall_s=2.5,
                                            cpu_s=2.0, n_slices=5, peak_memory_mib=900.0,
                                            parameters=1234 if offset > 0 else None,
                                            measured_by="test", machine="test"),
                      evaluated_utc=datetime(2026, 1, 2, tzinfo=timezone.utc))  # noqa: UP017


def file_hidden(board: Path, ev: Evaluation, card: str) -> Path:
    """File ``ev`` and ``card`` (YAML text) as a hidden entry of ``board``."""
    d = board / "hidden" / ev.season / ev.method / ev.version
    d.mkdir(parents=True)
    (d / "card.yaml").write_text(card)
    (d / EVALUATION_FILE).write_text(ev.model_dump_json(indent=1))
    return d
