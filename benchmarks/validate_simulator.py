"""ArtifactGSI-Sim against an independent simulator, XCIST (``gecatsim``, GE's open-source CT
simulator, the one the AAPM CT-MAR Grand Challenge data came from).

Usage:
    make validate-sim                    # creates .venv-xcist with gecatsim, then runs this
    python benchmarks/validate_simulator.py [--size 128] [--xcist-python .venv-xcist/bin/python]
        [--work out/validate-sim] [--json out/validate-sim/results.json]

The same phantoms (written as XCIST analytic phantoms, rasterised for ArtifactGSI-Sim as its
own phantoms are) are scanned in a matched geometry (the GSI scanner's, scaled to ``--size``;
XCIST's curved detector with the same angular pitch, rebinned onto the flat detector),
spectrum (the same spekpy spectra written as XCIST spectrum files), bowtie (the same aluminium
profile as an XCIST bowtie file), focal spot, detector sub-sampling, materials (the same
compositions as XCIST material files; XCIST uses its own cross-sections) and dose (XCIST's mA
set so that the centre column's air scan holds ArtifactGSI-Sim's photons; same electronic
noise). Three simulators are compared:

* ``before``: ArtifactGSI-Sim's ideal scanner (``scanner_physics=False``);
* ``after``: ArtifactGSI-Sim with the GSI scanner profile's bowtie, scatter (and its
  correction) and focal-spot / detector blur;
* ``xcist``: XCIST with its bowtie, its kernel scatter model and scatter correction, its
  focal-spot and detector sub-sampling, its per-channel water beam-hardening correction and its
  low-signal correction. XCIST cannot do rapid kVp switching with a projection-domain
  decomposition, so its GSI is its 80 and 140 kVp scans, even views from the first and odd views
  from the second, decomposed by ArtifactGSI-Sim's decomposition.

All images are reconstructed by the same FBP (ArtifactGSI-Sim's, Hann filter). Measurements:
CT numbers of tissue inserts at 120 kVp; GSI virtual monochromatic CT numbers at 60 / 70 / 100 /
140 keV against the materials' true values; noise SD and NPS in water with and without the
bowtie; MTF from a circular edge; the scatter-to-primary ratio along the detector; bloom
ratio, streak amplitude and dark band of metal rods and bilateral CoCr heads. See
docs/simulator.md for the table and its reading.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from artifactgsi.physics.geometry import FanBeamGeometry, ImageGrid
from artifactgsi.physics.materials import material, mu_matrix
from artifactgsi.physics.polychromatic import Beam, WaterBHC
from artifactgsi.physics.scan import GSIMeasurement, Scanner, dose_scale, mu_water
from artifactgsi.physics.spectra import TubeSpec, energy_grid_kev, spectrum
from artifactgsi.scanners import DEFAULT_SCANNER, SCANNER_PROFILES

PROFILE = SCANNER_PROFILES[DEFAULT_SCANNER]
KEVS = (60.0, 70.0, 100.0, 140.0)
METAL_HU = 2000.0  # bloom threshold: above any tissue, below every metal at these energies
SUPERSAMPLE = 3  # as the simulator rasterises its phantoms
SPECTRUM_FLUX = 1.0e6  # photons / mA / s / mm^2 at 1 m written into the XCIST spectra


def _tube(kvp: float) -> TubeSpec:
    """The GSI scanner's tube at ``kvp`` (its routine filtration; GSI's 80 / 140 kVp too)."""
    return replace(PROFILE.ordinary.tube(), kvp=kvp)


# ----------------------------------------------------------------------------- phantoms
@dataclass(frozen=True)
class Ellipse:
    """An elliptic cylinder (long along z) of ``material``; later ones replace earlier ones.
    Scanner coordinates of ArtifactGSI-Sim, mm: x to the right, y down (posterior)."""

    cx: float
    cy: float
    ax: float
    ay: float
    material: str


def water_body(d: float = 300.0) -> list[Ellipse]:
    return [Ellipse(0, 0, d / 2, d / 2, "water")]


INSERT_MATERIALS = ("adipose", "soft_tissue", "blood", "trabecular_bone", "cortical_bone",
                    "ti6al4v")
INSERT_RADIUS = 14.0
INSERT_RING = 85.0


def inserts_phantom() -> list[Ellipse]:
    out = water_body()
    for i, m in enumerate(INSERT_MATERIALS):
        a = 2 * math.pi * i / len(INSERT_MATERIALS)
        r = 6.0 if m == "ti6al4v" else INSERT_RADIUS  # a small titanium rod
        out.append(Ellipse(INSERT_RING * math.cos(a), INSERT_RING * math.sin(a), r, r, m))
    return out


MTF_RADIUS = 20.0


def mtf_phantom() -> list[Ellipse]:
    """Water with a central cortical-bone rod: its circular edge gives the MTF; the water
    ring 50-120 mm from the centre gives noise and NPS."""
    return [*water_body(), Ellipse(0, 0, MTF_RADIUS, MTF_RADIUS, "cortical_bone")]


ROD_X = 60.0
ROD_R = 8.0
HEADS_X = 85.0
HEAD_R = 16.0


def rod_phantom(metal: str | None) -> list[Ellipse]:
    out = water_body()
    return out + [Ellipse(ROD_X, 0, ROD_R, ROD_R, metal)] if metal else out


def hips_phantom(metal: bool = True) -> list[Ellipse]:
    """An elliptic water body (360 x 250 mm) with two CoCr femoral heads, as in a bilateral
    hip: the classic dark band forms between them."""
    out = [Ellipse(0, 0, 180.0, 125.0, "water")]
    if metal:
        out += [Ellipse(-HEADS_X, 0, HEAD_R, HEAD_R, "cocrmo"),
                Ellipse(HEADS_X, 0, HEAD_R, HEAD_R, "cocrmo")]
    return out


def rasterize(shapes: list[Ellipse], grid: ImageGrid, ss: int = SUPERSAMPLE
              ) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Area fractions ``(1, M, N, N)`` (painter's order) and the material names."""
    mats = tuple(dict.fromkeys(s.material for s in shapes))
    o = (np.arange(ss) + 0.5) / ss - 0.5
    x = grid.x_mm().numpy()[None, :, None, None] + o[None, None, :, None] * grid.pixel_mm
    y = grid.y_mm().numpy()[:, None, None, None] + o[None, None, None, :] * grid.pixel_mm
    label = np.full(x.shape[:2] + (ss, ss), -1, np.int64)
    label = np.broadcast_to(label, np.broadcast_shapes(x.shape, y.shape)).copy()
    for s in shapes:
        inside = ((x - s.cx) / s.ax) ** 2 + ((y - s.cy) / s.ay) ** 2 <= 1.0
        label[inside] = mats.index(s.material)
    frac = np.stack([(label == i).mean((2, 3)) for i in range(len(mats))])
    return torch.from_numpy(frac[None]).float(), mats


