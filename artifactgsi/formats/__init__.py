"""Other data formats read into (or written from) this toolkit's dataset layout.

- :mod:`artifactgsi.formats.aapm`: the AAPM CT-MAR Grand Challenge's raw float32 cases
  (``artifactgsi import-aapm``).
"""
