"""Metal implants placed on the skeleton frame: hip prostheses, fracture fixation (plates and
screws) and posterior spinal fixation (pedicle screws and rods).

Each builder returns an :class:`ImplantPlan`: the structures to paint *after* the anatomy
(first the bone or tissue the implant replaced - resected femoral head, reamed acetabulum - as
soft tissue, then the metal and polyethylene parts) and a JSON-able description. Rasterising
without the plan gives the same body with the natural anatomy in place of the implant.

Sizes follow common implant catalogues: femoral heads 28/32/36 mm, cups 2-3 mm larger than the
native head with 3-4.5 mm metal shells, tapered stems 110-150 mm long; large-fragment plates
4-5 mm thick and 12-16 mm wide with 4.5-6.5 mm screws; pedicle screws 5-7 mm with 5.5 mm rods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..schema import BODY_REGIONS, IMPLANT_TYPES
from .frame import SIDE_NAME, SIDES, BodyFrame
from .raster import Structure
from .shapes import Shape, Sphere, Tube, plane_through, polyline, unit
from .skeleton import acetabulum_axis
from .tissues import METAL_TISSUE, Label, Tissue

IMPLANT_REGIONS: dict[str, tuple[str, ...]] = {
    "none": BODY_REGIONS,
    "hip_prosthesis": ("hip", "pelvis"),
    "fracture_fixation": ("femur", "knee", "pelvis"),
    "spinal_fixation": ("thoracic_spine", "lumbar_spine"),
}


@dataclass
class ImplantPlan:
    """Structures of one implant (painted after the anatomy) and its description."""

    kind: str
    materials: tuple[str, ...]
    sides: tuple[str, ...]
    structures: list[Structure]
    focus_z_mm: float  # level of clinical interest (e.g. the femoral heads, the screw levels)
    info: dict = field(default_factory=dict)


def _metal(shapes: list[Shape], material: str, name: str) -> list[Structure]:
    return [Structure(s, METAL_TISSUE[material], Label.METAL, name) for s in shapes]


def _soft(shapes: list[Shape], name: str) -> list[Structure]:
    return [Structure(s, Tissue.SOFT, Label.BACKGROUND, name) for s in shapes]


def _perp(d: np.ndarray, hint: np.ndarray) -> np.ndarray:
    """Unit vector perpendicular to ``d`` closest to ``hint``."""
    v = hint - (hint @ d) * d
    return unit(v)


# ---------------------------------------------------------------------------------------------
# Hip prosthesis
# ---------------------------------------------------------------------------------------------
def hip_prosthesis(frame: BodyFrame, rng: np.random.Generator) -> ImplantPlan:
    """Total hip arthroplasty: stem in the femoral canal, modular head, cup with liner.

    Uni- (65 %) or bilateral (35 %; the classic dark band between the two heads).
    """
    s = frame.scale
    sides = (1, -1) if rng.random() < 0.35 else (int(rng.choice(SIDES)),)
    stem_mat = "cocrmo" if rng.random() < 0.4 else "ti6al4v"
    cup_mat = "cocrmo" if rng.random() < 0.25 else "ti6al4v"
    resect: list[Structure] = []
    metal: list[Structure] = []
    info: dict = {"stem_material": stem_mat, "head_material": "cocrmo", "cup_material": cup_mat,
                  "components": {}}
    for side in sides:
        fem = frame.femurs[side]
        H, R, N0, u, dn = fem.head_c, fem.head_r, fem.neck_base, fem.shaft_dir, fem.neck_dir
        head_r = float(rng.choice([14.0, 16.0, 18.0]))
        cup_r = R + float(rng.uniform(2.0, 3.5))
        shell = float(rng.uniform(3.0, 4.5))
        n_cup = unit(acetabulum_axis(side) + rng.normal(0.0, 0.05, 3))
        stem_len = float(rng.uniform(110.0, 150.0)) * s
        ml = float(rng.uniform(7.5, 9.0)) * s  # stem half-width (ML) at the shoulder
        # bone removed at surgery: the head and neck above the osteotomy, the reamed socket
        cut = N0 + 14 * s * dn
        resect += _soft([Sphere(H, R + 2.0), Tube(cut, H, 17.0 * s, 15.0 * s, e1_hint=(0, 0, 1)),
                         Sphere(H, cup_r)], f"{SIDE_NAME[side]}_resection")
        cup_clip = [plane_through(H, n_cup, 0.0)]
        shoulder = N0 + 6 * s * dn
        top = N0 - 8 * s * u
        lateral = _perp(u, np.array([side, 0.0, 0.0]))
        stem = Tube(top, top + stem_len * u, [ml, 0.93 * ml, 0.7 * ml, 0.55 * ml, 0.35 * ml],
                    [0.72 * ml, 0.7 * ml, 0.6 * ml, 0.5 * ml, 0.35 * ml],
                    profile=[0.0, 0.2, 0.6, 0.95, 1.0], e1_hint=lateral)
        neck = Tube(shoulder, H - 0.3 * head_r * dn, [7.5 * s, 6.0 * s], [6.5 * s, 5.5 * s],
                    profile=[0.0, 1.0], e1_hint=(0, 0, 1))
        metal += _metal([Sphere(H, cup_r, clip=cup_clip)], cup_mat, "acetabular_cup")
        metal.append(Structure(Sphere(H, cup_r - shell, clip=cup_clip), Tissue.POLYETHYLENE,
                               Label.BACKGROUND, "liner"))
        metal += _metal([stem, neck], stem_mat, "femoral_stem")
        metal += _metal([Sphere(H, head_r)], "cocrmo", "femoral_head")
        info["components"][SIDE_NAME[side]] = {
            "head_diameter_mm": 2 * head_r, "cup_outer_diameter_mm": round(2 * cup_r, 1),
            "cup_shell_mm": round(shell, 2), "stem_length_mm": round(stem_len, 1),
            "stem_width_mm": round(2 * ml, 1), "head_centre_mm": [round(float(c), 1) for c in H]}
    mats = tuple(sorted({stem_mat, cup_mat, "cocrmo"}))
    focus = float(np.mean([frame.femurs[sd].head_c[2] for sd in sides]))
    return ImplantPlan("hip_prosthesis", mats, tuple(SIDE_NAME[sd] for sd in sides),
                       resect + metal, focus, info)


# ---------------------------------------------------------------------------------------------
# Fracture fixation
# ---------------------------------------------------------------------------------------------
def _plate_and_screws(p_lo: np.ndarray, p_hi: np.ndarray, r_in: np.ndarray, tk: np.ndarray,
                      lateral: np.ndarray, width: float, thick: float, screw_s: list[float],
                      screw_depth: list[float], screw_r: float, rng: np.random.Generator,
                      material: str) -> list[Structure]:
    """A plate curved round a bone axis (``p_lo -> p_hi``, bone radius profile ``r_in`` at
    fractions ``tk``) on its ``lateral`` side, and screws through it into the bone.

    ``screw_s`` are fractions along the plate; ``screw_depth`` the screw length below the
    plate (mm). Screw heads (4 mm radius, 3 mm high) sit on the plate.
    """
    axis = p_hi - p_lo
    L = float(np.linalg.norm(axis))
    d = axis / L
    e1 = _perp(d, lateral)
    r_mid = float(np.mean(r_in)) + 0.5 * thick
    half = math.degrees(0.5 * width / r_mid)
    plate = Tube(p_lo, p_hi, r_in + 0.5 + thick, r_in + 0.5 + thick, profile=tk, e1_hint=e1,
                 thickness=thick, sector_deg=(-half, half))
    parts: list[Shape] = [plate]
    for t, depth in zip(screw_s, screw_depth, strict=True):
        c = p_lo + t * L * d
        r_here = float(np.interp(t, tk, r_in))
        tilt = rng.normal(0.0, 0.08)
        e2 = np.cross(d, e1)
        sdir = unit(-e1 + tilt * e2)  # into the bone
        outer = c + (r_here + 0.5 + thick) * e1
        parts.append(Tube(outer - 0.2 * sdir, outer + (thick + depth) * sdir, screw_r,
                          e1_hint=d))
        parts.append(Tube(outer - 3.0 * sdir, outer + 0.5 * sdir, 4.0, e1_hint=d))
    return _metal(parts, material, "plate_and_screws")


def fracture_fixation(frame: BodyFrame, region: str, rng: np.random.Generator) -> ImplantPlan:
    """Plate and screws on the femoral shaft (femur), the distal femur or proximal tibia
    (knee), or the pubic symphysis with an optional iliosacral screw (pelvis)."""
    s = frame.scale
    material = "steel316l" if rng.random() < 0.55 else "ti6al4v"
    width = float(rng.uniform(12.0, 16.0))
    thick = float(rng.uniform(4.0, 5.0))
    screw_r = float(rng.uniform(2.5, 3.25))
    info: dict = {"plate_width_mm": round(width, 1), "plate_thickness_mm": round(thick, 2),
                  "screw_diameter_mm": round(2 * screw_r, 2)}
    if region == "femur":
        side = int(rng.choice(SIDES))
        fem = frame.femurs[side]
        L = float(rng.uniform(140.0, 200.0)) * s
        zc = float(rng.uniform(-250.0, -190.0)) * s
        p_hi, p_lo = fem.axis_at_z(zc + 0.5 * L), fem.axis_at_z(zc - 0.5 * L)
        n = int(rng.integers(6, 10))
        ts = list(np.linspace(0.06, 0.94, n))
        structs = _plate_and_screws(p_lo, p_hi, np.array([fem.shaft_r, fem.shaft_r]),
                                    np.array([0.0, 1.0]), np.array([side, 0.2, 0.0]), width,
                                    thick, ts, [2 * fem.shaft_r + 2.5] * n, screw_r, rng,
                                    material)
        info.update(site="femoral_shaft", plate_length_mm=round(L, 1), screws=n)
        return ImplantPlan("fracture_fixation", (material,), (SIDE_NAME[side],), structs, zc,
                           info)
    if region == "knee":
        side = int(rng.choice(frame.knee_sides))
        fem = frame.femurs[side]
        K, u = fem.knee_c, fem.shaft_dir
        if rng.random() < 0.5:  # distal femur (lateral locking plate)
            L = float(rng.uniform(110.0, 160.0)) * s
            p_lo = K - 24 * s * u
            p_hi = K - (24 * s + L) * u
            t_meta = min(0.95, 71 * s / L)
            r_in = np.array([36.0 * s, fem.shaft_r + 1.0, fem.shaft_r])
            tk = np.array([0.0, t_meta, 1.0])
            n = int(rng.integers(5, 8))
            ts = [0.05, 0.13, 0.22] + list(np.linspace(t_meta + 0.05, 0.93, n - 3))
            depth = [66.0 * s, 64.0 * s, 58.0 * s] + [2 * fem.shaft_r + 2.5] * (n - 3)
            site = "distal_femur"
            lat = np.array([side, 0.1, 0.0])
        else:  # proximal tibia (lateral plateau plate)
            L = float(rng.uniform(90.0, 140.0)) * s
            ax = np.array([K[0], K[1] + 3 * s, 0.0])
            p_lo = ax + np.array([0.0, 0.0, K[2] - 9 * s - L])
            p_hi = ax + np.array([0.0, 0.0, K[2] - 9 * s])
            # tibial radius (ML) from the plateau down to the shaft, indexed from p_lo
            z_rel = np.array([-2.0, -19.5, -43.0, -70.4, -78.0]) * s
            r_t = np.array([38.0, 37.0, 27.0, 15.0, 13.5]) * s
            zs = K[2] - 9 * s - L + np.linspace(0, L, 12)
            r_in = np.interp(zs - K[2], z_rel[::-1], r_t[::-1], left=13.5 * s)
            tk = np.linspace(0.0, 1.0, 12)
            n = int(rng.integers(5, 8))
            ts = [0.95, 0.87] + list(np.linspace(0.08, 0.6, n - 2))
            depth = [66.0 * s, 62.0 * s] + [2 * 13.5 * s + 2.5] * (n - 2)
            site = "proximal_tibia"
            lat = np.array([side, 0.0, 0.0])
        structs = _plate_and_screws(p_lo, p_hi, r_in, tk, lat, width, thick, ts, depth,
                                    screw_r, rng, material)
        info.update(site=site, plate_length_mm=round(L, 1), screws=len(ts))
        return ImplantPlan("fracture_fixation", (material,), (SIDE_NAME[side],), structs,
                           float(0.5 * (p_lo[2] + p_hi[2])), info)
    if region == "pelvis":
        sym = frame.symphysis
        rc = float(rng.uniform(45.0, 60.0)) * s
        yc = sym[1] - 8.5 * s + rc  # arc centre behind the symphysis
        length = float(rng.uniform(60.0, 85.0)) * s
        half = math.degrees(0.5 * length / rc)
        zc = float(sym[2] + rng.normal(4.0, 2.0) * s)
        plate = Tube((0.0, yc, zc - 0.5 * width), (0.0, yc, zc + 0.5 * width), rc + 0.5 + thick,
                     rc + 0.5 + thick, e1_hint=(1, 0, 0), thickness=thick,
                     sector_deg=(-90 - half, -90 + half))
        parts: list[Shape] = [plate]
        n = int(rng.integers(4, 7))
        for phi in np.linspace(-90 - 0.8 * half, -90 + 0.8 * half, n):
            if abs(phi + 90) < 0.12 * half:  # no screw into the symphyseal joint
                continue
            e = np.array([math.cos(math.radians(phi)), math.sin(math.radians(phi)), 0.0])
            outer = np.array([0.0, yc, zc]) + (rc + 0.5 + thick) * e
            sdir = unit(-e + np.array([0.0, 0.0, rng.normal(0.0, 0.1)]))
            parts.append(Tube(outer - 0.2 * sdir, outer + (thick + 22 * s) * sdir, screw_r,
                              e1_hint=(0, 0, 1)))
            parts.append(Tube(outer - 3.0 * sdir, outer + 0.5 * sdir, 4.0, e1_hint=(0, 0, 1)))
        structs = _metal(parts, material, "symphyseal_plate")
        sides = ("left", "right")
        info.update(site="pubic_symphysis", plate_length_mm=round(length, 1))
        if rng.random() < 0.6:  # iliosacral screw through the ilium into the S1 body
            side = int(rng.choice(SIDES))
            y5 = frame.vertebrae[0].y
            zs = frame.s1_z - 14 * s
            start = np.array([side * 90.0 * s, y5 + 42 * s, zs])
            end = np.array([-side * 8.0 * s, frame.sacrum_y + 4 * s, zs + 4 * s])
            r_is = 3.4
            d = unit(end - start)
            structs += _metal([Tube(start, end, r_is, e1_hint=(0, 0, 1)),
                               Tube(start - 3 * d, start + 0.5 * d, 6.5, e1_hint=(0, 0, 1))],
                              material, "iliosacral_screw")
            info["iliosacral_screw"] = SIDE_NAME[side]
        return ImplantPlan("fracture_fixation", (material,), sides, structs, zc, info)
    raise ValueError(f"fracture_fixation: no plan for body region {region!r}")


# ---------------------------------------------------------------------------------------------
# Spinal fixation
# ---------------------------------------------------------------------------------------------
def spinal_fixation(frame: BodyFrame, region: str, rng: np.random.Generator) -> ImplantPlan:
    """Posterior instrumentation: bilateral pedicle screws in 2-4 consecutive vertebrae and two
    5.5 mm titanium rods through the screw heads."""
    s = frame.scale
    names = [v.name for v in frame.vertebrae]
    if region == "lumbar_spine":
        pool = ["L5", "L4", "L3", "L2", "L1"]
    elif region == "thoracic_spine":
        pool = ["T12", "T11", "T10", "T9", "T8", "T7", "T6", "T5"]
    else:
        raise ValueError(f"spinal_fixation: no plan for body region {region!r}")
    n_lev = int(rng.integers(2, 5))
    start = int(rng.integers(0, len(pool) - n_lev + 1))
    levels = [frame.vertebrae[names.index(n)] for n in pool[start:start + n_lev]]
    material = "ti6al4v"
    lumbar = region == "lumbar_spine"
    screw_r = float(rng.uniform(3.0, 3.5) if lumbar else rng.uniform(2.5, 3.0))
    parts: list[Shape] = []
    rods: dict[int, list[np.ndarray]] = {1: [], -1: []}
    for v in levels:
        for side in SIDES:
            P, d = v.pedicle_axis(side)
            d = unit(d + np.array([0.0, 0.0, rng.normal(0.0, 0.03)]))
            entry = P - 10 * s * d
            target_y = v.y - 0.55 * v.b
            length = float(np.clip((entry[1] - target_y) / -d[1], 30.0, 55.0))
            r = min(screw_r, 0.95 * v.ped_rx + 1.2)  # narrow thoracic pedicles get thin screws
            parts.append(Tube(entry, entry + length * d, [r, r, 0.55 * r],
                              profile=[0.0, 0.88, 1.0], e1_hint=(0, 0, 1)))
            parts.append(Tube(entry + 2 * s * d, entry - 13 * s * d, 6.0 * s, 6.5 * s,
                              e1_hint=(0, 0, 1)))
            rods[side].append(entry - 9 * s * d)
    rod_r = 2.75
    for side in SIDES:
        pts = sorted(rods[side], key=lambda p: p[2])
        ext_lo = pts[0] + 8.0 * unit(pts[0] - pts[1])
        ext_hi = pts[-1] + 8.0 * unit(pts[-1] - pts[-2])
        parts += polyline([ext_lo, *pts, ext_hi], rod_r)
    structs = _metal(parts, material, "pedicle_screws_and_rods")
    focus = float(np.mean([v.zc for v in levels]))
    info = {"levels": [v.name for v in levels], "screw_diameter_mm": round(2 * screw_r, 2),
            "rod_diameter_mm": 2 * rod_r}
    return ImplantPlan("spinal_fixation", (material,), ("left", "right"), structs, focus, info)


def build_implant(frame: BodyFrame, implant_type: str, region: str,
                  rng: np.random.Generator) -> ImplantPlan | None:
    """The implant plan of ``implant_type`` in ``region`` (``None`` for ``"none"``)."""
    if implant_type == "none":
        return None
    if implant_type == "hip_prosthesis":
        return hip_prosthesis(frame, rng)
    if implant_type == "fracture_fixation":
        return fracture_fixation(frame, region, rng)
    if implant_type == "spinal_fixation":
        return spinal_fixation(frame, region, rng)
    raise ValueError(f"unknown implant_type {implant_type!r}; expected one of {IMPLANT_TYPES}")
