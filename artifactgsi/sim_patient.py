"""One simulated patient: the phantom scanned on the ordinary and GSI scanners, both series
reconstructed on their own grids, with labels, the ideal and the clean image
(:func:`simulate_patient`). Writing it in the raw layout is :mod:`artifactgsi.simulate`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import torch

from .physics.geometry import FanBeamGeometry, ImageGrid
from .physics.scan import OrdinaryProtocol, Scanner, mu_water
from .sim_config import PatientPlan, PatientResult, SimConfig, physics_record


def _slice_positions(patient, cfg: SimConfig) -> np.ndarray:
    # The phantom's focus: femoral heads for hips, the screwed levels for spines, the plate
    # centre for fractures; where the artifacts are worst.
    zc = patient.focus_z_mm
    z = zc + (np.arange(cfg.slices) - (cfg.slices - 1) / 2) * cfg.thickness_mm
    zmin, zmax = patient.z_range_mm
    # Keep the scan inside the region's anatomy (shift, never squeeze).
    z += max(0.0, zmin - z[0]) - max(0.0, z[-1] - zmax)
    return np.round(z, 3)


def make_scanners(cfg: SimConfig) -> tuple[Scanner, Scanner]:
    """``(ordinary scanner, GSI scanner)``: one object when the ordinary series comes from the
    GSI scanner itself (the default profile)."""
    ord_physics, gsi_physics = cfg.physics()
    gsi = Scanner(FanBeamGeometry.scaled(cfg.size), OrdinaryProtocol(), cfg.gsi, cfg.device,
                  gsi_physics)
    profile = cfg.profile()
    geom = profile.geometry(cfg.size)
    if geom == gsi.geom and ord_physics == gsi_physics:
        gsi.ordinary_protocol = cfg.ordinary_protocol()
        return gsi, gsi
    return Scanner(geom, cfg.ordinary_protocol(), cfg.gsi, cfg.device, ord_physics), gsi


def simulate_patient(cfg: SimConfig, plan: PatientPlan,
                     scanners: tuple[Scanner, Scanner] | None = None,
                     progress: Callable[[int], None] | None = None) -> PatientResult:
    """Simulate one patient: ordinary (and, with an implant, GSI, clean, ideal and labels).

    ``scanners`` is ``(ordinary, GSI)`` as :func:`make_scanners` returns (built when not
    given; pass them to reuse the projectors over patients). The clean image (no implant)
    comes from the ordinary scanner, GSI and ideal from the GSI scanner.
    """
    from .phantoms import MATERIALS, Pose2D, make_patient

    ord_scanner, scanner = scanners or make_scanners(cfg)
    obj = scanner.geom.object_grid
    if ord_scanner.geom.object_grid != obj:
        raise ValueError("the ordinary and GSI scanners must share the object grid")
    patient = make_patient(plan.seed, plan.implant_type)
    has_gsi = plan.implant_type != "none" and cfg.split_hint != "generalization"
    t = cfg.thickness_mm
    z_gsi = _slice_positions(patient, cfg)
    z_ord_table = z_gsi + plan.z_shift_slices * t
    z_ord_anat = z_ord_table - plan.z_motion_mm
    n = cfg.size
    grid_g = ImageGrid((n, n), plan.gsi_fov_mm / n, plan.gsi_centre_mm)
    grid_o = ImageGrid((n, n), plan.ordinary_fov_mm / n, plan.ordinary_centre_mm)
    pose = Pose2D(**plan.pose)
    gen = torch.Generator(device=cfg.device).manual_seed(plan.seed)

    out: dict[str, list[np.ndarray]] = {k: [] for k in ("ordinary", "gsi", "clean", "ideal",
                                                        "labels")}
    # Sinograms wait here until ``flush`` reconstructs several batches in one FBP per grid
    # (an FBP's cost is mostly per pixel and view, not per image; the results are the same
    # bits as one FBP per image). Noise is still drawn batch by batch in the fixed order.
    pending: dict[str, list[torch.Tensor]] = {k: [] for k in ("ordinary", "gsi", "use",
                                                             "ideal", "clean")}
    flush_slices = _fbp_slices(scanner.geom, cfg.batch)
    kev = cfg.gsi.kev
    ord_filter, gsi_filter = cfg.ordinary_protocol().filter, cfg.gsi.filter

    def flush() -> None:
        if not pending["ordinary"]:
            return
        p = {k: torch.cat(v) for k, v in pending.items() if v}
        for v in pending.values():
            v.clear()
        out["ordinary"].append(_hu(ord_scanner.projector.fbp(p["ordinary"], grid_o,
                                                             filter=ord_filter), mu_ord))
        if not has_gsi:
            return
        n = p["gsi"].shape[0]
        if ord_scanner is scanner and ord_filter == gsi_filter:
            mu = scanner.projector.fbp(torch.cat([p["gsi"], p["ideal"], p["clean"]]), grid_g,
                                       filter=gsi_filter)
            mu_g, mu_i, mu_c = mu[:n], mu[n:2 * n], mu[2 * n:]
        else:
            mu = scanner.projector.fbp(torch.cat([p["gsi"], p["ideal"]]), grid_g,
                                       filter=gsi_filter)
            mu_g, mu_i = mu[:n], mu[n:]
            mu_c = ord_scanner.projector.fbp(p["clean"], grid_g, filter=ord_filter)
        out["gsi"].append(scanner.vmi_reconstruct(p["gsi"], p["use"], grid_g, kev, fbp=mu_g)
                          [:, 0].cpu().numpy())
        out["ideal"].append(_hu(mu_i, mu_water(kev)))
        out["clean"].append(_hu(mu_c, mu_ord))

    mu_ord = 0.0
    ss = cfg.supersample
    for start in range(0, cfg.slices, cfg.batch):
        idx = range(start, min(cfg.slices, start + cfg.batch))
        fr = [patient.rasterize(float(z_ord_anat[i]), obj, pose=pose, supersample=ss)[0]
              for i in idx]
        if has_gsi:
            fr += [patient.rasterize(float(z_gsi[i]), obj, supersample=ss)[0] for i in idx]
            fr += [patient.rasterize(float(z_gsi[i]), obj, implant=False, supersample=ss)[0]
                   for i in idx]
        stack = torch.stack(fr)  # (k * b, M_all, N, N)
        used = [m for m in range(len(MATERIALS)) if stack[:, m].any()]
        mats = tuple(MATERIALS[m] for m in used)
        b = len(idx)
        if ord_scanner is scanner:  # one projection of the whole batch
            lines = scanner.project(stack[:, used])
            lo, lg, lc = lines[:b], lines[b:2 * b], lines[2 * b:]
        else:  # ordinary and clean on the profile's geometry, GSI on the GSI scanner's
            lines = ord_scanner.project(stack[:, used][[*range(b), *range(2 * b, len(fr))]])
            lo, lc = lines[:b], lines[b:]
            lg = scanner.project(stack[b:2 * b, used]) if has_gsi else None
        # Noise is drawn in a fixed order (ordinary, GSI, clean) from one generator.
        p_ord, mu_ord = ord_scanner.ordinary_sinogram(lo, mats, gen)
        pending["ordinary"].append(p_ord)
        if has_gsi:
            p_gsi, use = scanner.vmi_sinogram(scanner.gsi_measurement(lg, mats, gen), kev)
            pending["gsi"].append(p_gsi)
            pending["use"].append(use)
            pending["ideal"].append(scanner.monochromatic_sinogram(lg, mats, kev))
            pending["clean"].append(ord_scanner.ordinary_sinogram(lc, mats, gen)[0])
            out["labels"].append(np.stack([
                patient.rasterize(float(z_gsi[i]), grid_g, supersample=ss)[1].numpy()
                for i in idx]))
        if sum(len(t) for t in pending["ordinary"]) >= flush_slices:
            flush()
        if progress:
            progress(b)
    flush()

    def cat(k: str) -> np.ndarray | None:
        return np.concatenate(out[k]) if out[k] else None

    truth = {
        "ordinary_pose": plan.pose,
        "ordinary_pose_convention": "p_scanner = R(angle_deg) @ p_patient + (tx_mm, ty_mm); "
                                    "the GSI scan has the identity pose",
        "z_motion_mm": plan.z_motion_mm,
        "z_shift_slices": plan.z_shift_slices,
        "gsi_z_mm": z_gsi.tolist(),
        "ordinary_z_mm": z_ord_table.tolist(),
        "ordinary_anatomical_z_mm": z_ord_anat.tolist(),
        "gsi_slice_for_ordinary": [_nearest(z_gsi, z, t) for z in z_ord_anat] if has_gsi else [],
        "gsi_grid": _grid_json(grid_g),
        "ordinary_grid": _grid_json(grid_o),
        "scanner": cfg.scanner,
        "geometry": asdict(scanner.geom),
        "ordinary_geometry": asdict(ord_scanner.geom),
        "ordinary_protocol": asdict(cfg.ordinary_protocol()),
        "gsi_protocol": asdict(cfg.gsi),
        "gsi_metal_correction": asdict(cfg.gsi.metal_correction_setup()),
        **physics_record(cfg),
        "seed": plan.seed,
    }
    return PatientResult(
        plan=plan, body_region=patient.body_region, gsi_z_mm=z_gsi, ordinary_z_mm=z_ord_table,
        ordinary=cat("ordinary"), gsi=cat("gsi"), clean=cat("clean"), ideal=cat("ideal"),
        labels=cat("labels"), gsi_grid=grid_g, ordinary_grid=grid_o,
        description=patient.describe(), truth=truth,
    )


#: Bytes of sinograms reconstructed together per grid (the FBP's work buffers scale with it).
_FBP_BATCH_BYTES = 128 << 20


def _fbp_slices(geom: FanBeamGeometry, batch: int) -> int:
    """Slices whose sinograms are reconstructed together: as many whole batches as keep the
    three images per slice on the GSI grid within :data:`_FBP_BATCH_BYTES`."""
    per_slice = 3 * geom.n_views * geom.n_det * 4
    return batch * max(1, _FBP_BATCH_BYTES // (per_slice * batch))


def _hu(mu: torch.Tensor, mu_water: float) -> np.ndarray:
    """``(B, 1, H, W)`` attenuation (1/mm) -> ``(B, H, W)`` float32 HU."""
    return (1000.0 * (mu - mu_water) / mu_water)[:, 0].cpu().numpy()


def _nearest(z_ref: np.ndarray, z: float, t: float) -> int | None:
    i = int(np.argmin(np.abs(z_ref - z)))
    return i if abs(z_ref[i] - z) < 0.5 * t else None


def _grid_json(g: ImageGrid) -> dict:
    return {"shape": list(g.shape), "pixel_mm": g.pixel_mm, "centre_mm": list(g.centre_mm),
            "origin_mm": list(g.origin_mm())}
