"""The LGA method for the benchmark: S_p = D_g(F(E(V_n))) with trained weights."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from baselines.deep_common import _flag  # the one bool-option parser of the baselines
from benchmark.method import MARInput, MARMethod, MAROutput, PrepareContext

#: Environment variable naming a weights folder or Hub repo (used when no option is given).
WEIGHTS_ENV = "MARBENCH_LGA_WEIGHTS"


class LGA(MARMethod):
    """Latent space alignment with GSI (CVPR 2025 reference implementation); needs weights.

    Options: ``weights`` (folder or Hub repo id; default ``$MARBENCH_LGA_WEIGHTS``, then the
    method cache), ``revision`` (Hub branch, tag or commit), ``reinsert_metal`` (default
    false: the output is D_g(F(E(V_n))) as in the paper; true copies the input's metal pixels
    into it, as LI / NMAR do).
    """

    name = "lga"
    version = "3"  # 3: metal no longer re-inserted by default
    neighbour_slices = 2  # set from the loaded model's config in prepare()

    def __init__(self, weights: str | None = None, revision: str | None = None,
                 reinsert_metal: bool = False) -> None:
        self.weights = None if weights is None else str(weights)
        self.revision = revision
        self.reinsert_metal = _flag(reinsert_metal, "reinsert_metal", "lga")
        self.model = None
        self.device = torch.device("cpu")

    def default_weights(self, ctx: PrepareContext) -> list[Path | str]:
        """Where :meth:`prepare` looks, in order: the ``weights`` option,
        ``$MARBENCH_LGA_WEIGHTS``, ``<method cache>/weights``
        (``~/.cache/artifactgsi/methods/lga/weights``)."""
        places: list[Path | str] = []
        if self.weights:
            places.append(self.weights)
        elif os.environ.get(WEIGHTS_ENV):
            places.append(os.environ[WEIGHTS_ENV])
        elif ctx.cache_dir is not None:
            places.append(Path(ctx.cache_dir) / "weights")
        return places

    def prepare(self, ctx: PrepareContext) -> None:
        from baselines.lga.model import LGAModel, WeightsError, resolve_weights, weights_sha256

        places = self.default_weights(ctx)
        if not places:
            raise WeightsError(self._untrained_message("no weights location given"))
        source = places[0]
        try:
            folder = resolve_weights(source, self.revision)
        except WeightsError as e:
            raise WeightsError(self._untrained_message(str(e))) from e
        model = LGAModel.from_pretrained(folder)
        missing = [s for s in ("vae", "align") if s not in model.trained]
        if missing:
            raise WeightsError(self._untrained_message(
                f"{folder}: stage(s) {', '.join(missing)} not trained yet"))
        self.device = torch.device(ctx.device)
        self.model = model.to(self.device).eval()
        self.neighbour_slices = model.config.neighbour_slices  # the runner reads it after this
        self.weights_sha256 = weights_sha256(folder)

    @staticmethod
    def _untrained_message(why: str) -> str:
        return (f"LGA has no trained weights ({why}). LGA must be trained before it can run: "
                "`marbench train lga --config lga-cpu --data DATA --out RUN` (or "
                "baselines.lga.train.train_lga), then `marbench run --method lga -O "
                f"weights=RUN/model`, or set ${WEIGHTS_ENV}. It never runs with random weights.")

    def _volume(self, batch: MARInput) -> torch.Tensor:
        """The (B, 2k+1, H, W) HU stack the model needs, from ``batch.neighbours``: a wider
        stack is cropped around its centre, a narrower one (or none) is padded by repeating
        its edge slices (as the dataset does at the ends of a series)."""
        k = self.neighbour_slices
        stack = batch.neighbours if batch.neighbours is not None else batch.ordinary
        j = stack.shape[1] // 2
        if j >= k:
            return stack[:, j - k:j + k + 1]
        idx = torch.arange(-k, k + 1).clamp(-j, j) + j
        return stack[:, idx]

    def reduce(self, batch: MARInput) -> MAROutput:
        if self.model is None:
            raise RuntimeError(self._untrained_message("prepare() was not called"))
        from baselines.lga.config import implant_index

        implant = torch.tensor([implant_index(t) for t in batch.implant_type],
                               device=self.device)
        image = self.model.restore(self._volume(batch).to(self.device),
                                   batch.metal_mask.to(self.device), implant,
                                   reinsert_metal=self.reinsert_metal)
        return MAROutput(image=image.float().to(batch.ordinary.device))
