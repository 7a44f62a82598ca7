"""Expert reading study: blinded reading packs, an offline HTML rating form, and scoring.

- :mod:`benchmark.expert.pack` builds a pack from benchmark runs (``marbench expert pack``),
  on the reading design of :mod:`benchmark.expert.design`;
- :mod:`benchmark.expert.form` writes the self-contained rating form of a pack;
- :mod:`benchmark.expert.score` validates readers' ratings, unblinds them and computes the
  score table with reader agreement (``marbench expert score``), through
  :mod:`benchmark.expert.ratings` (the checks, the unblinding) and
  :mod:`benchmark.expert.analysis` (bootstrap CIs, paired tests, agreement);
- :mod:`benchmark.expert.agreement` holds the agreement statistics (ICC, Krippendorff's
  alpha, intra-reader agreement from repeated images).

Importing this package is cheap: the heavy libraries load inside the functions that use them.
"""
