"""The DuDoDp MAR sampler: a diffusion prior plugged into both domains (Liu et al., "Unsupervised
CT metal artifact reduction by plugging diffusion priors in dual domains", IEEE TMI 2024).

The measured sinogram and metal trace are those LI sees (:func:`baselines.li.reproject`: the
ordinary image forward projected, as attenuation, on the geometry whose object grid is the
image grid). Starting from Gaussian noise at the top of ``steps`` respaced timesteps
(``scheduler.set_timesteps(steps)``), every reverse step ``t`` (respaced index ``k``,
``steps - 1`` down to 0):

1. predicts ``x0`` with the prior;
2. forward projects it and replaces the measured sinogram *inside the metal trace* by that
   projection (outside the trace the measured sinogram is kept exactly);
3. reconstructs it by FBP (as LI does: the input image plus the FBP of the change, so away
   from the metal the image keeps its own resolution);
4. fuses in the image domain with the published time-dependent weight masks
   ``W = clip(FBP(c * delta * trace), 0, 1)``, large near the metal where the rays of the
   trace converge: ``r = W_k x0 + (1 - W_k) recon`` with ``delta_k = 1 - (1 - a)
   exp(-n (k + 1) / steps)`` (a = 0.4, n = 4), and ``m = W_y x0 + (1 - W_y) ordinary`` with
   the fixed ``delta_y = 0.8``; then ``x = sqrt(abar_t) r + (1 - sqrt(abar_t)) m``;
5. re-noises ``x`` to the next timestep with ``scheduler.add_noise`` (the last step returns
   ``x``).

``c`` transcribes the published constant (a trace sinogram of 4 in the published units, i.e.
~0.26 of the field width in length) to any grid: ``c = trace_weight x field width (mm)``.
Noise is drawn per slice from a generator seeded by (seed, slice key), so a slice's result
does not depend on the batch it is in and repeats exactly for a seed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from artifactgsi.physics.projector import FanBeamProjector
from artifactgsi.physics.sinogram_inpainting import (
    check_inputs,
    hu_to_mu,
    inpaint_and_reconstruct,
    projector_for,
    quantise_spacing,
    reinsert_metal,
)
from baselines.errors import OptionError

#: Published fusion constants: a, n of delta(t) and the fixed delta of the measured image.
FUSION_A, FUSION_N, FUSION_DELTA_Y = 0.4, 4.0, 0.8
#: The published trace sinogram value (4 in units where the 416 px field is 416 x 0.0369
#: = 15.4 length units) as a fraction of the field width: 4 / 15.36 = 0.26.
TRACE_WEIGHT = 4.0 / (416 * 512 / 416 * 0.03)
DEFAULT_STEPS = 100

#: (x_t (B, 1, S, S) model units, t (B,) long) -> x0 (B, 1, S, S) model units.
X0Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Fusion:
    """Fusion settings of the sampler (defaults: the published values)."""

    a: float = FUSION_A
    n: float = FUSION_N
    delta_y: float = FUSION_DELTA_Y
    trace_weight: float = TRACE_WEIGHT

    def delta(self, k: int, steps: int) -> float:
        """delta at respaced index ``k`` (``steps - 1`` = noisiest, 0 = last step)."""
        return 1.0 - (1.0 - self.a) * math.exp(-self.n * (k + 1) / steps)


def check_steps(steps: object, train_timesteps: int | None, who: str = "dudodp") -> int:
    """``steps`` as an int in [1, train_timesteps] (no upper bound when ``None``), else a
    ValueError saying what to give."""
    if isinstance(steps, bool) or not isinstance(steps, (int, str, float)):
        raise OptionError(f"{who}: steps must be an integer, got {steps!r}")
    try:
        n = int(steps)
    except ValueError:
        raise OptionError(f"{who}: steps must be an integer, got {steps!r}") from None
    if n != float(steps):
        raise OptionError(f"{who}: steps must be an integer, got {steps!r}")
    if n < 1 and train_timesteps is None:
        raise OptionError(f"{who}: steps={n} must be >= 1 (default {DEFAULT_STEPS})")
    if train_timesteps is not None and (n < 1 or n > train_timesteps):
        raise OptionError(f"{who}: steps={n} is outside 1..{train_timesteps}: give between 1 "
                          f"and the prior's {train_timesteps} training timesteps (default "
                          f"{DEFAULT_STEPS})")
    return n


def slice_seed(seed: int, key: str) -> int:
    """A 63-bit seed from (seed, slice key): noise per slice, independent of the batch."""
    digest = hashlib.sha256(f"dudodp/{seed}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class StepRecord:
    """What one step's sinogram stage produced (given to ``inspect`` callbacks)."""

    k: int                   # respaced index (steps - 1 .. 0)
    t: int                   # training timestep
    measured: torch.Tensor   # (B, 1, V, D) measured line integrals
    trace: torch.Tensor      # (B, 1, V, D) bool metal trace
    sinogram: torch.Tensor   # (B, 1, V, D) after the replacement inside the trace
    x0_hu: torch.Tensor      # (B, 1, N, N) the prior's estimate in HU


