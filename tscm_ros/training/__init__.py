"""Offline training: the TSCM teacher (triplet loss) and the student distilled from it (``tscm_train``).

:mod:`.config` (``TrainConfig``, YAML + overrides), :mod:`.train` (the loop, DDP, checkpoints, resume),
:mod:`.evaluate` (per-epoch validation metrics), :mod:`.cli` (``tscm_train``).
"""
