"""``dudodp``: DuDoDp, unsupervised metal artifact reduction with a diffusion prior plugged
into both domains (Liu et al., IEEE TMI 2024).

A diffusion model learns what artifact-free CT looks like (GSI and clean slices of the
training split, no pairs); at inference the metal trace of the sinogram is filled, step after
step, with projections of the prior's current estimate (:mod:`baselines.dudodp.sampler`).

Train: ``marbench train dudodp --config dudodp-cpu --data DATA --out RUN``; run:
``marbench run --method dudodp -O weights=RUN/model -O steps=100``.
"""

from baselines.dudodp.method import DuDoDp

__all__ = ["DuDoDp"]
