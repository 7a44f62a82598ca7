"""One citation: CITATION.cff (what GitHub's "Cite this repository" reads), the README's
citation section and the dataset card's BibTeX name the same paper the same way."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from artifactgsi.card import CITATION

ROOT = Path(__file__).resolve().parents[2]


def _bibtex_fields(text: str) -> dict[str, str]:
    """``key = {value}`` pairs of one BibTeX entry, whitespace folded (values hold no
    nested braces here)."""
    return {k: " ".join(v.split()) for k, v in re.findall(r"(\w+)\s*=\s*\{([^{}]*)\}", text)}


def test_readme_shows_the_card_bibtex_verbatim():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Citation"):]
    block = re.search(r"```bibtex\n(.*?)\n```", section, re.S)
    assert block is not None and block.group(1) == CITATION


def test_citation_cff_is_the_same_paper():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0" and cff["message"] and cff["title"] and cff["authors"]
    paper = cff["preferred-citation"]
    bib = _bibtex_fields(CITATION)
    assert CITATION.startswith("@inproceedings{") and paper["type"] == "conference-paper"
    assert " ".join(paper["title"].split()) == bib["title"]
    authors = " and ".join(f"{a['family-names']}, {a['given-names']}" for a in paper["authors"])
    assert authors == bib["author"]
    assert " ".join(paper["collection-title"].split()) == bib["booktitle"]
    assert str(paper["year"]) == bib["year"]
    assert [i["value"] for i in paper["identifiers"]] == [bib["note"]]
