"""Score saved predictions again, with the code and protocol of ``marbench run``.

``marbench rescore RUN_DIR --data D --out O`` reads ``RUN_DIR/results.json`` and the int16
predictions Parquet it records, checks the file against its sha256, and feeds the
predictions through :func:`benchmark.run.run_benchmark` as a method that replays them
(predictions are integers already, so the runner's rounding changes nothing). LPIPS is
computed only if the run recorded it, clinical metrics only if the run has them. The new
``O/results.json`` can then be compared value by value with the submitted one: this is how
the leaderboard verifies a submission against reference data it may hold privately.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import MARBenchError
from .method import MARInput, MARMethod, MAROutput, PrepareContext
from .results import Results, verify_results


class RescoreError(MARBenchError, ValueError):
    """The run cannot be re-scored (no predictions, wrong protocol, altered file)."""


class ReplayPredictions(MARMethod):
    """Replays a predictions Parquet file (``patient_id``, ``slice_index``, ``prediction``
    int16 HU) as a method's output."""

    name = "replay-predictions"
    version = "1"

    def __init__(self, predictions: str) -> None:
        self.predictions = str(predictions)
        self._by_key: dict[tuple[str, int], np.ndarray] = {}

    def prepare(self, ctx: PrepareContext) -> None:
        import pyarrow.parquet as pq

        t = pq.read_table(self.predictions)
        for p, i, a in zip(t.column("patient_id").to_pylist(),
                           t.column("slice_index").to_pylist(),
                           t.column("prediction").to_pylist(), strict=True):
            key = (str(p), int(i))
            if key in self._by_key:
                raise RescoreError(f"{self.predictions}: patient {p!r} slice {i} appears "
                                   "more than once")
            self._by_key[key] = np.asarray(a, dtype=np.float32)

    def reduce(self, batch: MARInput) -> MAROutput:
        out = []
        for p, i in zip(batch.patient_id, batch.slice_index, strict=True):
            img = self._by_key.get((p, int(i)))
            if img is None:
                raise RescoreError(f"{self.predictions}: no prediction for patient {p!r} "
                                   f"slice {i}")
            out.append(img)
        return MAROutput(image=torch.from_numpy(np.stack(out))[:, None].contiguous())


def rescore(run_dir: Path | str, data: str | Path, out: Path | str, *,
            revision: str | None = None, device: str = "cpu", **kwargs: Any) -> Results:
    """Re-score ``run_dir``'s predictions on ``data`` under the protocol it recorded.

    Raises:
        RescoreError: no predictions, another protocol version, or the predictions file
            differs from its recorded sha256.
    """
    from .protocol import PROTOCOL_VERSIONS, get_protocol
    from .run import run_benchmark

    run_dir = Path(run_dir)
    sub = Results.load(run_dir)
    if sub.protocol.version not in PROTOCOL_VERSIONS:
        raise RescoreError(f"{run_dir}: protocol {sub.protocol.version!r} is not one this "
                           f"harness scores ({', '.join(PROTOCOL_VERSIONS)})")
    if sub.predictions is None:
        raise RescoreError(f"{run_dir}: results.json records no predictions; run "
                           "`marbench run` with --predictions")
    check = verify_results(sub, run_dir)
    if not check.predictions_checked or check.problems:
        raise RescoreError(f"{run_dir}: "
                           + ("; ".join(check.problems) or check.note))
    lpips = "auto" if sub.protocol.lpips_weights_fingerprint else None
    clinical = any(d.resolved(m).group == "clinical" for m, d in sub.metrics.items())
    return run_benchmark(f"{__name__}:ReplayPredictions", data, split=sub.dataset.split,
                         out=out, config=sub.dataset.config, revision=revision, lpips=lpips,
                         clinical=clinical, figure=False, save_predictions=False,
                         device=device, protocol=get_protocol(sub.protocol.version),
                         options={"predictions": str(run_dir / sub.predictions.path)},
                         **kwargs)
