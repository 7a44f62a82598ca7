"""Procedural patients: determinism, valid fractions, implant placement and removal, labels
against a brute-force reference, anti-aliasing, z-consistency, pose, sides, field of view."""

import json
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from artifactgsi.phantoms import (
    BODY_REGIONS,
    IMPLANT_REGIONS,
    IMPLANT_TYPES,
    LABEL_CLASSES,
    MATERIALS,
    Pose2D,
    Structure,
    make_patient,
    rasterize,
)
from artifactgsi.phantoms.raster import paint
from artifactgsi.phantoms.shapes import Capsule, Sphere, SweptSection, Tube
from artifactgsi.phantoms.tissues import Label, Tissue
from artifactgsi.physics.geometry import ImageGrid

torch.set_num_threads(1)

METAL = [MATERIALS.index(m) for m in ("ti6al4v", "cocrmo", "steel316l")]
FOV = ImageGrid((160, 160), 440.0 / 160)  # whole scan field, coarse: fast
COMBOS = [(k, r) for k, regs in IMPLANT_REGIONS.items() if k != "none" for r in regs]


def metal(frac: torch.Tensor) -> torch.Tensor:
    return frac[METAL].sum(0)


def xy(grid: ImageGrid) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.meshgrid(grid.y_mm(), grid.x_mm(), indexing="ij")[::-1]


@pytest.fixture(scope="module")
def patients() -> dict:
    return {(k, r): make_patient(7, k, r) for k, r in COMBOS}


def test_deterministic_for_a_seed_and_seeds_differ():
    a, b = make_patient(11, "spinal_fixation"), make_patient(11, "spinal_fixation")
    assert a.describe() == b.describe()
    z = a.focus_z_mm
    fa, la = a.rasterize(z, FOV)
    fb, lb = b.rasterize(z, FOV)
    assert torch.equal(fa, fb) and torch.equal(la, lb)
    c = make_patient(12, "spinal_fixation", a.body_region)
    assert not torch.equal(c.rasterize(z, FOV)[0], fa)


@pytest.mark.parametrize("region", BODY_REGIONS)
def test_fractions_are_valid_volume_fractions(region):
    p = make_patient(3, "none", region)
    lo, hi = p.z_range_mm
    for z in (lo + 2, 0.5 * (lo + hi), hi - 2):
        frac, lab = p.rasterize(z, FOV, pose=Pose2D(2.0, 3.0, -4.0), supersample=2)
        assert frac.shape == (len(MATERIALS), *FOV.shape) and frac.dtype == torch.float32
        assert lab.shape == FOV.shape and lab.dtype == torch.uint8
        assert frac.min() >= 0 and frac.max() <= 1
        assert frac.sum(0).max() <= 1 + 1e-6
        assert int(lab.max()) < len(LABEL_CLASSES)
        assert metal(frac).max() == 0  # no implant, no metal
        body = frac.sum(0) > 0.5
        assert body.float().mean() > 0.02  # there is a body in the slice (one knee at least)


@pytest.mark.parametrize("kind,region", COMBOS)
def test_metal_exactly_within_the_implant_z_range(patients, kind, region):
    p = patients[(kind, region)]
    assert p.body_region in IMPLANT_REGIONS[kind] and p.implant_materials
    lo, hi = p.implant_z_range_mm
    assert p.z_range_mm[0] <= lo < hi <= p.z_range_mm[1]
    assert lo - 1 <= p.focus_z_mm <= hi + 1
    fine = ImageGrid((220, 220), 440.0 / 220)
    for z in (lo + 1.0, 0.5 * (lo + hi), p.focus_z_mm, hi - 1.0):
        assert metal(p.rasterize(z, fine, supersample=3)[0]).sum() > 0, z
    for z in (lo - 0.3, hi + 0.3, lo - 20, hi + 20):
        assert metal(p.rasterize(z, fine, supersample=3)[0]).sum() == 0, z
    used = {MATERIALS[m] for m in METAL
            if p.rasterize(p.focus_z_mm, fine, supersample=2)[0][m].sum() > 0}
    assert used <= set(p.implant_materials)


@pytest.mark.parametrize("kind,region", COMBOS)
def test_clean_image_fills_the_implant_with_tissue(patients, kind, region):
    """implant=False: no metal, no air where the metal was, and changes only next to it."""
    p = patients[(kind, region)]
    grid = ImageGrid((200, 200), 2.0)
    lo, hi = p.implant_z_range_mm
    for z in (p.focus_z_mm, 0.5 * (lo + hi)):
        with_imp, lab = p.rasterize(z, grid, supersample=2)
        clean, lab_clean = p.rasterize(z, grid, implant=False, supersample=2)
        m = metal(with_imp) > 0
        assert m.any()
        assert metal(clean).max() == 0
        assert (lab_clean == Label.METAL).sum() == 0
        air_clean = 1 - clean.sum(0)
        assert air_clean[m].max() < 1e-5  # bone / tissue where the implant was
        # differences (resected head, reamed socket, liner) stay within 20 mm of the metal
        dist_mm = ndimage.distance_transform_edt(~m.numpy()) * grid.pixel_mm
        changed = (with_imp - clean).abs().sum(0).numpy() > 1e-6
        assert dist_mm[changed].max() <= 20.0


