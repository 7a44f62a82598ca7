"""Soft tissues of a procedural patient: body outline (skin, subcutaneous fat, muscle),
intermuscular fat, thoracic and abdominal organs, bowel with gas and fluid, vessels.

Everything is built from a :class:`~.frame.BodyFrame` and returned as painted
:class:`~.raster.Structure` lists in the order they must be painted.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .frame import FOV_RADIUS_MM, SIDES, BodyFrame
from .raster import Structure
from .shapes import Capsule, Ellipsoid, Shape, SweptSection, polyline, unit
from .skeleton import wing_keys
from .tissues import Tissue

SKIN_MM = 2.0


def _paint(shapes: list[Shape], tissue: Tissue, name: str) -> list[Structure]:
    return [Structure(s, tissue, name=name) for s in shapes if s is not None]


# ---------------------------------------------------------------------------------------------
# Body outline
# ---------------------------------------------------------------------------------------------
def _leg_keys(frame: BodyFrame, side: int) -> np.ndarray:
    """Leg keys: z, cx, cy, a_m, b_ant, b_post, fat_lat, fat_ant, fat_post (mm)."""
    s, f = frame.scale, frame.fat
    z = np.array([10.0, -40, -80, -150, -250, -330, -385, -420, -460, -520, -560]) * s
    z[7] = frame.knee_z
    kx = abs(frame.leg_x[side])
    w = np.clip((z - 10 * s) / (frame.knee_z - 10 * s), 0.0, 1.0) ** 1.2
    cx = side * (98.0 * s * (1 - w) + kx * w)
    ky = frame.knee_y
    cy = np.array([8.0, 8, 6, 4, 4, 4, ky, ky, ky + 2, ky + 4, ky + 4])
    a = np.array([60.0, 70, 72, 70, 64, 57, 51, 49, 47, 46, 44]) * s
    ba = np.array([60.0, 68, 70, 66, 60, 55, 56, 58, 48, 42, 40]) * s
    bp = np.array([60.0, 72, 76, 72, 66, 60, 55, 52, 56, 60, 58]) * s
    fl = np.array([14.0, 14, 14, 13, 12, 11, 9, 8, 8, 9, 9]) * f
    fa = np.array([12.0, 12, 12, 11, 10, 9, 7, 6, 6, 6, 6]) * f
    fp = np.array([14.0, 14, 14, 13, 12, 11, 9, 9, 10, 10, 10]) * f
    keys = np.stack([z, cx, cy, a, ba, bp, fl, fa, fp], 1)
    end = frame.leg_end_z[side]
    if end > keys[-1, 0]:  # leg flexed out of the plane: round the end off over ~40 mm
        keep = keys[keys[:, 0] > end + 40 * s]
        cap = []
        for dz, k in ((40.0, 0.85), (15.0, 0.6), (0.0, 0.15)):
            zz = end + dz * s
            row = np.array([np.interp(zz, keys[::-1, 0], keys[::-1, j])
                            for j in range(keys.shape[1])])
            row[0] = zz
            row[3:9] *= k
            cap.append(row)
        keys = np.concatenate([keep, np.array(cap)])
    return keys[::-1].copy()  # increasing z


def _outline(z, cx, cy, a, ba, bp, k: float, mirror: bool = False) -> SweptSection:
    return SweptSection(z, cx, cy, a, bp, b_neg=ba, squareness=k, mirror=mirror)


def _max_radius(sec: SweptSection, zs: np.ndarray) -> np.ndarray:
    return np.array([np.hypot(*sec.boundary(float(z), 180).T).max() for z in zs])


def _fit_fat(z, cx, cy, a, ba, bp, fl, fa, fp, k: float, limit: float) -> tuple:
    """Reduce the fat at keys whose skin outline would leave the field-of-view circle."""
    fl, fa, fp = fl.copy(), fa.copy(), fp.copy()
    for _ in range(30):
        skin = _outline(z, cx, cy, a + fl + SKIN_MM, ba + fa + SKIN_MM, bp + fp + SKIN_MM, k)
        zs = np.linspace(z[0], z[-1], 4 * len(z) + 1)
        r = _max_radius(skin, zs)
        if r.max() <= limit:
            break
        bad = zs[r > limit]
        for zb in bad:
            i = int(np.argmin(np.abs(z - zb)))
            for j in {i, min(i + 1, len(z) - 1), max(i - 1, 0)}:
                fl[j] *= 0.85
                fa[j] *= 0.92
                fp[j] *= 0.92
    return fl, fa, fp


def body_outline(frame: BodyFrame) -> list[Structure]:
    """Skin (2 mm), subcutaneous fat and muscle of the trunk and the legs.

    All skins are painted before all fat and all fat before all muscle, so overlapping
    outlines (trunk and thighs) merge into one body instead of drawing skin inside it.
    """
    t = frame.trunk
    k_trunk = -0.3
    lim = FOV_RADIUS_MM - 1.0
    parts = []  # (z, cx, cy, a, ba, bp, fl, fa, fp, k, mirror)
    fl, fa, fp = _fit_fat(t[:, 0], 0.0, 0.0, t[:, 1], t[:, 2], t[:, 3], t[:, 4], t[:, 5],
                          t[:, 6], k_trunk, lim)
    frame.trunk[:, 4], frame.trunk[:, 5], frame.trunk[:, 6] = fl, fa, fp
    parts.append((t[:, 0], 0.0, 0.0, t[:, 1], t[:, 2], t[:, 3], fl, fa, fp, k_trunk))
    for side in SIDES:
        L = _leg_keys(frame, side)
        fl, fa, fp = _fit_fat(L[:, 0], L[:, 1], L[:, 2], L[:, 3], L[:, 4], L[:, 5], L[:, 6],
                              L[:, 7], L[:, 8], -0.15, lim)
        parts.append((L[:, 0], L[:, 1], L[:, 2], L[:, 3], L[:, 4], L[:, 5], fl, fa, fp, -0.15))
        frame.extra[f"leg_keys_{side}"] = np.column_stack([L[:, :6], fl, fa, fp])
    skins, fats, muscles = [], [], []
    for z, cx, cy, a, ba, bp, fl, fa, fp, k in parts:
        skins.append(_outline(z, cx, cy, a + fl + SKIN_MM, ba + fa + SKIN_MM, bp + fp + SKIN_MM,
                              k))
        fats.append(_outline(z, cx, cy, a + fl, ba + fa, bp + fp, k))
        muscles.append(_outline(z, cx, cy, a, ba, bp, k))
    frame.extra["skin_outlines"] = skins
    return (_paint(skins, Tissue.SOFT, "skin") + _paint(fats, Tissue.FAT, "subcutaneous_fat")
            + _paint(muscles, Tissue.SOFT, "muscle"))


def intermuscular_fat(frame: BodyFrame, rng: np.random.Generator) -> list[Structure]:
    """Fat septa between thigh muscle groups and small intramuscular fat streaks."""
    s = frame.scale
    out: list[Shape] = []
    for side, fem in frame.femurs.items():
        z_lo = max(frame.leg_end_z[side] + 45 * s, -360 * s)
        zk = np.linspace(z_lo, -70 * s, 5)
        axis = np.array([fem.axis_at_z(float(z)) for z in zk])
        for _ in range(3):
            r = rng.uniform(28, 42) * s
            phi0 = rng.uniform(0, 360)
            width = rng.uniform(60, 120)
            out.append(SweptSection(zk, axis[:, 0], axis[:, 1] + 6 * s, r, r, thickness=1.8,
                                    sector_deg=(phi0, phi0 + width)))
    # streaks: elongated along z, in the back, gluteal and thigh muscles
    n_streak = int(round(60 * min(1.5, 0.5 + 0.5 * frame.fat)))
    for _ in range(n_streak):
        kind = rng.integers(0, 3)
        side = SIDES[rng.integers(0, 2)]
        if kind == 0:  # paraspinal
            z = rng.uniform(100, 560) * s
            c = (side * rng.uniform(25, 55) * s, frame.spine_y(z) + rng.uniform(35, 55) * s, z)
        elif kind == 1:  # gluteal
            z = rng.uniform(-60, 80) * s
            c = (side * rng.uniform(80, 130) * s, rng.uniform(50, 85) * s, z)
        else:  # thigh
            if frame.leg_end_z[side] > -300 * s:
                continue
            z = rng.uniform(-380, -90) * s
            ax = frame.femurs[side].axis_at_z(z)
            ang = rng.uniform(0, 2 * np.pi)
            d = rng.uniform(25, 45) * s
            c = (ax[0] + d * math.cos(ang), ax[1] + d * math.sin(ang), z)
        out.append(Ellipsoid(c, (rng.uniform(1.5, 3.5), rng.uniform(1.5, 4.0),
                                 rng.uniform(12, 35) * s)))
    return _paint(out, Tissue.FAT, "intermuscular_fat")


# ---------------------------------------------------------------------------------------------
# Abdomen and pelvis
# ---------------------------------------------------------------------------------------------
def sacrum_front(frame: BodyFrame, z: float) -> float:
    sk = frame.extra["sacrum_keys"]  # z, y, a, b
    return float(np.interp(z, sk[:, 0], sk[:, 1] - sk[:, 3]))


def cavity(frame: BodyFrame) -> tuple[SweptSection, Callable[[np.ndarray, float], bool]]:
    """Abdominopelvic cavity (visceral fat) and a test ``inside(p, margin)`` for organs."""
    s = frame.scale
    zk = np.array([-22.0, 5, 35, 70, 100, 150, 200]) * s
    zk = np.append(zk, frame.dome_z - 45 * s)
    pelvic_a = np.interp(zk, np.array([-22.0, 5, 35, 70]) * s, np.array([34.0, 44, 58, 92]) * s,
                         right=1e9)
    a_m = np.array([frame.muscle_at(z)[0] for z in zk])
    a = np.minimum(a_m - 18 * s, pelvic_a)
    y_front = -np.array([frame.muscle_at(z)[1] for z in zk]) + 13 * s
    y_back = np.array([sacrum_front(frame, z) - 2 * s if z < frame.s1_z + 10 * s
                       else frame.spine_y(z) + 5 * s for z in zk])
    cy = 0.5 * (y_front + y_back)
    b = 0.5 * (y_back - y_front)
    sec = SweptSection(zk, 0.0, cy, a, b, squareness=-0.2)

    def inside(p: np.ndarray, margin: float) -> bool:
        z = float(p[2])
        if not (zk[0] + margin < z < zk[-1] - margin):
            return False
        q = sec.params(z)
        ax, bx = q["a_pos"] - margin, q["b_pos"] - margin
        if ax <= 0 or bx <= 0:
            return False
        return ((p[0] - q["cx"]) / ax) ** 2 + ((p[1] - q["cy"]) / bx) ** 2 <= 1.0

    return sec, inside


def _walk(rng: np.random.Generator, start: np.ndarray, n: int, step: float,
          ok: Callable[[np.ndarray], bool], z_bias: float = 0.0) -> list[np.ndarray]:
    """Random walk with direction persistence that stays where ``ok`` holds."""
    pts = [start]
    d = unit(rng.normal(size=3))
    for _ in range(n):
        for _try in range(25):
            nd = unit(d + 1.3 * rng.normal(size=3) + np.array([0, 0, z_bias]))
            nd[2] *= 0.7
            nd = unit(nd)
            q = pts[-1] + step * nd
            if ok(q):
                pts.append(q)
                d = nd
                break
        else:
            break
    return pts


def _gut(points: list[np.ndarray], r: float, wall: float, content: Tissue,
         gas_frac: float) -> tuple[list[Shape], list[Shape], list[Shape]]:
    """Wall, content and gas (anterior, above a horizontal gas-fluid level) of a tube."""
    walls = polyline(points, r)
    lumen = polyline(points, r - wall)
    gas: list[Shape] = []
    if gas_frac > 0:
        ri = r - wall
        for a, b in zip(points[:-1], points[1:], strict=True):
            # gas floats to the most anterior part of the lumen (the patient lies supine, so
            # "up" is -y) and is bounded by a horizontal gas-fluid level
            level = min(a[1], b[1]) - ri + gas_frac * 2 * ri
            gas.append(Capsule(a, b, ri, clip=[(0.0, 1.0, 0.0, float(level))]))
    return walls, lumen, gas


def abdomen(frame: BodyFrame, rng: np.random.Generator) -> list[Structure]:
    """Visceral fat, bowel, bladder, kidneys, liver, spleen, stomach, psoas and iliacus."""
    s = frame.scale
    cav, inside = cavity(frame)
    out = _paint([cav], Tissue.FAT, "visceral_fat")
    walls: list[Shape] = []
    lumens: list[tuple[Shape, Tissue]] = []
    gas: list[Shape] = []

    # small bowel: more loops (less visible fat) in lean patients
    n_loops = int(np.clip(round(9 - 2.5 * frame.visceral + rng.normal(0, 1)), 4, 10))
    z_lo, z_hi = 25 * s, frame.dome_z - 110 * s
    for _ in range(n_loops):
        r = rng.uniform(10, 14) * s
        for _try in range(40):
            p0 = np.array([rng.uniform(-90, 90) * s, rng.uniform(-70, 20) * s,
                           rng.uniform(z_lo, z_hi)])
            if inside(p0, r + 6 * s):
                break
        else:
            continue
        pts = _walk(rng, p0, int(rng.integers(8, 16)), rng.uniform(16, 22) * s,
                    lambda q, r=r: inside(q, r + 4 * s) and z_lo - 30 * s < q[2] < z_hi)
        if len(pts) < 3:
            continue
        w, lu, g = _gut(pts, r, 2.0, Tissue.FLUID,
                        rng.uniform(0.1, 0.4) if rng.random() < 0.35 else 0.0)
        walls += w
        lumens += [(x, Tissue.FLUID) for x in lu]
        gas += g

    # colon: ascending, transverse, descending, sigmoid, rectum
    def at(z: float, fx: float, fy: float) -> np.ndarray:
        q = cav.params(z)
        return np.array([fx * q["a_pos"], q["cy"] + fy * q["b_pos"], z])

    zt = min(215 * s, frame.dome_z - 100 * s)
    sy = sacrum_front(frame, 0.0)
    colon = [
        at(75 * s, -0.72, 0.35), at(120 * s, -0.78, 0.35), at(170 * s, -0.78, 0.3),
        at(zt, -0.72, 0.0), at(zt - 10 * s, -0.3, -0.55), at(zt - 25 * s, 0.1, -0.6),
        at(zt, 0.5, -0.4), at(zt + 15 * s, 0.78, 0.25), at(170 * s, 0.8, 0.35),
        at(115 * s, 0.8, 0.35), at(80 * s, 0.6, 0.1), at(55 * s, 0.2, -0.2),
        at(45 * s, -0.15, 0.1), at(30 * s, 0.0, 0.6),
        np.array([0.0, sy - 20 * s, 5 * s]), np.array([0.0, sy - 18 * s, -25 * s]),
        np.array([0.0, sy - 8 * s, -55 * s]),
    ]
    rc = rng.uniform(17, 23) * s
    w, lu, g = _gut(colon[:-4], rc, 3.0, Tissue.STOOL, rng.uniform(0.15, 0.45))
    walls += w
    lumens += [(x, Tissue.STOOL) for x in lu]
    gas += g
    w, lu, g = _gut(colon[-5:], 0.8 * rc, 3.0, Tissue.STOOL, rng.uniform(0.0, 0.3))
    walls += w
    lumens += [(x, Tissue.STOOL) for x in lu]
    gas += g
    out += _paint(walls, Tissue.SOFT, "bowel_wall")
    out += [Structure(x, t, name="bowel_content") for x, t in lumens]
    out += _paint(gas, Tissue.AIR, "bowel_gas")

    # bladder (fluid with a 3 mm wall) behind the symphysis
    fill = rng.uniform(0.7, 1.15)
    sym = frame.symphysis
    ax = np.array([42.0, 32.0, 30.0]) * s * fill
    bc = np.array([0.0, sym[1] + 22 * s + ax[1], sym[2] + 14 * s + 0.6 * ax[2]])
    out += _paint([Ellipsoid(bc, ax)], Tissue.SOFT, "bladder_wall")
    out += _paint([Ellipsoid(bc, ax - 3.0)], Tissue.FLUID, "urine")

    # kidneys with perirenal and sinus fat (right kidney lower)
    l1, l2 = frame.vertebra("L1"), frame.vertebra("L2")
    for side in SIDES:
        zc = l1.z_lo + (0 if side == 1 else -15 * s)
        c = np.array([side * (l1.a + 44 * s), l2.y + 6 * s, zc])
        R = _rot_z(math.radians(side * -30.0))
        ax = np.array([24.0, 19.0, 52.0]) * s
        out += _paint([Ellipsoid(c, ax + np.array([12.0, 12, 14]) * s * frame.visceral ** 0.5, R)],
                      Tissue.FAT, "perirenal_fat")
        out += _paint([Ellipsoid(c, ax, R)], Tissue.SOFT, "kidney")
        sinus = c + R @ np.array([-side * 9.0 * s, -4.0 * s, 0.0])
        out += _paint([Ellipsoid(sinus, np.array([7.0, 9.0, 28.0]) * s, R)], Tissue.FAT,
                      "renal_sinus_fat")

    # upper abdominal organs under the diaphragm
    dz = frame.dome_z
    a_m, ba, bp = frame.muscle_at(dz - 80 * s)
    liver_c = np.array([-40.0 * s, -8.0 * s, dz - 82 * s])
    liver_ax = np.array([min(88 * s, a_m - 55 * s), min(76 * s, ba - 20 * s), 82 * s])
    out += _paint([Ellipsoid(liver_c, liver_ax, _rot_z(math.radians(15)),
                             clip=[(1.0, 0.0, 0.0, 45.0 * s)])], Tissue.SOFT, "liver")
    left_dome = Ellipsoid((55 * s, 0.0, dz - 105 * s), (80 * s, 80 * s, 88 * s))
    out += _paint([left_dome], Tissue.SOFT, "upper_abdomen")
    out += _paint([Ellipsoid((72 * s, 45 * s, dz - 62 * s), np.array([22.0, 45.0, 48.0]) * s,
                             _rot_z(math.radians(-35)))], Tissue.SOFT, "spleen")
    st_c = np.array([45 * s, -32 * s, dz - 60 * s])
    st_ax = np.array([40.0, 32.0, 50.0]) * s * rng.uniform(0.8, 1.1)
    out += _paint([Ellipsoid(st_c, st_ax)], Tissue.SOFT, "stomach_wall")
    out += _paint([Ellipsoid(st_c, st_ax - 4.0)], Tissue.FLUID, "stomach_content")
    out += _paint([Ellipsoid(st_c, st_ax - 4.0, clip=[(0.0, 1.0, 0.0,
                                                       float(st_c[1] - 0.35 * st_ax[1]))])],
                  Tissue.AIR, "stomach_gas")

    # iliacus lining the iliac fossa (inside the wing, displacing bowel and fat)
    for side in SIDES:
        args, kw = wing_keys(frame, side)
        zk, cx, cy, a, b = args
        t = kw["thickness"]
        inner_a, inner_b = a - t + 1.0, b - t + 1.0
        thick = np.minimum(np.array([8.0, 14, 18, 18, 14, 6]) * s, 0.8 * np.minimum(inner_a,
                                                                                     inner_b))
        out += _paint([SweptSection(zk, cx, cy, inner_a, inner_b, thickness=thick,
                                    sector_deg=(kw["sector_deg"][0] + 10, kw["sector_deg"][1] - 20),
                                    mirror=side == -1)], Tissue.SOFT, "iliacus")
    # psoas (T12 -> lesser trochanter)
    for side in SIDES:
        fem = frame.femurs[side]
        names = ("T12", "L1", "L2", "L3", "L4", "L5")
        zs = [frame.vertebra(n).zc for n in names]
        xs = [frame.vertebra(n).a + r for n, r in zip(names, (4, 8, 12, 16, 19, 21), strict=True)]
        ys = [frame.vertebra(n).y + 2 * s for n in names]
        rs = [5.0, 9.0, 13.0, 17.0, 20.0, 21.0]
        pz = [frame.s1_z - 40 * s, 20 * s, -15 * s, -40 * s]
        px = [52 * s, abs(fem.head_c[0]) - 22 * s, abs(fem.head_c[0]) - 18 * s,
              abs(fem.axis_at_z(-45 * s)[0]) - 22 * s]
        py = [frame.sacrum_y - 15 * s, fem.head_c[1] - 35 * s, fem.head_c[1] - 32 * s,
              fem.head_c[1] - 12 * s]
        pr = [20.0, 18.0, 16.0, 12.0]
        zk = np.array(pz + zs)  # pelvic keys then lumbar keys
        xk, yk, rk = np.array(px + xs), np.array(py + ys), np.array(pr + rs) * s
        order = np.argsort(zk)
        out += _paint([SweptSection(zk[order], side * xk[order], yk[order], rk[order] * 0.9,
                                    rk[order])], Tissue.SOFT, "psoas")
    return out


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_axis(axis: np.ndarray, a: float) -> np.ndarray:
    k = unit(axis)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(a) * K + (1 - math.cos(a)) * K @ K


# ---------------------------------------------------------------------------------------------
# Thorax
# ---------------------------------------------------------------------------------------------
def thorax(frame: BodyFrame, rng: np.random.Generator) -> list[Structure]:
    """Lungs, mediastinal fat, heart, trachea and bronchi, oesophagus."""
    s = frame.scale
    out: list[Structure] = []
    t1, t2, t4, t5 = (frame.vertebra(n) for n in ("T1", "T2", "T4", "T5"))
    t11, t12 = frame.vertebra("T11"), frame.vertebra("T12")
    dz = frame.dome_z
    zk = np.array([t12.zc, t11.zc, dz - 15 * s, dz + 30 * s, t5.zc, t2.zc, t1.z_hi + 25 * s])
    shrink = np.array([0.25, 0.55, 0.85, 1.0, 1.0, 0.8, 0.3])
    for side in SIDES:
        rows = []
        for z, f in zip(zk, shrink, strict=True):
            a_m, ba, bp = frame.muscle_at(z)
            A = a_m - 24 * s  # inside ribs and intercostal muscle
            B_ant, B_post = ba - 22 * s, bp - 30 * s
            half = 0.5 * (A - 14 * s)
            cx = side * (14 * s + half)
            rows.append((cx, 0.5 * (B_post - B_ant) + (1 - f) * 25 * s, half * f,
                         0.5 * (B_ant + B_post) * f))
        r = np.array(rows)
        out += _paint([SweptSection(zk, r[:, 0], r[:, 1], r[:, 2], r[:, 3], squareness=-0.35)],
                      Tissue.LUNG, "lung")
    # mediastinum: fat, then heart, great vessels, airways
    zc_h = dz + 48 * s
    out += _paint([SweptSection(np.array([dz, zc_h, t4.zc, t1.z_hi + 30 * s]),
                                np.array([15.0, 10, 2, 0]) * s,
                                np.array([-25.0, -30, -30, -20]) * s,
                                np.array([40.0, 45, 28, 20]) * s,
                                np.array([45.0, 50, 40, 30]) * s)],
                  Tissue.FAT, "mediastinal_fat")
    R = _rot_axis(np.array([0.0, 1.0, 0.0]), math.radians(-35)) @ _rot_z(math.radians(-30))
    hc = np.array([22 * s, -22 * s, zc_h])
    hax = np.array([66.0, 48.0, 50.0]) * s * rng.uniform(0.92, 1.06)
    out += _paint([Ellipsoid(hc, hax + 4.0 * frame.visceral, R)], Tissue.FAT, "pericardial_fat")
    out += _paint([Ellipsoid(hc, hax, R)], Tissue.FLUID, "heart")
    carina = np.array([0.0, t5.y - t5.b - 26 * s, t5.zc])
    top = np.array([0.0, t1.y - t1.b - 22 * s, t1.z_hi + 60 * s])
    for r_out, r_in, pts in (
            (11.0, 8.5, [top, carina]),
            (7.5, 5.5, [carina, carina + np.array([42, 8, -28]) * s]),
            (7.5, 5.5, [carina, carina + np.array([-40, 8, -22]) * s])):
        out += _paint(polyline(pts, r_out * s), Tissue.SOFT, "airway_wall")
        out += _paint(polyline(pts, r_in * s), Tissue.AIR, "airway")
    t10 = frame.vertebra("T10")
    oes = [np.array([4 * s, t1.y - t1.b - 8 * s, t1.z_hi + 60 * s]),
           np.array([8 * s, t5.y - t5.b - 10 * s, t5.zc]),
           np.array([14 * s, t10.y - t10.b - 14 * s, dz - 20 * s])]
    out += _paint(polyline(oes, 8.0 * s), Tissue.SOFT, "oesophagus")
    return out


# ---------------------------------------------------------------------------------------------
# Vessels
# ---------------------------------------------------------------------------------------------
def vessels(frame: BodyFrame) -> list[Structure]:
    """Aorta, vena cava, iliac, femoral and popliteal vessels (blood)."""
    s = frame.scale
    v = frame.vertebra
    out: list[Shape] = []

    def front(name: str, dx: float, dy: float) -> np.ndarray:
        q = v(name)
        return np.array([dx * s, q.y - q.b - dy * s, q.zc])

    t3, t4 = v("T3"), v("T4")
    dz = frame.dome_z
    arch_top = t3.zc + 10 * s
    aorta = [np.array([8 * s, -20 * s, dz + 75 * s]), np.array([6 * s, -32 * s, t4.zc]),
             np.array([4 * s, -25 * s, arch_top]), np.array([14 * s, t4.y - 25 * s, arch_top]),
             np.array([22 * s, t4.y - 6 * s, t4.zc - 5 * s]),
             np.array([v("T6").a + 11 * s, v("T6").y - 4 * s, v("T6").zc])]
    radii = [15.0, 14.0, 13.0, 12.5, 12.0]
    for (a, b), r in zip(zip(aorta[:-1], aorta[1:], strict=True), radii, strict=True):
        out.append(Capsule(a, b, r * s))
    desc = [aorta[-1], np.array([v("T9").a + 9 * s, v("T9").y - 8 * s, v("T9").zc]),
            front("T12", 12, 12), front("L2", 12, 12), front("L4", 8, 12)]
    out += polyline(desc, 11.0 * s)
    ivc = [front("L5", -18, 14), front("L2", -22, 14), front("T12", -24, 12),
           np.array([-22 * s, v("T11").y - 28 * s, dz + 10 * s])]
    out += polyline(ivc, 11.0 * s)
    bif = front("L4", 8, 12)
    for side in SIDES:
        fem = frame.femurs[side]
        H = fem.head_c
        art = [bif, np.array([side * 35 * s, v("L5").y - 18 * s, v("L5").zc]),
               np.array([side * 58 * s, frame.sacrum_y - 25 * s, frame.s1_z - 45 * s]),
               np.array([H[0] - side * 12 * s, H[1] - 38 * s, 10 * s]),
               np.array([H[0] - side * 5 * s, H[1] - 36 * s, -40 * s])]
        vein = [p + np.array([-side * 9 * s, 6 * s, -4 * s]) for p in art]
        vein[0] = front("L5", -12 + 12 * side, 6)
        leg = frame.leg_end_z[side]
        thigh = [art[-1]]
        for z in (-120, -220, -320):
            if z * s > leg + 30 * s:
                ax = fem.axis_at_z(z * s)
                thigh.append(ax + np.array([-side * 22 * s, (-12 + 0.22 * (-z - 120)) * s, 0]))
        if side in frame.knee_sides:
            K = fem.knee_c
            thigh += [K + np.array([-side * 4 * s, 36 * s, 60 * s]),
                      K + np.array([0.0, 34 * s, -40 * s]), K + np.array([0.0, 30 * s, -140 * s])]
        out += polyline(art, 6.0 * s) + polyline(thigh, 4.0 * s)
        out += polyline(vein, 7.0 * s) + polyline(
            [p + np.array([side * 3 * s, 6 * s, 0.0]) for p in thigh], 5.0 * s)
    return _paint(out, Tissue.FLUID, "vessel")


def knee_soft(frame: BodyFrame) -> list[Structure]:
    """Popliteal fat and the infrapatellar (Hoffa) fat pad."""
    s = frame.scale
    out: list[Shape] = []
    for side in frame.knee_sides:
        K = frame.femurs[side].knee_c
        out.append(Ellipsoid(K + np.array([0, 32 * s, 20 * s]), np.array([24, 20, 75]) * s))
        out.append(Ellipsoid(K + np.array([0, -28 * s, -12 * s]), np.array([20, 10, 16]) * s))
    return _paint(out, Tissue.FAT, "knee_fat")
