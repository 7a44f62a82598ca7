"""SSIM as scikit-image computes it, split into the parts scoring can share.

``skimage.metrics.structural_similarity(x, y, gaussian_weights=True, sigma, data_range,
use_sample_covariance=False)`` filters five maps (x, y, x², y², xy) with a Gaussian and
combines them pixel by pixel. Of the five, two depend on the scored image only (shared by its
comparisons against GSI and against the ideal image), two on the reference only (the same for
every method: :mod:`benchmark.refcache` keeps them) and one on both. So a method pays one
filtered map per comparison plus two per image, instead of five per comparison.

The filter is OpenCV's separable filter (``cv2.sepFilter2D``, reflect border: the same
extension as scipy's ``mode="reflect"``), 4 times faster than ``scipy.ndimage`` in float64 and
equal to it to about 1e-16 relative; the pixel formula follows skimage's operations in
skimage's order, in float64. The whole SSIM therefore equals skimage's to about 1e-15 (the
tests hold it to 1e-12).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Moments", "cross_moment", "gaussian_filter", "gaussian_kernel", "moments",
           "scratch_array", "ssim_map", "ssim_mean", "ssim_pair"]

#: skimage's Gaussian SSIM window: radius int(truncate * sigma + 0.5).
SKIMAGE_TRUNCATE = 3.5


def gaussian_kernel(sigma: float, radius: int) -> np.ndarray:
    """(2 radius + 1,) float64 normalised Gaussian, as ``scipy.ndimage`` builds it."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (sigma * sigma) * x**2)
    return phi / phi.sum()


def gaussian_filter(image: np.ndarray, kernel: np.ndarray, out: np.ndarray | None = None
                    ) -> np.ndarray:
    """(H, W) float64 image filtered with the separable ``kernel`` along both axes, the border
    extended by reflection (``d c b a | a b c d``), as ``scipy.ndimage.gaussian_filter(...,
    mode="reflect")`` does; into ``out`` when given."""
    import cv2

    # OpenCV rather than scipy.ndimage: its float64 separable filter is vectorised (scipy's
    # correlate1d is scalar, torch's grouped convolution slower still on CPU).
    src = np.ascontiguousarray(image, dtype=np.float64)
    if out is None:
        return cv2.sepFilter2D(src, cv2.CV_64F, kernel, kernel, borderType=cv2.BORDER_REFLECT)
    return cv2.sepFilter2D(src, cv2.CV_64F, kernel, kernel, dst=out,
                           borderType=cv2.BORDER_REFLECT)


_WORK = threading.local()


