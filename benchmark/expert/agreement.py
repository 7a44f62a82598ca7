"""Reader agreement statistics for the expert study.

- :func:`icc` : the six intraclass correlation forms of Shrout & Fleiss (1979) with 95 % CIs,
  computed by ``pingouin.intraclass_corr`` and returned under Shrout & Fleiss' names
  (``ICC(2,1)`` is pingouin's ``ICC(A,1)``: two-way random effects, absolute agreement, one
  rater; ``ICC(2,k)`` the same for the mean of the k raters).
- :func:`krippendorff_alpha`: Krippendorff's alpha from a raters x units matrix with missing
  values (``krippendorff.alpha``); ``"ordinal"`` suits 1-5 Likert scores.
- :func:`self_agreement`: one reader against themself on repeated images (exact agreement,
  agreement within one point, ordinal alpha of first vs. second reading) and whether it is poor.

Scores are Likert points (1-5); nothing here knows about methods or packs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: pingouin's row labels (old and new spellings) -> Shrout & Fleiss' names.
_ICC_NAMES = {
    "ICC1": "ICC(1,1)", "ICC(1,1)": "ICC(1,1)",
    "ICC2": "ICC(2,1)", "ICC(A,1)": "ICC(2,1)",
    "ICC3": "ICC(3,1)", "ICC(C,1)": "ICC(3,1)",
    "ICC1k": "ICC(1,k)", "ICC(1,k)": "ICC(1,k)",
    "ICC2k": "ICC(2,k)", "ICC(A,k)": "ICC(2,k)",
    "ICC3k": "ICC(3,k)", "ICC(C,k)": "ICC(3,k)",
}

#: Krippendorff's smallest alpha for "tentative conclusions"; below it, agreement is poor.
POOR_ALPHA = 0.667


@dataclass(frozen=True)
class ICCValue:
    """One ICC form: value, 95 % confidence interval, F test against zero."""

    icc: float
    ci_low: float
    ci_high: float
    f: float
    p_value: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def icc(scores: np.ndarray) -> dict[str, ICCValue]:
    """All six Shrout & Fleiss ICC forms of a complete targets x raters matrix.

    Args:
        scores: (n_targets, k_raters) ratings, no missing values (every rater rated every
            target), n_targets >= 2 and k_raters >= 2.

    Returns:
        ``{"ICC(1,1)", "ICC(2,1)", "ICC(3,1)", "ICC(1,k)", "ICC(2,k)", "ICC(3,k)"}`` ->
        :class:`ICCValue`. The ICC is NaN when the ratings do not vary at all.
    """
    import pandas as pd
    import pingouin as pg

    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError(f"icc: need a (targets, raters) matrix with at least 2 of each, got "
                         f"shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("icc: the matrix has missing values; every rater must rate every "
                         "target")
    n, k = x.shape
    long = pd.DataFrame({"target": np.repeat(np.arange(n), k),
                         "rater": np.tile(np.arange(k), n), "score": x.ravel()})
    with np.errstate(divide="ignore", invalid="ignore"):
        table = pg.intraclass_corr(data=long, targets="target", raters="rater", ratings="score")
    out: dict[str, ICCValue] = {}
    for _, row in table.iterrows():
        name = _ICC_NAMES.get(str(row["Type"]))
        if name is None:
            continue
        lo, hi = (float(v) for v in row["CI95"])
        out[name] = ICCValue(icc=float(row["ICC"]), ci_low=lo, ci_high=hi, f=float(row["F"]),
                             p_value=float(row["pval"]))
    if len(out) != 6:
        raise RuntimeError(f"pingouin.intraclass_corr returned forms {list(table['Type'])}; "
                           "expected the six Shrout & Fleiss forms")
    return out


def krippendorff_alpha(reliability_data: np.ndarray, level: str = "ordinal",
                       value_domain: Sequence[float] | None = None) -> float:
    """Krippendorff's alpha of a raters x units matrix (NaN = not rated).

    Args:
        reliability_data: (n_raters, n_units) values, NaN where a rater did not rate a unit.
        level: ``"nominal"``, ``"ordinal"``, ``"interval"`` or ``"ratio"``.
        value_domain: the possible values in order (e.g. 1..5); for ordinal data it makes
            unused scale points count in the distances, as for a Likert scale.

    Returns:
        alpha (1 perfect, 0 chance, < 0 systematic disagreement); NaN when it is undefined
        (fewer than two pairable values, or a single value used throughout).
    """
    import krippendorff

    x = np.asarray(reliability_data, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"krippendorff_alpha: need (raters, units), got shape {x.shape}")
    pairable = np.isfinite(x).sum(axis=0) >= 2
    values = np.unique(x[:, pairable][np.isfinite(x[:, pairable])])
    if values.size < 2:  # one value everywhere: no disagreement to measure, alpha undefined
        return math.nan
    kwargs: dict[str, Any] = {"level_of_measurement": level}
    if value_domain is not None:
        kwargs["value_domain"] = list(value_domain)
    return float(krippendorff.alpha(reliability_data=x, **kwargs))


@dataclass(frozen=True)
class SelfAgreement:
    """One reader's agreement with themself over repeated images (one criterion).

    Attributes:
        n_pairs: repeated images (first reading, second reading).
        exact: fraction of pairs with the same score.
        within_one: fraction of pairs differing by at most one point.
        mean_abs_diff: mean |first - second|, points.
        alpha: ordinal Krippendorff alpha of first vs. second reading (NaN if undefined).
        poor: self-agreement is poor (see :func:`self_agreement`).
        reason: why it is flagged, or why it could not be judged.
    """

    n_pairs: int
    exact: float
    within_one: float
    mean_abs_diff: float
    alpha: float
    poor: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def self_agreement(first: Sequence[float], second: Sequence[float], *,
                   min_alpha: float = POOR_ALPHA, min_within_one: float = 0.8,
                   value_domain: Sequence[float] = (1, 2, 3, 4, 5)) -> SelfAgreement:
    """Intra-reader agreement from repeated images.

    A reader is flagged ``poor`` when the ordinal alpha of first vs. second reading is below
    ``min_alpha`` (Krippendorff's 0.667), or, when alpha is undefined (every repeat scored
    the same), when fewer than ``min_within_one`` of the pairs agree within one point.

    Args:
        first, second: scores of the same images at the first and the repeated reading.
    """
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"self_agreement: first and second must be 1-D of equal length, got "
                         f"{a.shape} and {b.shape}")
    n = int(a.size)
    if n == 0:
        return SelfAgreement(0, math.nan, math.nan, math.nan, math.nan, False,
                             "no repeated images")
    d = np.abs(a - b)
    exact, within, mad = float(np.mean(d == 0)), float(np.mean(d <= 1)), float(np.mean(d))
    alpha = krippendorff_alpha(np.stack([a, b]), "ordinal", value_domain)
    if math.isfinite(alpha):
        poor = alpha < min_alpha
        reason = (f"ordinal alpha {alpha:.2f} < {min_alpha}" if poor
                  else f"ordinal alpha {alpha:.2f} >= {min_alpha}")
    else:
        poor = within < min_within_one
        reason = (f"alpha undefined; {within:.0%} of repeats within one point"
                  + (f" < {min_within_one:.0%}" if poor else ""))
    if n < 5:
        reason += f" (only {n} repeated image{'s' if n != 1 else ''}: a weak judgement)"
    return SelfAgreement(n, exact, within, mad, alpha, bool(poor), reason)
