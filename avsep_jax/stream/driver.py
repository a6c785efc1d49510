"""Feeding a recording to any streamer in arrival order (JAX, ONNX or PyTorch), with
per-step timing, and the state check every streamer makes. NumPy only, so the serving
engines need no JAX."""

import time

import numpy as np


def frames_needed(config, end: int) -> int:
  """Video frames an audio step whose input ends at sample `end` reads: audio frame t
  holds frame t // (hops per video frame) (`alignment` 'hold')."""
  hop = config.stft_scales[0][2]
  per_video = config.sample_rate // (hop * config.video_fps)
  return (end // hop - 1) // per_video + 1


def frames_arrived(config, samples: int) -> int:
  """Video frames arrived once the audio has reached sample `samples` (frame f at
  f / fps seconds)."""
  return samples // (config.sample_rate // config.video_fps) + 1


def check_state(state, shapes, model_id, owner):
  """(B, S) of a stream state if it is one of this model's; else ValueError naming what
  differs, so a state passed to the wrong streamer fails before any step runs.

  Args:
    state: {name: array} from `owner`'s `init` or a previous step.
    shapes: {name: shape} this model's state has for that (B, S), `model_id` included;
      a callable (B, S) -> such a dict.
    model_id: this model's fingerprint (config and weights; the export's quantization).
    owner: the streamer class name, for the message.
  """
  if not isinstance(state, dict) or "speaker_mask" not in state:
    raise ValueError(f"state must be the dict from {owner}.init or a previous step")
  b, s = np.shape(state["speaker_mask"])
  want = shapes(b, s)
  if set(state) != set(want):
    raise ValueError(f"state is from another model: keys differ "
                     f"({sorted(set(state) ^ set(want))[:4]})")
  for key, shape in want.items():
    if tuple(np.shape(state[key])) != tuple(shape):
      raise ValueError(f"state is from another model: {key} has shape "
                       f"{tuple(np.shape(state[key]))}, this model's is {tuple(shape)}")
  if int(state["model_id"]) != model_id:
    raise ValueError("state is from another model (its model_id differs: other weights, "
                     "config or quantization)")
  return b, s


def drive(streamer, mixture, video, speaker_mask, *, realtime=False, on_step=None):
  """Feeds a recording to a streamer in arrival order, step by step.

  Works with any streamer with `init`, `push_video`, `push_audio`, `step_samples`,
  `delay` and `config`: `engine.Streamer`, `onnx_engine.OnnxStreamer`,
  `export.torch_stream.TorchStreamer`.

  A video frame is encoded as soon as it has arrived and the previous audio step is
  done, so it is ready, off the critical path, before the audio step that first needs
  it (at least one hop later); the ring in the state holds it and the frame in use.

  Args:
    mixture: (B, T) float32, T a multiple of step_samples.
    video: (B, S, F, H, W) mouth ROIs; frame f arrives at f / fps seconds.
    speaker_mask: (B, S) bool.
    realtime: wait for input to arrive on the wall clock (as from a microphone and
      camera) instead of running as fast as possible.
    on_step: optional callable(step_index) after each step.

  Returns:
    out (B, S, T) float32, `delay` samples behind the input; compute (steps,) seconds
    of each audio step; latency (steps,) seconds from the arrival of the oldest sample
    a step outputs to that output being ready; video (frames,) seconds of each video
    frame's step. Without `realtime` the latency is what real time gives when the
    video frames fit in the idle time between audio steps: step + delay + compute.
  """
  mixture, video = np.asarray(mixture, np.float32), np.asarray(video)
  step = streamer.step_samples
  if mixture.ndim != 2 or mixture.shape[1] % step:
    raise ValueError(f"mixture must be (B, T) with T a multiple of {step}, got shape "
                     f"{mixture.shape}")
  config, rate = streamer.config, streamer.config.sample_rate
  per_frame = rate // config.video_fps
  state = streamer.init(speaker_mask)
  outputs, compute, latency, video_s, pushed = [], [], [], [], 0
  start = time.perf_counter()
  for k in range(mixture.shape[1] // step):
    end = (k + 1) * step
    # Frames this step needs, and in real time any that arrive before its input is
    # complete (one arriving with its last sample waits: this step does not need it).
    wanted = frames_needed(config, end)
    if realtime:
      wanted = max(wanted, min(frames_arrived(config, end - 1), wanted + 1))
    while pushed < min(wanted, video.shape[2]):
      if realtime:
        time.sleep(max(0.0, start + pushed * per_frame / rate - time.perf_counter()))
      began = time.perf_counter()
      state = streamer.push_video(state, video[:, :, pushed])
      _wait(state)
      video_s.append(time.perf_counter() - began)
      pushed += 1
    if realtime:  # the step's last sample arrives at `end`
      time.sleep(max(0.0, start + end / rate - time.perf_counter()))
    began = time.perf_counter()
    state, out = streamer.push_audio(state, mixture[:, k * step:end])
    outputs.append(np.asarray(out))  # waits for the result
    done = time.perf_counter()
    compute.append(done - began)
    oldest = (k * step - streamer.delay) / rate  # arrival of the output's first sample
    latency.append(done - start - oldest if realtime
                   else (step + streamer.delay) / rate + done - began)
    if on_step is not None:
      on_step(k)
  return (np.concatenate(outputs, axis=-1), np.asarray(compute), np.asarray(latency),
          np.asarray(video_s))


def _wait(state):
  """Blocks until an asynchronously computed state (JAX) is ready."""
  for value in state.values():
    if hasattr(value, "block_until_ready"):
      value.block_until_ready()
