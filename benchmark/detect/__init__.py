"""Task-based evaluation: can a reader still find a small lesion near the metal, and does a
method show lesions that are not there?

- :mod:`benchmark.detect.channels`: Laguerre-Gauss and Gabor channels;
- :mod:`benchmark.detect.cho`: the channelized Hotelling observer (template, d', AUC);
- :mod:`benchmark.detect.hallucination`: the band-pass difference map and the false-positive
  fraction at the ideal image's operating point;
- :mod:`benchmark.detect.study`: a method's images of a lesion study -> ROIs -> CHO statistics
  per lesion (:mod:`benchmark.detect.records`: its settings and rows;
  :mod:`benchmark.detect.calibration`: each row's HU scale against the ideal image's);
- :mod:`benchmark.detect.statistics`: per lesion type and distance band AUC, d', bootstrap
  intervals, paired tests between methods, the report;
- :mod:`benchmark.detect.cli`: ``marbench detect make | run``.

The lesion study itself (paired scans with and without lesions) is made by
:mod:`artifactgsi.lesion_study`. Importing this package is cheap.
"""
