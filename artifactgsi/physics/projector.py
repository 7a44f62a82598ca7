"""Fan-beam forward projector, its exact adjoint and flat-detector FBP, in batched torch.

Geometry conventions (scanner coordinates of :mod:`artifactgsi.physics.geometry`, mm):
``x`` = image columns, left to right on screen (patient left); ``y`` = image rows, top to
bottom (posterior); isocentre ``(0, 0)``. For the view at source angle ``beta`` (radians,
``geom.view_angles()``):

* source at ``sid * (sin beta, -cos beta)``: ``beta = 0`` puts the tube anterior (top of the
  image), and increasing ``beta`` moves it towards the patient's left (+x), which is clockwise
  on screen;
* unit vector from the source towards the isocentre ``d = (-sin beta, cos beta)``;
* flat detector centred on the central ray at ``sdd`` from the source; channel ``i`` lies at
  ``u_i = geom.det_u_mm()[i]`` along ``e_u = (cos beta, sin beta)`` (channel 0 is towards -x
  at ``beta = 0``).

Symmetries (exact, since views start at 0 and the detector is centred): rotating the geometry
by +90 degrees about the isocentre maps view ``v`` onto view ``v + n_views / 4`` channel by
channel, so projecting an image with view ``v + q n_views / 4`` equals projecting
``torch.rot90(image, q, dims=(-2, -1))`` with view ``v``; and mirroring ``x -> -x`` maps view
``beta`` onto view ``-beta`` with the channels reversed (``image.flip(-1)``). The system matrix
is therefore traced for views ``0 .. n_views / 8`` only (8x less memory and build time) and
every image is projected in 8 rotated/mirrored copies; view counts that are not a multiple of 4
use the 180-degree rotation (even counts) or the mirror alone.

astra-toolbox ``fanflat`` (2D, volume row 0 at astra's +y) matches this geometry with
``angles_astra = pi - beta`` and the detector axis reversed (astra channel ``n_det - 1 - i`` is
our channel ``i``); see ``tests/artifactgsi/test_projector.py``.

The forward model is Joseph's method (P. M. Joseph, IEEE TMI 1(3), 1982): each ray steps along
its dominant axis one pixel row/column at a time and interpolates linearly between the two
nearest pixels of the other axis, weight ``pixel_mm / |cos|``. Outside the grid the image is 0.
FBP follows Kak & Slaney, *Principles of Computerized Tomographic Imaging*, ch. 3.4.2
(equally spaced collinear detectors).
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch

from artifactgsi.physics.geometry import FanBeamGeometry, ImageGrid

__all__ = ["FanBeamProjector", "SystemMatrix", "build_system_matrix", "clear_cache",
           "ramp_filter_response", "FBP_FILTERS"]

FilterName = Literal["ramp", "shepp-logan", "hamming", "hann"]
#: FBP kernels, sharpest first: the ramp windowed as in skimage's ``iradon`` filters (the
#: usual textbook set; a scanner's named kernels are vendor tunings of such windows).
FBP_FILTERS: tuple[str, ...] = ("ramp", "shepp-logan", "hamming", "hann")

# Elements of the dense right-hand side per sparse product: the (N^2, k) block should stay in
# cache (measured on a 32 MB-L3 EPYC: 24-32 columns at 256 px, 8-16 at 512 px are best;
# 80 columns at once is up to 2x slower per column).
_RHS_BLOCK_ELEMS = 1 << 21
# (pixel, view) pairs per FBP backprojection chunk, kept to 8..32 views: 4 work buffers of
# this size stay near the CPU cache while each embedding_bag bag still holds enough views
# (measured best: 16 views at 256 px, 8-16 at 512 px). Peak memory stays ~0.1 GB at 512 px.
_FBP_CHUNK_ELEMS = 1 << 20
# Ray-steps (rays x steps) generated per chunk while building the system matrix.
_BUILD_CHUNK_STEPS = 4_000_000


# --------------------------------------------------------------------------------------------
# System matrix (Joseph's method)
# --------------------------------------------------------------------------------------------


def _rays(geom: FanBeamGeometry, views: np.ndarray, subrays: int):
    """Ray sources, unit directions, lengths and row ids for ``views`` (float64 numpy).

    Returns ``(sx, sy, rx, ry, length, row)``, each of shape ``(len(views) * n_det * subrays,)``;
    ``row = local_view * n_det + channel`` (sub-rays of one channel share a row).
    """
    beta = geom.view_angles().numpy()[views]
    u = geom.det_u_mm().numpy()
    if subrays > 1:
        # Sub-ray centres split each channel's width into equal parts (detector supersampling).
        off = ((np.arange(subrays) + 0.5) / subrays - 0.5) * geom.det_pitch_mm
        u = (u[:, None] + off[None, :]).ravel()
    sb, cb = np.sin(beta)[:, None], np.cos(beta)[:, None]
    sx, sy = geom.sid_mm * sb, -geom.sid_mm * cb
    # Detector point = source + sdd * d + u * e_u.
    px = sx - geom.sdd_mm * sb + u[None, :] * cb
    py = sy + geom.sdd_mm * cb + u[None, :] * sb
    dx, dy = px - sx, py - sy
    length = np.hypot(dx, dy)
    n_rays = dx.shape[1]
    sx = np.broadcast_to(sx, dx.shape).ravel()
    sy = np.broadcast_to(sy, dx.shape).ravel()
    row = (np.arange(len(views))[:, None] * geom.n_det + np.arange(n_rays)[None, :] // subrays)
    return sx, sy, (dx / length).ravel(), (dy / length).ravel(), length.ravel(), row.ravel()


def _joseph_entries(a_src, b_src, ra, rb, length, row, coords, h, weight_scale, dominant_is_x):
    """COO entries for rays stepping along axis ``a`` (one sample per grid line of ``a``).

    ``a``/``b`` are ``x``/``y`` when ``dominant_is_x``, else ``y``/``x``. All inputs float64,
    shapes ``(R,)``; ``coords`` are pixel-centre coordinates ``(N,)`` (same along x and y).
    """
    n = coords.size
    lam = (coords[None, :] - a_src[:, None]) / ra[:, None]  # (R, N) distance from the source
    on_ray = (lam >= 0) & (lam <= length[:, None])
    t = (b_src[:, None] + lam * rb[:, None] - coords[0]) / h  # fractional index along b
    i0 = np.floor(t)
    f = t - i0
    i0 = i0.astype(np.int64)
    w = (h / np.abs(ra) * weight_scale)[:, None]
    a_idx = np.broadcast_to(np.arange(n)[None, :], t.shape)
    rows = np.broadcast_to(row[:, None], t.shape)
    out_r, out_c, out_v = [], [], []
    for bi, wv in ((i0, (1.0 - f) * w), (i0 + 1, f * w)):
        m = on_ray & (bi >= 0) & (bi < n) & (wv > 0)
        pix = bi[m] * n + a_idx[m] if dominant_is_x else a_idx[m] * n + bi[m]
        out_r.append(rows[m])
        out_c.append(pix)
        out_v.append(wv[m])
    return np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_v)


def build_system_matrix(
    geom: FanBeamGeometry, views: np.ndarray | None = None, subrays: int = 1,
    dtype: np.dtype = np.float32,
) -> sp.csr_matrix:
    """Joseph system matrix for the given views, as a scipy CSR matrix.

    Rows are ``local_view * n_det + channel`` (line integrals in mm per 1/mm of attenuation),
    columns are pixels of ``geom.object_grid`` in row-major order (``row * N + col``).
    ``views`` defaults to all views. Indices are int32 where they fit.
    """
    if subrays < 1:
        raise ValueError(f"build_system_matrix: subrays must be >= 1, got {subrays}")
    views = np.arange(geom.n_views) if views is None else np.asarray(views)
    grid = geom.object_grid
    n, h = geom.image_size, grid.pixel_mm
    coords = grid.x_mm().numpy()  # centred grid: identical along y
    n_rows = len(views) * geom.n_det
    views_per_chunk = max(1, _BUILD_CHUNK_STEPS // (geom.n_det * subrays * n))
    indptr_parts = [np.zeros(1, np.int64)]
    # Chunks are copied straight into arrays sized for the most entries a ray can have (two
    # pixels per step, n steps, per sub-ray): only the pages written become resident, and no
    # list of parts plus their concatenation (twice the matrix) is ever held.
    max_nnz = n_rows * 2 * n * subrays
    values = np.empty(max_nnz, dtype)
    indices = np.empty(max_nnz, np.int32)
    nnz = 0
    for v0 in range(0, len(views), views_per_chunk):
        vs = views[v0:v0 + views_per_chunk]
        sx, sy, rx, ry, length, row = _rays(geom, vs, subrays)
        xdom = np.abs(rx) >= np.abs(ry)
        parts = []
        if xdom.any():
            m = xdom
            parts.append(_joseph_entries(sx[m], sy[m], rx[m], ry[m], length[m], row[m],
                                         coords, h, 1.0 / subrays, True))
        if (~xdom).any():
            m = ~xdom
            parts.append(_joseph_entries(sy[m], sx[m], ry[m], rx[m], length[m], row[m],
                                         coords, h, 1.0 / subrays, False))
        r = np.concatenate([p[0] for p in parts])
        c = np.concatenate([p[1] for p in parts])
        v = np.concatenate([p[2] for p in parts])
        # tocsr sums the duplicates that sub-rays of one channel create and sorts columns.
        chunk = sp.coo_matrix((v, (r, c)), shape=(len(vs) * geom.n_det, n * n)).tocsr()
        chunk.sum_duplicates()
        indptr_parts.append(chunk.indptr[1:].astype(np.int64) + nnz)
        indices[nnz:nnz + chunk.nnz] = chunk.indices
        values[nnz:nnz + chunk.nnz] = chunk.data
        nnz += chunk.nnz
        del r, c, v, parts, chunk
    indptr = np.concatenate(indptr_parts)
    if nnz < 2**31 - 1:
        indptr = indptr.astype(np.int32)
    mat = sp.csr_matrix((values[:nnz], indices[:nnz], indptr), shape=(n_rows, n * n))
    return mat


def _csr_to_torch(mat: sp.csr_matrix, device: torch.device) -> torch.Tensor:
    idx_dtype = torch.int32 if mat.indptr.dtype == np.int32 else torch.int64
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        return torch.sparse_csr_tensor(
            torch.from_numpy(mat.indptr).to(device=device, dtype=idx_dtype),
            torch.from_numpy(mat.indices).to(device=device, dtype=idx_dtype),
            torch.from_numpy(mat.data).to(device=device),
            size=mat.shape, check_invariants=False,
        )


def _torch_to_csr(t: torch.Tensor) -> sp.csr_matrix:
    return sp.csr_matrix(
        (t.values().cpu().numpy(), t.col_indices().cpu().numpy(), t.crow_indices().cpu().numpy()),
        shape=tuple(t.shape),
    )


@dataclass
class SystemMatrix:
    """A cached, symmetry-compressed system matrix on one device, its lazily built transpose
    and their build times (s)."""

    a: torch.Tensor  # sparse CSR, (n_stored_views * n_det, N * N)
    n_rot: int  # rotational symmetry order used: 4 (90 degrees), 2 (180 degrees) or 1
    build_s: float
    at: torch.Tensor | None = None
    transpose_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def transposed(self) -> torch.Tensor:
        with self.lock:
            if self.at is None:
                t0 = time.perf_counter()
                at = _torch_to_csr(self.a).T.tocsr()  # O(nnz), keeps int32 indices
                at.indices = at.indices.astype(self.a.col_indices().cpu().numpy().dtype)
                at.indptr = at.indptr.astype(self.a.crow_indices().cpu().numpy().dtype)
                self.at = _csr_to_torch(at, self.a.device)
                self.transpose_s = time.perf_counter() - t0
            return self.at

    @property
    def nbytes(self) -> int:
        total = 0
        for t in (self.a, self.at):
            if t is not None:
                total += sum(x.numel() * x.element_size()
                             for x in (t.crow_indices(), t.col_indices(), t.values()))
        return total


_CACHE: dict[tuple, SystemMatrix] = {}
_CACHE_LOCK = threading.Lock()


def _system_matrix(geom: FanBeamGeometry, device: torch.device, dtype: torch.dtype,
                   subrays: int) -> SystemMatrix:
    key = (geom, str(device), dtype, subrays)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        t0 = time.perf_counter()
        n_rot = 4 if geom.n_views % 4 == 0 else 2 if geom.n_views % 2 == 0 else 1
        views = np.arange(_n_stored_views(geom.n_views // n_rot))
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        mat = build_system_matrix(geom, views, subrays, np_dtype)
        sm = SystemMatrix(_csr_to_torch(mat, device), n_rot,
                           time.perf_counter() - t0)
        _CACHE[key] = sm
        return sm


def _n_stored_views(n_block: int) -> int:
    """Views traced per block of ``n_block`` views: 0 .. n_block // 2 (the rest are mirrors)."""
    return n_block // 2 + 1


