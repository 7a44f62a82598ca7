"""``dudodp`` as a benchmark method: the DuDoDp sampler with a trained prior."""

from __future__ import annotations

from pathlib import Path

import torch

from baselines.dudodp.sampler import DEFAULT_STEPS, check_steps, dudodp
from baselines.errors import OptionError
from benchmark.learn.errors import ImageSizeMismatchError
from benchmark.learn.method import WeightsMethod, parse_flag
from benchmark.method import MARInput, MAROutput, PrepareContext


class DuDoDp(WeightsMethod):
    """Unsupervised dual-domain MAR with a diffusion prior (Liu et al., IEEE TMI 2024).

    Options (constructor keywords, stored under the same names; results files record them):
        weights: prior weights folder (``RUN/model`` of ``marbench train dudodp``) or Hub
            model repo id; default ``$MARBENCH_DUDODP_WEIGHTS``, then ``<method cache>/weights``.
        revision: Hub branch, tag or commit of a repo id.
        steps: respaced reverse steps, 1 .. the prior's training timesteps (default 100).
        seed: noise seed; each slice's noise depends on (seed, patient, slice) only.
        device: ``"cpu"``, ``"cuda"``... (default: the runner's device).
        batch_size: slices sampled together.
        reinsert_metal: copy the input's metal pixels into the output (default true, as LI).
    """

    name = "dudodp"
    version = "1"

    def __init__(self, weights: str | None = None, steps: int = DEFAULT_STEPS, seed: int = 0,
                 device: str | None = None, batch_size: int = 4,
                 reinsert_metal: bool = True, revision: str | None = None) -> None:
        # The upper bound (the prior's training timesteps) is checked when weights load.
        self.steps = check_steps(steps, None)
        if isinstance(seed, bool):
            raise OptionError(f"dudodp: seed must be an integer, got {seed!r}")
        try:
            self.seed = int(seed)
        except (TypeError, ValueError):
            raise OptionError(f"dudodp: seed must be an integer, got {seed!r}") from None
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise OptionError(f"dudodp: batch_size must be >= 1, got {batch_size!r}")
        self.weights = weights
        self.revision = revision
        self.device = device
        self.reinsert_metal = parse_flag(reinsert_metal, "reinsert_metal", self.name)
        self.prior = None
        self.weights_sha256: str | None = None

    def load_model(self, source: str | Path, revision: str | None):
        from baselines.dudodp.prior import DiffusionPrior

        return DiffusionPrior.from_pretrained(source, revision)

    def prepare(self, ctx: PrepareContext) -> None:
        prior = self.load_weights(ctx)
        check_steps(self.steps, prior.config.train_timesteps)
        self.device = self.model_device(ctx)
        self.prior = prior.to(self.device).eval()

    def reduce(self, batch: MARInput) -> MAROutput:
        if self.prior is None:
            raise self.untrained("prepare() was not called")
        prior = self.prior
        size = prior.image_size
        h, w = batch.ordinary.shape[-2:]
        if size is not None and (h != size or w != size):
            raise ImageSizeMismatchError(
                f"dudodp: the prior ({self.weights}) was trained on {size} px slices; "
                f"{batch.describe_slice(0)} is {h} x {w} px. Train a prior on data of this "
                "size (image_size is taken from the training data).")
        dev = torch.device(self.device)
        cfg = prior.config
        outs = []
        for i in range(0, batch.batch_size, self.batch_size):
            sl = slice(i, i + self.batch_size)
            keys = [f"{p}/{s}" for p, s in zip(batch.patient_id[sl], batch.slice_index[sl],
                                               strict=True)]
            out = dudodp(batch.ordinary[sl].to(dev), batch.metal_mask[sl].to(dev),
                         batch.pixel_spacing_mm[sl], prior.predict_x0, prior.scheduler,
                         steps=self.steps, seed=self.seed, slice_keys=keys,
                         hu_to_pm1=cfg.hu_to_pm1, pm1_to_hu=cfg.pm1_to_hu,
                         reinsert=self.reinsert_metal)
            outs.append(out.float().cpu())
        return MAROutput(image=torch.cat(outs).to(batch.ordinary.device))
