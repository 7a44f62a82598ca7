"""The expert study under a careless coordinator, a full disk and hostile text: a pack's key is
never replaced and a failed pack leaves nothing; file times and order say nothing about the
methods; a title cannot break the form; the CSV export cannot carry spreadsheet formulas;
``true`` is not a score; a reader id cannot break Table 4."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner


def _line(result) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def _no_traceback(result) -> None:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


# ----------------------------------------------------------------------------- the key


def test_pack_into_the_same_out_after_reader_was_moved_keeps_the_key(expert_runs, expert_data,
                                                                     tmp_path):
    from benchmark.expert.pack import PackError, make_pack

    out = tmp_path / "study"
    first = make_pack(expert_runs, out, data=expert_data, cases=3, readers=1, repeat=0.0)
    key_bytes = first.key_path.read_bytes()
    shutil.move(str(first.reader_dir), str(tmp_path / "sent-to-readers"))  # as instructed
    with pytest.raises(PackError, match="key"):
        make_pack(expert_runs, out, data=expert_data, cases=3, readers=1, repeat=0.0)
    assert first.key_path.read_bytes() == key_bytes
    assert not (out / "reader").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sent-to-readers", "study"]


def test_a_pack_that_fails_half_way_leaves_nothing(expert_runs, expert_data, tmp_path,
                                                  monkeypatch):
    """A full disk while the form is written: no reader/, no key.json, no hidden staging
    folder; the command prints one line naming the problem."""
    import benchmark.expert.form as form
    from benchmark.expert.cli import app

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(form, "write_form", full)
    out = tmp_path / "study"
    r = CliRunner().invoke(app, ["pack", "--results", *map(str, expert_runs), "--data",
                                 str(expert_data), "--out", str(out), "--cases", "3",
                                 "--readers", "1"])
    _no_traceback(r)
    assert "no space left on the device" in _line(r) and str(out) in _line(r)
    assert list(tmp_path.iterdir()) == []  # neither study/ nor a hidden half-written pack


def test_scoring_onto_a_full_disk_or_a_locked_folder_is_one_line(expert_pack, simulate,
                                                                  tmp_path, monkeypatch):
    import benchmark.results as results
    from benchmark.expert.cli import app

    ratings = simulate(expert_pack.out, expert_pack.key_path, tmp_path / "ratings")
    out = tmp_path / "scores"
    for code, words in ((errno.ENOSPC, "no space left"), (errno.EACCES, "permission denied")):
        def refuse(path, text, *a, code=code, **k):
            raise OSError(code, "refused", str(path))

        monkeypatch.setattr(results, "atomic_write_text", refuse)
        r = CliRunner().invoke(app, ["score", str(expert_pack.out), *map(str, ratings),
                                     "--out", str(out), "--bootstrap", "50"])
        _no_traceback(r)
        assert words in _line(r) and "table4.json" in _line(r)


# ----------------------------------------------------------------------------- blinding


def test_file_times_and_write_order_say_nothing_about_the_method(expert_runs, expert_data,
                                                                 tmp_path, monkeypatch):
    """Every file of the pack has one mtime, and images are written in the order of their
    opaque ids (not case by case in method order, which mtimes, inode numbers and tar order
    would show)."""
    import benchmark.expert.pack as pack

    written: list[str] = []
    real = pack.write_png

    def spy(path, image_u8):
        written.append(Path(path).name)
        real(path, image_u8)

    monkeypatch.setattr(pack, "write_png", spy)
    res = pack.make_pack(expert_runs, tmp_path / "study", data=expert_data, cases=4,
                         readers=1, repeat=0.0)
    ids = [n.rsplit("-", 1)[0] for n in written]
    first_seen = list(dict.fromkeys(ids))
    assert first_seen == sorted(first_seen)
    files = [p for p in res.out.rglob("*")]
    mtimes = {p.stat().st_mtime_ns for p in files}
    assert len(mtimes) == 1, f"{len(mtimes)} different modification times"


def test_the_form_payload_cannot_end_its_script(expert_pack):
    """Text of the pack (here a title) holding ``<!--<script>`` or ``</script>`` would switch
    the HTML parser's script states and break the page: ``<``, ``>`` and ``&`` never appear in
    the embedded JSON, which still reads back exactly."""
    from benchmark.expert.form import render_form

    title = "A <!--<script>x</script> & </SCRIPT> study"
    payload = {"format": "t", "title": title, "lists": [], "images": {}}
    html = render_form(payload)
    start = html.index('type="application/json">') + len('type="application/json">')
    blob = html[start:html.index("</script>", start)]
    assert not set("<>&") & set(blob)
    assert json.loads(blob) == payload


@pytest.mark.slow
def test_a_hostile_title_and_formula_cells_in_a_real_browser(expert_runs, expert_data,
                                                             tmp_path, browser_exe):
    """In Chromium: the form with a hostile title works (title shown as text, lists offered);
    its CSV cell writer prefixes formulas with ``'`` and keeps numbers."""
    from playwright.sync_api import sync_playwright

    from benchmark.expert.pack import make_pack

    title = 'Study <!--<script>document.title="pwned"</script> "q" & <b>bold</b>'
    res = make_pack(expert_runs, tmp_path / "study", data=expert_data, cases=3, readers=2,
                    repeat=0.0, title=title)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_exe, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(res.form_path.as_uri())
        page.wait_for_selector("#list option", state="attached")
        assert errors == []
        assert page.title() == title
        assert page.inner_text("#title") == title
        assert page.locator("#list option").count() == 2
        cells = page.evaluate("""() => [
            csvCell("=HYPERLINK(\\"http://x\\")"), csvCell("+1+2"), csvCell("-cmd|' /C calc'!A0"),
            csvCell("@SUM(A1)"), csvCell("\\t=1"), csvCell("-3"), csvCell(-3), csvCell(4.5),
            csvCell("plain, text"), csvCell("")]""")
        browser.close()
    assert cells == ['"\'=HYPERLINK(""http://x"")"', "'+1+2", "'-cmd|' /C calc'!A0",
                     "'@SUM(A1)", "'\t=1", "-3", "-3", "4.5", '"plain, text"', ""]