def clear_cache() -> None:
    """Drop all cached system matrices (frees their memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()


# --------------------------------------------------------------------------------------------
# Autograd wrappers: d(forward) = backward and d(backward) = forward
# --------------------------------------------------------------------------------------------


class _Forward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, image: torch.Tensor, op: FanBeamProjector) -> torch.Tensor:
        ctx.op = op
        return op._forward_impl(image)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _Backward.apply(grad, ctx.op), None


class _Backward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sino: torch.Tensor, op: FanBeamProjector) -> torch.Tensor:
        ctx.op = op
        return op._backward_impl(sino)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _Forward.apply(grad, ctx.op), None


# --------------------------------------------------------------------------------------------
# FBP filter
# --------------------------------------------------------------------------------------------


def ramp_filter_response(n_det: int, tau_mm: float, filter: FilterName = "ramp",
                         cutoff: float = 1.0) -> tuple[np.ndarray, int]:
    """Frequency response of the band-limited discrete ramp kernel (Kak & Slaney ch. 3.3).

    The spatial kernel ``h(0) = 1/(4 tau^2)``, ``h(n odd) = -1/(n pi tau)^2``, ``h(n even) = 0``
    is zero-padded to ``P >= 2 n_det`` samples (no circular wrap-around) and Fourier transformed;
    The window, with ``v = w / cutoff`` (``w`` = frequency / Nyquist), is 1 for ``"ramp"``,
    ``sinc(v / 2)`` for ``"shepp-logan"``, ``0.54 + 0.46 cos(pi v)`` for ``"hamming"`` and
    ``0.5 (1 + cos(pi v))`` for ``"hann"``; every filter is zero above ``cutoff``. Returns
    ``(H, P)`` with ``H`` of shape ``(P // 2 + 1,)`` in 1/mm^2 (float64).
    """
    if filter not in FBP_FILTERS:
        raise ValueError(f"fbp filter must be one of {', '.join(FBP_FILTERS)}, got {filter!r}")
    if not 0.0 < cutoff <= 1.0:
        raise ValueError(f"fbp cutoff must be in (0, 1] (fraction of Nyquist), got {cutoff}")
    p = 1 << max(6, math.ceil(math.log2(2 * n_det)))
    k = np.arange(p)
    n = np.where(k <= p // 2, k, k - p)
    h = np.zeros(p)
    h[0] = 1.0 / (4 * tau_mm**2)
    odd = n % 2 == 1
    h[odd] = -1.0 / (n[odd] * math.pi * tau_mm) ** 2
    resp = np.fft.rfft(h).real  # h is even, so its transform is real
    w = np.arange(resp.size) / (p // 2)
    v = np.minimum(w / cutoff, 1.0)
    if filter == "shepp-logan":
        resp = resp * np.sinc(v / 2)  # np.sinc(x) = sin(pi x) / (pi x)
    elif filter == "hamming":
        resp = resp * (0.54 + 0.46 * np.cos(np.pi * v))
    elif filter == "hann":
        resp = resp * 0.5 * (1 + np.cos(np.pi * v))
    resp[w > cutoff] = 0.0
    return resp, p


# --------------------------------------------------------------------------------------------
# Projector
# --------------------------------------------------------------------------------------------


class FanBeamProjector:
    """Fan-beam projector for a :class:`FanBeamGeometry` (see module docstring for conventions).

    Args:
        geom: scanner geometry; images live on ``geom.object_grid``.
        device: torch device of inputs, outputs and the cached system matrix.
        dtype: ``torch.float32`` (default) or ``torch.float64``.
        subrays: rays per detector channel, spread evenly over the channel width and averaged
            (detector supersampling, 1 = one ray through each channel centre).

    The sparse system matrix is built on first use and cached per process for
    ``(geom, device, dtype, subrays)``; ``backward``'s transposed copy is built on first use.
    """

    def __init__(self, geom: FanBeamGeometry, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, subrays: int = 1) -> None:
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"FanBeamProjector: dtype must be float32 or float64, got {dtype}")
        if subrays < 1:
            raise ValueError(f"FanBeamProjector: subrays must be >= 1, got {subrays}")
        half_diag = geom.fov_mm / math.sqrt(2)
        if geom.sid_mm <= half_diag:
            raise ValueError(
                f"FanBeamProjector: sid_mm={geom.sid_mm} must exceed the object grid's half "
                f"diagonal ({half_diag:.1f} mm for fov_mm={geom.fov_mm}); the source would be "
                "inside the grid")
        self.geom = geom
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            # "cuda" and "cuda:0" must share one cached matrix and compare equal in _check.
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = dtype
        self.subrays = subrays

    # ---- system matrix -----------------------------------------------------------------------

    @property
    def matrix(self) -> SystemMatrix:
        """The cached system matrix (built on first access)."""
        return _system_matrix(self.geom, self.device, self.dtype, self.subrays)

    # ---- shapes ------------------------------------------------------------------------------

    @property
    def sino_shape(self) -> tuple[int, int]:
        """``(n_views, n_det)``: the last two dimensions of a sinogram."""
        return (self.geom.n_views, self.geom.n_det)

    def _check(self, t: torch.Tensor, name: str, shape: tuple[int, int], what: str) -> None:
        if t.ndim != 4 or tuple(t.shape[-2:]) != shape:
            raise ValueError(
                f"FanBeamProjector.{name}: expected {what} of shape (B, C, {shape[0]}, "
                f"{shape[1]}), got {tuple(t.shape)}")
        if t.device != self.device:
            raise ValueError(
                f"FanBeamProjector.{name}: input is on {t.device}, projector on {self.device}")

    # ---- forward / backward ------------------------------------------------------------------

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Line integrals of ``image``.

        Args:
            image: ``(B, C, N, N)`` linear attenuation in 1/mm on ``geom.object_grid``.

        Returns:
            ``(B, C, n_views, n_det)`` line integrals (dimensionless: 1/mm x path length in mm).
        """
        n = self.geom.image_size
        self._check(image, "forward", (n, n), "image")
        return _Forward.apply(image.to(self.dtype), self)

    __call__ = forward

    def backward(self, sino: torch.Tensor) -> torch.Tensor:
        """Exact adjoint of :meth:`forward` (unfiltered backprojection, matched).

        Args:
            sino: ``(B, C, n_views, n_det)``.

        Returns:
            ``(B, C, N, N)`` on ``geom.object_grid`` (units of ``sino`` x mm).
        """
        self._check(sino, "backward", self.sino_shape, "sinogram")
        return _Backward.apply(sino.to(self.dtype), self)

    # The symmetries (see the module docstring). Views come in ``k = n_rot`` blocks of
    # ``vb = n_views / k``; block ``q`` is block 0 rotated by ``q * 360/k`` degrees, i.e. block 0
    # seen by ``rot90(x, t q)`` with ``t = 4 / k`` quarter turns. Within a block, view
    # ``vb - v`` (v = 1 .. vb - h - 1, h = vb // 2) is view ``v`` of the mirror image
    # ``flip(rot90(x, t (q + 1)), -1)`` (x -> -x) read with the channels reversed. So the matrix
    # holds views 0 .. h only and each image is projected in 2k transformed copies.

    def _transforms(self, x: torch.Tensor, k: int) -> list[torch.Tensor]:
        t = 4 // k
        direct = [torch.rot90(x, t * q, dims=(-2, -1)) for q in range(k)]
        mirror = [torch.rot90(x, (t * (q + 1)) % 4, dims=(-2, -1)).flip(-1) for q in range(k)]
        return direct + mirror

    def _forward_impl(self, image: torch.Tensor) -> torch.Tensor:
        sm = self.matrix
        b, c, n, _ = image.shape
        k, nd = sm.n_rot, self.geom.n_det
        vb = self.geom.n_views // k
        h = vb // 2
        if image.device.type == "cpu":
            y = self._project_support(image, sm)
        else:  # one column per (mirror?, block, batch, channel)
            x = torch.stack(self._transforms(image, k), 0).reshape(2 * k * b * c, n * n)
            y = _spmm_blocked(sm.a, x.t().contiguous())  # ((h + 1) * nd, 2k * b * c)
        y = y.view(h + 1, nd, 2, k, b, c)
        # Views 0..h of each block directly; views vb-1 .. h+1 from mirrored views 1 .. vb-h-1.
        views = torch.cat([y[:, :, 0], y[1:vb - h, :, 1].flip(0, 1)], dim=0)  # (vb, nd, k, b, c)
        return views.permute(3, 4, 2, 0, 1).reshape(b, c, self.geom.n_views, nd)

    def _project_support(self, image: torch.Tensor, sm: SystemMatrix) -> torch.Tensor:
        """``A @ transforms(image)`` as ``((h + 1) * nd, 2k * b * c)``, touching only what can
        be non-zero (CPU).

        Simulated images are mostly empty: a material occupies part of the body, the body
        part of the field, an implant a few pixels, and a material may be absent from a whole
        image. Per channel, images that are all zero are skipped and the sparse product runs
        over the rays (matrix rows) that meet the channel's support only; every other entry
        of the result is exactly 0. The rows computed are the matrix's own rows, unchanged,
        and a row's sum does not depend on which other rows or columns are in the product,
        so the result is bit-identical to the full product.
        """
        b, c, n, _ = image.shape
        k = sm.n_rot
        n_rows = sm.a.shape[0]
        y = image.new_zeros(n_rows, 2, k, b, c)
        nonzero = image.ne(0)  # (b, c, n, n)
        present = nonzero.flatten(2).any(2)  # (b, c)
        # Support of each channel: pixels non-zero in any image of the batch, in any of the
        # 2k transformed copies; the rays that meet it, from one product with the masks.
        union = nonzero.any(0)  # (c, n, n)
        masks = torch.stack(self._transforms(union, k), 0).any(0)  # (c, n, n)
        hits = _spmm_blocked(sm.a, masks.reshape(c, n * n).t().to(image.dtype).contiguous())
        for ci in range(c):
            sel = present[:, ci].nonzero()[:, 0]
            if sel.numel() == 0:
                continue
            x = torch.stack(self._transforms(image[sel, ci], k), 0)  # (2k, b', n, n)
            xt = x.reshape(-1, n * n).t().contiguous()
            rows = hits[:, ci].ne(0).nonzero()[:, 0]
            if rows.numel() > 0.9 * n_rows:  # extracting the rows would cost more
                part = _spmm_blocked(sm.a, xt)
            else:
                full = xt.new_zeros(n_rows, xt.shape[1])
                full[rows] = _spmm_blocked(_row_subset(sm.a, rows), xt)
                part = full
            y[:, :, :, sel, ci] = part.view(n_rows, 2, k, sel.numel())
        return y.view(n_rows, 2 * k * b * c)

    def _backward_impl(self, sino: torch.Tensor) -> torch.Tensor:
        sm = self.matrix
        at = sm.transposed()
        b, c = sino.shape[:2]
        k, n, nd = sm.n_rot, self.geom.image_size, self.geom.n_det
        vb = self.geom.n_views // k
        h = vb // 2
        s = sino.reshape(b, c, k, vb, nd).permute(3, 4, 2, 0, 1)  # (vb, nd, k, b, c)
        y = sino.new_zeros(h + 1, nd, 2, k, b, c)
        y[:, :, 0] = s[: h + 1]
        y[1:vb - h, :, 1] = s[h + 1:].flip(0, 1)
        z = _spmm_blocked(at, y.view((h + 1) * nd, 2 * k * b * c)).t()
        z = z.reshape(2, k, b, c, n, n)
        t = 4 // k
        # Adjoint of each transform is its inverse (they are permutations).
        out = z[0, 0].clone()
        for q in range(1, k):
            out += torch.rot90(z[0, q], -t * q, dims=(-2, -1))
        for q in range(k):
            out += torch.rot90(z[1, q].flip(-1), -((t * (q + 1)) % 4), dims=(-2, -1))
        return out

    # ---- FBP ---------------------------------------------------------------------------------

    @property
    def tau_mm(self) -> float:
        """Channel pitch rescaled to the isocentre (virtual detector through the isocentre)."""
        return self.geom.det_pitch_mm * self.geom.sid_mm / self.geom.sdd_mm

    def filter_sinogram(self, sino: torch.Tensor, filter: FilterName = "ramp",
                        cutoff: float = 1.0) -> torch.Tensor:
        """Cosine pre-weighting and ramp filtering (Kak & Slaney's ``Q_beta``), ``(B, C, V, D)``.

        Returns ``tau * sum_k h(n - k) R'(k)`` with ``R' = R D / sqrt(D^2 + s^2)``,
        ``s`` = channel position at the isocentre, ``D = sid_mm``; units 1/mm per line integral.
        """
        self._check(sino, "fbp", self.sino_shape, "sinogram")
        g, tau = self.geom, self.tau_mm
        s = g.det_u_mm() * (g.sid_mm / g.sdd_mm)
        pre = (g.sid_mm / torch.sqrt(g.sid_mm**2 + s**2)).to(sino.device, self.dtype)
        resp, p = ramp_filter_response(g.n_det, tau, filter, cutoff)
        resp_t = torch.from_numpy(resp * tau).to(sino.device, self.dtype)
        spec = torch.fft.rfft(sino.to(self.dtype) * pre, n=p, dim=-1)
        return torch.fft.irfft(spec * resp_t, n=p, dim=-1)[..., : g.n_det]

    def fbp(self, sino: torch.Tensor, grid: ImageGrid | None = None,
            filter: FilterName = "ramp", cutoff: float = 1.0) -> torch.Tensor:
        """Filtered backprojection for the flat detector (full 360-degree scan).

        Args:
            sino: ``(B, C, n_views, n_det)`` line integrals.
            grid: output grid (any shape, pixel size and centre); default ``geom.object_grid``.
            filter: one of :data:`FBP_FILTERS` (the ramp, or the ramp under a Shepp-Logan,
                Hamming or Hann window).
            cutoff: filter cutoff as a fraction of the Nyquist frequency, in (0, 1].

        Returns:
            ``(B, C, H, W)`` attenuation in the units of ``sino`` per mm (1/mm for line
            integrals). Differentiable with respect to ``sino`` (any order): the filter is
            plain torch ops, the backprojection an autograd Function whose backward is its
            exact adjoint, recomputed chunk-wise so nothing (pixel x view)-sized is saved.
        """
        grid = self.geom.object_grid if grid is None else grid
        self._check_grid(grid)
        q = self.filter_sinogram(sino, filter, cutoff)
        return self._backproject_pixel_driven(q, grid)

    def _check_grid(self, grid: ImageGrid) -> None:
        h, w = grid.shape
        if h < 1 or w < 1 or not grid.pixel_mm > 0:
            raise ValueError(f"FanBeamProjector.fbp: grid needs shape >= (1, 1) and pixel_mm > 0, "
                             f"got shape={grid.shape}, pixel_mm={grid.pixel_mm}")
        # The distance weight 1/U^2 diverges at the source circle: the farthest grid corner
        # must stay inside it (any grid covering the scan field does, by a wide margin).
        half = (np.array([w, h]) - 1) / 2 * grid.pixel_mm
        reach = float(np.hypot(abs(grid.centre_mm[0]) + half[0], abs(grid.centre_mm[1]) + half[1]))
        if reach >= 0.95 * self.geom.sid_mm:
            raise ValueError(
                f"FanBeamProjector.fbp: grid reaches {reach:.0f} mm from the isocentre, too close "
                f"to the source circle (sid_mm={self.geom.sid_mm}); use a smaller grid")

    def _backproject_pixel_driven(self, q: torch.Tensor, grid: ImageGrid) -> torch.Tensor:
        """``(pi / V) sum_v Q_v(s'(x, y)) / U^2``: pixel-driven, linear on the detector.

        ``q``: ``(B, C, V, D)`` filtered sinogram -> ``(B, C, H, W)`` on ``grid``. Wrapped in an
        autograd Function whose backward is the exact adjoint, recomputed chunk by chunk (so
        training through FBP saves nothing view-by-pixel sized).
        """
        return _PixelBackprojection.apply(q, self, grid)

    def _bp_chunks(self, grid: ImageGrid, device: torch.device):
        """Yield ``(idx, w0, w1)`` per view chunk: ``(H*W, m)`` row indices into the padded
        sinogram table (see ``_bp_table``) and the two linear-interpolation weights x 1/U^2
        (up to the constant ``_bp_scale``). The buffers are reused: consume each before the next.

        For every pixel and view the detector position ``s'`` and weight ``1/U^2`` are computed
        on the fly, so any grid works and nothing grid-sized is cached.
        """
        g = self.geom
        nv, nd = g.n_views, g.n_det
        h, w = grid.shape
        dt = self.dtype
        d = g.sid_mm
        stride = nd + 2
        x = grid.x_mm(device).to(dt).view(1, w, 1)
        y = grid.y_mm(device).to(dt).view(h, 1, 1)
        beta = g.view_angles().to(device)
        sin_b, cos_b = torch.sin(beta).to(dt), torch.cos(beta).to(dt)
        k = d / self.tau_mm
        centre = (nd - 1) / 2 + 1  # +1: pad channel
        if dt == torch.float32:
            magic, magic_bits, idx_dtype = 1.5 * 2.0**23, 0x4B400000, torch.int32
        else:
            magic, magic_bits, idx_dtype = 1.5 * 2.0**52, 0x4338000000000000, torch.int64
        view_base = torch.arange(nv, device=device, dtype=idx_dtype) * stride
        # View chunks of ~_FBP_CHUNK_ELEMS (pixel, view) pairs; the four work buffers are
        # allocated once (fresh multi-MB temporaries per chunk cost more in page faults than
        # the arithmetic) and stay cache-sized.
        chunk = int(min(nv, max(8, min(32, _FBP_CHUNK_ELEMS // (h * w)))))
        bufs = torch.empty(4, h * w * chunk, device=device, dtype=dt)
        for v0 in range(0, nv, chunk):
            v1 = min(nv, v0 + chunk)
            m = v1 - v0
            dist, t, r, fl = (buf[: h * w * m].view(h, w, m) for buf in bufs)
            sb, cb = sin_b[v0:v1], cos_b[v0:v1]
            # 1/(source-to-pixel distance along the central ray), > 0 by _check_grid.
            torch.sub(cb * y + d, sb * x, out=dist)
            inv = dist.reciprocal_()
            # Fractional padded channel index of the pixel's projection s' = D (p.e_u) / dist,
            # clamped into the zero pads (t = 0 or nd + 1 reads 0 with weight 1).
            torch.add((cb * k) * x, (sb * k) * y, out=t)
            t.mul_(inv).add_(centre).clamp_(0.0, nd + 1.0)
            # Integer part without a float->int conversion pass (the slowest op here): adding
            # M = 1.5 * 2^23 (2^52 for float64) rounds t - 1/2 to an integer held in the
            # mantissa, so the bits minus those of M are that integer. It is floor(t), or
            # floor(t) - 1 where t is an integer, and then f = 1: the same interpolated value.
            torch.sub(t, 0.5, out=r).add_(magic)
            f = t.sub_(torch.sub(r, magic, out=fl))
            idx = r.view(idx_dtype).sub_(magic_bits).add_(view_base[v0:v1]).view(h * w, m)
            wgt = inv.square_()  # (1/U^2) / D^2; D^2 is in _bp_scale
            w1 = f.mul_(wgt)
            w0 = wgt.sub_(w1)
            yield idx, w0.view(h * w, m), w1.view(h * w, m)

    def _bp_scale(self) -> float:
        """``d(beta) / 2`` for a full 2 pi scan, times the ``D^2`` left out of the weights."""
        return math.pi / self.geom.n_views * self.geom.sid_mm**2


class _PixelBackprojection(torch.autograd.Function):
    """FBP's pixel-driven backprojection; its backward is the exact adjoint (and vice versa)."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, op: FanBeamProjector, grid: ImageGrid) -> torch.Tensor:
        ctx.op, ctx.grid = op, grid
        b, c, nv, nd = q.shape
        h, w = grid.shape
        # Table rows: view v, padded channel j (one zero channel each side, so samples off the
        # detector read 0 and interpolation fades to 0 over the last half channel), plus one
        # trailing zero row; columns are the B*C images, so embedding_bag reads the B*C values
        # of a detector sample contiguously. ``hi`` is ``lo`` shifted by one row (each
        # sample's right-hand neighbour), so both sides gather with the same index.
        qp = torch.nn.functional.pad(q.reshape(b * c, nv, nd), (1, 1))
        lo = torch.nn.functional.pad(qp.permute(1, 2, 0).reshape(nv * (nd + 2), b * c),
                                     (0, 0, 0, 1))
        hi = torch.nn.functional.pad(lo[1:], (0, 0, 0, 1))
        out = torch.zeros(h * w, b * c, device=q.device, dtype=q.dtype)
        for idx, w0, w1 in op._bp_chunks(grid, q.device):
            out.add_(torch.nn.functional.embedding_bag(idx, lo, per_sample_weights=w0,
                                                       mode="sum"))
            out.add_(torch.nn.functional.embedding_bag(idx, hi, per_sample_weights=w1,
                                                       mode="sum"))
        out.mul_(op._bp_scale())
        return out.t().reshape(b, c, h, w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _PixelBackprojectionAdjoint.apply(grad, ctx.op, ctx.grid), None, None


class _PixelBackprojectionAdjoint(torch.autograd.Function):
    """Adjoint of :class:`_PixelBackprojection`: image ``(B, C, H, W)`` -> ``(B, C, V, D)``."""

    @staticmethod
    def forward(ctx, img: torch.Tensor, op: FanBeamProjector, grid: ImageGrid) -> torch.Tensor:
        ctx.op, ctx.grid = op, grid
        b, c, h, w = img.shape
        nv, nd = op.geom.n_views, op.geom.n_det
        g = img.reshape(b * c, h * w, 1)
        n_rows = nv * (nd + 2) + 2
        table = torch.zeros(b * c, n_rows, device=img.device, dtype=img.dtype)
        # Scatter-add of each (pixel, view) sample onto its two detector neighbours; a 1-D
        # weighted bincount per image is ~2x faster on CPU than a 2-D index_add_.
        for idx, w0, w1 in op._bp_chunks(grid, img.device):
            flat0 = idx.reshape(-1).long()
            flat1 = flat0 + 1
            for j in range(b * c):
                table[j] += torch.bincount(flat0, (w0 * g[j]).reshape(-1), minlength=n_rows)
                table[j] += torch.bincount(flat1, (w1 * g[j]).reshape(-1), minlength=n_rows)
        table = table[:, : nv * (nd + 2)].view(b, c, nv, nd + 2)[..., 1:-1]
        return table * op._bp_scale()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _PixelBackprojection.apply(grad, ctx.op, ctx.grid), None, None


def _row_subset(a: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows ``rows`` (sorted, unique) of CSR ``a`` as a new CSR matrix, each row's entries in
    their order. Copies runs of consecutive rows as slices (the rays a support meets are a
    few channel ranges per view), so nothing nnz-sized is allocated besides the result."""
    crow, col, val = a.crow_indices(), a.col_indices(), a.values()
    cut = torch.nonzero(rows[1:] - rows[:-1] != 1)[:, 0] + 1
    starts = torch.cat([rows[:1], rows[cut]]).tolist()
    ends = (torch.cat([rows[cut - 1], rows[-1:]]) + 1).tolist()
    cols, vals, ptrs = [], [], [crow.new_zeros(1)]
    offset = 0
    for r0, r1 in zip(starts, ends, strict=True):
        p0, p1 = int(crow[r0]), int(crow[r1])
        cols.append(col[p0:p1])
        vals.append(val[p0:p1])
        ptrs.append(crow[r0 + 1:r1 + 1] - p0 + offset)
        offset += p1 - p0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        return torch.sparse_csr_tensor(torch.cat(ptrs), torch.cat(cols), torch.cat(vals),
                                       size=(rows.numel(), a.shape[1]), check_invariants=False)


def _spmm_blocked(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``a @ x`` for CSR ``a`` and dense ``x`` (M, K), in column blocks that stay in cache."""
    k = x.shape[1]
    block = int(min(32, max(4, _RHS_BLOCK_ELEMS // x.shape[0])))
    if k <= block:
        return a @ x
    n_blk = math.ceil(k / block)
    size = math.ceil(k / n_blk)  # equal blocks: no tiny last block
    return torch.cat([a @ x[:, i:i + size].contiguous() for i in range(0, k, size)], dim=1)