def truth_hu(shapes: list[Ellipse], grid: ImageGrid, kev: float) -> np.ndarray:
    """The noise-free true image at ``kev`` (HU; air -1000), on ``grid`` (pixel centres)."""
    x, y = np.meshgrid(grid.x_mm().numpy(), grid.y_mm().numpy())
    out = np.full(x.shape, -1000.0)
    mu_w = mu_water(kev)
    for s in shapes:
        inside = ((x - s.cx) / s.ax) ** 2 + ((y - s.cy) / s.ay) ** 2 <= 1.0
        out[inside] = 1000 * (material(s.material).mu_per_mm(np.array([kev]))[0] - mu_w) / mu_w
    return out


# ----------------------------------------------------------------------------- XCIST files
_Z = {"H": 1, "C": 6, "N": 7, "O": 8, "Na": 11, "Mg": 12, "Al": 13, "Si": 14, "P": 15,
      "S": 16, "Cl": 17, "Ar": 18, "K": 19, "Ca": 20, "Ti": 22, "V": 23, "Cr": 24, "Mn": 25,
      "Fe": 26, "Co": 27, "Ni": 28, "Mo": 42}


def write_material(workdir: Path, name: str) -> str:
    """ArtifactGSI-Sim's composition of ``name`` as an XCIST material file; its XCIST name."""
    m = material(name)
    xname = f"agsi_{name}"
    lines = ["# ArtifactGSI-Sim material (artifactgsi/physics/materials.py)", "",
             f"# Material name:\n# {xname}", "", "# Number of elements:",
             f"{len(m.composition)}", "", "# Density:", f"{m.density_g_cm3:.6f}", "",
             "# Atomic number(s) and corresponding mass fraction(s):"]
    lines += [f"{_Z[el]}    {w:.6f}" for el, w in m.composition]
    (workdir / "material").mkdir(parents=True, exist_ok=True)
    (workdir / "material" / xname).write_text("\n".join(lines) + "\n")
    return xname


def write_phantom(workdir: Path, name: str, shapes: list[Ellipse], flip_x: bool,
                  flip_y: bool) -> str:
    """An XCIST analytic phantom (.ppm) of ``shapes`` (cylinders 400 mm long along z)."""
    mats = list(dict.fromkeys(s.material for s in shapes))
    xnames = [write_material(workdir, m) for m in mats]
    lines = ["materialList = {" + " ".join(f"'{n}'" for n in xnames) + " };", ""]
    for i, s in enumerate(shapes, 1):
        cx = -s.cx if flip_x else s.cx
        cy = -s.cy if flip_y else s.cy
        lines += [f"object.center({i},:) = [{cx:.6f} {cy:.6f} 0.000000];",
                  f"object.half_axes({i},:) = [{s.ax:.6f} {s.ay:.6f} 200.000000];",
                  f"object.euler_angs({i},:) = [0.000000 0.000000 0.000000];",
                  f"object.density({i}) = 1.000000;",
                  f"object.type({i}) = 2;",
                  f"object.material({i}) = {mats.index(s.material) + 1};",
                  f"object.axial_lims({i},:) = [0 0];",
                  f"object.shape({i}) = 0;",
                  f"object.clip{{{i}}} = [];", ""]
    (workdir / "phantom").mkdir(parents=True, exist_ok=True)
    (workdir / "phantom" / f"{name}.ppm").write_text("\n".join(lines))
    return f"{name}.ppm"


def write_spectrum(workdir: Path, kvp: float) -> str:
    """ArtifactGSI-Sim's spectrum at ``kvp`` (spekpy, 12 deg anode, 3 mm Al + 0.1 mm Cu) in
    XCIST's format (photons / mA / s / mm^2 at 1 m per 2 keV bin)."""
    s = spectrum(_tube(kvp))
    e = energy_grid_kev()
    rows = [f"{len(e)}"] + [f"{ei:.6f},{si * SPECTRUM_FLUX:.6f}"
                            for ei, si in zip(e, s, strict=True)]
    (workdir / "spectrum").mkdir(parents=True, exist_ok=True)
    name = f"agsi_{kvp:g}kvp.dat"
    (workdir / "spectrum" / name).write_text("\n".join(rows) + "\n")
    return name


