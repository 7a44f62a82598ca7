"""Contract tests for method authors: ``check_method(MyMethod)`` in your own test suite.

It runs the same checks the project runs on its shipped methods, on a small synthetic
phantom made here (a water disc with a bone ring and one or two metal rods), so a plug-in
author learns about a broken contract from one failing test with a clear message instead of
from a failed benchmark run::

    from benchmark.testing import check_method

    def test_my_method_keeps_the_contract():
        check_method(MyMethod, strength=0.5)       # options go to the constructor

Checks, in order (each failure raises :class:`MethodContractError` naming the check):

1. options: the constructor takes the options, and :meth:`MARMethod.effective_options`
   reads back the value given for each (so results files record what runs);
2. output: :class:`~benchmark.method.MAROutput` with a (B, 1, H, W) float32 image on the
   input grid, finite (the runner's own :func:`~benchmark.method.validate_output`);
3. HU range: every output value inside [-1024 - margin, 3071 + metal headroom] HU;
4. determinism: the same input twice gives the same output (to ``atol`` HU);
5. batch independence: a slice's output does not depend on the other slices in its batch;
6. inputs untouched: ``reduce`` does not modify the tensors it is given;
7. a slice without metal: the method still returns a valid image (and stays close to its
   input where ``no_metal_tolerance_hu`` is given).

Methods that need weights are prepared with ``prepare_ctx`` (a
:class:`~benchmark.method.PrepareContext`); give them their weights as options.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from artifactgsi.schema import HU_MAX, HU_MIN

from .errors import MARBenchError
from .method import MARInput, MARMethod, PrepareContext, validate_output
from .registry import check_options

__all__ = ["MethodContractError", "check_method", "synthetic_batch"]

#: HU outside which no CT image value is plausible: a little below the dataset window's floor
#: (noise around air), and far above its top (dense metal is stored well above 3071 HU).
HU_FLOOR = HU_MIN - 200.0
HU_CEIL = HU_MAX + 30000.0


class MethodContractError(MARBenchError, AssertionError):
    """A method breaks the MARMethod contract; the message names the check and the slice."""


def synthetic_batch(batch_size: int = 2, size: int = 64, *, metal: bool = True,
                    k: int = 0, seed: int = 0) -> MARInput:
    """A small phantom batch: water disc (0 HU) in air, a cortical-bone ring (~1200 HU),
    metal rods (~8000 HU) where ``metal``, Gaussian noise (10 HU), 0.8 mm pixels.

    Args:
        batch_size: B slices (each with its own rod positions and noise).
        size: H = W in pixels.
        metal: put metal in every slice (else none).
        k: neighbour slices on each side (``neighbours`` of shape (B, 2k+1, H, W)).
        seed: torch seed for the noise and rod positions.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size),
                            indexing="ij")
    r = torch.sqrt(xx ** 2 + yy ** 2)
    images, masks = [], []
    for _ in range(batch_size):
        img = torch.full((size, size), -1000.0)
        img[r < 0.85] = 0.0
        img[(r > 0.45) & (r < 0.55)] = 1200.0
        m = torch.zeros(size, size, dtype=torch.bool)
        if metal:
            for _ in range(2):
                cy, cx = (torch.rand(2, generator=g) * 0.5 - 0.25).tolist()
                m |= ((yy - cy) ** 2 + (xx - cx) ** 2) < 0.08 ** 2
            img[m] = 8000.0
        img = img + 10.0 * torch.randn(size, size, generator=g) * (r < 0.85)
        images.append(img)
        masks.append(m)
    ordinary = torch.stack(images)[:, None].float()
    mask = torch.stack(masks)[:, None]
    nb = ordinary.repeat(1, 2 * k + 1, 1, 1) if k > 0 else None
    return MARInput(ordinary=ordinary, metal_mask=mask,
                    pixel_spacing_mm=torch.full((batch_size,), 0.8),
                    implant_type=["hip_prosthesis" if metal else "none"] * batch_size,
                    patient_id=[f"CHECK{i}" for i in range(batch_size)],
                    slice_index=list(range(batch_size)), neighbours=nb)


def _fail(check: str, label: str, detail: str) -> MethodContractError:
    return MethodContractError(f"check_method({label}): {check}: {detail}")


def _clone(batch: MARInput) -> MARInput:
    return batch.to("cpu")  # MARInput.to always copies


