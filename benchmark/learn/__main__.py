"""``python -m benchmark.learn NAME --config C --data D --out O [--resume] [--KEY VALUE]``.

The same as ``marbench train NAME ...`` (the same options and errors), as a module that
``accelerate launch`` can start on several processes::

    accelerate launch --multi_gpu --num_processes 4 -m benchmark.learn lga \\
        --config lga-paper --data artifactgsi/ArtifactGSI --out runs/lga-paper

Every trainer of the ``marbench.trainers`` entry-point group runs this way.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from benchmark.cli import app

    app(["train", *(sys.argv[1:] if argv is None else argv)],
        prog_name="python -m benchmark.learn")


if __name__ == "__main__":
    main()