# ----------------------------------------------------------------------------- scoring


def test_json_true_is_not_a_score(expert_pack, simulate, tmp_path):
    from benchmark.expert.form import RATINGS_FORMAT
    from benchmark.expert.score import ScoreRangeError, load_pack, validate

    csv_files = simulate(expert_pack.out, expert_pack.key_path, tmp_path / "r", readers=1)
    import csv

    rows = list(csv.DictReader(csv_files[0].open(encoding="utf-8")))
    ratings = [dict(r, readability=int(r["readability"]), correctness=int(r["correctness"]),
                    reading_list=int(r["reading_list"])) for r in rows]
    ratings[0]["readability"] = True
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"format": RATINGS_FORMAT, "ratings": ratings}))
    with pytest.raises(ScoreRangeError, match="readability = True"):
        validate(load_pack(expert_pack.out), [path])


def test_a_pipe_or_line_break_in_a_reader_id_keeps_table4_whole(expert_pack, simulate,
                                                                 tmp_path):
    import csv

    from benchmark.expert.score import score_pack

    files = simulate(expert_pack.out, expert_pack.key_path, tmp_path / "r")
    for i, f in enumerate(files):
        rows = list(csv.DictReader(f.open(encoding="utf-8")))
        for r in rows:
            r["reader_id"] = f"dr|{i}\nx"
        with f.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    _, _, md = score_pack(expert_pack.out, files, out=tmp_path / "s", n_boot=50)
    text = md.read_text()
    intra = text.split("## Intra-reader agreement")[1].split("\n\n")[1].splitlines()
    assert intra[0].startswith("| reader |") and len(intra) == 2 + len(files), intra
    header_cells = intra[0].count(" | ")
    for row in intra[2:]:
        assert row.startswith("| dr\\|") and row.endswith(" |"), row
        assert row.replace("\\|", "").count(" | ") == header_cells, row


def test_a_formula_quote_added_by_the_csv_export_is_dropped_when_read(tmp_path):
    """The form writes ``'=x`` for a reader id ``=x``; scoring reads it back as ``=x``, so a
    reader's CSV and JSON exports name the same reader."""
    from benchmark.expert.form import RATING_COLUMNS
    from benchmark.expert.score import read_ratings_file

    path = tmp_path / "r.csv"
    path.write_text(",".join(RATING_COLUMNS) + "\n" + ",".join(
        {"reader_id": "'=x", "comment": "'+note", "experience_years": "-3"}.get(c, "1")
        for c in RATING_COLUMNS) + "\n", encoding="utf-8")
    (_, row), = read_ratings_file(path)
    assert (row["reader_id"], row["comment"], row["experience_years"]) == ("=x", "+note", "-3")
