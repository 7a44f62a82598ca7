"""Focal-spot and detector-aperture blur: the MTF of the sub-sampled apertures against the
analytic MTF of the box apertures projected to the isocentre, and intensity (not log)
averaging of the sub-rays."""

import numpy as np
import pytest
import torch

from artifactgsi.physics.acquisition import BeamPath, ScanPhysics
from artifactgsi.physics.blur import Blur
from artifactgsi.physics.geometry import FanBeamGeometry
from artifactgsi.physics.polychromatic import Beam, measure
from artifactgsi.physics.scan import Scanner
from artifactgsi.physics.spectra import TubeSpec

CLINICAL = FanBeamGeometry.clinical()  # 0.65 mm channels at the isocentre


def _mtf50(f: np.ndarray, mtf: np.ndarray) -> float:
    i = int(np.argmax(mtf < 0.5))
    return float(f[i - 1] + (mtf[i - 1] - 0.5) / (mtf[i - 1] - mtf[i]) * (f[i] - f[i - 1]))


def _measured_mtf50(blur: Blur, geom: FanBeamGeometry, shifts: int = 48) -> float:
    """MTF50 (cycles/mm at the isocentre) of a weak straight edge through the isocentre,
    parallel to the central ray, read through ``blur``: the edge is moved in ``shifts`` steps
    across one channel and the readings of the central channels interleaved into an
    oversampled edge-spread function (the slanted-edge idea, in the projection)."""
    fine = blur.fine_geometry(geom)
    x_fine = fine.det_u_mm().numpy() * geom.sid_mm / geom.sdd_mm  # rays at the isocentre
    x_chan = geom.det_u_mm().numpy() * geom.sid_mm / geom.sdd_mm
    pitch_iso = geom.det_pitch_mm * geom.sid_mm / geom.sdd_mm
    centre = geom.n_det // 2
    chans = np.arange(centre - 12, centre + 12)
    pos, val = [], []
    p0 = 1e-3  # weak: intensity and log are linear in each other
    for s in range(shifts):
        x0 = (s / shifts - 0.5) * pitch_iso
        t = torch.from_numpy(np.exp(-p0 * (x_fine > x0)))[None, :, None]
        reading = -np.log(blur.reduce(t, geom)[0, :, 0].numpy()) / p0
        pos.append(x_chan[chans] - x0)
        val.append(reading[chans])
    pos, val = np.concatenate(pos), np.concatenate(val)
    order = np.argsort(pos)
    dx = pitch_iso / shifts
    grid = np.arange(pos.min(), pos.max(), dx)
    esf = np.interp(grid, pos[order], val[order])
    lsf = np.diff(esf)
    lsf = lsf * np.hanning(lsf.size)
    mtf = np.abs(np.fft.rfft(lsf, n=8 * lsf.size))
    f = np.fft.rfftfreq(8 * lsf.size, d=dx)
    return _mtf50(f, mtf / mtf[0])


@pytest.mark.parametrize("focal_mm,subsamples", [(0.0, 3), (1.0, 3), (2.0, 4)])
def test_mtf50_matches_the_projected_box_apertures(focal_mm, subsamples):
    blur = Blur(focal_spot_mm=focal_mm, detector_aperture_subsamples=subsamples)
    f = np.linspace(1e-4, 2.0, 20001)
    analytic = _mtf50(f, blur.mtf(f, CLINICAL))
    # By hand for the point source: sinc(f a) = 0.5 at f a = 0.6034, a = pitch / M.
    if focal_mm == 0:
        a_iso = CLINICAL.det_pitch_mm * CLINICAL.sid_mm / CLINICAL.sdd_mm
        assert analytic == pytest.approx(0.6034 / a_iso, rel=1e-3)
    assert _measured_mtf50(blur, CLINICAL) == pytest.approx(analytic, rel=0.10)


def test_a_larger_focal_spot_blurs_more():
    sharp = _measured_mtf50(Blur(0.0, 3), CLINICAL)
    blurred = _measured_mtf50(Blur(2.0, 3), CLINICAL)
    assert blurred < 0.9 * sharp


def test_subrays_are_averaged_in_intensity_not_in_log():
    """A channel half behind a metal edge reads -ln(mean of the sub-rays' transmissions),
    far below the mean of their line integrals (the exponential edge-gradient effect)."""
    geom = FanBeamGeometry.scaled(64)
    blur = Blur(focal_spot_mm=0.0, detector_aperture_subsamples=4)
    fine = blur.fine_geometry(geom)
    edge = 4 * (geom.n_det // 2) + 2  # half of the central channel's sub-rays are behind
    cocr = torch.zeros(1, fine.n_det, 1)
    cocr[0, edge:, 0] = 10.0  # mm of CoCr
    beam = Beam(TubeSpec(120.0))
    per_ray = measure(cocr, ("cocrmo",), beam, None)[0].double()  # one reading per sub-ray
    path = BeamPath(ScanPhysics(blur=blur), geom, beam)
    got = path.measure(cocr, ("cocrmo",), None)[0]
    w, first = blur.taps(geom)
    c = geom.n_det // 2
    sub = per_ray[4 * c + first: 4 * c + first + len(w)]
    want = -torch.log((torch.from_numpy(w) * torch.exp(-sub)).sum())
    assert float(got[c]) == pytest.approx(float(want), rel=1e-4)
    assert float(got[c]) < float((torch.from_numpy(w) * sub).sum()) - 1.0


def test_no_blur_projects_one_ray_per_channel():
    geom = FanBeamGeometry.scaled(32)
    sc = Scanner(geom, physics=ScanPhysics(blur=Blur()))
    assert sc.project(torch.zeros(1, 1, 32, 32)).shape[-1] == geom.n_det
    sc = Scanner(geom, physics=ScanPhysics(blur=Blur(1.0, 3)))
    lines = sc.project(torch.ones(1, 1, 32, 32) * 0.01)
    assert lines.shape[-1] == 3 * geom.n_det
    with pytest.raises(ValueError, match="channels"):
        Scanner(geom).ordinary(lines, ("water",), geom.object_grid, noise=False)
