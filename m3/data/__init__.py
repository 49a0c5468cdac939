"""Datasets for M3 experiments.

- :mod:`m3.data.granularity`: the procedural granularity benchmark (question families that need 1 to 576
  visual tokens by design). Import from the submodule; this package stays empty so that
  ``python -m m3.data.granularity`` runs cleanly.
"""
