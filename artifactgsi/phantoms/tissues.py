"""Material, tissue and label tables shared by the phantom modules.

A *material* is one of the attenuation tables of :mod:`artifactgsi.physics.materials` (the
fractions a phantom returns are per material). A *tissue* is what a structure paints into one
sub-sample: most tissues are a single material, a few are fixed mixtures (yellow marrow, stool)
so that partial volumes that exist inside real tissue need no extra material table. Air is the
background of everything: its fraction is ``1 - sum(fractions)``.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from ..schema import LABEL_NAMES

MATERIALS = ("adipose", "soft_tissue", "blood", "lung", "trabecular_bone", "cortical_bone",
             "ti6al4v", "cocrmo", "steel316l")
METAL_MATERIALS = ("ti6al4v", "cocrmo", "steel316l")
#: Segmentation class names by value (the dataset's ``labels`` column).
LABEL_CLASSES = LABEL_NAMES


class Tissue(IntEnum):
    """What one sub-sample holds (painted ids; ``uint8``)."""

    AIR = 0
    FAT = 1
    SOFT = 2  # muscle, skin, organs, discs, cartilage, CSF
    FLUID = 3  # blood material used as the water-like fluid of vessels, bladder, bowel
    LUNG = 4
    TRABECULAR = 5
    CORTICAL = 6
    TI = 7
    COCR = 8
    STEEL = 9
    MARROW = 10  # adult yellow marrow of long-bone diaphyses: mostly fat
    STOOL = 11  # colon content: tissue with fat and small gas bubbles
    POLYETHYLENE = 12  # acetabular liner; CH2 at 0.94 g/cm3 attenuates like adipose


class Label(IntEnum):
    """Segmentation classes, values as in :data:`artifactgsi.schema.LABEL_NAMES`."""

    BACKGROUND = 0
    METAL = 1
    LEFT_PELVIS = 2
    RIGHT_PELVIS = 3
    LEFT_FEMUR = 4
    RIGHT_FEMUR = 5


# Tie-break of the label majority vote: metal over femur over pelvis over background.
LABEL_PRIORITY = (0, 3, 1, 1, 2, 2)

METAL_TISSUE = {"ti6al4v": Tissue.TI, "cocrmo": Tissue.COCR, "steel316l": Tissue.STEEL}


def _mix_table() -> np.ndarray:
    """``(len(Tissue), len(MATERIALS))`` volume fractions of each tissue (rows sum <= 1)."""
    m = np.zeros((len(Tissue), len(MATERIALS)), dtype=np.float32)
    idx = {name: i for i, name in enumerate(MATERIALS)}
    pure = {Tissue.FAT: "adipose", Tissue.SOFT: "soft_tissue", Tissue.FLUID: "blood",
            Tissue.LUNG: "lung", Tissue.TRABECULAR: "trabecular_bone",
            Tissue.CORTICAL: "cortical_bone", Tissue.TI: "ti6al4v", Tissue.COCR: "cocrmo",
            Tissue.STEEL: "steel316l", Tissue.POLYETHYLENE: "adipose"}
    for t, name in pure.items():
        m[t, idx[name]] = 1.0
    # Yellow marrow is ~80 % fat by volume in adult femoral diaphyses (about -60..-100 HU).
    m[Tissue.MARROW, idx["adipose"]] = 0.8
    m[Tissue.MARROW, idx["soft_tissue"]] = 0.2
    # Formed stool: water-rich tissue with some fat and ~15 % finely dispersed gas.
    m[Tissue.STOOL, idx["soft_tissue"]] = 0.75
    m[Tissue.STOOL, idx["adipose"]] = 0.10
    return m


TISSUE_MIX = _mix_table()
