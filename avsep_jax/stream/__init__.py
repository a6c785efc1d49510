"""Real-time streaming of the causal (`stream`) model: step functions with explicit
state (`step`), and a driver with input checks (`engine.Streamer`)."""

from avsep_jax.stream.engine import Streamer

__all__ = ["Streamer"]
