"""Hostile submissions, each written from an honest run folder of the fixtures.

A maker takes an honest run folder (``conftest.make_results``: results.json, predictions,
card.yaml) and turns it into one hostile submission, the way a submitter would with an
editor and a few lines of Python. :data:`HOSTILE` lists them with the reason code the board
must give; :func:`place` puts a run folder on a board verbatim, as a merged pull request would
(``marbench submit`` refuses most of them before that).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.results import Results, sha256_file
from tests.helpers.board import SLICES, summary_np, write_predictions

PRED = "predictions/test-00000-of-00001.parquet"
#: What a hostile figure or name tries to run on the board's page.
SCRIPT = "<script>document.title='pwned';window.__pwned=1</script>"
IMG_ONERROR = '<img src=x onerror="window.__pwned=1">'
#: A file of the maintainer's machine that a hostile entry names (written by :func:`secret`).
SECRET_TEXT = "SECRET-OF-THE-MAINTAINER"


def edit(run: Path, fn: Callable[[Results], None]) -> None:
    """Change results.json through the schema (as a careful cheater would) and save it."""
    r = Results.load(run)
    fn(r)
    Results.model_validate(r.model_dump()).save(run / "results.json")


def resummarize(r: Results) -> None:
    """Summaries made consistent with edited per-slice values (numpy, as the fixtures)."""
    comp = r.comparisons["method_vs_gsi"]
    for m in comp.summary:
        comp.summary[m] = summary_np([s.scores["method_vs_gsi"][m] for s in r.per_slice], True)


def set_card(run: Path, **fields: object) -> None:
    """Rewrite card.yaml as JSON (valid YAML) with ``fields`` changed."""
    import yaml

    card = yaml.safe_load((run / "card.yaml").read_text())
    card.update(fields)
    (run / "card.yaml").write_text(json.dumps(card), encoding="utf-8")


def repoint_predictions(run: Path, r: Results, rel: str, src: Path) -> None:
    """Record ``rel`` as the predictions path, with the sha256 and size of ``src``."""
    r.predictions = r.predictions.model_copy(update={
        "path": rel, "sha256": sha256_file(src), "bytes": src.stat().st_size})


def secret(tmp: Path) -> Path:
    """A private file of the maintainer's machine, outside any board."""
    p = tmp / "maintainer-secret.txt"
    p.write_text(SECRET_TEXT)
    return p


def png_bytes(text_chunk: str = "") -> bytes:
    """A small real PNG (matplotlib's writer), with an optional tEXt chunk."""
    import io

    import matplotlib.image as mpimg

    buf = io.BytesIO()
    mpimg.imsave(buf, np.linspace(0, 1, 64).reshape(8, 8), format="png",
                 metadata={"Comment": text_chunk} if text_chunk else None)
    return buf.getvalue()


# ----------------------------------------------------------------------------- makers
# Each maker: (run folder, scratch folder outside the board) -> None.


def figure_is_verification(run: Path, tmp: Path) -> None:
    """A hand-written verification.json, named as the run's figure."""
    r = Results.load(run)
    (run / "verification.json").write_text(json.dumps({
        "status": "reproduced", "reasons": [], "notes": ["trust me"],
        "predictions_sha256": r.predictions.sha256, "checked_utc": "2025-01-01T00:00:00Z"}))
    edit(run, lambda r: setattr(r, "figure", "verification.json"))


def verification_in_run(run: Path, tmp: Path) -> None:
    """A hand-written verification.json lying in the run folder (not named anywhere)."""
    r = Results.load(run)
    (run / "verification.json").write_text(json.dumps({
        "status": "reproduced", "reasons": [], "notes": [],
        "predictions_sha256": r.predictions.sha256, "checked_utc": "2025-01-01T00:00:00Z"}))


def figure_absolute(run: Path, tmp: Path) -> None:
    """The figure is a private file of the machine (absolute path)."""
    path = secret(tmp)
    edit(run, lambda r: setattr(r, "figure", str(path)))


def figure_parent(run: Path, tmp: Path) -> None:
    """The figure climbs out of the run folder."""
    edit(run, lambda r: setattr(r, "figure", "../../maintainer-secret.txt"))
    secret(tmp)


