"""Run one MAR method over one split and score it (``marbench run``).

:func:`run_benchmark` is what ``marbench run`` calls::

    results = run_benchmark("li", "path/to/ArtifactGSI", split="test", out=Path("results/li"))

It creates the method through the registry (a registered name or ``"pkg.module:Class"``),
calls ``prepare`` once, feeds the split in batches (patient, then slice order) under
``torch.no_grad()``, checks every output (:func:`benchmark.method.validate_output`), and
scores each slice with :class:`benchmark.metrics.Scorer` (resampling to 512 x 512 happens
there):

- ``method_vs_gsi``: the method against the GSI image (the paper's protocol);
- ``method_vs_ideal``: against the ideal image, for rows that have one (simulated data);
- ``gsi_vs_ideal``: GSI itself against the ideal image, so a reader sees whether a method
  gets closer to the truth than GSI does.

The method's output is rounded to integer HU (int16, as the dataset stores HU) before it is
scored and written, so re-scoring ``predictions/*.parquet`` reproduces ``results.json``
exactly. Written to ``out/`` (each file atomically: temporary name, then rename):

- ``predictions/<split>-00000-of-00001.parquet``: ``patient_id``, ``slice_index``,
  ``prediction`` (int16 HU), loadable with ``datasets.load_dataset("parquet", ...)``;
- ``per_slice.csv``: one row per slice, a column per ``<comparison>.<metric>``;
- ``results.json``: :class:`benchmark.results.Results`;
- ``figure.png``: Fig. 4-style panel of the (up to) 3 slices with the most metal, one per
  patient.

A method that wants neighbouring slices sets the class attribute ``neighbour_slices = k``;
it then gets ``MARInput.neighbours`` of shape (B, 2k+1, H, W).

The package, one module per job: :mod:`.runner` (the options object and the run),
:mod:`.scoring` (one batch through the metric registry, the reference cache, the segmenter),
:mod:`.outputs` (predictions, CSV, figure, publishing), :mod:`.calls` (calling the method),
:mod:`.provenance` (code and hardware records).
"""

from __future__ import annotations

from .calls import MethodRunError, default_out_dir
from .outputs import FIGURE_SLICES, RUN_OUTPUTS, summary_table
from .provenance import code_record, hardware_record
from .runner import RunOptions, run_benchmark
from .scoring import SEGMENTER_ENV

__all__ = ["FIGURE_SLICES", "RUN_OUTPUTS", "SEGMENTER_ENV", "MethodRunError", "RunOptions",
           "code_record", "default_out_dir", "hardware_record", "run_benchmark",
           "summary_table"]