def write_bowtie(workdir: Path, geom: FanBeamGeometry) -> str:
    """The profile's bowtie as an XCIST bowtie file (fan angle in rad, Al thickness in cm)."""
    gamma = np.linspace(-0.6, 0.6, 1201)
    u = torch.from_numpy(np.tan(gamma) * geom.sdd_mm)
    t = PROFILE.bowtie.thickness_mm(geom, u).numpy() / 10.0
    rows = ["# angle, materials in cm ('al', 'graphite', 'cu', 'ti')"]
    rows += [f"{g:.6f}\t{ti:.6f}\t0.000000\t0.000000\t0.000000"
             for g, ti in zip(gamma, t, strict=True)]
    (workdir / "bowtie").mkdir(parents=True, exist_ok=True)
    (workdir / "bowtie" / "agsi_bowtie.txt").write_text("\n".join(rows) + "\n")
    return "agsi_bowtie.txt"


# ----------------------------------------------------------------------------- XCIST runs
class Xcist:
    """Writes XCIST jobs for :mod:`xcist_runner` (run by ``python`` of the XCIST environment),
    runs them, and brings XCIST's sinograms onto ArtifactGSI-Sim's flat detector."""

    def __init__(self, python: str, workdir: Path, geom: FanBeamGeometry) -> None:
        self.python, self.workdir, self.geom = python, workdir, geom
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Orientation (found by :meth:`calibrate_orientation`).
        self.flip_x = self.flip_y = self.flip_cols = False
        self.view_shift = 0
        self.mA: dict[tuple[float, bool], float] = {}

    def spec(self, name: str, shapes: list[Ellipse], kvp: float, *, noise: bool, seed: int = 0,
             bowtie: bool = True, scatter: bool = True, blur: bool = True, bhc: bool = True,
             view_count: int | None = None, mA: float | None = None) -> dict:
        g = self.geom
        phys = PROFILE.physics()
        beam = Beam(_tube(kvp))
        mu_eff = WaterBHC(beam).mu_water_eff if bhc else None  # XCIST's BHC target slope
        e0 = float((beam.photon_weights * energy_grid_kev()).sum())
        return {
            "name": name,
            "phantom": write_phantom(self.workdir, name, shapes, self.flip_x, self.flip_y),
            "geometry": {"sid_mm": g.sid_mm, "sdd_mm": g.sdd_mm, "cols": g.n_det,
                         "col_mm": g.det_pitch_mm, "views": g.n_views, "row_mm": 1.0},
            "view_count": view_count or g.n_views,
            "spectrum": write_spectrum(self.workdir, kvp),
            "bowtie": write_bowtie(self.workdir, g) if bowtie else "",
            "focal_spot_mm": phys.blur.focal_spot_mm if blur else 0.0,
            "focal_subsamples": 3 if blur else 1,
            "detector_subsamples": phys.blur.detector_aperture_subsamples if blur else 1,
            "scatter": scatter, "scatter_correction": scatter,
            # 40 mm at the isocentre is 70 one-mm rows at the detector: the whole kernel.
            "scatter_rows": int(round(phys.scatter.collimation_mm * g.sdd_mm / g.sid_mm)),
            "noise": noise, "seed": seed,
            "e_noise": PROFILE.ordinary.electronic_noise_photons * e0,
            "mA": mA if mA is not None else self.mA.get((kvp, bowtie), 1.0),
            "bhc_mu_per_cm": 10 * mu_eff if mu_eff else None,
            "energy_count": 24,
        }

    def run(self, specs: list[dict]) -> dict[str, dict[str, np.ndarray]]:
        job = self.workdir / f"job-{specs[0]['name']}.json"
        job.write_text(json.dumps({"workdir": str(self.workdir), "scans": specs}, indent=1))
        runner = Path(__file__).with_name("xcist_runner.py")
        res = subprocess.run([self.python, str(runner), str(job)], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"XCIST failed on {job}:\n{res.stdout[-3000:]}\n"
                               f"{res.stderr[-3000:]}")
        out = {}
        for s in specs:
            with np.load(self.workdir / "out" / f"{s['name']}.npz") as z:
                out[s["name"]] = {k: z[k] for k in z.files}
        return out

    def to_flat(self, sino: np.ndarray) -> torch.Tensor:
        """XCIST views x columns (equi-angular) -> ``(V, D)`` on the flat detector, in
        ArtifactGSI-Sim's view order."""
        g = self.geom
        n = sino.shape[1]
        d_alpha = 2 * math.atan(g.det_pitch_mm / 2 / g.sdd_mm)
        alpha = (np.arange(n) - (n - 1) / 2) * d_alpha
        s = sino[:, ::-1] if self.flip_cols else sino
        want = np.arctan(g.det_u_mm().numpy() / g.sdd_mm)
        flat = np.stack([np.interp(want, alpha, v) for v in s])
        return torch.from_numpy(np.roll(flat, self.view_shift, axis=0).copy()).float()

    def calibrate_orientation(self, ours: Scanner) -> dict:
        """Find how XCIST's phantom axes, detector columns and view angles map onto
        ArtifactGSI-Sim's by scanning one off-centre titanium rod in both (noise-free, ideal
        detector, 1/4 of the views) and keeping the best-correlated of the 32 candidates."""
        g = self.geom
        rod = [Ellipse(90.0, 25.0, 6.0, 6.0, "ti6al4v")]
        spec = self.spec("orient", rod, 120.0, noise=False, bowtie=False, scatter=False,
                         blur=False, bhc=False)
        xc = self.run([spec])["orient"]["prep"]
        best = (-2.0, None)
        # A half turn of the views equals mirroring both phantom axes, so views offset by 0 or
        # a quarter turn and the axis mirrors cover every orientation without ties.
        for fx in (False, True):
            for fy in (False, True):
                shape = [Ellipse(-90.0 if fx else 90.0, -25.0 if fy else 25.0, 6.0, 6.0,
                                 "ti6al4v")]
                frac, _ = rasterize(shape, g.object_grid)
                lines = ours.project(frac)[0, 0].numpy()
                for fc in (False, True):
                    self.flip_cols = fc
                    for shift in (0, g.n_views // 4):
                        self.view_shift = shift
                        c = np.corrcoef(self.to_flat(xc).numpy().ravel(), lines.ravel())[0, 1]
                        if c > best[0]:
                            best = (c, (fx, fy, fc, shift))
        c, (fx, fy, fc, shift) = best
        # The rod was written at (70, 35) in XCIST's axes; a match with our rod at
        # (+-70, +-35) tells how to write phantoms so that both see the same object.
        self.flip_x, self.flip_y, self.flip_cols, self.view_shift = fx, fy, fc, shift
        return {"correlation": float(c), "flip_x": fx, "flip_y": fy, "flip_cols": fc,
                "view_shift": shift}


# ----------------------------------------------------------------------------- ArtifactGSI-Sim
def our_scanner(geom: FanBeamGeometry, physics: bool, bowtie: bool = True) -> Scanner:
    """The GSI scanner with (``after``) or without (``before``) its physics."""
    phys = PROFILE.physics() if physics else None
    if phys is not None and not bowtie:
        phys = replace(phys, bowtie=None)
    return Scanner(geom, PROFILE.ordinary, physics=phys)


def ours_ordinary(sc: Scanner, shapes: list[Ellipse], grid: ImageGrid, noise: bool = True,
                  seed: int = 0) -> np.ndarray:
    frac, mats = rasterize(shapes, sc.geom.object_grid)
    gen = torch.Generator().manual_seed(seed)
    return sc.ordinary(sc.project(frac), mats, grid, gen, noise=noise)[0, 0].numpy()


def ours_gsi(sc: Scanner, shapes: list[Ellipse], grid: ImageGrid, kevs=KEVS, seed: int = 0
             ) -> dict[float, np.ndarray]:
    frac, mats = rasterize(shapes, sc.geom.object_grid)
    m = sc.gsi_measurement(sc.project(frac), mats, torch.Generator().manual_seed(seed))
    return {k: sc.vmi_image(m, grid, k)[0, 0].numpy() for k in kevs}


def xcist_ordinary(x: Xcist, sc: Scanner, prep: np.ndarray, grid: ImageGrid) -> np.ndarray:
    """FBP (ArtifactGSI-Sim's) of XCIST's beam-hardening-corrected 120 kVp sinogram."""
    p = x.to_flat(prep)[None, None]
    mu = sc.projector.fbp(p, grid, filter=PROFILE.ordinary.filter)
    mu_w = sc.beam_path(PROFILE.ordinary.tube()).water_bhc().mu_water_eff
    return (1000.0 * (mu - mu_w) / mu_w)[0, 0].numpy()


def xcist_gsi(x: Xcist, sc: Scanner, prep_lo: np.ndarray, prep_hi: np.ndarray,
              grid: ImageGrid, kevs=KEVS) -> dict[float, np.ndarray]:
    """ArtifactGSI-Sim's rapid-switching decomposition applied to XCIST's 80 and 140 kVp
    scans (even views from 80 kVp, odd views from 140 kVp; as ``Scanner.gsi_measurement``
    after its measurement step)."""
    pr = sc.gsi_protocol
    lo_v, hi_v = x.to_flat(prep_lo)[0::2].double(), x.to_flat(prep_hi)[1::2].double()
    lo = torch.empty(sc.geom.n_views, sc.geom.n_det, dtype=torch.float64)
    hi = torch.empty_like(lo)
    lo[0::2] = lo_v
    lo[1::2] = 0.5 * (lo_v + torch.roll(lo_v, -1, dims=0))
    hi[1::2] = hi_v
    hi[0::2] = 0.5 * (hi_v + torch.roll(hi_v, 1, dims=0))
    path_lo, path_hi = sc.beam_path(TubeSpec(pr.kvp_low)), sc.beam_path(TubeSpec(pr.kvp_high))
    dec = sc.decomposer()
    if sc.physics is not None and sc.physics.bowtie is not None:
        basis = dec(lo + path_lo.air_log, hi + path_hi.air_log) - dec(path_lo.air_log,
                                                                      path_hi.air_log)
    else:
        basis = dec(lo, hi)
    bhc = path_hi.water_bhc()
    water_mm = bhc(hi).float() / bhc.mu_water_eff
    n_lo = pr.photons_low * dose_scale(sc.geom)
    p_starved = math.log(n_lo / pr.starved_photons)
    trust = ((p_starved - path_lo.log_re_centre_air(lo)) / pr.starved_width).clamp(0, 1)
    m = GSIMeasurement(basis=basis[None], water_mm=water_mm[None], trust=trust.float()[None])
    return {k: sc.vmi_image(m, grid, k)[0, 0].numpy() for k in kevs}


# ----------------------------------------------------------------------------- measurements
def _xy(grid: ImageGrid) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(grid.x_mm().numpy(), grid.y_mm().numpy())


def insert_rois(grid: ImageGrid) -> dict[str, np.ndarray]:
    x, y = _xy(grid)
    out = {}
    for s in inserts_phantom()[1:]:
        out[s.material] = np.hypot(x - s.cx, y - s.cy) < 0.6 * s.ax
    return out


def effective_kev(kvp: float) -> float:
    """Energy at which water's attenuation equals the beam's effective (zero-thickness) one."""
    mu_eff = WaterBHC(Beam(_tube(kvp))).mu_water_eff
    e = np.linspace(30, 140, 2201)
    return float(np.interp(-mu_eff, -mu_matrix(("water",), e)[0], e))


def true_hu(name: str, kev: float) -> float:
    mw = mu_water(kev)
    return float(1000 * (material(name).mu_per_mm(np.array([kev]))[0] - mw) / mw)


def noise_metrics(noise: np.ndarray, grid: ImageGrid) -> dict:
    """SD in a central and a peripheral annulus, and the NPS (8 square 40 mm ROIs around the
    80 mm circle): peak and mean frequency (cycles/mm)."""
    x, y = _xy(grid)
    r = np.hypot(x, y)
    out = {"sd_centre": float(noise[(r > 35) & (r < 65)].std()),
           "sd_edge": float(noise[(r > 105) & (r < 135)].std())}
    n = 2 * max(4, round(20.0 / grid.pixel_mm))  # 40 mm square ROIs
    spectra = []
    for k in range(8):
        a = 2 * math.pi * k / 8
        cx, cy = 80 * math.cos(a), 80 * math.sin(a)
        i = int(np.argmin(np.abs(grid.y_mm().numpy() - cy)))
        j = int(np.argmin(np.abs(grid.x_mm().numpy() - cx)))
        roi = noise[i - n // 2: i + n // 2, j - n // 2: j + n // 2]
        roi = roi - roi.mean()
        spectra.append(np.abs(np.fft.fftshift(np.fft.fft2(roi))) ** 2 * grid.pixel_mm**2 / n**2)
    nps = np.mean(spectra, 0)
    f = np.fft.fftshift(np.fft.fftfreq(n, d=grid.pixel_mm))
    fr = np.hypot(*np.meshgrid(f, f))
    bins = np.linspace(0, fr.max(), n // 2 + 1)
    idx = np.digitize(fr.ravel(), bins) - 1
    radial = np.bincount(idx, nps.ravel(), len(bins)) / np.maximum(np.bincount(idx, None,
                                                                               len(bins)), 1)
    centres = 0.5 * (bins[:-1] + bins[1:])
    radial = radial[: len(centres)]
    out["nps_peak_per_mm"] = float(centres[int(np.argmax(radial))])
    out["nps_mean_per_mm"] = float((fr * nps).sum() / nps.sum())
    return out


def mtf50_circular_edge(img: np.ndarray, grid: ImageGrid, radius: float) -> float:
    """MTF50 (cycles/mm) from the edge of a centred disc: the radial edge-spread function
    (distances binned at pixel/10), differentiated, Fourier transformed."""
    x, y = _xy(grid)
    r = np.hypot(x, y).ravel()
    near = np.abs(r - radius) < 12
    dx = grid.pixel_mm / 10
    edges = np.arange(radius - 12, radius + 12 + dx, dx)
    idx = np.digitize(r[near], edges) - 1
    v = img.ravel()[near]
    cnt = np.bincount(idx, None, len(edges))
    esf = np.bincount(idx, v, len(edges)) / np.maximum(cnt, 1)
    ok = cnt > 0
    pos = edges[ok] + dx / 2
    esf = np.interp(edges + dx / 2, pos, esf[ok])
    lsf = -np.diff(esf) * np.hanning(len(esf) - 1)
    mtf = np.abs(np.fft.rfft(lsf, 8 * len(lsf)))
    f = np.fft.rfftfreq(8 * len(lsf), d=dx)
    mtf /= mtf[0]
    i = int(np.argmax(mtf < 0.5))
    return float(f[i - 1] + (mtf[i - 1] - 0.5) / (mtf[i - 1] - mtf[i]) * (f[i] - f[i - 1]))


def metal_metrics(img: np.ndarray, ref: np.ndarray, grid: ImageGrid,
                  metals: list[Ellipse]) -> dict:
    """Bloom ratio (area above METAL_HU near the metal / true metal area), AAPM streak
    amplitude (mean of the top 5 % minus mean of the bottom 5 % of image - reference in an
    annulus 5-35 mm outside each metal edge), and for two heads the dark band (mean
    image - reference between them, 10 mm clear of each head, +-6 mm about their axis)."""
    x, y = _xy(grid)
    true_area = sum(math.pi * m.ax * m.ay for m in metals)
    near = np.zeros(x.shape, bool)
    ring = np.zeros(x.shape, bool)
    for m in metals:
        d = np.hypot(x - m.cx, y - m.cy)
        near |= d < 3 * m.ax
        ring |= (d > m.ax + 5) & (d < m.ax + 35)
    for m in metals:
        ring &= np.hypot(x - m.cx, y - m.cy) > m.ax + 5
    bloom = float((img[near] > METAL_HU).sum() * grid.pixel_mm**2 / true_area)
    dev = np.sort((img - ref)[ring])
    k = max(1, int(0.05 * dev.size))
    out = {"bloom_ratio": bloom, "streak_hu": float(dev[-k:].mean() - dev[:k].mean())}
    if len(metals) == 2:
        gap = abs(metals[1].cx - metals[0].cx) / 2 - metals[0].ax - 10
        band = (np.abs(x) < gap) & (np.abs(y) < 6)
        out["dark_band_hu"] = float((img - ref)[band].mean())
    return out


def our_spr(geom: FanBeamGeometry, diameter_mm: float) -> np.ndarray:
    """ArtifactGSI-Sim's noise-free SPR along the detector for a centred water cylinder
    (exact chords on the sub-ray detector, the profile's physics, 120 kVp)."""
    from artifactgsi.physics.acquisition import BeamPath

    phys = PROFILE.physics()
    fine = phys.blur.fine_geometry(geom)
    r = fine.sid_mm * torch.sin(torch.atan(fine.det_u_mm() / fine.sdd_mm)).abs()
    chord = 2 * torch.sqrt(((diameter_mm / 2) ** 2 - r**2).clamp_min(0.0))
    lines = chord.view(1, -1, 1).float()
    beam = Beam(PROFILE.ordinary.tube())
    p_s = BeamPath(phys, geom, beam).measure(lines, ("water",), None)[0].double()
    p_0 = BeamPath(replace(phys, scatter=None), geom, beam).measure(lines, ("water",),
                                                                    None)[0].double()
    return (torch.exp(-p_s) / torch.exp(-p_0) - 1).numpy()


def _rel(a: float, b: float) -> float:
    return (a - b) / abs(b) if b else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--xcist-python", default=".venv-xcist/bin/python",
                    help="python of an environment with gecatsim ('' to skip XCIST)")
    ap.add_argument("--work", type=Path, default=Path("out/validate-sim"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    n = args.size
    geom = FanBeamGeometry.scaled(n)
    g_water = ImageGrid((n, n), 320.0 / n)
    g_body = ImageGrid((n, n), 400.0 / n)
    sims = {"before": our_scanner(geom, False), "after": our_scanner(geom, True)}
    no_bowtie = our_scanner(geom, True, bowtie=False)
    res: dict = {"size_px": n, "geometry": {"views": geom.n_views, "channels": geom.n_det},
                 "physics": PROFILE.physics().to_dict()}
    imgs: dict[str, dict] = {k: {} for k in (*sims, "xcist")}

    # --------------------------------------------------------------- XCIST scans
    x = None
    if args.xcist_python and Path(args.xcist_python).exists():
        x = Xcist(str(Path(args.xcist_python).absolute()), args.work.absolute(), geom)
        res["xcist_orientation"] = x.calibrate_orientation(sims["before"])
        print("XCIST orientation", res["xcist_orientation"], flush=True)
        # Dose: XCIST's mA so that the centre column's air scan holds our photons.
        e = energy_grid_kev()
        mu_al = mu_matrix((PROFILE.bowtie.material,), e)[0]
        cal, targets = [], {}
        pr, gp = PROFILE.ordinary, sims["after"].gsi_protocol
        for kvp, bt, photons in ((120.0, True, pr.photons_per_ray),
                                 (120.0, False, pr.photons_per_ray),
                                 (gp.kvp_low, True, gp.photons_low),
                                 (gp.kvp_high, True, gp.photons_high)):
            name = f"dose_{kvp:g}_{int(bt)}"
            cal.append(x.spec(name, water_body(), kvp, noise=False, bowtie=bt, scatter=False,
                              bhc=False, view_count=1, mA=1.0))
            tb = np.exp(-mu_al * (PROFILE.bowtie.centre_mm if bt else 0.0))
            w = spectrum(_tube(kvp)) * tb
            targets[name] = (kvp, bt, photons * dose_scale(geom), float((w * e).sum() / w.sum()))
        out = x.run(cal)
        c = geom.n_det // 2
        for name, (kvp, bt, photons, e_mean) in targets.items():
            per_mA = float(out[name]["air"][c - 1: c + 1].mean()) / e_mean
            x.mA[(kvp, bt)] = photons / per_mA
        res["xcist_mA"] = {f"{k[0]:g} kVp, bowtie {k[1]}": v for k, v in x.mA.items()}
        print("XCIST mA", res["xcist_mA"], flush=True)
        specs = [
            x.spec("inserts_120", inserts_phantom(), 120.0, noise=True),
            x.spec("inserts_80", inserts_phantom(), gp.kvp_low, noise=True, bhc=False),
            x.spec("inserts_140", inserts_phantom(), gp.kvp_high, noise=True, bhc=False, seed=1),
            x.spec("mtf_a", mtf_phantom(), 120.0, noise=True, seed=2),
            x.spec("mtf_b", mtf_phantom(), 120.0, noise=True, seed=3),
            x.spec("mtf_nobt_a", mtf_phantom(), 120.0, noise=True, seed=4, bowtie=False),
            x.spec("mtf_nobt_b", mtf_phantom(), 120.0, noise=True, seed=5, bowtie=False),
            x.spec("water_ref", water_body(), 120.0, noise=False),
            x.spec("ti_rod", rod_phantom("ti6al4v"), 120.0, noise=True, seed=6),
            x.spec("cocr_rod", rod_phantom("cocrmo"), 120.0, noise=True, seed=7),
            x.spec("hips", hips_phantom(), 120.0, noise=True, seed=8),
            x.spec("hips_ref", hips_phantom(False), 120.0, noise=False),
            x.spec("hips_80", hips_phantom(), gp.kvp_low, noise=True, bhc=False, seed=9),
            x.spec("hips_140", hips_phantom(), gp.kvp_high, noise=True, bhc=False, seed=10),
        ]
        for d in (300.0, 350.0):
            for sc_on in (True, False):
                specs.append(x.spec(f"spr_{d:g}_{int(sc_on)}", water_body(d), 120.0, noise=False,
                                    scatter=sc_on, bhc=False, view_count=1))
        t0 = time.perf_counter()
        xs = x.run(specs)
        res["xcist_seconds"] = time.perf_counter() - t0
        print(f"XCIST scans: {res['xcist_seconds']:.0f} s", flush=True)
        sc = sims["after"]
        imgs["xcist"] = {
            "inserts_120": xcist_ordinary(x, sc, xs["inserts_120"]["prep"], g_water),
            "inserts_gsi": xcist_gsi(x, sc, xs["inserts_80"]["prep"], xs["inserts_140"]["prep"],
                                     g_water),
            "mtf": [xcist_ordinary(x, sc, xs[k]["prep"], g_water) for k in ("mtf_a", "mtf_b")],
            "mtf_nobt": [xcist_ordinary(x, no_bowtie, xs[k]["prep"], g_water)
                         for k in ("mtf_nobt_a", "mtf_nobt_b")],
            "water_ref": xcist_ordinary(x, sc, xs["water_ref"]["prep"], g_water),
            "ti_rod": xcist_ordinary(x, sc, xs["ti_rod"]["prep"], g_water),
            "cocr_rod": xcist_ordinary(x, sc, xs["cocr_rod"]["prep"], g_water),
            "hips": xcist_ordinary(x, sc, xs["hips"]["prep"], g_body),
            "hips_ref": xcist_ordinary(x, sc, xs["hips_ref"]["prep"], g_body),
            "hips_gsi": xcist_gsi(x, sc, xs["hips_80"]["prep"], xs["hips_140"]["prep"], g_body,
                                  (100.0,))[100.0],
            "spr": {d: (x.to_flat(xs[f"spr_{d:g}_1"]["scan"]).numpy()[0]
                        / x.to_flat(xs[f"spr_{d:g}_0"]["scan"]).numpy()[0] - 1)
                    for d in (300.0, 350.0)},
        }
    else:
        print("XCIST not available: ArtifactGSI-Sim only", flush=True)

    # --------------------------------------------------------------- ArtifactGSI-Sim scans
    for name, sc in sims.items():
        t0 = time.perf_counter()
        nb = no_bowtie if name == "after" else sc
        imgs[name] = {
            "inserts_120": ours_ordinary(sc, inserts_phantom(), g_water),
            "inserts_gsi": ours_gsi(sc, inserts_phantom(), g_water),
            "mtf": [ours_ordinary(sc, mtf_phantom(), g_water, seed=s) for s in (2, 3)],
            "mtf_nobt": [ours_ordinary(nb, mtf_phantom(), g_water, seed=s) for s in (4, 5)],
            "water_ref": ours_ordinary(sc, water_body(), g_water, noise=False),
            "ti_rod": ours_ordinary(sc, rod_phantom("ti6al4v"), g_water, seed=6),
            "cocr_rod": ours_ordinary(sc, rod_phantom("cocrmo"), g_water, seed=7),
            "hips": ours_ordinary(sc, hips_phantom(), g_body, seed=8),
            "hips_ref": ours_ordinary(sc, hips_phantom(False), g_body, noise=False),
            "hips_gsi": ours_gsi(sc, hips_phantom(), g_body, (100.0,), seed=9)[100.0],
            "spr": ({d: our_spr(geom, d) for d in (300.0, 350.0)} if name == "after"
                    else {d: np.zeros(geom.n_det) for d in (300.0, 350.0)}),
        }
        res[f"{name}_seconds"] = time.perf_counter() - t0
        print(f"ArtifactGSI-Sim {name}: {res[f'{name}_seconds']:.0f} s", flush=True)

    # --------------------------------------------------------------- measurements
    rois = insert_rois(g_water)
    e_eff = effective_kev(120.0)
    res["effective_kev_120"] = e_eff
    meas: dict[str, dict] = {}
    truth_body = truth_hu(hips_phantom(False), g_body, 100.0)
    for name, im in imgs.items():
        if not im:
            continue
        m: dict = {}
        for mat, roi in rois.items():
            m[f"ct_120/{mat}"] = float(im["inserts_120"][roi].mean())
            for k in KEVS:
                m[f"vmi_{k:g}/{mat}"] = float(im["inserts_gsi"][k][roi].mean())
        for tag, (a, b) in (("bowtie", im["mtf"]), ("no_bowtie", im["mtf_nobt"])):
            for key, v in noise_metrics((a - b) / math.sqrt(2), g_water).items():
                m[f"noise_{tag}/{key}"] = v
        m["mtf50_per_mm"] = mtf50_circular_edge(0.5 * (im["mtf"][0] + im["mtf"][1]), g_water,
                                                MTF_RADIUS)
        for key, metal in (("ti_rod", "ti6al4v"), ("cocr_rod", "cocrmo")):
            for k, v in metal_metrics(im[key], im["water_ref"], g_water,
                                      rod_phantom(metal)[1:]).items():
                m[f"{key}/{k}"] = v
        for k, v in metal_metrics(im["hips"], im["hips_ref"], g_body,
                                  hips_phantom()[1:]).items():
            m[f"hips/{k}"] = v
        for k, v in metal_metrics(im["hips_gsi"], truth_body, g_body,
                                  hips_phantom()[1:]).items():
            m[f"hips_gsi100/{k}"] = v
        c = geom.n_det // 2
        u = geom.det_u_mm().numpy()
        for d, spr in im["spr"].items():
            m[f"spr_{d:g}/centre"] = float(spr[c - 1: c + 1].mean())
            for frac in (0.5, 0.8):  # along the detector, at 50 % / 80 % of the radius
                r_iso = frac * d / 2
                uu = r_iso * geom.sdd_mm / math.sqrt(geom.sid_mm**2 - r_iso**2)
                m[f"spr_{d:g}/at_{int(frac * 100)}pct_radius"] = float(
                    0.5 * (np.interp(uu, u, spr) + np.interp(-uu, u, spr)))
        meas[name] = m
    truth = {f"ct_120/{mat}": true_hu(mat, e_eff) for mat in rois}
    truth.update({f"vmi_{k:g}/{mat}": true_hu(mat, k) for k in KEVS for mat in rois})
    meas["truth"] = truth
    res["measurements"] = meas
    res["seconds"] = time.perf_counter() - t_start
    _report(res)
    flat = {}
    for sim, im in imgs.items():
        for k, v in im.items():
            if isinstance(v, dict):
                flat.update({f"{sim}/{k}/{kk:g}": vv for kk, vv in v.items()})
            elif isinstance(v, list):
                flat.update({f"{sim}/{k}/{i}": vv for i, vv in enumerate(v)})
            else:
                flat[f"{sim}/{k}"] = v
    args.work.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.work / "images.npz", **flat)
    out_json = args.json or args.work / "results.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(res, indent=1))
    print(f"wrote {out_json} ({res['seconds']:.0f} s)")


def _report(res: dict) -> None:
    """Print the comparison table (markdown) and the targets."""
    m = res["measurements"]
    cols = [c for c in ("truth", "before", "after", "xcist") if c in m]
    keys = sorted({k for c in cols for k in m[c]})
    print("| quantity | " + " | ".join(cols) + " | after - xcist |")
    print("|---" * (len(cols) + 2) + "|")
    for k in keys:
        vals = [m[c].get(k) for c in cols]
        diff = ""
        if "xcist" in m and k in m["xcist"] and k in m.get("after", {}):
            a, b = m["after"][k], m["xcist"][k]
            diff = f"{a - b:+.1f}" if k.startswith(("ct_", "vmi_")) or "hu" in k else \
                f"{100 * _rel(a, b):+.1f} %"
        print(f"| {k} | " + " | ".join("" if v is None else f"{v:.4g}" for v in vals)
              + f" | {diff} |")
    if "xcist" in m:
        a, x = m["after"], m["xcist"]
        soft = [abs(a[f"ct_120/{t}"] - x[f"ct_120/{t}"]) for t in ("adipose", "soft_tissue",
                                                                 "blood")]
        tis = [t for t in INSERT_MATERIALS if t != "ti6al4v"]
        vmi100 = math.sqrt(np.mean([(a[f"vmi_100/{t}"] - m["truth"][f"vmi_100/{t}"]) ** 2
                                    for t in tis]))
        checks = {
            "soft-tissue CT numbers within 10 HU of XCIST": (max(soft), max(soft) <= 10),
            "noise SD within 10 % (centre, bowtie)": (
                _rel(a["noise_bowtie/sd_centre"], x["noise_bowtie/sd_centre"]),
                abs(_rel(a["noise_bowtie/sd_centre"], x["noise_bowtie/sd_centre"])) <= 0.10),
            "MTF50 within 10 %": (_rel(a["mtf50_per_mm"], x["mtf50_per_mm"]),
                                  abs(_rel(a["mtf50_per_mm"], x["mtf50_per_mm"])) <= 0.10),
        }
        for key in ("ti_rod", "cocr_rod", "hips"):
            r = _rel(a[f"{key}/bloom_ratio"], x[f"{key}/bloom_ratio"])
            checks[f"{key} bloom ratio within 15 %"] = (r, abs(r) <= 0.15)
            r = _rel(a[f"{key}/streak_hu"], x[f"{key}/streak_hu"])
            checks[f"{key} streak amplitude within 25 %"] = (r, abs(r) <= 0.25)
        checks["VMI 100 keV RMS error vs truth <= 21 HU (tissue inserts)"] = (vmi100,
                                                                              vmi100 <= 21)
        res["targets"] = {k: {"value": v, "pass": bool(p)} for k, (v, p) in checks.items()}
        for k, (v, p) in checks.items():
            print(f"{'PASS' if p else 'FAIL'}  {k}: {v:.3g}")


if __name__ == "__main__":
    sys.exit(main())
