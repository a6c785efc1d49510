"""Real-time streaming of the causal (`stream`) model: step functions with explicit
state (`step`), the JAX streamer (`engine.Streamer`), the onnxruntime one
(`onnx_engine.OnnxStreamer`) and the loop that feeds them a recording (`driver`).

`Streamer` is imported on first use, so the ONNX engine runs without JAX installed.
"""


def __getattr__(name):
  if name == "Streamer":
    from avsep_jax.stream.engine import Streamer  # pylint: disable=g-import-not-at-top
    return Streamer
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
