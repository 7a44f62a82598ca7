"""Assembly of a whole procedural body (anatomy only) in paint order."""

from __future__ import annotations

import numpy as np

from .frame import BodyFrame
from .raster import Structure
from .skeleton import skeleton
from .soft_tissue import abdomen, body_outline, intermuscular_fat, knee_soft, thorax, vessels


def build_anatomy(frame: BodyFrame) -> list[Structure]:
    """Every anatomical structure of ``frame`` in the order it is painted.

    Order: skin, subcutaneous fat, muscle; intermuscular fat; thoracic organs; abdominal and
    pelvic organs (visceral fat, bowel, bladder, kidneys, liver, spleen, stomach, psoas);
    vessels; knee fat pads; bones (spine, ribs, sternum, sacrum, hip bones, femora, knee).
    """
    seed = frame.seed
    return (body_outline(frame)
            + intermuscular_fat(frame, np.random.default_rng([seed, 201]))
            + thorax(frame, np.random.default_rng([seed, 202]))
            + abdomen(frame, np.random.default_rng([seed, 203]))
            + vessels(frame)
            + knee_soft(frame)
            + skeleton(frame))
