"""Downstream segmentation, the benchmark's instrument: a frozen GSI-trained segmenter
(segmentation-models-pytorch U-Net) applied to each method's output.

One module per job: :mod:`.model` (config, model, loading, identity), :mod:`.training` (its
trainer, ``marbench train segmenter``), :mod:`.analysis` (its scores on a split and the
sufficiency checks), :mod:`.report` (Table 2), :mod:`.figures`, :mod:`.cli`
(``marbench seg``). The IoU maths is in :mod:`benchmark.metrics.segmentation`.
"""

from __future__ import annotations

from .model import (
    CONFIGS,
    HU_WINDOW,
    INPUTS,
    NUM_CLASSES,
    LabelledSplit,
    PredictionsNotFoundError,
    SegConfig,
    SegConfigError,
    SegmentationDataError,
    Segmenter,
    SegmenterMismatchError,
    SegmenterNotFoundError,
    TrainError,
    load_config,
    load_segmenter,
    open_labelled,
    seg_summary,
    segmenter_identity,
    train,
)

__all__ = ["CONFIGS", "HU_WINDOW", "INPUTS", "NUM_CLASSES", "LabelledSplit",
           "PredictionsNotFoundError", "SegConfig", "SegConfigError", "Segmenter",
           "SegmentationDataError", "SegmenterMismatchError", "SegmenterNotFoundError",
           "TrainError", "load_config", "load_segmenter", "open_labelled", "seg_summary",
           "segmenter_identity", "train"]
