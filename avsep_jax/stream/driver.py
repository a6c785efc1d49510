"""Feeding a recording to any streamer in arrival order (JAX, ONNX or PyTorch), with
per-step timing. NumPy only, so the serving engines need no JAX."""

import time

import numpy as np


def drive(streamer, mixture, video, speaker_mask, *, realtime=False, on_step=None):
  """Feeds a recording to a streamer in arrival order, step by step.

  Works with any streamer with `init`, `push_video`, `push_audio`, `video_frames_due`,
  `step_samples`, `delay` and `config`: `engine.Streamer`, `onnx_engine.OnnxStreamer`,
  `export.torch_stream.TorchStreamer`.

  Args:
    mixture: (B, T) float32, T a multiple of step_samples.
    video: (B, S, F, H, W) mouth ROIs; frame f arrives at f / fps seconds.
    speaker_mask: (B, S) bool.
    realtime: wait for each step's input to be complete on the wall clock (as from a
      microphone and camera) instead of running as fast as possible.
    on_step: optional callable(step_index) after each step.

  Returns:
    out (B, S, T) float32, `delay` samples behind the input; compute (steps,) seconds
    per step (video frames included); latency (steps,) seconds from the arrival of the
    oldest sample a step outputs to that output being ready. Without `realtime` the
    latency is what real time would give with no backlog: step + delay + compute.
  """
  mixture, video = np.asarray(mixture, np.float32), np.asarray(video)
  step = streamer.step_samples
  if mixture.ndim != 2 or mixture.shape[1] % step:
    raise ValueError(f"mixture must be (B, T) with T a multiple of {step}, got shape "
                     f"{mixture.shape}")
  rate = streamer.config.sample_rate
  state = streamer.init(speaker_mask)
  outputs, compute, latency, pushed = [], [], [], 0
  start = time.perf_counter()
  for k in range(mixture.shape[1] // step):
    end = (k + 1) * step
    if realtime:  # the step's last sample arrives at `end`
      time.sleep(max(0.0, start + end / rate - time.perf_counter()))
    began = time.perf_counter()
    while pushed < min(streamer.video_frames_due(end), video.shape[2]):
      state = streamer.push_video(state, video[:, :, pushed])
      pushed += 1
    state, out = streamer.push_audio(state, mixture[:, k * step:end])
    outputs.append(np.asarray(out))  # waits for the result
    done = time.perf_counter()
    compute.append(done - began)
    oldest = (k * step - streamer.delay) / rate  # arrival of the output's first sample
    latency.append(done - start - oldest if realtime
                   else (step + streamer.delay) / rate + done - began)
    if on_step is not None:
      on_step(k)
  return np.concatenate(outputs, axis=-1), np.asarray(compute), np.asarray(latency)
