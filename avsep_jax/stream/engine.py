"""A streaming separator: jitted step functions, input checks and a real-time driver.

  streamer = Streamer(config.model, params, step_ms=20)
  state = streamer.init(speaker_mask)                 # (B, S) bool
  state = streamer.push_video(state, frame)           # (B, S, H, W), when it arrives
  state, out = streamer.push_audio(state, chunk)      # (B, step) -> (B, S, step)

`out` of the step ending at input sample E holds samples [E - delay - step, E - delay)
of what the model computes offline (`step.py`); `run` streams a whole recording
(`driver.drive`).
"""

import functools
import json
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from avsep_jax.stream import driver
from avsep_jax.stream import step as step_lib


class Streamer:
  """Step-by-step inference of a causal model, with clear errors on misuse.

  Attributes:
    config: `config.model` (causal).
    step_samples: audio samples per step (a whole number of STFT hops, at most one
      video frame's worth).
    delay: algorithmic delay in samples (window - hop).
  """

  def __init__(self, config, params, step_ms: float = 20.0):
    step_lib.check_streamable(config)
    self.config, self.params = config, params
    hop = config.stft_scales[0][2]
    step = step_ms * config.sample_rate / 1000.0
    per_video = step_lib.hops_per_video_frame(config)
    if step != int(step) or int(step) % hop or not 1 <= int(step) // hop <= per_video:
      raise ValueError(
          f"step_ms={step_ms} must be a whole number of {1000 * hop / config.sample_rate:g}"
          f" ms hops, from one hop to one video frame ({per_video} hops)")
    self.step_samples = int(step)
    self.delay = step_lib.delay_samples(config)
    self.model_id = _model_id(config, params)
    self._video = jax.jit(functools.partial(step_lib.video_step, config))
    self._audio = jax.jit(functools.partial(step_lib.audio_step, config))
    self._template = {}

  def init(self, speaker_mask):
    """The state before any input for a (B, S) bool speaker mask."""
    speaker_mask = np.asarray(speaker_mask, bool)
    if speaker_mask.ndim != 2 or not 1 <= speaker_mask.shape[1] <= self.config.num_speakers:
      raise ValueError(f"speaker_mask must be (B, S) with S <= "
                       f"{self.config.num_speakers}, got shape {speaker_mask.shape}")
    state = step_lib.init_state(self.config, speaker_mask)
    state["model_id"] = jnp.asarray(self.model_id, jnp.int32)
    return state

  def push_video(self, state, frame):
    """Consumes video frame number state['video_frames']: (B, S, H, W) mouth ROIs."""
    b, s = self._check_state(state)
    size = self.config.roi_size
    if np.shape(frame) != (b, s, size, size):
      raise ValueError(f"a video step is one frame of shape (B, S, H, W) = "
                       f"{(b, s, size, size)}, got {np.shape(frame)}")
    return self._video(self.params, state, jnp.asarray(frame))

  def push_audio(self, state, chunk):
    """Consumes (B, step_samples) mixture samples; returns (state, (B, S, step))."""
    b, _ = self._check_state(state)
    if np.shape(chunk) != (b, self.step_samples):
      raise ValueError(
          f"an audio step is (B, {self.step_samples}) samples ({self.step_samples} at "
          f"{self.config.sample_rate} Hz for this streamer), got {np.shape(chunk)}")
    return self._audio(self.params, state, jnp.asarray(chunk, jnp.float32))

  def run(self, mixture, video, speaker_mask, on_step=None):
    """Streams a whole recording as fast as possible: `driver.drive(self, ...)[0]`."""
    return driver.drive(self, mixture, video, speaker_mask, on_step=on_step)[0]

  def _check_state(self, state):
    """(B, S) of a state made by this streamer; ValueError naming what differs."""
    return driver.check_state(state, self._state_shapes, self.model_id, "Streamer")

  def _state_shapes(self, b, s):
    if (b, s) not in self._template:
      template = jax.eval_shape(functools.partial(step_lib.init_state, self.config),
                                jax.ShapeDtypeStruct((b, s), bool))
      self._template[(b, s)] = {k: v.shape for k, v in template.items()} | {
          "model_id": ()}
    return self._template[(b, s)]


def _model_id(config, params) -> int:
  """A 31-bit fingerprint of the config and weights, carried in the state."""
  digest = zlib.crc32(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
  for leaf in jax.tree.leaves(params):
    digest = zlib.crc32(np.ascontiguousarray(leaf, np.float32).tobytes(), digest)
  return digest & 0x7FFFFFFF

