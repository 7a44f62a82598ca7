"""The LGA method for the benchmark: S_p = D_g(F(E(V_n))) with trained weights."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmark.learn.method import WeightsMethod, parse_flag
from benchmark.method import MARInput, MAROutput, PrepareContext


class LGA(WeightsMethod):
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
        self.reinsert_metal = parse_flag(reinsert_metal, "reinsert_metal", "lga")
        self.model = None
        self.device = torch.device("cpu")

    def load_model(self, source: str | Path, revision: str | None):
        from baselines.lga.model import LGAModel

        return LGAModel.from_pretrained(source, revision)

    def prepare(self, ctx: PrepareContext) -> None:
        model = self.load_weights(ctx)
        missing = [s for s in ("vae", "align") if s not in model.trained]
        if missing:
            raise self.untrained(f"{self.weights}: stage(s) {', '.join(missing)} not trained "
                                 "yet")
        self.device = torch.device(ctx.device)
        self.model = model.to(self.device).eval()
        self.neighbour_slices = model.config.neighbour_slices  # the runner reads it after this

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
            raise self.untrained("prepare() was not called")
        from baselines.lga.config import implant_index

        implant = torch.tensor([implant_index(t) for t in batch.implant_type],
                               device=self.device)
        image = self.model.restore(self._volume(batch).to(self.device),
                                   batch.metal_mask.to(self.device), implant,
                                   reinsert_metal=self.reinsert_metal)
        return MAROutput(image=image.float().to(batch.ordinary.device))