def dudodp_correct(proj: FanBeamProjector, ordinary_hu: torch.Tensor,
                   metal_mask: torch.Tensor, pixel_mm: float, predict_x0: X0Predictor,
                   scheduler, steps: int, seeds: Sequence[int], *,
                   hu_to_pm1: Callable[[torch.Tensor], torch.Tensor],
                   pm1_to_hu: Callable[[torch.Tensor], torch.Tensor],
                   setup=None, fusion: Fusion | None = None,
                   inspect: Callable[[StepRecord], None] | None = None) -> torch.Tensor:
    """DuDoDp on one batch of equal pixel spacing (every slice holds metal).

    Args:
        proj: projector whose object grid is the image grid (:func:`projector_for`).
        ordinary_hu: ``(B, 1, N, N)`` float32 HU; metal_mask: ``(B, 1, N, N)`` bool.
        pixel_mm: pixel size in mm.
        predict_x0: the prior (see :data:`X0Predictor`).
        scheduler: a diffusers scheduler (``set_timesteps``, ``alphas_cumprod``,
            ``add_noise``); it is reset to ``steps`` timesteps.
        steps: respaced reverse steps.
        seeds: one noise seed per slice.
        hu_to_pm1 / pm1_to_hu: the prior's HU <-> model-unit maps.
        setup: :class:`baselines.li.SinogramSetup` (filter, energy, trace); default LI's.
        fusion: :class:`Fusion` (default: the published constants).
        inspect: called with a :class:`StepRecord` after each step's sinogram stage.

    Returns:
        ``(B, 1, N, N)`` float32 HU within the prior's HU window, metal not re-inserted.
    """
    from baselines.li import SinogramSetup, reproject

    setup = SinogramSetup() if setup is None else setup
    fusion = Fusion() if fusion is None else fusion
    b = ordinary_hu.shape[0]
    if len(seeds) != b:
        raise OptionError(f"dudodp: need one seed per slice ({b}), got {len(seeds)}")
    dev = ordinary_hu.device
    rp = reproject(proj, ordinary_hu, metal_mask, pixel_mm, setup)
    mu_w = rp.mu_water
    # FBP of the trace indicator, once: the weight masks are clip(delta * c * this, 0, 1).
    width_mm = proj.geom.fov_mm
    trace_img = proj.fbp(rp.trace.to(torch.float32) * (fusion.trace_weight * width_mm),
                         filter=setup.filter).to(torch.float32)
    w_y = (fusion.delta_y * trace_img).clamp(0.0, 1.0)

    scheduler.set_timesteps(steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    abar = scheduler.alphas_cumprod.to(torch.float64)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def noise_like() -> torch.Tensor:
        return torch.cat([torch.randn((1, *ordinary_hu.shape[1:]), generator=g)
                          for g in gens]).to(dev)

    x_t = noise_like()
    x = ordinary_hu
    for i, t in enumerate(timesteps):
        k = len(timesteps) - 1 - i
        tt = torch.full((b,), t, dtype=torch.long, device=dev)
        x0_hu = pm1_to_hu(predict_x0(x_t, tt).to(torch.float32))
        # Sinogram domain: the prior's projection inside the trace, measured outside.
        proj_x0 = proj.forward(hu_to_mu(x0_hu, mu_w))
        sino = torch.where(rp.trace, proj_x0, rp.sino)
        if inspect is not None:
            inspect(StepRecord(k, t, rp.sino, rp.trace, sino, x0_hu))
        recon = inpaint_and_reconstruct(proj, rp.sino, sino, ordinary_hu, metal_mask, mu_w,
                                        setup.filter).to(torch.float32)
        # Image domain: the published weight masks.
        w_t = (fusion.delta(k, steps) * trace_img).clamp(0.0, 1.0)
        r = torch.lerp(recon, x0_hu, w_t)
        m = torch.lerp(ordinary_hu, x0_hu, w_y)  # FBP(measured) is the input image
        s = float(abar[t].sqrt())
        x = s * r + (1.0 - s) * m
        if i + 1 < len(timesteps):
            t_next = torch.full((b,), timesteps[i + 1], dtype=torch.long, device=dev)
            x_t = scheduler.add_noise(hu_to_pm1(x), noise_like(), t_next)
    # The prior's window bounds the result, as the published sampler's output range does.
    return pm1_to_hu(hu_to_pm1(x)).to(torch.float32)


def dudodp(ordinary_hu: torch.Tensor, metal_mask: torch.Tensor,
           pixel_spacing_mm: torch.Tensor | float, predict_x0: X0Predictor, scheduler,
           *, steps: int = DEFAULT_STEPS, seed: int = 0,
           slice_keys: Sequence[str] | None = None,
           hu_to_pm1: Callable[[torch.Tensor], torch.Tensor],
           pm1_to_hu: Callable[[torch.Tensor], torch.Tensor],
           setup=None, fusion: Fusion | None = None, reinsert: bool = True,
           inspect: Callable[[StepRecord], None] | None = None) -> torch.Tensor:
    """DuDoDp MAR of a batch of slices.

    Args:
        ordinary_hu: ``(B, 1, N, N)`` float HU (square); metal_mask: ``(B, 1, N, N)`` bool.
        pixel_spacing_mm: ``(B,)`` or scalar, mm.
        predict_x0, scheduler, hu_to_pm1, pm1_to_hu, setup, fusion, inspect: see
            :func:`dudodp_correct`.
        steps: respaced reverse steps (1 .. the scheduler's training timesteps).
        seed: noise seed; with ``slice_keys`` (e.g. ``"patient/slice"``) each slice's noise
            depends on (seed, key) only (default keys: the batch position).
        reinsert: copy the input's metal pixels into the result.

    Returns:
        ``(B, 1, N, N)`` float32 HU; slices without metal are returned unchanged.
    """
    steps = check_steps(steps, int(scheduler.config.num_train_timesteps))
    sp = check_inputs(ordinary_hu, metal_mask, pixel_spacing_mm, "dudodp")
    b = ordinary_hu.shape[0]
    keys = [str(i) for i in range(b)] if slice_keys is None else [str(k) for k in slice_keys]
    if len(keys) != b:
        raise OptionError(f"dudodp: need one slice key per slice ({b}), got {len(keys)}")
    out = ordinary_hu.detach().to(torch.float32).clone()
    has_metal = metal_mask.flatten(1).any(1).cpu()
    n = ordinary_hu.shape[-1]
    q = torch.tensor([quantise_spacing(float(v)) for v in sp], dtype=torch.float64)
    for key in (torch.unique(q[has_metal]).tolist() if bool(has_metal.any()) else []):
        sel = torch.nonzero(has_metal & (q == key)).flatten().tolist()
        proj = projector_for(n, float(key), out.device)
        idx = torch.tensor(sel, device=out.device)
        with torch.no_grad():
            res = dudodp_correct(proj, out[idx], metal_mask[idx], float(key), predict_x0,
                                 scheduler, steps, [slice_seed(seed, keys[i]) for i in sel],
                                 hu_to_pm1=hu_to_pm1, pm1_to_hu=pm1_to_hu, setup=setup,
                                 fusion=fusion, inspect=inspect)
            if reinsert:
                res = reinsert_metal(res, out[idx], metal_mask[idx])
        out[idx] = res
    return out