def figure_svg(run: Path, tmp: Path) -> None:
    """An SVG figure that runs a script when opened."""
    (run / "figure.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg"><script>window.__pwned=1;'
        "document.title='pwned'</script></svg>")
    edit(run, lambda r: setattr(r, "figure", "figure.svg"))


def figure_html_as_png(run: Path, tmp: Path) -> None:
    """An HTML page named figure.png."""
    (run / "figure.png").write_text(f"<html><body>{SCRIPT}</body></html>")
    edit(run, lambda r: setattr(r, "figure", "figure.png"))


def predictions_absolute(run: Path, tmp: Path) -> None:
    """predictions.path is an absolute path to a file of the machine."""
    src = tmp / "elsewhere.parquet"
    shutil.copyfile(run / PRED, src)
    edit(run, lambda r: repoint_predictions(run, r, str(src), src))


def wrong_shape(run: Path, tmp: Path) -> None:
    """2 x 2 predictions on a board of 4 x 4 slices, sha256 updated: they cannot be scored."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = [(p, s) for p, s, _ in SLICES]
    arrays = [np.full((2, 2), 40, np.int16).tolist() for _ in keys]
    pq.write_table(pa.table({
        "patient_id": pa.array([k[0] for k in keys], pa.string()),
        "slice_index": pa.array([k[1] for k in keys], pa.int32()),
        "prediction": pa.array(arrays, pa.list_(pa.list_(pa.int16())))}), run / PRED)
    edit(run, lambda r: repoint_predictions(run, r, PRED, run / PRED))


def reference_copy(run: Path, tmp: Path) -> None:
    """Predictions that are the GSI images (within 1 HU): 75 dB PSNR against GSI."""
    def fn(r: Results) -> None:
        for s in r.per_slice:
            s.scores["method_vs_gsi"]["psnr"] = 75.0 + 0.01 * s.slice_index
            s.scores["method_vs_gsi"]["ssim"] = 0.9999
        resummarize(r)
    edit(run, fn)


def huge_value(run: Path, tmp: Path) -> None:
    """PSNR of 1e308 on two slices: the summary cannot even be recomputed (overflow)."""
    def fn(r: Results) -> None:
        r.per_slice[0].scores["method_vs_gsi"]["psnr"] = 1e308
        r.per_slice[1].scores["method_vs_gsi"]["psnr"] = 1e308
    edit(run, fn)


def nested_results(run: Path, tmp: Path) -> None:
    """results.json nested 100 000 deep."""
    (run / "results.json").write_text("[" * 100_000 + "]" * 100_000)


def latin1_card(run: Path, tmp: Path) -> None:
    text = (run / "card.yaml").read_text().replace("name: ", "name: Méthode ")
    (run / "card.yaml").write_bytes(text.encode("latin-1"))


def nested_card(run: Path, tmp: Path) -> None:
    (run / "card.yaml").write_text("name: " + "[" * 50_000 + "]" * 50_000)


def megabyte_name(run: Path, tmp: Path) -> None:
    set_card(run, name="A" * 1_000_000)


def blank_name(run: Path, tmp: Path) -> None:
    set_card(run, name="   ")


def nul_name(run: Path, tmp: Path) -> None:
    set_card(run, name="Good\x00 method")


def rtl_name(run: Path, tmp: Path) -> None:
    # U+202E RIGHT-TO-LEFT OVERRIDE: "\u202egnp.exe" shows as "exe.png".
    set_card(run, name="Top \u202edohtem")


def yaml_bomb(run: Path, tmp: Path) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, k in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{k}: &{k} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},"
                     f"*{prev},*{prev}]")
    lines.append("name: *i")
    (run / "card.yaml").write_text("\n".join(lines) + "\n")


def python_object(run: Path, tmp: Path) -> None:
    (run / "card.yaml").write_text("name: !!python/object/apply:os.system ['touch pwned']\n")


def doctored_summary(run: Path, tmp: Path) -> None:
    def fn(r: Results) -> None:
        r.comparisons["method_vs_gsi"].summary["psnr"].mean += 3.0
    edit(run, fn)


def swapped_predictions(run: Path, tmp: Path) -> None:
    """Other predictions put in place of the scored ones (sha256 left as it was)."""
    write_predictions(run / PRED, [(p, s) for p, s, _ in SLICES], seed=99, salt="other")


def script_name(run: Path, tmp: Path) -> None:
    """A valid card whose name is markup: accepted, shown escaped."""
    set_card(run, name=f"Nice{SCRIPT}{IMG_ONERROR}")


def import_path_method(run: Path, tmp: Path) -> None:
    """A method 'name' that is an import path of code replaying the submitted predictions."""
    def fn(r: Results) -> None:
        r.method.name = "benchmark.rescore:ReplayPredictions"
        r.method.options = {"predictions": PRED}
    edit(run, fn)


@dataclass(frozen=True)
class Hostile:
    name: str
    code: str                       # the reason code the board gives ("" : accepted)
    make: Callable[[Path, Path], None]
    held: bool = False              # refused (or escaped) before this version too


HOSTILE: list[Hostile] = [
    Hostile("figure-is-verification", "figure_path", figure_is_verification),
    Hostile("figure-absolute", "figure_path", figure_absolute),
    Hostile("figure-parent", "figure_path", figure_parent),
    Hostile("figure-svg", "figure_path", figure_svg),
    Hostile("figure-html-as-png", "figure", figure_html_as_png),
    Hostile("predictions-absolute", "predictions_path", predictions_absolute),
    Hostile("wrong-shape", "predictions_shape", wrong_shape),
    Hostile("reference-copy", "reference_copy", reference_copy),
    Hostile("huge-value", "out_of_range", huge_value),
    Hostile("nested-results", "schema", nested_results),
    Hostile("latin1-card", "card", latin1_card),
    Hostile("nested-card", "card", nested_card),
    Hostile("megabyte-name", "card", megabyte_name),
    Hostile("blank-name", "card", blank_name),
    Hostile("nul-name", "card", nul_name),
    Hostile("rtl-name", "card", rtl_name),
    Hostile("yaml-bomb", "card", yaml_bomb, held=True),
    Hostile("python-object", "card", python_object, held=True),
    Hostile("doctored-summary", "summary_mismatch", doctored_summary, held=True),
    Hostile("swapped-predictions", "predictions_sha256", swapped_predictions, held=True),
]


def make_hostile(h: Hostile, honest: Path, dest: Path, tmp: Path) -> Path:
    """A copy of the honest run folder ``honest`` at ``dest``, made hostile by ``h``."""
    shutil.copytree(honest, dest)
    h.make(dest, tmp)
    return dest


def place(run: Path, board: Path, key: str) -> Path:
    """Put a run folder's files on a board verbatim as ``submissions/<key>/`` (what merging
    a hand-made pull request does), whatever they are."""
    dest = board / "submissions" / key
    shutil.copytree(run, dest)
    return dest


FAKE_MARBENCH = '''\
"""A stand-in `marbench` for verification tests: `rescore` reports the submitted per-slice
values (what honestly scoring these synthetic predictions gives, by construction); `run`
logs its arguments and, with FAKE_RERUN_FROM set, returns that run folder."""
import json, os, shutil, sys
from pathlib import Path

args = sys.argv[1:]
if os.environ.get("FAKE_MARBENCH_LOG"):
    with open(os.environ["FAKE_MARBENCH_LOG"], "a") as f:
        f.write(json.dumps(args) + "\\n")


def opt(name):
    for i, a in enumerate(args):
        if a == name:
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]


out = Path(opt("--out"))
if args[0] == "rescore":
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(args[1]) / "results.json", out / "results.json")
    sys.exit(0)
if args[0] == "run" and os.environ.get("FAKE_RERUN_FROM"):
    shutil.copytree(os.environ["FAKE_RERUN_FROM"], out, dirs_exist_ok=True)
    sys.exit(0)
print("error: unknown MAR method", file=sys.stderr)
sys.exit(2)
'''


def fake_marbench(tmp: Path) -> list[str]:
    """The command line of a stand-in `marbench` (see :data:`FAKE_MARBENCH`)."""
    script = tmp / "fake_marbench.py"
    script.write_text(FAKE_MARBENCH)
    return [sys.executable, str(script)]
