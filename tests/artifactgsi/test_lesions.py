"""Lesions: placement at known distances from the metal, density contrast, paired scans."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from artifactgsi.lesion_study import (
    LesionStudy,
    LesionStudyConfig,
    LesionStudyError,
    make_lesion_study,
)
from artifactgsi.phantoms import MATERIALS
from artifactgsi.phantoms.lesions import (
    Lesion,
    LesionType,
    SliceContext,
    apply_lesions,
    density_scale,
    parse_lesion_type,
    place_lesions,
)
from artifactgsi.physics.geometry import ImageGrid
from artifactgsi.physics.materials import mu_matrix

KEV = 100.0


def _synthetic_slices(grid: ImageGrid, n: int = 5, thickness: float = 2.5):
    """Body of soft tissue with a trabecular block, a metal rod along z at the centre."""
    h, w = grid.shape
    yy, xx = np.mgrid[0:h, 0:w]
    c = (h - 1) / 2
    r = np.hypot(yy - c, xx - c) * grid.pixel_mm
    soft = (r < 90).astype(np.float32)
    bone = np.zeros_like(soft)
    bone[int(c) - 20:int(c) + 20, int(c) + 6:int(c) + 26] = 1.0
    soft = soft * (1 - bone)
    metal = r < 6.0
    soft[metal] = 0
    return [SliceContext(index=i, z_mm=i * thickness,
                         host_fraction={"soft_tissue": soft, "trabecular_bone": bone},
                         metal=metal) for i in range(n)]


def test_placement_distances_bands_and_separation():
    grid = ImageGrid((100, 100), 2.0, (0.0, 0.0))
    slices = _synthetic_slices(grid)
    types = (LesionType("hypo", "soft", 8.0, -20.0), LesionType("lytic", "bone", 8.0, -100.0))
    bands = ((0.0, 15.0), (15.0, 30.0), (30.0, 60.0))
    roi = 30.0
    lesions = place_lesions(slices, [1, 3], grid, types, bands, np.random.default_rng(0),
                            kev=KEV, roi_mm=roi, per_slice=2)
    assert {les.band for les in lesions} == {"0-15mm", "15-30mm", "30-60mm"}
    assert {les.type for les in lesions} == {"hypo", "lytic"}
    xs, ys = grid.x_mm().numpy(), grid.y_mm().numpy()
    metal_px = np.argwhere(slices[0].metal)
    for les in lesions:
        x, y, z = les.centre_mm
        assert (xs[les.col], ys[les.row]) == pytest.approx((x, y))
        # Distance measured independently: to every metal pixel centre.
        d = np.min(np.hypot(xs[metal_px[:, 1]] - x, ys[metal_px[:, 0]] - y))
        assert les.distance_mm == pytest.approx(d, abs=1e-9)
        lo, hi = (float(v) for v in les.band.removesuffix("mm").split("-"))
        assert lo <= les.distance_mm < hi
        assert les.distance_mm >= les.radius_mm + grid.pixel_mm  # clear of the metal
        # Host: every pixel centre in the disc is the host tissue.
        host = slices[les.slice_index].host_fraction[les.host_material]
        yy, xx = np.mgrid[0:100, 0:100]
        inside = np.hypot(xs[xx] - x, ys[yy] - y) <= les.radius_mm
        assert host[inside].min() >= 0.9
        assert les.density_scale == pytest.approx(
            density_scale(les.contrast_hu, les.host_material, KEV))
    half_diag = roi / 2 * math.sqrt(2)
    for a in lesions:
        for b in lesions:
            if a is b:
                continue
            assert math.dist(a.centre_mm, b.centre_mm) >= a.radius_mm + b.radius_mm
            if b.cut_radius_mm(a.centre_mm[2]) > 0:  # b shows on a's slice: outside a's ROI
                assert math.dist(a.centre_mm[:2], b.centre_mm[:2]) >= half_diag


def test_density_change_gives_the_contrast_at_the_ideal_kev():
    grid = ImageGrid((40, 40), 1.0, (0.0, 0.0))
    frac = torch.zeros(len(MATERIALS), 40, 40)
    frac[MATERIALS.index("soft_tissue")] = 1.0
    les = Lesion("P-L00", "hyper", "soft", "soft_tissue", (0.5, 0.5, 0.0), 8.0, 35.0,
                 density_scale(35.0, "soft_tissue", KEV), 0, 20, 20, 30.0, "15-30mm")
    out = apply_lesions(frac, [les], 0.0, grid)
    assert torch.equal(frac[MATERIALS.index("soft_tissue")], torch.ones(40, 40))  # not modified
    mu = mu_matrix(MATERIALS, np.array([KEV]))[:, 0]
    mu_w = mu_matrix(("water",), np.array([KEV]))[0, 0]
    hu = 1000 * (np.tensordot(mu, out.numpy(), 1) - mu_w) / mu_w
    assert hu[20, 20] - hu[0, 0] == pytest.approx(35.0, abs=1e-3)  # a pixel fully inside
    # Partial pixels carry the covered area: the HU integral is contrast * area.
    assert (hu - hu[0, 0]).sum() == pytest.approx(35.0 * math.pi * 64, rel=0.01)


def test_lesion_type_parsing_and_errors():
    t = parse_lesion_type("small_hypo:soft:6:-30")
    assert (t.name, t.tissue, t.diameter_mm, t.contrast_hu) == ("small_hypo", "soft", 6, -30)
    with pytest.raises(ValueError, match="NAME:TISSUE"):
        parse_lesion_type("a:soft:6")
    with pytest.raises(ValueError, match="tissue"):
        parse_lesion_type("a:liver:6:10")
    with pytest.raises(ValueError, match="numbers"):
        parse_lesion_type("a:soft:six:10")
    with pytest.raises(ValueError, match="non-zero"):
        LesionType("a", "soft", 6.0, 0.0)


# ----------------------------------------------------------------------------- simulated

TINY_TYPES = (LesionType("hyper", "soft", 20.0, 40.0), LesionType("hypo", "soft", 20.0, -40.0))


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    cfg = LesionStudyConfig(patients=3, slices=5, size=64, margin=1, spacing=2,
                            lesion_types=TINY_TYPES, roi_mm=60.0, supersample=2)
    out = tmp_path_factory.mktemp("lesions") / "study"
    make_lesion_study(cfg, out)
    return LesionStudy(out)


@pytest.mark.slow
def test_simulated_lesions_sit_at_their_recorded_distance_and_contrast(tiny_study):
    assert len(tiny_study.lesions) >= 6
    for scans in tiny_study:
        p = scans.patient
        for les in p.lesions:
            s = les.slice_index
            # Distance on the metal label, brute force over its pixels.
            metal = np.argwhere(scans.labels[s] == 1)
            d = np.min(np.hypot(metal[:, 0] - les.row, metal[:, 1] - les.col)) * p.pixel_mm
            assert les.distance_mm == pytest.approx(d, abs=1e-4)  # recorded to 0.1 um
            # Contrast on the ideal image: the FBP keeps the HU integral, so the area integral
            # of (present - absent) is contrast * pi r^2 (int16 rounding and the apodised
            # filter's spread beyond the window cost a few percent).
            diff = scans.images["ideal"]["present"][s] - scans.images["ideal"]["absent"][s]
            k = int(math.ceil(2.5 * les.radius_mm / p.pixel_mm))
            win = diff[les.row - k:les.row + k + 1, les.col - k:les.col + k + 1]
            integral = win.sum() * p.pixel_mm ** 2
            assert integral == pytest.approx(les.contrast_hu * math.pi * les.radius_mm ** 2,
                                             rel=0.12)
            assert np.sign(diff[les.row, les.col]) == np.sign(les.contrast_hu)


@pytest.mark.slow
def test_paired_scans_differ_only_by_lesions_and_noise(tiny_study):
    scans = next(iter(tiny_study))
    p = scans.patient
    far = np.ones(scans.labels.shape, bool)  # (S, H, W): away from every lesion
    for les in p.lesions:
        for s in range(far.shape[0]):
            dz = abs(p.z_mm[s] - les.centre_mm[2])
            if dz < les.radius_mm + 8:
                k = int(math.ceil((les.radius_mm + 12) / p.pixel_mm))
                far[s, max(0, les.row - k):les.row + k + 1, max(0, les.col - k):les.col + k + 1] \
                    = False
    body = scans.images["ideal"]["absent"] > -500
    sel = far & body & (scans.labels != 1)
    ideal = scans.images["ideal"]
    # Only rounding and the reconstruction filter's faint tails of the lesions remain.
    tail = np.abs(ideal["present"][sel] - ideal["absent"][sel])
    assert np.percentile(tail, 99) <= 2.0 and tail.mean() < 0.5
    for image in ("ordinary", "gsi"):
        a, b = scans.images[image]["absent"][sel], scans.images[image]["present"][sel]
        # Independent noise draws: away from the lesions the scans still differ, by noise
        # that has no mean (the artifacts, the same in both, cancel).
        d = a - b
        assert np.std(d) > 0.5
        assert abs(np.mean(d)) < 4 * np.std(d) / math.sqrt(d.size) + 0.5


@pytest.mark.slow
def test_study_card_records_every_lesion_and_refuses_a_changed_file(tiny_study, tmp_path):
    rec = json.loads((tiny_study.path / "study.json").read_text())
    n = sum(len(p["lesions"]) for p in rec["patients"])
    assert n == rec["n_lesions"] == sum(sum(c.values()) for c in rec["counts"].values())
    les = rec["patients"][0]["lesions"][0]
    for key in ("centre_mm", "radius_mm", "contrast_hu", "tissue", "distance_mm", "band"):
        assert key in les
    card = (tiny_study.path / "README.md").read_text()
    assert "| hyper | soft | soft_tissue | 20 | +40 |" in card
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_study.path, copy)
    f = copy / rec["patients"][0]["file"]
    f.write_bytes(f.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(LesionStudyError, match="sha256"):
        LesionStudy(copy)
    with pytest.raises(LesionStudyError, match="study.json"):
        LesionStudy(tmp_path / "nothing")