def scratch_array(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float64 array of ``shape`` owned by this thread, reused from call to call.

    The per-pair arrays of SSIM are temporaries of 2 MB at 512 x 512; a fresh one each time
    costs more in page faults (the allocator hands such blocks back to the system on free)
    than the arithmetic done in it."""
    bufs: dict[tuple[str, tuple[int, ...]], np.ndarray] | None = getattr(_WORK, "bufs", None)
    if bufs is None:
        bufs = _WORK.bufs = {}
    buf = bufs.get((name, shape))
    if buf is None:
        if len(bufs) > 16:  # another grid size: drop the old ones
            bufs.clear()
        buf = bufs[(name, shape)] = np.empty(shape, dtype=np.float64)
    return buf


@dataclass(frozen=True)
class Moments:
    """The Gaussian-weighted local statistics of one image that SSIM needs from it alone.

    Attributes (each (H, W) float64): ``image`` (the image as filtered, kept for the cross
    term), ``mean`` (local mean), ``mean_sq`` (local mean squared: ``mean ** 2``, as skimage
    forms it), ``var`` (local population variance: E[x²] - mean·mean, in skimage's order).
    """

    image: np.ndarray
    mean: np.ndarray
    mean_sq: np.ndarray
    var: np.ndarray

    def to_state(self) -> dict[str, np.ndarray]:
        """What :mod:`benchmark.refcache` keeps of a reference (the image itself is not kept:
        the scored image's cross term needs it, and the caller has it)."""
        return {"mean": self.mean, "var": self.var}

    @classmethod
    def from_state(cls, image: np.ndarray, state: dict[str, np.ndarray], *,
                   scratch: bool = False) -> Moments:
        """The moments of ``image`` from :meth:`to_state`; with ``scratch``, the derived
        arrays are this thread's scratch (for a comparison made at once, in this thread)."""
        mean = np.asarray(state["mean"], dtype=np.float64)
        sq = np.multiply(mean, mean, out=scratch_array("ysq", mean.shape) if scratch else None)
        return cls(image=np.asarray(image, dtype=np.float64), mean=mean, mean_sq=sq,
                   var=np.asarray(state["var"], dtype=np.float64))


def moments(image: np.ndarray, kernel: np.ndarray) -> Moments:
    """:class:`Moments` of a (H, W) image (cast to float64)."""
    x = np.asarray(image, dtype=np.float64)
    ux = gaussian_filter(x, kernel)
    uxx = gaussian_filter(np.multiply(x, x, out=scratch_array("xx", x.shape)), kernel)
    # skimage: vx = cov_norm * (uxx - ux * ux) with cov_norm 1.0 (population covariance);
    # multiplying by 1.0 is exact, so it is left out, and ux ** 2 is ux * ux bit for bit.
    # In place throughout: each fresh 2 MB array costs more in page faults than its arithmetic.
    sq = np.multiply(ux, ux)
    return Moments(image=x, mean=ux, mean_sq=sq, var=np.subtract(uxx, sq, out=uxx))


def cross_moment(a: Moments, b: Moments, kernel: np.ndarray, out: np.ndarray | None = None,
                 mean_product: np.ndarray | None = None) -> np.ndarray:
    """(H, W) local covariance of two images: E[ab] - mean_a · mean_b, in skimage's order
    (into ``out`` when given; ``mean_product``: mean_a · mean_b when the caller has it)."""
    shape = a.image.shape
    uab = gaussian_filter(np.multiply(a.image, b.image, out=scratch_array("ab", shape)), kernel,
                          out=out)
    if mean_product is None:
        mean_product = np.multiply(a.mean, b.mean, out=scratch_array("mm", shape))
    return np.subtract(uab, mean_product, out=uab)


def ssim_map(x: Moments, y: Moments, cov: np.ndarray, data_range: float, *,
             k1: float = 0.01, k2: float = 0.03, scratch: bool = False,
             mean_product: np.ndarray | None = None) -> np.ndarray:
    """(H, W) float64 SSIM map from the two images' moments and their covariance ``cov``
    (:func:`cross_moment`), with skimage's constants C1 = (k1 R)², C2 = (k2 R)² and its
    operations in its order (``structural_similarity(..., full=True)[1]``), in place: ``cov``
    (and ``mean_product``, ux · uy when the caller has it) is overwritten, and with ``scratch``
    the map is this thread's scratch array (valid until its next call)."""
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    shape = cov.shape
    if mean_product is None:
        a1 = np.multiply(x.mean, 2, out=scratch_array("a1", shape) if scratch else None)
        np.multiply(a1, y.mean, out=a1)         # A1 = 2 * ux * uy + C1
    else:
        # (2 ux) uy == 2 (ux uy) bit for bit: doubling is exact, so it commutes with rounding
        a1 = np.multiply(mean_product, 2, out=mean_product)
    a1 += c1
    a2 = np.multiply(cov, 2, out=cov)           # A2 = 2 * vxy + C2
    a2 += c2
    d = np.add(x.mean_sq, y.mean_sq, out=scratch_array("d", shape))  # B1 = ux ** 2 + uy ** 2 + C1
    d += c1
    b2 = np.add(x.var, y.var, out=scratch_array("b2", shape))        # B2 = vx + vy + C2
    b2 += c2
    np.multiply(d, b2, out=d)                   # D = B1 * B2
    np.multiply(a1, a2, out=a1)                 # S = (A1 * A2) / D
    return np.divide(a1, d, out=a1)


def ssim_pair(x: Moments, y: Moments, kernel: np.ndarray, data_range: float, *,
              k1: float = 0.01, k2: float = 0.03, radius: int | None = None,
              region: np.ndarray | None = None) -> float:
    """The mean SSIM of two images from their moments: over the pixels at least ``radius``
    from the edge (skimage's mean SSIM), or over the (H, W) bool ``region``. Every temporary
    is this thread's scratch."""
    shape = x.image.shape
    mm = np.multiply(x.mean, y.mean, out=scratch_array("mm", shape))  # shared by cov and A1
    cov = cross_moment(x, y, kernel, out=scratch_array("cov", shape), mean_product=mm)
    smap = ssim_map(x, y, cov, data_range, k1=k1, k2=k2, scratch=True, mean_product=mm)
    if region is not None:
        return float(smap[region].mean())
    if radius is None:
        raise ValueError("ssim_pair: give radius (skimage's mean) or region")
    return ssim_mean(smap, radius)


def ssim_mean(smap: np.ndarray, radius: int) -> float:
    """skimage's mean SSIM: the map's mean over the pixels at least ``radius`` from the edge
    (float64)."""
    return float(smap[radius:smap.shape[0] - radius, radius:smap.shape[1] - radius]
                 .mean(dtype=np.float64))


def skimage_radius(sigma: float) -> int:
    """The window radius skimage uses for a Gaussian of ``sigma``."""
    return int(SKIMAGE_TRUNCATE * sigma + 0.5)


def check_window(window: int, sigma: float) -> int:
    """The radius of an odd ``window``; it must be skimage's window for ``sigma``."""
    if window % 2 != 1:
        raise ValueError(f"SSIM window must be odd, got {window}")
    if window != 2 * skimage_radius(sigma) + 1:
        raise ValueError(f"SSIM window {window} is not skimage's for sigma {sigma} "
                         f"({2 * skimage_radius(sigma) + 1})")
    return window // 2


def batch_moments(images: Sequence[np.ndarray], kernel: np.ndarray) -> list[Moments]:
    """:func:`moments` of each (H, W) image, the images spread over the scoring threads
    (:func:`benchmark.metrics.slices.map_slices`)."""
    from .slices import map_slices

    return map_slices(lambda i: moments(images[i], kernel), len(images))
