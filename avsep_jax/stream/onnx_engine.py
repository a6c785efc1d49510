"""A streaming separator on onnxruntime: the exported step graphs of a causal model.

  streamer = OnnxStreamer("exports/stream")          # from `python -m avsep_jax.export
  state = streamer.init(speaker_mask)                 #   --format stream`
  state = streamer.push_video(state, frame)           # (B, S, H, W), when it arrives
  state, out = streamer.push_audio(state, chunk)      # (B, step) -> (B, S, step)

The same interface as `avsep_jax.stream.Streamer`, and the same numbers (to float32
rounding): the state is a dict of numpy arrays with `step.init_state`'s names, plus the
exporting model's `model_id`. The directory holds `video_step.onnx`, `audio_step.onnx`
and `stream.json` (`avsep_jax.export.onnx_export.export_stream` writes them); the step
size, batch and slot count are fixed at export.

Needs onnxruntime and numpy only at run time (no torch).
"""

import json
import os

import numpy as np

from avsep_jax.stream import driver

FORMAT_TAG = "avsep_jax.export.stream/1"
METADATA = "stream.json"
GRAPHS = ("video_step", "audio_step")


def read_metadata(path):
  """The `stream.json` of an export directory; ValueError naming what is wrong."""
  path = os.fspath(path)
  if os.path.isfile(path):
    hint = (" (an offline model file; export a stream with --format stream)"
            if path.endswith(".onnx") else "")
    raise ValueError(f"{path} is a file, not a stream export directory{hint}")
  if not os.path.isdir(path):
    raise ValueError(f"{path} is not a stream export directory (no such directory)")
  meta_path = os.path.join(path, METADATA)
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except FileNotFoundError:
    raise ValueError(f"{path} is not a stream export directory (no {METADATA})") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{meta_path} is not a stream export's metadata ({e})") from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT_TAG:
    raise ValueError(f"{meta_path} is not a stream export's metadata (format "
                     f"{meta.get('format') if isinstance(meta, dict) else None!r}, want "
                     f"{FORMAT_TAG!r})")
  return meta


def check_graph(path, model_id):
  """ValueError unless `path` is an ONNX step graph of ours for this `model_id`."""
  import onnx
  if not os.path.isfile(path):
    raise ValueError(f"stream export is incomplete: {path} is missing")
  try:
    proto = onnx.load(path, load_external_data=False)
  except Exception as e:  # protobuf raises several types for a file that is not ONNX
    raise ValueError(f"{path} is not an ONNX model ({type(e).__name__})") from e
  props = {p.key: p.value for p in proto.metadata_props}
  if props.get("format") != FORMAT_TAG:
    raise ValueError(f"{path} is not a step graph exported by avsep_jax.export "
                     f"(metadata format {props.get('format')!r}, want {FORMAT_TAG!r})")
  if props.get("model_id") != str(model_id):
    raise ValueError(f"{path} is from another model than its {METADATA} (model_id "
                     f"{props.get('model_id')} vs {model_id})")


class OnnxStreamer:
  """Step-by-step inference of an exported causal model on onnxruntime.

  Attributes:
    config: the model config (ml_collections.ConfigDict) from the export.
    step_samples: audio samples per step (fixed at export).
    delay: algorithmic delay in samples (window - hop).
    batch, speakers: the exported (B, S); absent slots are padded and masked.
    model_id: fingerprint of config and weights (and the quantization), in the state.
    quantize: None, 'dynamic' or 'static'.

  `threads` are onnxruntime's intra-op threads per session; `spinning` lets them
  busy-wait between runs (off by default, see below).
  """

  def __init__(self, path, threads: int = 2, spinning: bool = False):
    import ml_collections
    import onnxruntime as ort
    meta = read_metadata(path)
    self.path = os.fspath(path)
    self.config = ml_collections.ConfigDict(meta["model_config"])
    self.step_samples, self.delay = int(meta["step_samples"]), int(meta["delay"])
    self.batch, self.speakers = int(meta["batch"]), int(meta["speakers"])
    self.model_id, self.quantize = int(meta["model_id"]), meta.get("quantize")
    self.state_spec = [(n, tuple(shape), dtype) for n, shape, dtype in meta["state"]]
    self._io = {g: meta[g] for g in GRAPHS}
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if not spinning:
      # The video and audio sessions alternate: one's threads spinning after its run
      # take the cores from the other. Off: per-step p95 15.6 -> 7-10 ms (lite, S=2).
      options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    self.sessions = {}
    for graph in GRAPHS:
      file = os.path.join(self.path, f"{graph}.onnx")
      check_graph(file, self.model_id)
      self.sessions[graph] = ort.InferenceSession(file, options,
                                                  providers=["CPUExecutionProvider"])

  def init(self, speaker_mask):
    """The state before any input for a (B, S) bool speaker mask."""
    speaker_mask = np.asarray(speaker_mask, bool)
    if speaker_mask.shape != (self.batch, self.speakers):
      raise ValueError(f"speaker_mask must be (B, S) = {(self.batch, self.speakers)} "
                       f"for this export (pad absent slots and mask them), got shape "
                       f"{speaker_mask.shape}")
    state = {name: np.zeros(shape, dtype) for name, shape, dtype in self.state_spec}
    state["speaker_mask"] = speaker_mask.copy()
    state["model_id"] = np.asarray(self.model_id, np.int32)
    return state

  def push_video(self, state, frame):
    """Consumes video frame state['video_frames']: (B, S, H, W) mouth ROIs."""
    self._check_state(state)
    size = self.config.roi_size
    want = (self.batch, self.speakers, size, size)
    if np.shape(frame) != want:
      raise ValueError(f"a video step is one frame of shape (B, S, H, W) = {want}, got "
                       f"{np.shape(frame)}")
    out = self._run("video_step", state, np.asarray(frame, np.uint8))
    return {**state, **out}

  def push_audio(self, state, chunk):
    """Consumes (B, step_samples) mixture samples; returns (state, (B, S, step))."""
    self._check_state(state)
    if np.shape(chunk) != (self.batch, self.step_samples):
      raise ValueError(
          f"an audio step is (B, {self.step_samples}) samples ({self.step_samples} at "
          f"{self.config.sample_rate} Hz for this export), got {np.shape(chunk)}")
    out = self._run("audio_step", state, np.asarray(chunk, np.float32))
    waveforms = out.pop("waveforms")
    return {**state, **out}, waveforms

  def run(self, mixture, video, speaker_mask, on_step=None):
    """Streams a whole recording in arrival order (as `Streamer.run`) -> (B, S, T)."""
    return driver.drive(self, mixture, video, speaker_mask, on_step=on_step)[0]

  def _run(self, graph, state, data):
    io = self._io[graph]
    feed = {name: state[name] for name in io["reads"]}
    feed[io["data"]] = data
    results = self.sessions[graph].run(None, feed)
    return dict(zip(io["outputs"], results))

  def _check_state(self, state):
    return driver.check_state(state, self._state_shapes, self.model_id, "OnnxStreamer")

  def _state_shapes(self, b, s):
    del b, s  # the graphs are exported for one batch and slot count
    return {name: shape for name, shape, _ in self.state_spec} | {"model_id": ()}