def test_labels_are_the_majority_class_and_match_a_brute_force_reference():
    p = make_patient(5, "hip_prosthesis", "hip")
    side = 1 if "left" in p.implant.sides else -1
    hc = p.frame.femurs[side].head_c
    grid = ImageGrid((60, 60), 1.5, (float(hc[0]), float(hc[1])))  # the hip joint
    for z in (hc[2] - 12.0, hc[2] + 3.0):
        frac, lab = p.rasterize(z, grid, supersample=3)
        mf = metal(frac)
        assert (lab[mf > 0.5] == Label.METAL).all()
        assert (mf[lab == Label.METAL] >= 2 / 9 - 1e-6).all()
        # reference: 15 x 15 sub-samples per pixel, majority taken here from its label counts
        ref_frac, _ = p.rasterize(z, grid, supersample=15)
        _, sub = paint(p.structures(), z, grid, Pose2D(), 15)
        h, w = grid.shape
        counts = torch.stack([(sub == k).view(h, 15, w, 15).sum((1, 3))
                              for k in range(len(LABEL_CLASSES))])
        share, ref_lab = (counts.float() / 225).max(0)
        clear = share > 0.75
        assert clear.sum() > 0.8 * h * w
        agree = (lab[clear] == ref_lab[clear].to(torch.uint8)).float().mean()
        assert agree > 0.99
        assert Label.METAL in set(ref_lab.unique().tolist())
        # fractions at 3 x 3 sub-samples approximate the 15 x 15 reference
        assert (frac - ref_frac).abs().sum(0).mean() < 0.03


@pytest.mark.parametrize("shape,area", [
    (Sphere((3.3, -2.1, 0.0), 10.0), math.pi * 10.0**2),
    (Sphere((0.4, 0.7, 6.0), 10.0), math.pi * (10.0**2 - 6.0**2)),  # off-centre cut
    (Tube((0, 0, -30), (15, 0, 30), 8.0), math.pi * 64.0 / math.cos(math.atan(15 / 60))),
    (Capsule((-4, 1, -20), (4, -1, 20), 9.0), None),
    (SweptSection([-5.0, 5.0], 1.2, -0.7, 14.0, 9.0), math.pi * 14.0 * 9.0),
])
def test_anti_aliased_area_matches_the_analytic_cut(shape, area):
    if area is None:  # capsule: the cut of an oblique cylinder of radius r
        d = shape.d
        area = math.pi * shape.r**2 / abs(d[2])
    grid = ImageGrid((64, 64), 1.0, (0.3, -0.2))
    frac, _ = rasterize([Structure(shape, Tissue.SOFT)], 0.0, grid, supersample=3)
    got = float(frac.sum()) * grid.pixel_mm**2
    assert got == pytest.approx(area, rel=0.01)


def test_neighbouring_slices_are_similar_distant_ones_are_not():
    p = make_patient(2, "none", "lumbar_spine")
    z = p.focus_z_mm
    f0 = p.rasterize(z, FOV, supersample=2)[0]
    d1 = (p.rasterize(z + 1.0, FOV, supersample=2)[0] - f0).abs().sum(0).mean()
    d40 = (p.rasterize(z + 40.0, FOV, supersample=2)[0] - f0).abs().sum(0).mean()
    assert d1 < 0.2 * d40


def test_translation_pose_shifts_the_image():
    p = make_patient(4, "fracture_fixation", "pelvis")
    grid = ImageGrid((200, 200), 1.0, (0.0, 0.0))
    z = p.focus_z_mm
    f0, l0 = p.rasterize(z, grid, supersample=2)
    f1, l1 = p.rasterize(z, grid, pose=Pose2D(tx_mm=10.0), supersample=2)
    f2, _ = p.rasterize(z, grid, pose=Pose2D(ty_mm=-7.0), supersample=2)
    # +10 mm in x = 10 columns to the right; -7 mm in y = 7 rows up
    diff = (f1[:, :, 10:] - f0[:, :, :-10]).abs()
    assert diff.max() <= 2 / 4 + 1e-6 and diff.mean() < 1e-4
    assert (l1[:, 10:] != l0[:, :-10]).float().mean() < 1e-3
    assert (f2[:, :-7, :] - f0[:, 7:, :]).abs().mean() < 1e-4


