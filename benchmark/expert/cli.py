"""``marbench expert``: make a blinded reading pack, then score the readers' ratings.

    marbench expert pack --results results/li results/nmar results/lga --out study/ \\
        --cases 20 --readers 3
    # send study/reader/ to the readers; keep study/key.json
    marbench expert score study/ ratings/*.csv --paper

Only typer is imported here; the work is done in :mod:`benchmark.expert.pack` and
:mod:`benchmark.expert.score`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from artifactgsi.cli_common import cli_errors, print_error

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Expert reading study: blinded packs, an offline rating form, and "
                       "scores with reader agreement.")


@app.command("pack", context_settings={"allow_extra_args": True})
def pack_cmd(
    ctx: typer.Context,
    results: list[Path] = typer.Option(..., "--results", "-r",
                                       help="results.json files or run folders, one per method "
                                            "(--results a b c, or --results a --results b)"),
    out: Path = typer.Option(..., "--out", "-o", help="new pack folder"),
    data: str = typer.Option(None, "--data", help="the built dataset the runs scored (default: "
                                                  "the folder recorded in the results)"),
    cases: int = typer.Option(20, "--cases", help="slices in the study (stratified by implant "
                                                  "type)"),
    readers: int = typer.Option(3, "--readers", help="reading lists to prepare"),
    repeat: float = typer.Option(0.1, "--repeat", help="fraction of images shown twice per "
                                                       "reader (intra-reader agreement)"),
    seed: int = typer.Option(0, "--seed", help="seeds the case choice and reading orders"),
    reference: bool = typer.Option(True, "--reference/--no-reference",
                                   help="show the uncorrected CT beside each image"),
    min_metal_pixels: int = typer.Option(1, "--min-metal-pixels",
                                         help="draw only slices with at least this much metal"),
    title: str = typer.Option("CT metal artifact reduction reading study", "--title",
                              help="heading of the rating form"),
) -> None:
    """Build a blinded reading pack from benchmark runs.

    Every method's image of each case is written under an opaque id (PNG at two windows and
    the int16 slice), with balanced reading lists holding repeats and the offline rating form;
    the unblinding key is written apart from the reader material."""
    from benchmark.errors import MARBenchError
    from benchmark.expert.pack import make_pack

    extra = [a for a in ctx.args]
    bad = [a for a in extra if a.startswith("-")]
    if bad:
        raise print_error(f"unknown option(s) {bad}; see `marbench expert pack --help`")
    with cli_errors(MARBenchError, ValueError, path=out):
        res = make_pack([*results, *map(Path, extra)], out, data=data, cases=cases,
                        readers=readers, repeat=repeat, seed=seed, reference=reference,
                        min_metal_pixels=min_metal_pixels, title=title)
    strata = ", ".join(f"{k} {v}" for k, v in sorted(res.strata.items()))
    typer.echo(f"pack {res.pack_id}: {res.n_cases} cases ({strata}) x {res.n_methods} methods, "
               f"{res.n_readers} reading list(s) of {res.n_items_per_reader} images "
               f"({res.n_repeats_per_reader} repeats)")
    typer.echo(f"  send to readers : {res.reader_dir}/  (open {res.form_path.name} in a browser)")
    typer.echo(f"  keep apart      : {res.key_path}  (the unblinding key; do not send)")
    for w in res.warnings:
        typer.echo(f"  warning: {w}", err=True)


@app.command("score")
def score_cmd(
    pack: Path = typer.Argument(..., help="the pack folder (--out of `pack`)"),
    ratings: list[Path] = typer.Argument(..., help="ratings exported by the form (CSV/JSON)"),
    key: Path = typer.Option(None, "--key", "-k", help="the pack's key.json (default: "
                                                       "PACK/key.json)"),
    out: Path = typer.Option(None, "--out", "-o", help="where to write table4.json / .md "
                                                       "(default PACK/scores)"),
    paper: bool = typer.Option(False, "--paper", help="print the paper's Table 4 beside"),
    n_boot: int = typer.Option(2000, "--bootstrap", help="bootstrap resamples for the CIs"),
    seed: int = typer.Option(0, "--seed", help="bootstrap seed"),
    min_self_alpha: float = typer.Option(0.667, "--min-self-alpha",
                                         help="flag readers whose ordinal alpha against "
                                              "their own repeats is below this"),
) -> None:
    """Check and unblind readers' ratings, then write Table 4 with reader agreement.

    Means with bootstrap CIs, Wilcoxon + Holm between methods, ICC(2,1) / ICC(2,k) and
    ordinal Krippendorff alpha between readers, self-agreement from repeated images."""
    from benchmark.errors import MARBenchError
    from benchmark.expert.score import markdown, score_pack

    with cli_errors(MARBenchError, ValueError, path=out or pack):
        report, jp, mp = score_pack(pack, ratings, key=key, out=out, paper=paper,
                                    n_boot=n_boot, seed=seed, min_self_alpha=min_self_alpha)
    typer.echo(markdown(report))
    typer.echo(f"wrote {jp} and {mp}")
