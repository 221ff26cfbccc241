"""Evaluation of explanations."""

from .pointing import cue_mass, pointing_hits

__all__ = ["cue_mass", "pointing_hits"]
