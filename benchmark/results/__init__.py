"""The results schema: what one ``marbench run`` records, as pydantic models.

This is the only thing the leaderboard reads, so it imports nothing heavy (no torch, no
datasets). A results file (``results.json``) says exactly what was scored and how:

- ``protocol``: scoring protocol version (``"marbench-v1"``) and every setting it fixes;
- ``dataset``: where the data came from (folder and/or Hub repo id + commit), the sha256 of
  its ``manifest.json``, config, split, the split's files and how many slices were scored;
- ``method``: registry name, class, version, weights sha256 and the options it was given;
- ``code``: package version and git commit (``git_dirty`` if the checkout had edits);
- ``hardware``: CPU, torch, device, CUDA device name;
- ``timing``: seconds spent in prepare / reduce / scoring;
- ``metrics``: each metric's unit, meaning and ``higher_is_better``;
- ``comparisons``: one block per (scored image, reference) pair, with per-metric summaries
  and the metrics that could not be computed, with the reason:

  ``method_vs_gsi`` (the paper's protocol), ``method_vs_ideal`` and ``gsi_vs_ideal``
  (simulated data only: is the method closer to the truth than GSI is?);
- ``per_slice``: every slice's values, keyed by comparison then metric;
- ``predictions``: the int16 Parquet file of the method's output and its sha256;
- ``detect``: with ``--lesions``, lesion detectability and hallucination on a lesion study.

Floats that are infinite (PSNR of identical images) or NaN (a metric undefined on a slice)
are written as the JSON strings ``"Infinity"`` / ``"NaN"`` so the file stays standard JSON.

The models are :mod:`benchmark.results.schema`; checking a results file against its
per-slice values and its run folder is :mod:`benchmark.results.integrity`. Both are imported
from here. This package is the only part of ``benchmark`` the leaderboard imports.
"""

from __future__ import annotations

from .integrity import Verification as Verification
from .integrity import recompute_summaries as recompute_summaries
from .integrity import verify_results as verify_results
from .schema import COMPARISONS as COMPARISONS
from .schema import GSI_VS_IDEAL as GSI_VS_IDEAL
from .schema import METHOD_VS_GSI as METHOD_VS_GSI
from .schema import METHOD_VS_IDEAL as METHOD_VS_IDEAL
from .schema import METHOD_VS_REFERENCE as METHOD_VS_REFERENCE
from .schema import METRICS as METRICS
from .schema import PROTOCOL_VERSIONS as PROTOCOL_VERSIONS
from .schema import RESULTS_FORMAT as RESULTS_FORMAT
from .schema import SEG_CLASSES as SEG_CLASSES
from .schema import SEG_IMAGES as SEG_IMAGES
from .schema import SEG_INTER as SEG_INTER
from .schema import SEG_SUMMARY_KEYS as SEG_SUMMARY_KEYS
from .schema import SEG_UNION as SEG_UNION
from .schema import CodeRecord as CodeRecord
from .schema import ComparisonRecord as ComparisonRecord
from .schema import DataFileRecord as DataFileRecord
from .schema import DatasetRecord as DatasetRecord
from .schema import DetectRecord as DetectRecord
from .schema import HardwareRecord as HardwareRecord
from .schema import MethodRecord as MethodRecord
from .schema import MetricDefinition as MetricDefinition
from .schema import MetricSpec as MetricSpec
from .schema import MetricSummary as MetricSummary
from .schema import PredictionsRecord as PredictionsRecord
from .schema import ProtocolRecord as ProtocolRecord
from .schema import Results as Results
from .schema import SegmentationRecord as SegmentationRecord
from .schema import SliceRecord as SliceRecord
from .schema import TimingRecord as TimingRecord
from .schema import atomic_write_text as atomic_write_text
from .schema import seg_summary as seg_summary
from .schema import seg_summary_by as seg_summary_by
from .schema import segmentation_summaries as segmentation_summaries
from .schema import sha256_file as sha256_file
from .schema import study_columns as study_columns
from .schema import study_scores as study_scores
from .schema import summarize as summarize
from .schema import temporary_sibling as temporary_sibling
