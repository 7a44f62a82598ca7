"""The seeded skeleton frame of one procedural patient: landmarks every structure hangs on.

All lengths in mm in patient coordinates (``x`` patient left, ``y`` posterior, ``z``
superior); ``z = 0`` is the level of the hip-joint centres. Sizes are adult averages from
anatomy texts (vertebral body and pedicle sizes after Panjabi et al., Spine 1991/1992; proximal
femur after Noble et al., Clin Orthop 1988) scaled by a per-patient factor, with small
independent variations per structure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .shapes import unit

SIDES = (1, -1)  # +1: patient left (+x), -1: patient right (-x)
SIDE_NAME = {1: "left", -1: "right"}

# Vertebral levels bottom-up: (name, body height, disc height below, half-width a,
# half-depth b, canal half-width, canal depth, pedicle half-width, pedicle half-height,
# pedicle transverse angle (deg, medial convergence), spinous length, spinous downward angle,
# transverse process length) - all mm at scale 1.
_LEVELS = (
    ("L5", 27.0, 11.0, 25.0, 17.5, 12.5, 15.0, 7.5, 7.0, 25.0, 28.0, 5.0, 24.0),
    ("L4", 27.0, 11.0, 24.0, 17.5, 12.0, 15.5, 5.5, 7.5, 19.0, 31.0, 8.0, 28.0),
    ("L3", 27.0, 10.5, 23.0, 17.0, 11.5, 16.0, 5.0, 7.5, 15.0, 32.0, 10.0, 31.0),
    ("L2", 26.5, 10.0, 22.0, 16.5, 11.0, 16.5, 4.5, 7.5, 13.0, 32.0, 10.0, 27.0),
    ("L1", 26.0, 9.0, 21.0, 16.0, 11.0, 17.0, 4.2, 7.5, 11.0, 31.0, 12.0, 20.0),
    ("T12", 24.0, 8.0, 20.0, 15.0, 9.5, 16.0, 4.0, 7.5, 4.0, 32.0, 25.0, 16.0),
    ("T11", 23.0, 6.0, 19.0, 14.5, 9.0, 15.0, 4.0, 8.0, 5.0, 34.0, 35.0, 18.0),
    ("T10", 22.0, 5.5, 18.0, 14.5, 8.5, 14.5, 3.5, 7.5, 5.0, 36.0, 45.0, 20.0),
    ("T9", 21.0, 5.0, 17.0, 14.0, 8.0, 14.0, 3.2, 7.0, 6.0, 38.0, 55.0, 22.0),
    ("T8", 20.5, 5.0, 16.0, 14.0, 8.0, 14.0, 3.0, 6.5, 7.0, 40.0, 60.0, 22.0),
    ("T7", 20.0, 5.0, 15.5, 13.5, 8.0, 14.0, 2.9, 6.5, 7.0, 40.0, 60.0, 22.0),
    ("T6", 19.5, 4.5, 15.0, 13.0, 8.0, 14.0, 2.9, 6.5, 8.0, 40.0, 55.0, 22.0),
    ("T5", 19.0, 4.5, 14.5, 12.5, 8.0, 14.0, 3.0, 6.5, 8.0, 38.0, 50.0, 23.0),
    ("T4", 18.5, 4.5, 14.0, 12.0, 8.0, 14.0, 3.2, 6.5, 9.0, 36.0, 45.0, 23.0),
    ("T3", 18.0, 4.5, 13.5, 11.0, 8.0, 14.0, 3.5, 6.5, 10.0, 34.0, 40.0, 24.0),
    ("T2", 17.5, 4.5, 13.5, 10.0, 8.0, 14.0, 3.8, 6.5, 12.0, 32.0, 35.0, 24.0),
    ("T1", 17.0, 4.5, 14.0, 9.5, 8.5, 14.0, 4.2, 6.5, 15.0, 30.0, 30.0, 26.0),
)

# Trunk muscle boundary (inside the subcutaneous fat) at scale 1: z, half-width, anterior and
# posterior half-depth, plus the subcutaneous fat thickness (lateral, anterior, posterior) of
# an average patient (fat factor 1).
_TRUNK = np.array([
    # z     a_m   bant  bpost  f_lat f_ant f_post
    [-88.0, 40.0, 30.0, 45.0, 8.0, 8.0, 10.0],
    [-60.0, 128.0, 70.0, 96.0, 16.0, 12.0, 24.0],
    [-30.0, 164.0, 86.0, 108.0, 18.0, 16.0, 28.0],
    [0.0, 166.0, 90.0, 110.0, 18.0, 18.0, 26.0],
    [40.0, 158.0, 92.0, 106.0, 20.0, 22.0, 22.0],
    [80.0, 148.0, 94.0, 102.0, 22.0, 26.0, 18.0],
    [120.0, 140.0, 95.0, 98.0, 22.0, 28.0, 16.0],
    [170.0, 134.0, 93.0, 95.0, 20.0, 28.0, 16.0],
    [230.0, 134.0, 93.0, 95.0, 18.0, 24.0, 15.0],
    [290.0, 140.0, 96.0, 98.0, 16.0, 18.0, 14.0],
    [350.0, 146.0, 99.0, 100.0, 15.0, 14.0, 13.0],
    [420.0, 150.0, 100.0, 102.0, 14.0, 14.0, 12.0],
    [500.0, 150.0, 98.0, 101.0, 13.0, 14.0, 12.0],
    [580.0, 148.0, 92.0, 96.0, 12.0, 12.0, 12.0],
    [640.0, 140.0, 84.0, 90.0, 10.0, 10.0, 10.0],
])

FOV_RADIUS_MM = 195.0  # 0.42 * 500 mm scan FOV minus the largest pose shift (8 mm per axis)


@dataclass
class Vertebra:
    """One vertebra: body between its endplates plus the posterior-arch dimensions."""

    name: str
    z_lo: float
    z_hi: float
    y: float  # body centre, mm
    a: float  # body half-width (x)
    b: float  # body half-depth (y)
    canal_hw: float
    canal_depth: float
    ped_rx: float
    ped_rz: float
    ped_angle_deg: float
    sp_len: float
    sp_angle_deg: float
    tp_len: float
    disc_below: float
    disc_above: float = 0.0

    @property
    def zc(self) -> float:
        return 0.5 * (self.z_lo + self.z_hi)

    @property
    def h(self) -> float:
        return self.z_hi - self.z_lo

    @property
    def lumbar(self) -> bool:
        return self.name.startswith("L")

    def pedicle_axis(self, side: int) -> tuple[np.ndarray, np.ndarray]:
        """Centre of the pedicle isthmus and the unit direction of its axis pointing into the
        body (anterior and medial): the pedicle-screw trajectory."""
        th = math.radians(self.ped_angle_deg)
        centre = np.array([side * (self.canal_hw + self.ped_rx + 0.5), self.y + self.b + 4.0,
                           self.zc + 0.12 * self.h])
        return centre, np.array([-side * math.sin(th), -math.cos(th), 0.0])

    def spinous_base(self) -> np.ndarray:
        return np.array([0.0, self.y + self.b + self.canal_depth + 3.0, self.zc - 0.05 * self.h])


@dataclass
class Femur:
    """One femur: head, neck and shaft axes."""

    side: int
    head_c: np.ndarray
    head_r: float
    neck_dir: np.ndarray  # unit, from the neck base towards the head centre
    neck_len: float
    neck_base: np.ndarray  # where the neck axis meets the shaft axis
    shaft_dir: np.ndarray  # unit, pointing distally
    knee_c: np.ndarray  # shaft axis at the knee joint line (intercondylar notch)
    shaft_r: float  # diaphysis outer radius
    canal_r: float  # diaphysis medullary canal radius
    neck_shaft_deg: float
    anteversion_deg: float

    def axis_at_z(self, z: float) -> np.ndarray:
        t = (z - self.neck_base[2]) / self.shaft_dir[2]
        return self.neck_base + t * self.shaft_dir


@dataclass
class BodyFrame:
    """Landmarks and habitus of one procedural patient."""

    seed: int
    scale: float  # skeleton size factor
    fat: float  # subcutaneous fat factor (1 = average)
    visceral: float  # visceral fat factor
    trunk: np.ndarray  # rows of _TRUNK scaled, fat columns adjusted (mm)
    vertebrae: list[Vertebra]
    s1_z: float  # top of the sacrum (S1 endplate)
    sacrum_y: float  # S1 body centre y
    femurs: dict[int, Femur]
    knee_z: float
    knee_sides: tuple[int, ...]  # legs present at the knee (one knee may be out of the plane)
    leg_end_z: dict[int, float]  # lowest z of each leg
    symphysis: np.ndarray  # centre of the pubic symphysis
    crest_z: float  # iliac crest top
    dome_z: float  # right diaphragm dome
    leg_x: dict[int, float]  # leg centre x at the knee
    knee_y: float
    extra: dict = field(default_factory=dict)

    def vertebra(self, name: str) -> Vertebra:
        for v in self.vertebrae:
            if v.name == name:
                return v
        raise KeyError(f"no vertebra {name!r}")

    def muscle_at(self, z: float) -> tuple[float, float, float]:
        """Trunk muscle boundary ``(half-width, anterior, posterior half-depth)`` at ``z``."""
        t = self.trunk
        return tuple(float(np.interp(z, t[:, 0], t[:, j])) for j in (1, 2, 3))

    def spine_y(self, z: float) -> float:
        """Vertebral-body centre ``y`` interpolated along the spine."""
        zs = [v.zc for v in self.vertebrae]
        ys = [v.y for v in self.vertebrae]
        return float(np.interp(z, zs, ys))


def draw_frame(seed: int, knee_sides: str = "both") -> BodyFrame:
    """Draw the landmarks of patient ``seed``.

    Args:
        knee_sides: ``"both"``, ``"left"`` or ``"right"``: with one side only, the other leg
            ends above the knee region (flexed out of the scan plane, as for a knee scan).
    """
    rng = np.random.default_rng([seed, 101])
    s = float(rng.uniform(0.92, 1.06))
    fat = float(rng.lognormal(0.0, 0.45))
    fat = float(np.clip(fat, 0.3, 2.0))
    visceral = float(np.clip(fat * rng.lognormal(0.0, 0.3), 0.25, 2.0))
    girth = float(rng.uniform(0.96, 1.03))

    # ---- trunk outline keys --------------------------------------------------------------
    trunk = _TRUNK.copy()
    trunk[:, 0] *= s
    trunk[:, 1:4] *= s * girth
    region_var = rng.lognormal(0.0, 0.15, size=(len(trunk), 3))
    region_var = 0.5 * (region_var + np.roll(region_var, 1, axis=0))  # smooth along z
    trunk[:, 4:7] *= fat * region_var

    # ---- spine ---------------------------------------------------------------------------
    s1_z = 95.0 * s
    vertebrae: list[Vertebra] = []
    z = s1_z
    jit = rng.normal(1.0, 0.03, size=len(_LEVELS))
    for (name, h, disc, a, b, chw, cdep, prx, prz, pang, spl, spa, tpl), j in zip(
            _LEVELS, jit, strict=True):
        z_lo = z + disc * s
        z_hi = z_lo + h * s * j
        v = Vertebra(name, z_lo, z_hi, 0.0, a * s * j, b * s * j, chw * s, cdep * s,
                     prx * s * j, prz * s, pang + rng.normal(0, 1.5), spl * s,
                     spa + rng.normal(0, 3), tpl * s, disc * s)
        # Depth of the body centre below the back's muscle boundary: body, canal, lamina,
        # spinous process and the muscle covering its tip.
        bpost = float(np.interp(v.zc, trunk[:, 0], trunk[:, 3]))
        sp_y = v.sp_len * math.cos(math.radians(v.sp_angle_deg))
        depth = v.b + v.canal_depth + 6.0 * s + sp_y + (14.0 if v.lumbar else 10.0) * s
        v.y = bpost - depth
        vertebrae.append(v)
        z = z_hi
    for lower, upper in zip(vertebrae[:-1], vertebrae[1:], strict=True):
        lower.disc_above = upper.disc_below
    # smooth the spine line (no step between neighbours)
    ys = np.array([v.y for v in vertebrae])
    ys = np.convolve(np.pad(ys, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
    for v, y in zip(vertebrae, ys, strict=True):
        v.y = float(y)

    # sacrum: z, centre y, half-width, half-depth from the coccyx tip up to the S1 endplate;
    # it runs backwards and down from S1, then curls forwards at the coccyx
    y5 = vertebrae[0].y
    sacrum_keys = np.stack([s1_z + np.array([-100.0, -78, -50, -22, 0]) * s,
                             y5 + np.array([40.0, 50, 44, 24, 6]) * s,
                             np.array([6.0, 12, 18, 22, 24]) * s,
                             np.array([5.0, 8, 12, 15, 16]) * s], 1)

    # ---- pelvis and hips -----------------------------------------------------------------
    hx = 82.0 * s * rng.uniform(0.97, 1.03)
    hy = rng.normal(0.0, 4.0)
    head_r = 23.5 * s * rng.uniform(0.95, 1.05)
    knee_z = -420.0 * s
    if knee_sides == "both":
        knee_x, sides_at_knee = 76.0 * s * rng.uniform(0.95, 1.05), (1, -1)
    elif knee_sides in ("left", "right"):
        knee_x = 62.0 * s * rng.uniform(0.97, 1.03)
        sides_at_knee = (1,) if knee_sides == "left" else (-1,)
    else:
        raise ValueError(f"draw_frame: knee_sides must be both/left/right, got {knee_sides!r}")
    knee_y = 8.0 + rng.normal(0.0, 3.0)
    femurs = {}
    for side in SIDES:
        H = np.array([side * hx * rng.uniform(0.99, 1.01), hy + rng.normal(0, 1.0), 0.0])
        r = head_r * rng.uniform(0.98, 1.02)
        K = np.array([side * knee_x, knee_y, knee_z])
        femurs[side] = _femur(side, H, r, K, s, rng)
    leg_end_z = {side: (-560.0 * s if side in sides_at_knee else -250.0 * s) for side in SIDES}
    # the pubic symphysis lies ~2 cm under the anterior abdominal-wall muscle boundary
    sym_z = -18.0 * s
    symphysis = np.array([0.0, -(float(np.interp(sym_z, trunk[:, 0], trunk[:, 2])) - 24.0 * s),
                          sym_z])
    crest_z = 128.0 * s * rng.uniform(0.97, 1.03)
    dome_z = vertebrae[[v.name for v in vertebrae].index("T10")].zc + 5.0 * s

    frame = BodyFrame(seed=seed, scale=s, fat=fat, visceral=visceral, trunk=trunk,
                      vertebrae=vertebrae, s1_z=s1_z, sacrum_y=vertebrae[0].y + 6.0 * s,
                      femurs=femurs, knee_z=knee_z, knee_sides=sides_at_knee,
                      leg_end_z=leg_end_z, symphysis=symphysis, crest_z=crest_z, dome_z=dome_z,
                      leg_x={side: side * knee_x for side in SIDES}, knee_y=knee_y)
    frame.extra["girth"] = girth
    frame.extra["sacrum_keys"] = sacrum_keys
    return frame


def _femur(side: int, H: np.ndarray, head_r: float, K: np.ndarray, s: float,
           rng: np.random.Generator) -> Femur:
    """Proximal-femur geometry from the head centre and the knee centre.

    The neck axis leaves the shaft axis at the neck-shaft angle (125-135 deg), turned forward
    by the anteversion (8-18 deg); the shaft axis runs from the neck base to the knee.
    """
    alpha = float(rng.uniform(125.0, 135.0))
    beta = float(rng.uniform(8.0, 18.0))
    neck_len = 50.0 * s * rng.uniform(0.95, 1.05)
    u = unit(K - (H + np.array([side * 38.0 * s, 0.0, -33.0 * s])))
    for _ in range(4):  # neck base depends on the shaft direction and vice versa
        medial = np.array([-side, 0.0, 0.0])
        medial = unit(medial - (medial @ u) * u)
        dn = math.cos(math.radians(alpha)) * u + math.sin(math.radians(alpha)) * medial
        dn = _rotate(dn, u, math.radians(beta))
        if dn[1] > 0:  # anteversion turns the neck forwards (-y)
            dn = _rotate(dn, u, -2 * math.radians(beta))
        N0 = H - neck_len * dn
        u = unit(K - N0)
    return Femur(side=side, head_c=H, head_r=head_r, neck_dir=dn, neck_len=neck_len,
                 neck_base=N0, shaft_dir=u, knee_c=K, shaft_r=14.0 * s * rng.uniform(0.95, 1.05),
                 canal_r=6.5 * s * rng.uniform(0.9, 1.1), neck_shaft_deg=alpha,
                 anteversion_deg=beta)


def _rotate(v: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation of ``v`` about the unit ``axis`` by ``angle`` radians."""
    k = unit(axis)
    return (v * math.cos(angle) + np.cross(k, v) * math.sin(angle)
            + k * (k @ v) * (1 - math.cos(angle)))
