"""The design of an expert study's reading pack: which cases are read (stratified by implant
type, seeded), and in which order each reader sees the images (rows of random Latin squares so
that every method appears equally often in every position, the same case's images far apart,
and repeated images for intra-reader agreement)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from benchmark.expert.errors import PackError


def select_cases(slices: Sequence[tuple[str, int, str, int]], n_cases: int,
                 rng: np.random.Generator, min_metal_pixels: int = 1) -> list[
                     tuple[str, int, str, int]]:
    """Draw ``n_cases`` slices stratified by implant type.

    Args:
        slices: (patient_id, slice_index, implant_type, metal_pixels) of every candidate.
        n_cases: how many to draw.
        min_metal_pixels: slices with less metal are not candidates.

    Each implant type gets a share proportional to its number of candidate slices (largest
    remainder, at least one each when ``n_cases`` allows); within a type, patients are taken
    in random order, one random slice each, before any patient gives a second slice.
    Returns the chosen slices sorted by (implant type, patient, slice).
    """
    cands = sorted(s for s in slices if s[3] >= min_metal_pixels)
    if n_cases < 1:
        raise PackError(f"--cases must be >= 1, got {n_cases}")
    if len(cands) < n_cases:
        raise PackError(f"--cases {n_cases}: only {len(cands)} slices with >= "
                        f"{min_metal_pixels} metal pixels are scored by every run; ask for "
                        "fewer cases")
    strata: dict[str, list[tuple[str, int, str, int]]] = defaultdict(list)
    for s in cands:
        strata[s[2]].append(s)
    names = sorted(strata)
    sizes = np.array([len(strata[n]) for n in names], dtype=np.float64)
    # Largest-remainder allocation, at least one per stratum when there are enough cases.
    alloc = np.zeros(len(names), dtype=np.int64)
    if n_cases >= len(names):
        alloc += 1
    rest = n_cases - int(alloc.sum())
    quota = sizes / sizes.sum() * rest
    alloc += np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - np.floor(quota)), kind="stable")
    for i in order[: n_cases - int(alloc.sum())]:
        alloc[i] += 1
    # A stratum cannot give more than it has: pass the surplus to the others.
    while (over := alloc - sizes.astype(np.int64)).max() > 0:
        i = int(np.argmax(over))
        alloc[i] -= over[i]
        room = sizes.astype(np.int64) - alloc
        for j in np.argsort(-room, kind="stable")[: int(over[i])]:
            alloc[j] += 1
    chosen: list[tuple[str, int, str, int]] = []
    for name, k in zip(names, alloc, strict=True):
        by_patient: dict[str, list[tuple[str, int, str, int]]] = defaultdict(list)
        for s in strata[name]:
            by_patient[s[0]].append(s)
        patients = sorted(by_patient)
        rng.shuffle(patients)
        pools = {p: [by_patient[p][i] for i in rng.permutation(len(by_patient[p]))]
                 for p in patients}
        taken: list[tuple[str, int, str, int]] = []
        while len(taken) < k:
            for p in patients:
                if pools[p] and len(taken) < k:
                    taken.append(pools[p].pop())
        chosen.extend(taken)
    return sorted(chosen, key=lambda s: (s[2], s[0], s[1]))


def latin_square(m: int, rng: np.random.Generator) -> np.ndarray:
    """A random (m, m) Latin square of 0..m-1 (cyclic square, rows / columns / symbols
    permuted): every symbol once in each row and each column."""
    base = (np.arange(m)[:, None] + np.arange(m)[None, :]) % m
    sq = base[rng.permutation(m)][:, rng.permutation(m)]
    return rng.permutation(m)[sq]


def reading_order(n_cases: int, n_methods: int, rng: np.random.Generator
                  ) -> list[tuple[int, int, int, int]]:
    """One reader's base order: every (case, method) once.

    The list is ``n_cases`` cycles of ``n_methods`` slots. Cycle ``t`` shows the methods in the
    order of one row of a random Latin square (a fresh square every ``n_methods`` cycles), so
    each method appears equally often in each slot; method ``m`` in cycle ``t`` shows case
    ``order[(t + shift_m) % n_cases]`` with shifts spread over the cases, so one cycle never
    holds the same case twice and a case's images are about ``n_cases`` positions apart.

    Returns:
        [(case, method, cycle, slot)], in reading order.
    """
    if n_cases < n_methods:
        raise PackError(f"--cases {n_cases} is fewer than the {n_methods} methods; a balanced "
                        "reading order needs at least as many cases as methods")
    cases = rng.permutation(n_cases)
    shifts = [(m * n_cases) // n_methods for m in range(n_methods)]
    out: list[tuple[int, int, int, int]] = []
    square = latin_square(n_methods, rng)
    for t in range(n_cases):
        if t % n_methods == 0 and t:
            square = latin_square(n_methods, rng)
        for slot, m in enumerate(square[t % n_methods]):
            out.append((int(cases[(t + shifts[m]) % n_cases]), int(m), t, slot))
    return out


def add_repeats(order: list[tuple[int, int, int, int]], fraction: float, n_methods: int,
                rng: np.random.Generator) -> list[tuple[int, int, int, int, int | None]]:
    """Insert about ``fraction`` of the images again, later in the list.

    Repeated images are spread over the methods (round robin in random method order), taken
    from the first half of the list where possible, and put back at least a quarter of the
    list (and at least ``2 * n_methods`` positions) after their first showing.

    Returns:
        [(case, method, cycle, slot, repeat_of)] where ``repeat_of`` is the index in the
        returned list of the first showing (``None`` for first showings).
    """
    if not 0.0 <= fraction <= 0.5:
        raise PackError(f"--repeat must be between 0 and 0.5, got {fraction}")
    n = len(order)
    n_rep = int(round(fraction * n))
    if fraction > 0 and n_rep == 0 and n >= 4:
        n_rep = 1
    gap = max(2 * n_methods, n // 4)
    eligible = [i for i in range(n) if i + gap < n]
    if n_rep > len(eligible):
        raise PackError(f"--repeat {fraction}: {n_rep} repeats do not fit in a list of {n} "
                        "images with the repeats far from their first showing; lower --repeat "
                        "or add cases")
    early = [i for i in eligible if i < n // 2] or eligible
    by_method: dict[int, list[int]] = defaultdict(list)
    for i in rng.permutation(early):
        by_method[order[int(i)][1]].append(int(i))
    rest = [int(i) for i in rng.permutation(eligible) if int(i) not in early]
    chosen: list[int] = []
    methods = list(rng.permutation(n_methods))
    k = 0
    while len(chosen) < n_rep:
        m = int(methods[k % n_methods])
        k += 1
        if by_method[m]:
            chosen.append(by_method[m].pop())
        elif not any(by_method.values()):
            chosen.append(rest.pop())
    # Insertion points (index into the base list after which the repeat goes).
    inserts = sorted((int(rng.integers(i + gap, n)), i) for i in chosen)
    out: list[tuple[int, int, int, int, int | None]] = []
    first_at: dict[int, int] = {}
    j = 0
    for i, item in enumerate(order):
        first_at[i] = len(out)
        out.append((*item, None))
        while j < len(inserts) and inserts[j][0] == i:
            src = inserts[j][1]
            out.append((*order[src], first_at[src]))
            j += 1
    return out