def test_rotation_pose_turns_the_image():
    """p_scanner = R p_patient: a 90 degree pose turns the image clockwise on screen (y down)."""
    p = make_patient(4, "none", "hip")
    grid = ImageGrid((120, 120), 3.5)
    f0, l0 = p.rasterize(-10.0, grid, supersample=2)
    f1, l1 = p.rasterize(-10.0, grid, pose=Pose2D(90.0), supersample=2)
    rot = torch.rot90(f0, -1, dims=(1, 2))
    assert (f1 - rot).abs().mean() < 1e-4
    assert (l1 != torch.rot90(l0, -1, dims=(0, 1))).float().mean() < 1e-3


@pytest.mark.parametrize("region", ["hip", "pelvis", "femur", "knee"])
def test_left_structures_lie_at_positive_x(region):
    for seed in (0, 1):
        p = make_patient(seed, "none", region)
        x, _ = xy(FOV)
        found = set()
        for z in np.linspace(*p.z_range_mm, 7):
            lab = p.rasterize(float(z), FOV, supersample=1)[1]
            for cls, sign in ((Label.LEFT_PELVIS, 1), (Label.LEFT_FEMUR, 1),
                              (Label.RIGHT_PELVIS, -1), (Label.RIGHT_FEMUR, -1)):
                sel = lab == cls
                if sel.any():
                    found.add(int(cls))
                    assert (x[sel] * sign > 0).all(), (region, z, cls)
        assert found & {Label.LEFT_FEMUR, Label.RIGHT_FEMUR}, region


def test_spine_and_knee_bones_other_than_femur_are_background():
    p = make_patient(1, "none", "lumbar_spine")
    frac, lab = p.rasterize(p.frame.vertebra("L3").zc, FOV)
    assert frac[MATERIALS.index("cortical_bone")].sum() > 0
    assert lab.max() == 0


@pytest.mark.parametrize("kind,region", [("spinal_fixation", "knee"), ("hip_prosthesis",
                                                                        "femur"),
                                          ("fracture_fixation", "lumbar_spine")])
def test_invalid_combinations_name_both(kind, region):
    with pytest.raises(ValueError, match=kind) as e:
        make_patient(0, kind, region)
    assert region in str(e.value)


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="implant_type"):
        make_patient(0, "knee_replacement")
    with pytest.raises(ValueError, match="body_region"):
        make_patient(0, "none", "skull")


def test_region_is_drawn_from_the_compatible_ones():
    for kind in IMPLANT_TYPES:
        drawn = {make_patient(seed, kind).body_region for seed in range(8)}
        assert drawn <= set(IMPLANT_REGIONS[kind])
        assert len(drawn) >= min(2, len(IMPLANT_REGIONS[kind]))


@pytest.mark.parametrize("region", BODY_REGIONS)
def test_body_fits_the_scan_field_for_any_small_pose(region):
    """Inside 0.42 * 500 = 210 mm of the isocentre for |angle| <= 3 deg, |t| <= 8 mm."""
    grid = ImageGrid((150, 150), 460.0 / 150)
    x, y = xy(grid)
    r = torch.sqrt(x**2 + y**2)
    for seed in range(4):
        p = make_patient(seed, "none", region)
        for z in np.linspace(*p.z_range_mm, 4):
            for pose in (Pose2D(3.0, 8.0, 8.0), Pose2D(-3.0, -8.0, 8.0)):
                frac = p.rasterize(float(z), grid, pose=pose, supersample=1)[0]
                assert frac.sum(0)[r > 210.0 - grid.pixel_mm].max() == 0, (seed, z)


def test_describe_is_json():
    p = make_patient(8, "hip_prosthesis")
    d = json.loads(json.dumps(p.describe()))
    assert d["implant_type"] == "hip_prosthesis" and d["body_region"] == p.body_region
    assert d["implant_materials"] == list(p.implant_materials)
    assert d["implant_sides"] and d["implant"]["components"]
    assert d["implant_z_range_mm"][0] < d["implant_z_range_mm"][1]
    none = make_patient(8, "none", "knee").describe()
    assert none["implant_z_range_mm"] is None and none["implant_materials"] == []


def test_bilateral_hips_have_two_heads():
    for seed in range(40):
        p = make_patient(seed, "hip_prosthesis", "hip")
        if len(p.implant.sides) == 2:
            break
    else:
        pytest.fail("no bilateral hip prosthesis in 40 seeds")
    frac, lab = p.rasterize(p.focus_z_mm, FOV)
    x, _ = xy(FOV)
    m = metal(frac) > 0.5
    assert (x[m] > 0).any() and (x[m] < 0).any()
    assert (lab[m] == Label.METAL).all()


def test_preview_png(tmp_path):
    from artifactgsi.phantoms import preview_png

    p = make_patient(0, "spinal_fixation", "lumbar_spine")
    out = preview_png(p, p.focus_z_mm, tmp_path / "x.png", size=96)
    assert out.stat().st_size > 1000
