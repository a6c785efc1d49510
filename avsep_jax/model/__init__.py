"""Flax Linen modules of the audio-visual separator; `AVSeparator` is the entry point."""

from avsep_jax.model.avsep import AVSeparator
from avsep_jax.model.avsep import check_inputs
from avsep_jax.model.variants import model_config

__all__ = ["AVSeparator", "check_inputs", "model_config"]