def check_method(method_cls: type[MARMethod], *, size: int = 64, batch_size: int = 2,
                 atol_hu: float = 1e-3, batch_atol_hu: float = 0.05,
                 no_metal_tolerance_hu: float | None = None,
                 prepare_ctx: PrepareContext | None = None, **options: Any) -> MARMethod:
    """Run the contract checks on ``method_cls(**options)``; return the prepared instance.

    Args:
        method_cls: the :class:`MARMethod` subclass to check.
        size: image side in pixels of the synthetic slices.
        batch_size: slices per ``reduce`` call (at least 2 for the batch check).
        atol_hu: tolerance in HU for determinism (the same call twice).
        batch_atol_hu: tolerance in HU for batch independence: float32 convolutions may
            pick other kernels for another batch size; the runner stores integer HU, so a
            few hundredths of a HU are invisible in results.
        no_metal_tolerance_hu: if given, on a slice without metal the output must stay
            within this many HU of the input (mean absolute difference).
        prepare_ctx: the context given to ``prepare`` (default: CPU, no training data).
        **options: constructor options.

    Raises:
        MethodContractError: the first broken check, by name, with the offending slice.
    """
    if not (isinstance(method_cls, type) and issubclass(method_cls, MARMethod)):
        raise MethodContractError(f"check_method: {method_cls!r} is not a MARMethod subclass")
    label = getattr(method_cls, "name", "") or method_cls.__qualname__
    if getattr(method_cls, "__abstractmethods__", None):
        raise _fail("interface", label, "does not implement "
                    + ", ".join(sorted(method_cls.__abstractmethods__)))
    # 1. options reach the constructor and are read back
    try:
        check_options(method_cls, options, label=label)
    except MARBenchError as e:
        raise _fail("options", label, str(e)) from None
    method = method_cls(**options)
    used = method.effective_options()
    for key, value in options.items():
        if key in used and used[key] != value and str(used[key]) != str(value):
            raise _fail("options", label, f"option {key}={value!r} was given but the instance "
                        f"reports {used[key]!r}; store each constructor argument on the "
                        "instance under its own name")
    method.prepare(prepare_ctx or PrepareContext())
    k = int(getattr(method, "neighbour_slices", 0) or 0)
    if batch_size < 2:
        raise ValueError("check_method: batch_size must be >= 2")

    batch = synthetic_batch(batch_size, size, k=k, seed=1)
    pristine = _clone(batch)

    # 2. a valid output (shape, dtype, finite)
    with torch.no_grad():
        out = method.reduce(batch)
    try:
        img = validate_output(label, batch, out)
    except ValueError as e:
        raise _fail("output", label, str(e)) from None

    # 6. inputs untouched
    for name in ("ordinary", "metal_mask", "pixel_spacing_mm", "neighbours"):
        a, b = getattr(batch, name), getattr(pristine, name)
        if a is not None and not torch.equal(a, b):
            raise _fail("inputs untouched", label, f"reduce() modified MARInput.{name} in "
                        "place; work on a copy (the runner never shares its tensors, but "
                        "other callers may)")

    # 3. plausible HU
    lo, hi = float(img.min()), float(img.max())
    if lo < HU_FLOOR or hi > HU_CEIL:
        raise _fail("HU range", label, f"output spans {lo:.1f}..{hi:.1f} HU, outside "
                    f"[{HU_FLOOR:.0f}, {HU_CEIL:.0f}]: is it in HU (not [0, 1] or mu)?")

    # 4. determinism
    with torch.no_grad():
        again = method.reduce(_clone(pristine)).image
    diff = float((again - img).abs().max())
    if not diff <= atol_hu:
        raise _fail("determinism", label, f"the same input gave outputs {diff:.4g} HU apart "
                    f"(tolerance {atol_hu}); seed any randomness from the input or options")

    # 5. batch independence: slice 0 alone equals slice 0 in the batch
    single = MARInput(ordinary=pristine.ordinary[:1].clone(),
                      metal_mask=pristine.metal_mask[:1].clone(),
                      pixel_spacing_mm=pristine.pixel_spacing_mm[:1].clone(),
                      implant_type=pristine.implant_type[:1],
                      patient_id=pristine.patient_id[:1], slice_index=pristine.slice_index[:1],
                      neighbours=None if pristine.neighbours is None
                      else pristine.neighbours[:1].clone())
    with torch.no_grad():
        alone = validate_output(label, single, method.reduce(single))
    diff = float((alone[0] - img[0]).abs().max())
    if not diff <= batch_atol_hu:
        raise _fail("batch independence", label, f"patient 'CHECK0' slice 0 differs by "
                    f"{diff:.4g} HU when run alone vs in a batch of {batch_size}; "
                    "normalise per slice, not per batch")

    # 7. a slice without metal
    clean = synthetic_batch(batch_size, size, metal=False, k=k, seed=2)
    with torch.no_grad():
        out_clean = method.reduce(_clone(clean))
    try:
        img_clean = validate_output(label, clean, out_clean)
    except ValueError as e:
        raise _fail("no-metal slice", label, str(e)) from None
    if no_metal_tolerance_hu is not None:
        mad = float((img_clean - clean.ordinary).abs().mean())
        if not (math.isfinite(mad) and mad <= no_metal_tolerance_hu):
            raise _fail("no-metal slice", label, f"on slices without metal the output moves "
                        f"{mad:.1f} HU from the input on average (tolerance "
                        f"{no_metal_tolerance_hu} HU)")
    return method
