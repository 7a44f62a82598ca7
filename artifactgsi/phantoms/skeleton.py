"""Bones of a procedural patient: spine, ribs and sternum, sacrum, pelvis, femora, knee.

A bone is a union of solids; all of their outer surfaces are painted as cortical bone first
and then all of their cores (the solids shrunk by the cortical thickness) as trabecular bone,
so overlapping pieces merge into one bone with one continuous cortex. Long-bone diaphyses are
solid cortex around a yellow-marrow canal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .frame import SIDES, BodyFrame, Femur, Vertebra
from .raster import Structure
from .shapes import Ellipsoid, Shape, Sphere, SweptSection, Tube, plane_through, polyline, unit
from .tissues import Label, Tissue

PELVIS_LABEL = {1: Label.LEFT_PELVIS, -1: Label.RIGHT_PELVIS}
FEMUR_LABEL = {1: Label.LEFT_FEMUR, -1: Label.RIGHT_FEMUR}


def bone(pieces: Sequence[Shape], label: Label, name: str, cortex_mm: float = 1.5,
         solid: Sequence[Shape] = (), marrow: Sequence[Shape] = ()) -> list[Structure]:
    """Cortical shells of ``pieces`` (+ fully cortical ``solid`` pieces), then their trabecular
    cores, then yellow ``marrow`` canals."""
    out = [Structure(p, Tissue.CORTICAL, label, name) for p in (*pieces, *solid)]
    for p in pieces:
        core = p.shrunk(cortex_mm)
        if core is not None:
            out.append(Structure(core, Tissue.TRABECULAR, label, name))
    out += [Structure(m, Tissue.MARROW, label, name) for m in marrow]
    return out


# ---------------------------------------------------------------------------------------------
# Spine, ribs, sternum
# ---------------------------------------------------------------------------------------------
def vertebra_pieces(v: Vertebra, s: float) -> list[Shape]:
    """Body, pedicles, laminae, spinous and transverse processes, articular columns."""
    flat_back = [(0.0, 1.0, 0.0, v.y + 0.82 * v.b)]
    out: list[Shape] = [Tube((0.0, v.y, v.z_lo), (0.0, v.y, v.z_hi), [v.a, 0.94 * v.a, v.a],
                             [v.b, 0.96 * v.b, v.b], profile=[0.0, 0.5, 1.0], e1_hint=(1, 0, 0),
                             clip=flat_back)]
    S = v.spinous_base()
    a_sp = math.radians(v.sp_angle_deg)
    tip = S + v.sp_len * np.array([0.0, math.cos(a_sp), -math.sin(a_sp)])
    out.append(Tube(S, tip, 3.2 * s, (8.5 if v.lumbar else 5.0) * s, e1_hint=(1, 0, 0)))
    for side in SIDES:
        P, d = v.pedicle_axis(side)
        horiz = np.cross(d, (0.0, 0.0, 1.0))
        out.append(Tube(P - 9 * s * d, P + 9 * s * d, v.ped_rx, v.ped_rz, e1_hint=horiz))
        B = P - 8 * s * d  # pedicle-lamina junction
        lam_axis = S - B
        out.append(Tube(B, S, 3.4 * s, 0.33 * v.h, e1_hint=np.cross(lam_axis, (0, 0, 1))))
        if v.lumbar:
            tdir = unit((side, 0.15, 0.05))
        else:
            tdir = unit((side * math.cos(math.radians(35)), math.sin(math.radians(35)), 0.1))
        t0 = B + np.array([side * 2.0 * s, 0.0, 0.0])
        out.append(Tube(t0, t0 + v.tp_len * tdir, 4.0 * s, 5.0 * s,
                        e1_hint=np.cross(tdir, (0, 0, 1))))
        f = B + np.array([side * 2.5 * s, 3.0 * s, 0.0])
        r_f = (6.0 if v.lumbar else 5.0) * s
        z0 = v.z_lo - 0.5 * v.disc_below + 0.6 * s
        z1 = v.z_hi + 0.5 * v.disc_above - 0.6 * s if v.disc_above > 0 else v.z_hi
        out.append(Tube((f[0], f[1], z0), (f[0], f[1], z1), r_f, r_f * 1.1, e1_hint=(1, 0, 0)))
    return out


def spine(frame: BodyFrame) -> list[Structure]:
    """Vertebrae T1-L5 with intervertebral discs (soft tissue), ribs and sternum."""
    s = frame.scale
    pieces: list[Shape] = []
    for v in frame.vertebrae:
        pieces += vertebra_pieces(v, s)
    pieces += ribs(frame)
    pieces.append(sternum(frame))
    discs: list[Shape] = []
    sk = frame.extra["sacrum_keys"]
    below = [(0.0, frame.sacrum_y, frame.s1_z, float(sk[-1, 2]), float(sk[-1, 3]))]
    below += [(0.0, v.y, v.z_hi, v.a, v.b) for v in frame.vertebrae[:-1]]
    for (x, y, z, a, b), v in zip(below, frame.vertebrae, strict=True):
        ya = 0.5 * (y + v.y)
        discs.append(Tube((x, y, z), (x, v.y, v.z_lo), 0.5 * (a + v.a) + 0.5,
                          0.5 * (b + v.b) + 0.5, e1_hint=(1, 0, 0),
                          clip=[(0.0, 1.0, 0.0, ya + 0.82 * 0.5 * (b + v.b))]))
    return ([Structure(d, Tissue.SOFT, name="disc") for d in discs]
            + bone(pieces, Label.BACKGROUND, "spine", cortex_mm=1.3))


def ribs(frame: BodyFrame) -> list[Shape]:
    """Twelve rib pairs as capsule chains running from the costovertebral joints backwards,
    round the chest wall and down to the front."""
    s = frame.scale
    out: list[Shape] = []
    thoracic = [v for v in frame.vertebrae if v.name.startswith("T")]
    for v in thoracic:
        k = int(v.name[1:])
        th1 = {11: -5.0, 12: 25.0}.get(k, -68.0 if k <= 7 else -45.0)
        drop = (35.0 if k >= 11 else 25.0 + 6.0 * min(k, 7)) * s
        th0 = 80.0
        r = (3.6 if k in (1, 12) else 4.3) * s
        for side in SIDES:
            origin = np.array([side * (v.a + 4 * s), v.y + 2 * s, v.zc + 0.2 * v.h])
            b_post = (v.y + 32 * s) / math.sin(math.radians(th0))
            pts = [origin]
            n = 9
            for i in range(n):
                p = i / (n - 1)
                th = math.radians(th0 + p * (th1 - th0))
                z = origin[2] + 6 * s * math.sin(math.pi * p) - drop * p ** 1.3
                a_m, ba, _ = frame.muscle_at(z)
                A = a_m - 14 * s
                B = b_post if math.sin(th) > 0 else ba - 12 * s
                pts.append(np.array([side * A * math.cos(th), B * math.sin(th), z]))
            out += polyline(pts, r)
    return out


def sternum(frame: BodyFrame) -> Shape:
    s = frame.scale
    t2, t9 = frame.vertebra("T2"), frame.vertebra("T9")
    top = np.array([0.0, -(frame.muscle_at(t2.zc)[1] - 13 * s), t2.zc])
    bot = np.array([0.0, -(frame.muscle_at(t9.zc)[1] - 13 * s), t9.zc])
    return Tube(bot, top, [13 * s, 14 * s, 24 * s], [6 * s, 6 * s, 7 * s],
                profile=[0.0, 0.75, 1.0], e1_hint=(1, 0, 0))


def sacrum(frame: BodyFrame) -> list[Structure]:
    """Sacrum (central mass and alae) with its canal; labelled background."""
    s = frame.scale
    sk = frame.extra["sacrum_keys"]
    y5 = frame.vertebrae[0].y
    pieces: list[Shape] = [SweptSection(sk[:, 0], 0.0, sk[:, 1], sk[:, 2], sk[:, 3])]
    zk = frame.s1_z + np.array([-65.0, -40, -15, -1]) * s
    for mirror in (False, True):
        pieces.append(SweptSection(zk, np.array([14.0, 28, 36, 34]) * s,
                                   y5 + np.array([40.0, 32, 18, 10]) * s,
                                   np.array([8.0, 20, 28, 25]) * s,
                                   np.array([8.0, 17, 20, 17]) * s, mirror=mirror))
    canal = SweptSection(sk[1:, 0], 0.0, sk[1:, 1] + 0.45 * sk[1:, 3], 0.42 * sk[1:, 2],
                         0.22 * sk[1:, 3])
    return bone(pieces, Label.BACKGROUND, "sacrum") + [Structure(canal, Tissue.SOFT,
                                                                 name="sacral_canal")]


# ---------------------------------------------------------------------------------------------
# Pelvis
# ---------------------------------------------------------------------------------------------
def acetabulum_axis(side: int) -> np.ndarray:
    """Unit normal of the acetabular opening: lateral, anterior and inferior (about 45 deg
    inclination and 20 deg anteversion)."""
    return unit((side * 0.70, -0.36, -0.62))


def wing_keys(frame: BodyFrame, side: int) -> tuple:
    """Iliac wing as a swept ring sector: positional and keyword arguments of
    :class:`SweptSection` for the left-side geometry (mirror it for the right). In axial cuts
    the wing runs from the anterior superior iliac spine round the lateral side to the
    posterior superior iliac spine; low down it thickens into the body of the ilium above the
    acetabulum."""
    s = frame.scale
    hx, hy = abs(frame.femurs[side].head_c[0]), frame.femurs[side].head_c[1]
    zk = np.array([14.0 * s, 35 * s, 60 * s, 90 * s, 112 * s, frame.crest_z])
    args = (zk, np.array([hx - 10 * s, hx - 14 * s, 66 * s, 68 * s, 68 * s, 68 * s]),
            hy + np.array([6.0, 10, 13, 14, 12, 12]) * s,
            np.array([24.0, 34, 50, 60, 63, 62]) * s, np.array([26.0, 34, 46, 56, 58, 56]) * s)
    kwargs = {"thickness": np.array([22.0, 14, 8, 5.5, 6.5, 9]) * s,
              "sector_deg": (np.array([-60.0, -65, -65, -65, -62, -60]),
                             np.array([100.0, 105, 108, 110, 108, 105]))}
    return args, kwargs


def hip_bone(frame: BodyFrame, side: int) -> list[Structure]:
    """Ilium (wing, posterior pillar), acetabulum, pubis and ischium of one side."""
    s = frame.scale
    fem = frame.femurs[side]
    H, R = fem.head_c, fem.head_r
    mirror = side == -1
    hx, hy = abs(H[0]), H[1]
    y5 = frame.vertebrae[0].y
    args, kwargs = wing_keys(frame, side)
    wing = SweptSection(*args, **kwargs, mirror=mirror)
    pillar = SweptSection(np.array([30.0, 60, 90, 115]) * s, np.array([62.0, 66, 62, 54]) * s,
                          y5 + np.array([35.0, 40, 44, 50]) * s,
                          np.array([14.0, 16, 16, 11]) * s, np.array([18.0, 22, 21, 13]) * s,
                          mirror=mirror)
    n_a = acetabulum_axis(side)
    block = Ellipsoid(H + np.array([-side * 7.0, 3.0, 9.0]) * s,
                      (R + 12 * s, R + 15 * s, R + 17 * s),
                      clip=[plane_through(H, n_a, 2.0 * s)],
                      minus=Sphere(H, R + 1.8 * s))
    sym = frame.symphysis
    pub_body = Ellipsoid((side * 13.0 * s, sym[1] + 4 * s, sym[2]), np.array([10.0, 12, 20]) * s)
    sup_ramus = Tube(H + np.array([-side * 14.0, -16, -8]) * s,
                     (side * 14.0 * s, sym[1] + 4 * s, sym[2] + 9 * s), [11.0 * s, 8.0 * s],
                     [9.0 * s, 7.0 * s], profile=[0.0, 1.0], e1_hint=(0, 0, 1))
    T = np.array([side * (hx - 32 * s), hy + 48 * s, -56 * s])
    inf_ramus = Tube((side * 15.0 * s, sym[1] + 10 * s, sym[2] - 14 * s), T, 6.5 * s, 6.0 * s,
                     e1_hint=(0, 0, 1))
    ischium = Tube(H + np.array([-side * 4.0, 20, -14]) * s, T, [16.0 * s, 12.0 * s],
                   [14.0 * s, 11.0 * s], profile=[0.0, 1.0], e1_hint=(1, 0, 0))
    tuber = Ellipsoid(T, np.array([13.0, 15, 18]) * s)
    pieces = [wing, pillar, block, pub_body, sup_ramus, inf_ramus, ischium, tuber]
    return bone(pieces, PELVIS_LABEL[side], f"{'left' if side == 1 else 'right'}_hip_bone")


# ---------------------------------------------------------------------------------------------
# Femur and knee
# ---------------------------------------------------------------------------------------------
def femur_pieces(frame: BodyFrame, fem: Femur) -> tuple[list[Shape], list[Shape], list[Shape]]:
    """(trabecular-cored pieces, solid cortical diaphysis, marrow canal) of one femur."""
    s = frame.scale
    side, H, R, N0, u, dn = fem.side, fem.head_c, fem.head_r, fem.neck_base, fem.shaft_dir, \
        fem.neck_dir
    x = np.array([1.0, 0.0, 0.0])
    y = np.array([0.0, 1.0, 0.0])
    pieces: list[Shape] = [Sphere(H, R)]
    pieces.append(Tube(N0 - 8 * s * dn, H - 0.2 * R * dn, [17.0 * s, 14.0 * s],
                       [14.0 * s, 12.0 * s], profile=[0.0, 1.0], e1_hint=(0, 0, 1)))
    pieces.append(Ellipsoid(N0 - 14 * s * u + side * 16 * s * x + 8 * s * y,
                            np.array([15.0, 20, 27]) * s))
    pieces.append(Ellipsoid(N0 + 32 * s * u - side * 13 * s * x + 10 * s * y,
                            np.array([9.0, 10, 13]) * s))
    pieces.append(Tube(N0 - 12 * s * u, N0 + 85 * s * u, [24 * s, 25 * s, 19 * s, fem.shaft_r],
                       [21 * s, 22 * s, 17 * s, fem.shaft_r], profile=[0.0, 0.3, 0.65, 1.0],
                       e1_hint=(1, 0, 0)))
    K = fem.knee_c
    has_knee = side in frame.knee_sides
    if has_knee:
        d0 = K - 95 * s * u  # start of the distal metaphysis
        shaft_end = d0
    else:
        shaft_end = fem.axis_at_z(frame.leg_end_z[side] + 30 * s)
    solid = [Tube(N0 + 70 * s * u, shaft_end, [1.03 * fem.shaft_r, fem.shaft_r, fem.shaft_r],
                  [1.03 * fem.shaft_r, fem.shaft_r, fem.shaft_r], profile=[0.0, 0.3, 1.0],
                  e1_hint=(1, 0, 0))]
    canal_end = d0 + 12 * s * u if has_knee else shaft_end - 2 * s * u
    c = fem.canal_r
    marrow = [Tube(N0 + 55 * s * u, canal_end, [1.7 * c, c, c, 1.4 * c], [1.5 * c, c, c, 1.3 * c],
                   profile=[0.0, 0.25, 0.8, 1.0], e1_hint=(1, 0, 0))]
    if has_knee:
        pieces.append(Tube(d0 - 10 * s * u, K - 24 * s * u, [fem.shaft_r, 25 * s, 36 * s, 34 * s],
                           [fem.shaft_r, 22 * s, 28 * s, 26 * s], profile=[0.0, 0.5, 0.85, 1.0],
                           e1_hint=(1, 0, 0)))
        # condyles (posterior, either side of the notch) and the trochlea in front of them
        for dx in (-20.0, 20.0):
            pieces.append(Ellipsoid(K + np.array([dx * s, 6 * s, 26 * s]),
                                    np.array([15.0, 28, 24]) * s))
        pieces.append(Ellipsoid(K + np.array([0.0, -6 * s, 27 * s]), np.array([34.0, 22, 24]) * s))
    return pieces, solid, marrow


def femur(frame: BodyFrame, side: int) -> list[Structure]:
    pieces, solid, marrow = femur_pieces(frame, frame.femurs[side])
    return bone(pieces, FEMUR_LABEL[side], f"{'left' if side == 1 else 'right'}_femur",
                solid=solid, marrow=marrow)


def knee_bones(frame: BodyFrame, side: int) -> list[Structure]:
    """Patella, tibia (plateau, tuberosity, shaft) and fibula; labelled background."""
    s = frame.scale
    K = frame.femurs[side].knee_c
    kz = K[2]
    pieces: list[Shape] = [
        Ellipsoid(K + np.array([side * 3.0, -42, 30]) * s, np.array([21.0, 9.5, 21]) * s),
        Tube((K[0], K[1] + 3 * s, kz - 2 * s), (K[0], K[1] + 3 * s, kz - 78 * s),
             np.array([38.0, 37, 27, 15, 13.5]) * s, np.array([26.0, 25, 22, 14, 12.5]) * s,
             profile=[0.0, 0.23, 0.54, 0.9, 1.0], e1_hint=(1, 0, 0)),
        Ellipsoid(K + np.array([side * 3.0, -22, -42]) * s, np.array([12.0, 8, 16]) * s),
        Ellipsoid(K + np.array([side * 34.0, 20, -28]) * s, np.array([11.0, 11, 13]) * s),
    ]
    fib = Tube(K + np.array([side * 35.0, 20, -35]) * s, K + np.array([side * 38.0, 14, -200]) * s,
               [7.5 * s, 6.5 * s], [7.5 * s, 6.5 * s], profile=[0.0, 1.0])
    tib = Tube((K[0], K[1] + 3 * s, kz - 62 * s), (K[0], K[1] + 3 * s, kz - 200 * s), 13.5 * s,
               12.5 * s, e1_hint=(1, 0, 0))
    canal = Tube((K[0], K[1] + 3 * s, kz - 72 * s), (K[0], K[1] + 3 * s, kz - 200 * s),
                 [7 * s, 6 * s], [6.5 * s, 5.5 * s], profile=[0.0, 0.2], e1_hint=(1, 0, 0))
    return bone(pieces + [fib], Label.BACKGROUND, "knee", solid=[tib], marrow=[canal])


def skeleton(frame: BodyFrame) -> list[Structure]:
    """All bones in paint order."""
    out = spine(frame) + sacrum(frame)
    for side in SIDES:
        out += hip_bone(frame, side)
    for side in SIDES:
        out += femur(frame, side)
    for side in frame.knee_sides:
        out += knee_bones(frame, side)
    return out
