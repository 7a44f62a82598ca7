"""3D implicit solids sampled on axial planes.

Every solid lives in patient coordinates (mm; ``x`` patient left, ``y`` posterior, ``z``
superior). A solid is never voxelised: :meth:`Shape.section` returns, for one ``z``, a
conservative in-plane bounding box and a vectorised point-membership test. Adjacent slices of a
solid are therefore slices of one continuous 3D body (the phantom is consistent along ``z``).

Point tests take ``X`` and ``Y`` tensors that broadcast against each other: ``(1, w)`` and
``(h, 1)`` for an unrotated grid (then many per-axis terms cost one row or column instead of a
full plane) or both ``(h, w)`` for a rotated one. They return a boolean tensor broadcastable to
``(h, w)``.

Modifiers shared by all solids:

* ``clip``: half-spaces ``nx*x + ny*y + nz*z <= c`` (unit normal) intersected with the solid;
* ``minus``: a solid subtracted from it (a socket, a canal).

:meth:`Shape.shrunk` offsets the surface inwards (exactly for spheres, cylinders and planes,
approximately for ellipses); bones use it to paint a cortical shell around a trabecular core.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.interpolate import PchipInterpolator

Plane = tuple[float, float, float, float]  # (nx, ny, nz, c): keeps n . p <= c; n unit length
Tensor = torch.Tensor
BBox = tuple[float, float, float, float]  # x0, x1, y0, y1 in patient mm


@dataclass(frozen=True)
class Section:
    """The cut of a solid by one axial plane."""

    bbox: BBox
    inside: Callable[[Tensor, Tensor], Tensor]


def unit(v: Sequence[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    n = float(np.linalg.norm(a))
    if n == 0:
        raise ValueError("shapes: zero-length direction vector")
    return a / n


def plane_through(point: Sequence[float], normal: Sequence[float], offset: float = 0.0) -> Plane:
    """Half-space ``n . (p - point) <= offset`` (normal is normalised)."""
    n = unit(normal)
    return (float(n[0]), float(n[1]), float(n[2]), float(n @ np.asarray(point) + offset))


class Shape:
    """Base class: a solid with conservative ``z_lo <= z <= z_hi`` and the modifiers."""

    z_lo: float
    z_hi: float

    def __init__(self, clip: Sequence[Plane] = (), minus: Shape | None = None):
        self.clip = tuple(tuple(float(c) for c in p) for p in clip)
        self.minus = minus
        for p in self.clip:  # a horizontal plane also bounds the z extent
            nx, ny, nz, c = p
            if nx == 0 and ny == 0 and nz != 0:
                if nz > 0:
                    self.z_hi = min(self.z_hi, c / nz)
                else:
                    self.z_lo = max(self.z_lo, c / nz)

    # -- to implement -----------------------------------------------------------------
    def _section(self, z: float) -> Section | None:
        raise NotImplementedError

    def _shrunk(self, d: float) -> Shape | None:
        raise NotImplementedError

    def z_extent(self) -> tuple[float, float]:
        """z extent of the solid (mm): exact where the subclass knows it (clip planes other
        than horizontal ones and ``minus`` are ignored, so it may be conservative)."""
        return self.z_lo, self.z_hi

    # -- shared -----------------------------------------------------------------------
    def section(self, z: float) -> Section | None:
        """The axial cut at ``z`` (mm), or ``None`` where the solid is absent."""
        if z < self.z_lo or z > self.z_hi:
            return None
        sec = self._section(z)
        if sec is None or (not self.clip and self.minus is None):
            return sec
        minus = self.minus.section(z) if self.minus is not None else None
        planes = [(nx, ny, c - nz * z) for nx, ny, nz, c in self.clip]
        base = sec.inside

        def inside(x: Tensor, y: Tensor) -> Tensor:
            m = base(x, y)
            for nx, ny, c in planes:
                m = m & (_lin(x, y, nx, ny) <= c)
            if minus is not None:
                m = m & ~minus.inside(x, y)
            return m

        return Section(sec.bbox, inside)

    def shrunk(self, d: float) -> Shape | None:
        """The solid with its surface moved inwards by ``d`` mm (``None`` if nothing is left).
        Clip planes move inwards too and a subtracted solid grows by ``d``."""
        s = self._shrunk(d)
        if s is None:
            return None
        s.clip = tuple((nx, ny, nz, c - d) for nx, ny, nz, c in self.clip)
        s.minus = self.minus.shrunk(-d) if self.minus is not None else None
        Shape.__init__(s, s.clip, s.minus)  # re-derive z bounds from horizontal planes
        return s if s.z_lo <= s.z_hi else None


def _lin(x: Tensor, y: Tensor, a: float, b: float) -> Tensor:
    """``a * x + b * y`` skipping zero terms (keeps 1D operands 1D)."""
    if a == 0:
        return y * b
    if b == 0:
        return x * a
    return x * a + y * b


# ------------------------------------------------------------------------------------------
class Ellipsoid(Shape):
    """Solid ellipsoid ``(p - c)^T M (p - c) <= 1`` with ``M = R diag(1/a^2) R^T``.

    Args:
        center: ``(x, y, z)`` mm.
        semi_axes: ``(a0, a1, a2)`` mm along the columns of ``rotation``.
        rotation: ``(3, 3)`` orthonormal matrix whose columns are the axes (identity: x, y, z).
    """

    def __init__(self, center: Sequence[float], semi_axes: Sequence[float],
                 rotation: np.ndarray | None = None, clip: Sequence[Plane] = (),
                 minus: Shape | None = None):
        self.c = np.asarray(center, dtype=np.float64)
        self.a = np.asarray(semi_axes, dtype=np.float64)
        if np.any(self.a <= 0):
            raise ValueError(f"Ellipsoid: semi-axes must be > 0 mm, got {self.a}")
        self.R = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
        self.M = self.R @ np.diag(1.0 / self.a**2) @ self.R.T
        hz = math.sqrt(float(np.sum((self.a * self.R[2]) ** 2)))  # support function along z
        self.z_lo, self.z_hi = self.c[2] - hz, self.c[2] + hz
        A = self.M[:2, :2]
        self._Ainv = np.linalg.inv(A)
        self._A = A
        super().__init__(clip, minus)

    def _section(self, z: float) -> Section | None:
        dz = z - self.c[2]
        b = self.M[:2, 2] * dz
        q0 = -self._Ainv @ b
        rhs = 1.0 - (self.M[2, 2] * dz * dz - float(b @ self._Ainv @ b))
        if rhs <= 0:
            return None
        hx = math.sqrt(rhs * self._Ainv[0, 0])
        hy = math.sqrt(rhs * self._Ainv[1, 1])
        cx, cy = float(self.c[0] + q0[0]), float(self.c[1] + q0[1])
        a00, a01, a11 = (float(v) for v in (self._A[0, 0], self._A[0, 1], self._A[1, 1]))

        def inside(x: Tensor, y: Tensor) -> Tensor:
            dx, dy = x - cx, y - cy
            q = dx * dx * a00 + dy * dy * a11
            if abs(a01) > 1e-15:
                q = q + dx * dy * (2 * a01)
            return q <= rhs

        return Section((cx - hx, cx + hx, cy - hy, cy + hy), inside)

    def z_extent(self) -> tuple[float, float]:
        """Exact for an ellipsoid and for a sphere cut by one plane (a cup)."""
        planes = [p for p in self.clip if not (p[0] == 0 and p[1] == 0)]
        if not planes or len(planes) > 1 or np.ptp(self.a) > 1e-12:
            return self.z_lo, self.z_hi
        nx, ny, nz, c0 = planes[0]
        n = np.array([nx, ny, nz])
        R, cz = float(self.a[0]), float(self.c[2])
        dist = c0 - float(n @ self.c)  # plane offset from the centre along n
        if dist <= -R:
            return self.z_lo, self.z_lo  # empty
        rho = math.sqrt(max(R * R - dist * dist, 0.0)) if abs(dist) < R else 0.0
        horiz = math.sqrt(max(1.0 - nz * nz, 0.0))
        top = cz + R if R * nz <= dist else cz + dist * nz + rho * horiz
        bot = cz - R if -R * nz <= dist else cz + dist * nz - rho * horiz
        return max(bot, self.z_lo), min(top, self.z_hi)

    def _shrunk(self, d: float) -> Shape | None:
        a = self.a - d
        if np.any(a <= 0.05):
            return None
        return Ellipsoid(self.c, a, self.R)


def Sphere(center: Sequence[float], radius: float, clip: Sequence[Plane] = (),
           minus: Shape | None = None) -> Ellipsoid:
    """A solid ball."""
    return Ellipsoid(center, (radius, radius, radius), None, clip, minus)


# ------------------------------------------------------------------------------------------
class SweptSection(Shape):
    """A 2D section swept along ``z`` with parameters interpolated between key levels.

    The section is a rounded rectangle/ellipse in a local frame ``(u, v)`` centred on
    ``(cx, cy)`` and rotated by ``angle_deg``: with ``un = u / a`` (``a = a_pos`` for ``u >= 0``
    else ``a_neg``) and ``vn = v / b`` likewise, the inside is
    ``un^2 + vn^2 + k un^2 vn^2 <= 1`` with ``|un|, |vn| <= 1``; the squareness ``k`` in
    ``[-1, 0]`` goes from an ellipse (0) to a rectangle (-1) (-0.5 is close to a superellipse
    of exponent 2.5) and costs no ``pow``. Optional ``thickness`` makes it a ring (the inner
    boundary has semi-axes reduced by the thickness) and ``sector_deg`` keeps the parametric
    angle ``atan2(vn, un)`` within ``[phi0, phi1]`` (degrees, counter-clockwise from ``+u`` to
    ``+v``). ``mirror`` evaluates the section at ``(-x, y)``: describe a left-side structure
    once and mirror it to the right.

    Parameters are interpolated with a shape-preserving cubic (PCHIP; linear for two keys), so
    the surface is smooth along ``z`` and never overshoots its key values.
    """

    _NAMES = ("cx", "cy", "a_pos", "a_neg", "b_pos", "b_neg", "angle", "thickness", "phi0",
              "phi1", "k")

    def __init__(self, z: Sequence[float], cx: Sequence[float] | float,
                 cy: Sequence[float] | float, a_pos: Sequence[float] | float,
                 b_pos: Sequence[float] | float, *, a_neg: Sequence[float] | float | None = None,
                 b_neg: Sequence[float] | float | None = None,
                 angle_deg: Sequence[float] | float = 0.0,
                 thickness: Sequence[float] | float | None = None,
                 sector_deg: tuple[Sequence[float] | float, Sequence[float] | float] | None = None,
                 squareness: Sequence[float] | float = 0.0, mirror: bool = False,
                 capped: bool = True, clip: Sequence[Plane] = (), minus: Shape | None = None):
        zk = np.asarray(z, dtype=np.float64)
        if zk.ndim != 1 or len(zk) < 2 or np.any(np.diff(zk) <= 0):
            raise ValueError(f"SweptSection: z keys must be >= 2 increasing values, got {z}")
        n = len(zk)

        def col(v, default=None) -> np.ndarray:
            if v is None:
                v = default
            a = np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)).copy()
            return a

        a_pos_c, b_pos_c = col(a_pos), col(b_pos)
        self.has_ring = thickness is not None
        self.has_sector = sector_deg is not None
        sec = sector_deg if sector_deg is not None else (0.0, 0.0)
        self.P = np.stack([col(cx), col(cy), a_pos_c, col(a_neg, a_pos_c), b_pos_c,
                           col(b_neg, b_pos_c), col(angle_deg),
                           col(thickness, 0.0), col(sec[0]), col(sec[1]), col(squareness)], 1)
        if np.any(self.P[:, 2:6] < 0):
            raise ValueError("SweptSection: semi-axes must be >= 0 mm")
        self.zk = zk
        self.mirror = mirror
        self.capped = capped
        self.asym_a = bool(np.any(self.P[:, 2] != self.P[:, 3]))
        self.asym_b = bool(np.any(self.P[:, 4] != self.P[:, 5]))
        self.rotated = bool(np.any(self.P[:, 6] != 0))
        self.square = bool(np.any(self.P[:, 10] != 0))
        self._interp = (PchipInterpolator(zk, self.P, axis=0) if n >= 3 else None)
        self.z_lo, self.z_hi = float(zk[0]), float(zk[-1])
        super().__init__(clip, minus)

    def params(self, z: float) -> dict[str, float]:
        """Interpolated section parameters at ``z`` (mm, degrees)."""
        if self._interp is not None:
            p = self._interp(z)
        else:
            t = (z - self.zk[0]) / (self.zk[1] - self.zk[0])
            p = self.P[0] + t * (self.P[1] - self.P[0])
        return dict(zip(self._NAMES, (float(v) for v in p), strict=True))

    def boundary(self, z: float, n: int = 360) -> np.ndarray:
        """``(n, 2)`` points (mm) on the outer boundary of the section at ``z`` (ignores ring,
        sector and modifiers); used to keep outlines inside the scan field of view."""
        p = self.params(z)
        t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
        c, s = np.cos(t), np.sin(t)
        k = p["k"]
        q = c * c * s * s
        with np.errstate(divide="ignore", invalid="ignore"):
            rho2 = np.where(np.abs(k * q) > 1e-12,
                            (np.sqrt(np.maximum(1 + 4 * k * q, 0.0)) - 1) / (2 * k * q), 1.0)
        rho = np.minimum(np.sqrt(rho2), 1.0 / np.maximum(np.abs(c), np.abs(s)))
        u = rho * c * np.where(c >= 0, p["a_pos"], p["a_neg"])
        v = rho * s * np.where(s >= 0, p["b_pos"], p["b_neg"])
        th = math.radians(p["angle"])
        x = p["cx"] + u * math.cos(th) - v * math.sin(th)
        y = p["cy"] + u * math.sin(th) + v * math.cos(th)
        return np.stack([-x if self.mirror else x, y], 1)

    def _section(self, z: float) -> Section | None:
        p = self.params(z)
        ap, an, bp, bn = p["a_pos"], p["a_neg"], p["b_pos"], p["b_neg"]
        if min(ap, an, bp, bn) <= 1e-6:
            return None
        cx, cy, k = p["cx"], p["cy"], p["k"]
        th = math.radians(p["angle"])
        c, s = math.cos(th), math.sin(th)
        corners = np.array([[ap, bp], [ap, -bn], [-an, bp], [-an, -bn]])
        wx = cx + corners[:, 0] * c - corners[:, 1] * s
        wy = cy + corners[:, 0] * s + corners[:, 1] * c
        x0, x1 = float(wx.min()), float(wx.max())
        if self.mirror:
            x0, x1 = -x1, -x0
        bbox = (x0, x1, float(wy.min()), float(wy.max()))
        ring_t = p["thickness"] if self.has_ring else None
        phi0, phi1 = p["phi0"], p["phi1"]
        mirror, rotated, asym_a, asym_b = self.mirror, self.rotated, self.asym_a, self.asym_b
        square, has_sector = self.square, self.has_sector

        def norm(x: Tensor, y: Tensor, da: float) -> tuple[Tensor, Tensor]:
            xx = -x if mirror else x
            dx, dy = xx - cx, y - cy
            if rotated:
                u, v = dx * c + dy * s, dy * c - dx * s
            else:
                u, v = dx, dy
            ra = (torch.where(u >= 0, 1 / (ap - da), 1 / (an - da)) if asym_a
                  else 1 / (ap - da))
            rb = (torch.where(v >= 0, 1 / (bp - da), 1 / (bn - da)) if asym_b
                  else 1 / (bp - da))
            return u * ra, v * rb

        def test(un: Tensor, vn: Tensor) -> Tensor:
            u2, v2 = un * un, vn * vn
            if square and k != 0:
                return (u2 + v2 + u2 * v2 * k <= 1) & (u2 <= 1) & (v2 <= 1)
            return u2 + v2 <= 1

        def inside(x: Tensor, y: Tensor) -> Tensor:
            un, vn = norm(x, y, 0.0)
            m = test(un, vn)
            if ring_t is not None and ring_t < min(ap, an, bp, bn):
                ui, vi = norm(x, y, ring_t)
                m = m & ~test(ui, vi)
            if has_sector:
                phi = torch.rad2deg(torch.atan2(vn, un))
                m = m & (torch.remainder(phi - phi0, 360.0) <= (phi1 - phi0) % 360.0)
            return m

        return Section(bbox, inside)

    def _shrunk(self, d: float) -> Shape | None:
        P = self.P.copy()
        P[:, 2:6] = np.maximum(P[:, 2:6] - d, 0.0)
        if self.has_ring:
            P[:, 7] = P[:, 7] - 2 * d
            if np.all(P[:, 7] <= 0):
                return None
            P[:, 7] = np.maximum(P[:, 7], 0.05)
        if self.has_sector:  # move the radial cut faces inwards by ~d at the mean radius
            r = np.maximum(P[:, 2:6].mean(1), 1.0)
            dphi = np.degrees(d / r)
            P[:, 8] += dphi
            P[:, 9] -= dphi
        zk = self.zk.copy()
        if self.capped:
            zk[0] += d
            zk[-1] -= d
            if zk[-1] <= zk[0] or np.any(np.diff(zk) <= 0):
                keep = (self.zk > zk[0]) & (self.zk < zk[-1])
                zk2 = np.concatenate([[zk[0]], self.zk[keep], [zk[-1]]])
                if len(zk2) < 2 or zk2[-1] <= zk2[0]:
                    return None
                P = np.stack([np.interp(zk2, self.zk, P[:, j]) for j in range(P.shape[1])], 1)
                zk = zk2
        if np.all(P[:, 2:6].min(1) <= 0):
            return None
        cols = {n: P[:, i] for i, n in enumerate(self._NAMES)}
        return SweptSection(zk, cols["cx"], cols["cy"], cols["a_pos"], cols["b_pos"],
                            a_neg=cols["a_neg"], b_neg=cols["b_neg"], angle_deg=cols["angle"],
                            thickness=cols["thickness"] if self.has_ring else None,
                            sector_deg=(cols["phi0"], cols["phi1"]) if self.has_sector else None,
                            squareness=cols["k"], mirror=self.mirror, capped=self.capped)


# ------------------------------------------------------------------------------------------
class Tube(Shape):
    """Generalised cylinder along the segment ``p0 -> p1`` with flat ends.

    The cross-section perpendicular to the axis is an ellipse with radii ``ru`` along ``e1``
    (the direction closest to ``e1_hint`` perpendicular to the axis) and ``rv`` along
    ``e2 = d x e1``. Radii may vary piecewise-linearly along the axis (``profile``: fractions
    ``t`` in ``[0, 1]`` of the length). ``thickness`` makes a tube wall; ``sector_deg`` keeps
    the angle ``atan2(w / rv, u / ru)`` within ``[phi0, phi1]`` (a curved plate).
    """

    def __init__(self, p0: Sequence[float], p1: Sequence[float],
                 ru: float | Sequence[float], rv: float | Sequence[float] | None = None, *,
                 profile: Sequence[float] | None = None,
                 e1_hint: Sequence[float] | None = None, thickness: float | None = None,
                 sector_deg: tuple[float, float] | None = None, clip: Sequence[Plane] = (),
                 minus: Shape | None = None):
        self.p0 = np.asarray(p0, dtype=np.float64)
        self.p1 = np.asarray(p1, dtype=np.float64)
        axis = self.p1 - self.p0
        self.L = float(np.linalg.norm(axis))
        if self.L <= 0:
            raise ValueError("Tube: p0 and p1 coincide")
        self.d = axis / self.L
        hint = np.asarray(e1_hint if e1_hint is not None else
                          ((1.0, 0, 0) if abs(self.d[0]) < 0.9 else (0, 1.0, 0)), dtype=float)
        e1 = hint - (hint @ self.d) * self.d
        if np.linalg.norm(e1) < 1e-6:
            raise ValueError("Tube: e1_hint is parallel to the axis")
        self.e1 = e1 / np.linalg.norm(e1)
        self.e2 = np.cross(self.d, self.e1)
        ru_a = np.atleast_1d(np.asarray(ru, dtype=np.float64))
        rv_a = np.atleast_1d(np.asarray(rv if rv is not None else ru, dtype=np.float64))
        if profile is None:
            if len(ru_a) != 1 or len(rv_a) != 1:
                raise ValueError("Tube: radius lists need a profile")
            self.tk = np.array([0.0, 1.0])
            ru_a, rv_a = np.repeat(ru_a, 2), np.repeat(rv_a, 2)
        else:
            tk = np.asarray(profile, dtype=np.float64)
            if tk.ndim != 1 or np.any(np.diff(tk) < 0) or tk[0] < 0 or tk[-1] > 1:
                raise ValueError(f"Tube: profile must be increasing fractions in [0, 1]: {tk}")
            ru_a = np.broadcast_to(ru_a, tk.shape).copy()
            rv_a = np.broadcast_to(rv_a, tk.shape).copy()
            if tk[0] > 0:  # radii are constant beyond the first and last knots
                tk, ru_a, rv_a = (np.r_[0.0, tk], np.r_[ru_a[0], ru_a], np.r_[rv_a[0], rv_a])
            if tk[-1] < 1:
                tk, ru_a, rv_a = (np.r_[tk, 1.0], np.r_[ru_a, ru_a[-1]], np.r_[rv_a, rv_a[-1]])
            self.tk = tk
        if np.any(ru_a < 0) or np.any(rv_a < 0):
            raise ValueError("Tube: radii must be >= 0 mm")
        self.ru, self.rv = ru_a, rv_a
        self.constant = bool(np.all(ru_a == ru_a[0]) and np.all(rv_a == rv_a[0]))
        self.thickness = thickness
        self.sector = sector_deg
        rmu, rmv = float(ru_a.max()), float(rv_a.max())
        self._ext = np.sqrt((rmu * self.e1) ** 2 + (rmv * self.e2) ** 2)  # disc half-extents
        zs = (self.p0[2], self.p1[2])
        self.z_lo = min(zs) - self._ext[2]
        self.z_hi = max(zs) + self._ext[2]
        super().__init__(clip, minus)

    def z_extent(self) -> tuple[float, float]:
        """Exact to ~1e-4 mm: a tube is a union of frusta, whose z extremes lie on the knot
        faces; the faces (restricted to the sector) are sampled densely."""
        if self.sector is not None:
            phi = np.radians(np.linspace(self.sector[0], self.sector[0]
                                         + (self.sector[1] - self.sector[0]) % 360.0, 3601))
        else:
            phi = np.linspace(0.0, 2 * np.pi, 3601)
        zs = []
        th = self.thickness or 0.0
        for t, ru, rv in zip(self.tk, self.ru, self.rv, strict=True):
            c = self.p0[2] + t * self.L * self.d[2]
            # z is linear along each ray of the face, so its extremes lie on the outer rim or
            # the inner rim (the wall's inner boundary, or the axis for a solid tube)
            for a, b in ((ru, rv), (max(ru - th, 0.0), max(rv - th, 0.0)) if th else (0, 0)):
                dz = a * np.cos(phi) * self.e1[2] + b * np.sin(phi) * self.e2[2]
                zs += [c + dz.min(), c + dz.max()]
        return max(min(zs), self.z_lo), min(max(zs), self.z_hi)

    def _s_range(self, z: float) -> tuple[float, float] | None:
        dz, rz = self.d[2], self._ext[2]
        if abs(dz) < 1e-9:
            return (0.0, self.L) if abs(self.p0[2] - z) <= rz else None
        sa = (z - rz - self.p0[2]) / dz
        sb = (z + rz - self.p0[2]) / dz
        lo, hi = max(0.0, min(sa, sb)), min(self.L, max(sa, sb))
        return (lo, hi) if lo <= hi else None

    def _radii(self, s: Tensor) -> tuple[Tensor | float, Tensor | float]:
        if self.constant:
            return float(self.ru[0]), float(self.rv[0])
        t = s * (1.0 / self.L)
        ru = _piecewise_linear(t, self.tk, self.ru)
        rv = _piecewise_linear(t, self.tk, self.rv)
        return ru, rv

    def _section(self, z: float) -> Section | None:
        sr = self._s_range(z)
        if sr is None:
            return None
        pa, pb = self.p0 + sr[0] * self.d, self.p0 + sr[1] * self.d
        ex, ey = self._ext[0], self._ext[1]
        bbox = (float(min(pa[0], pb[0]) - ex), float(max(pa[0], pb[0]) + ex),
                float(min(pa[1], pb[1]) - ey), float(max(pa[1], pb[1]) + ey))
        p0, d, e1, e2, L = self.p0, self.d, self.e1, self.e2, self.L
        vz = z - p0[2]
        th, sector = self.thickness, self.sector

        def inside(x: Tensor, y: Tensor) -> Tensor:
            vx, vy = x - float(p0[0]), y - float(p0[1])
            s = _lin(vx, vy, float(d[0]), float(d[1])) + float(vz * d[2])
            u = _lin(vx, vy, float(e1[0]), float(e1[1])) + float(vz * e1[2])
            w = _lin(vx, vy, float(e2[0]), float(e2[1])) + float(vz * e2[2])
            ru, rv = self._radii(s)
            un, wn = u / ru, w / rv
            m = (un * un + wn * wn <= 1) & (s >= 0) & (s <= L)
            if th is not None:
                ui, wi = u / (ru - th), w / (rv - th)
                m = m & (ui * ui + wi * wi > 1)
            if sector is not None:
                phi = torch.rad2deg(torch.atan2(wn, un))
                m = m & (torch.remainder(phi - sector[0], 360.0)
                         <= (sector[1] - sector[0]) % 360.0)
            return m

        return Section(bbox, inside)

    def _shrunk(self, d: float) -> Shape | None:
        if self.L <= 2 * d:
            return None
        ru, rv = self.ru - d, self.rv - d
        if np.all(ru <= 0) or np.all(rv <= 0):
            return None
        ru, rv = np.maximum(ru, 0.05), np.maximum(rv, 0.05)
        # new ends d inside the old ones; keep the profile on the old axial positions
        t_new = (self.tk * self.L - d) / (self.L - 2 * d)
        th = None
        if self.thickness is not None:
            th = self.thickness - 2 * d
            if th <= 0:
                return None
        sec = None
        if self.sector is not None:
            dphi = math.degrees(d / max(float(np.mean(ru)), 1.0))
            sec = (self.sector[0] + dphi, self.sector[1] - dphi)
        keep = (t_new > 0) & (t_new < 1)
        tk = np.concatenate([[0.0], t_new[keep], [1.0]])
        ru2 = np.interp(tk, t_new, ru)
        rv2 = np.interp(tk, t_new, rv)
        return Tube(self.p0 + d * self.d, self.p1 - d * self.d, ru2, rv2, profile=tk,
                    e1_hint=self.e1, thickness=th, sector_deg=sec)


def _piecewise_linear(t: Tensor, knots: np.ndarray, vals: np.ndarray) -> Tensor:
    """Piecewise-linear interpolation of ``vals`` at ``knots`` (clamped at both ends)."""
    out = t.new_full((), float(vals[0]))
    for k in range(len(knots) - 1):
        dk = float(knots[k + 1] - knots[k])
        if dk <= 0:
            continue
        slope = float((vals[k + 1] - vals[k]) / dk)
        if slope != 0:
            out = out + (t - float(knots[k])).clamp(0.0, dk) * slope
    return out


# ------------------------------------------------------------------------------------------
class Capsule(Shape):
    """All points within ``r`` of the segment ``p0 -> p1`` (rounded ends): chains of capsules
    make smooth tubes along curves (ribs, vessels, bowel, rods)."""

    def __init__(self, p0: Sequence[float], p1: Sequence[float], r: float,
                 clip: Sequence[Plane] = (), minus: Shape | None = None):
        self.p0 = np.asarray(p0, dtype=np.float64)
        self.p1 = np.asarray(p1, dtype=np.float64)
        if r <= 0:
            raise ValueError(f"Capsule: radius must be > 0 mm, got {r}")
        self.r = float(r)
        axis = self.p1 - self.p0
        self.L = float(np.linalg.norm(axis))
        self.d = axis / self.L if self.L > 0 else np.array([0.0, 0.0, 1.0])
        self.z_lo = min(self.p0[2], self.p1[2]) - r
        self.z_hi = max(self.p0[2], self.p1[2]) + r
        super().__init__(clip, minus)

    def _section(self, z: float) -> Section | None:
        r, p0, d, L = self.r, self.p0, self.d, self.L
        dz = d[2] * L
        if abs(dz) < 1e-9:
            sa, sb = 0.0, L
        else:  # axis points within r of the plane
            ta = (z - r - p0[2]) / dz
            tb = (z + r - p0[2]) / dz
            sa, sb = max(0.0, min(ta, tb)) * L, min(1.0, max(ta, tb)) * L
            if sa > sb:
                return None
        pa, pb = p0 + sa * d, p0 + sb * d
        bbox = (float(min(pa[0], pb[0]) - r), float(max(pa[0], pb[0]) + r),
                float(min(pa[1], pb[1]) - r), float(max(pa[1], pb[1]) + r))
        vz = z - p0[2]
        r2 = r * r

        def inside(x: Tensor, y: Tensor) -> Tensor:
            vx, vy = x - float(p0[0]), y - float(p0[1])
            vv = vx * vx + vy * vy + vz * vz
            if L == 0:
                return vv <= r2
            s = _lin(vx, vy, float(d[0]), float(d[1])) + float(vz * d[2])
            sc = s.clamp(0.0, L)
            return vv - sc * (2 * s - sc) <= r2

        return Section(bbox, inside)

    def _shrunk(self, d: float) -> Shape | None:
        return Capsule(self.p0, self.p1, self.r - d) if self.r - d > 0.05 else None


def polyline(points: Sequence[Sequence[float]], r: float, clip: Sequence[Plane] = ()
             ) -> list[Capsule]:
    """A tube of radius ``r`` through ``points`` as a chain of capsules."""
    pts = [np.asarray(p, dtype=np.float64) for p in points]
    return [Capsule(a, b, r, clip) for a, b in zip(pts[:-1], pts[1:], strict=True)]
