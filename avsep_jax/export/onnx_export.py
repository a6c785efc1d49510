"""ONNX export of the PyTorch mirror, and an onnxruntime runner for the exported file;
`export_stream` writes a causal model's step graphs (`torch_stream`) for
`avsep_jax.stream.onnx_engine.OnnxStreamer`.

The export goes through `torch.onnx.export(dynamo=True)` (opset 20) with a dynamic
batch, mixture length and video frame count, for every alignment (soft-DTW through
torch's `scan` higher-order op, translated to ONNX Scan); the weights are stored inside
the .onnx file (no sidecar `.data`). The model config travels in the file's metadata,
so the runner refuses an ONNX file that is not ours and a caller can check the config.

Why the mirror and not jax2onnx: the mirror's STFT/iSTFT are convolutions that export
with a dynamic length, while jax2onnx fails on masks built in the graph from a dynamic
length (see the serving notes), which the alignment and attention masks need.
"""

import json
import os
import zlib

import ml_collections
import numpy as np

INPUT_NAMES = ("mixture", "video", "speaker_mask")
OUTPUT_NAMES = ("waveforms",)
FORMAT_TAG = "avsep_jax.export.onnx/1"
OPSET = 20
QUANTIZE_MODES = ("dynamic", "static")
# INT8 weight formats, the default first. onnxruntime's x86-64 kernel for u8 x s8
# (activations x weights) on processors without VNNI (AVX2; AVX-512 without VNNI)
# multiplies with VPMADDUBSW, which sums two adjacent products into a saturating int16:
# s8 weights lost 25 dB of agreement there (BENCHMARKS.md, "INT8 per instruction set").
# 'u8' (u8 activations and weights) runs on a kernel that widens to int16 before
# multiplying, exact on every x86-64 path and as accurate as s8 with VNNI; 's7'
# (`reduce_range`: weights in [-64, 63]) cannot saturate either but loses a bit: 5-6 dB.
INT8_WEIGHTS = ("u8", "s7", "s8")
# VPMADDUBSW's int16 pair sums of u8 activations (<= 255) times s8 weights.
_INT16_RANGE = (-32768, 32767)
# Export-time example: 0.4 s, within the dynamic ranges below.
_EXAMPLE_SAMPLES = 6_400


def export_onnx(mirror, model_config, path, *, max_seconds=600):
  """Writes `mirror` (AVSeparatorTorch) to `path` as one self-contained ONNX file.

  Inputs: mixture (B, T) float32, video (B, S, F, H, W) uint8, speaker_mask (B, S)
  bool, S = model_config.num_speakers; B, T and F are dynamic (T >= the largest
  n_fft). Output: waveforms (B, S, T) float32. Soft-DTW alignment becomes two ONNX
  Scans over the table's anti-diagonals, as long as the input makes them.
  """
  import onnx
  import torch
  from torch.export import Dim

  m = model_config
  s, roi = int(m.num_speakers), int(m.roi_size)
  frames = _EXAMPLE_SAMPLES * m.video_fps // m.sample_rate
  rng = np.random.default_rng(0)
  example = (
      torch.from_numpy((0.1 * rng.standard_normal((2, _EXAMPLE_SAMPLES))).astype(np.float32)),
      torch.from_numpy(rng.integers(0, 256, (2, s, frames, roi, roi), np.uint8)),
      torch.ones(2, s, dtype=torch.bool))
  min_samples = max(n for n, _, _ in m.stft_scales)
  batch = Dim("batch", max=1024)
  samples = Dim("samples", min=min_samples, max=int(max_seconds * m.sample_rate))
  video_frames = Dim("frames", min=1, max=int(max_seconds * m.video_fps) + 1)
  mirror = mirror.eval()
  with torch.no_grad():
    torch.onnx.export(
        mirror, example, str(path), input_names=list(INPUT_NAMES),
        output_names=list(OUTPUT_NAMES), opset_version=OPSET, dynamo=True,
        external_data=False, verbose=False,
        dynamic_shapes={"mixture": {0: batch, 1: samples},
                        "video": {0: batch, 2: video_frames},
                        "speaker_mask": {0: batch}})
  proto = onnx.load(str(path))
  _set_metadata(proto, model_config)
  onnx.save(proto, str(path))
  onnx.checker.check_model(str(path), full_check=True)
  return path


def _set_metadata(proto, model_config):
  config_json = model_config.to_json()
  for key, value in (("format", FORMAT_TAG), ("model_config", config_json)):
    entry = next((p for p in proto.metadata_props if p.key == key), None)
    if entry is None:
      entry = proto.metadata_props.add()
      entry.key = key
    entry.value = value


def read_config(path):
  """The model config stored in an exported file; ValueError for a file not ours."""
  import onnx
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no such ONNX file: {path}")
  try:
    proto = onnx.load(str(path), load_external_data=False)
  except Exception as e:  # protobuf raises several types for a file that is not ONNX
    raise ValueError(f"{path} is not an ONNX model ({type(e).__name__})") from e
  meta = {p.key: p.value for p in proto.metadata_props}
  if meta.get("format") != FORMAT_TAG:
    raise ValueError(f"{path} is not a model exported by avsep_jax.export (metadata "
                     f"format {meta.get('format')!r}, want {FORMAT_TAG!r})")
  return ml_collections.ConfigDict(json.loads(meta["model_config"]))


class OnnxSeparator:
  """onnxruntime session over an exported model; call it like the JAX model.

  Attributes:
    config: the model config from the file's metadata.
  """

  def __init__(self, path, *, threads=None):
    import onnxruntime as ort
    self.config = read_config(path)
    options = ort.SessionOptions()
    if threads:
      options.intra_op_num_threads = threads
    self.session = ort.InferenceSession(str(path), options,
                                        providers=["CPUExecutionProvider"])

  def __call__(self, mixture, video, speaker_mask):
    """(B, T) float32, (B, S, F, H, W) uint8, (B, S) bool -> (B, S, T) float32."""
    from avsep_jax.model import check_inputs
    mixture = np.asarray(mixture, np.float32)
    video = np.asarray(video, np.uint8)
    speaker_mask = np.asarray(speaker_mask, bool)
    check_inputs(self.config, mixture, video, speaker_mask)
    s = int(self.config.num_speakers)
    if video.shape[1] != s:
      raise ValueError(f"this exported model takes exactly {s} speaker slots (pad "
                       f"absent ones and mask them), got {video.shape[1]}")
    return self.session.run(None, {"mixture": mixture, "video": video,
                                   "speaker_mask": speaker_mask})[0]


def quantize_int8(src, dst, mode="dynamic", calibration=None, weights=INT8_WEIGHTS[0]):
  """INT8 weight matmuls of an exported model (the STFT convs stay float).

  MatMul only: quantizing the STFT/iSTFT convolutions costs far more accuracy than it
  saves time (see the serving notes). Keeps the metadata of `src`.

  Args:
    src, dst: f32 export (`export_onnx`) and where the INT8 model goes.
    mode: 'dynamic' (INT8 weights, activations quantized at run time) or 'static'
      (QDQ INT8 MatMuls, activation ranges calibrated on `calibration`).
    calibration: for 'static': a list of (mixture (B, T) float32, video (B, S, F, H, W)
      uint8, speaker_mask (B, S) bool) inputs the f32 model is run on.
    weights: one of INT8_WEIGHTS (the first, 'u8', is exact on every x86-64 CPU).
  """
  import onnx
  config = read_config(src)
  feeds = None
  if mode == "static":
    if not calibration:
      raise ValueError("static INT8 needs calibration inputs (a list of "
                       "(mixture, video, speaker_mask))")
    feeds = [dict(zip(INPUT_NAMES, (np.asarray(m, np.float32), np.asarray(v, np.uint8),
                                    np.asarray(k, bool))))
             for m, v, k in calibration]
  elif mode != "dynamic":
    raise ValueError(f"quantize mode must be one of {QUANTIZE_MODES}, got {mode!r}")
  _quantize_graph(str(src), str(dst), mode, feeds, weights)
  proto = onnx.load(str(dst))
  _set_metadata(proto, config)
  onnx.save(proto, str(dst))
  return dst


def calibration_mixtures(config, count, data_dir=None):
  """Calibration inputs for static INT8: `count` validation mixtures of a run's dataset
  (`config`: the run's config) with its speaker counts and length, each (mixture (1, T),
  video (1, S, F, H, W), speaker_mask (1, S))."""
  from avsep_jax.data import pipeline
  data_dir = data_dir or config.get("data_dir")
  mix = pipeline.MixConfig(min_speakers=config.min_speakers,
                           max_speakers=config.max_speakers,
                           slots=config.model.num_speakers,
                           segment_seconds=config.segment_seconds,
                           gain_db=tuple(config.gain_db))
  try:
    ds = pipeline.make_dataset(config.dataset, "validation", data_dir, mix, batch_size=1,
                               seed=config.seed + 1, num_examples=count)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"no calibration data: {e} (give --data_dir)") from e
  return [(b["mixture"], b["video"], b["speaker_mask"]) for b in ds]


# -------------------------------------------------------------------------- streaming

_MAX_CALIBRATION_FEEDS = 256


def export_stream(model_config, params, directory, *, step_ms=20.0, quantize=None,
                  calibration=None, int8_weights=INT8_WEIGHTS[0]):
  """Writes the causal model's two step graphs and their metadata to `directory`.

  `video_step.onnx` (one mouth frame per slot) and `audio_step.onnx` (`step_ms` of
  audio) take the state entries they read as inputs (`avsep_jax.stream.step` names)
  plus `frame` (1, S, H, W) uint8 / `chunk` (1, step) float32, and return the entries
  they change as `new_<name>` (the audio graph first returns `waveforms` (1, S, step)).
  Shapes are static: batch 1, S = model_config.num_speakers. `stream.json` names the
  config, step, delay, state and each graph's inputs and outputs;
  `avsep_jax.stream.onnx_engine.OnnxStreamer` runs the directory.

  Args:
    model_config: `config.model` of a causal model; params: its Flax params.
    directory: created if needed; the three files are overwritten.
    step_ms: audio per step, a whole number of STFT hops up to one video frame.
    quantize: None, 'dynamic' (INT8 weights of every MatMul, activations quantized at
      run time) or 'static' (QDQ INT8 MatMuls, activation ranges calibrated).
    calibration: for 'static': a list of (mixture (T,) or (B, T), video (S, F, H, W)
      or (B, S, F, H, W), speaker_mask (S,) or (B, S)) recordings; the f32 graphs
      stream them and the step inputs they see calibrate the ranges.
    int8_weights: with `quantize`, one of INT8_WEIGHTS.

  Returns:
    `directory`.

  Raises:
    ValueError: a model that cannot stream (not causal, ...), a bad step, a bad
      quantize mode or missing calibration.
  """
  import torch
  from avsep_jax.export import convert
  from avsep_jax.export import torch_stream
  from avsep_jax.stream import Streamer
  from avsep_jax.stream import onnx_engine

  if quantize not in (None,) + QUANTIZE_MODES:
    raise ValueError(f"quantize must be one of {QUANTIZE_MODES} or None, got {quantize!r}")
  if quantize == "static" and not calibration:
    raise ValueError("static INT8 needs calibration recordings (a list of "
                     "(mixture, video, speaker_mask))")
  if int8_weights not in INT8_WEIGHTS:
    raise ValueError(f"INT8 weights must be one of {INT8_WEIGHTS}, got {int8_weights!r}")
  reference = Streamer(model_config, params, step_ms)  # validates config and step
  m = model_config
  s, roi, hop = int(m.num_speakers), int(m.roi_size), int(m.stft_scales[0][2])
  mirror = convert.build_mirror(m, params)
  steps = {"video_step": torch_stream.VideoStep(mirror, m).eval(),
           "audio_step": torch_stream.AudioStep(mirror, m,
                                                reference.step_samples // hop).eval()}
  data = {"video_step": ("frame", torch.zeros(1, s, roi, roi, dtype=torch.uint8)),
          "audio_step": ("chunk", torch.zeros(1, reference.step_samples))}
  state = torch_stream.init_state(m, np.ones((1, s), bool))
  model_id = reference.model_id
  if quantize:
    model_id = zlib.crc32(
        f"{model_id}:int8-{quantize}-{int8_weights}".encode()) & 0x7FFFFFFF
  meta = {
      "format": onnx_engine.FORMAT_TAG,
      "model_config": json.loads(m.to_json()),
      "step_ms": step_ms, "step_samples": reference.step_samples,
      "delay": reference.delay, "batch": 1, "speakers": s,
      "model_id": model_id, "quantize": quantize, "opset": OPSET,
      "int8_weights": int8_weights if quantize else None,
      "state": [[n, list(shape), dtype]
                for n, shape, dtype in torch_stream.state_spec(m, 1, s)],
  }
  os.makedirs(directory, exist_ok=True)
  for graph, module in steps.items():
    name, example = data[graph]
    outputs = (["waveforms"] if graph == "audio_step" else []) + list(module.writes)
    meta[graph] = {"reads": list(module.reads), "data": name, "outputs": outputs}
    path = os.path.join(directory, f"{graph}.onnx")
    with torch.no_grad():
      torch.onnx.export(
          module, tuple(state[k] for k in module.reads) + (example,), path,
          input_names=list(module.reads) + [name],
          output_names=[o if o == "waveforms" else f"new_{o}" for o in outputs],
          opset_version=OPSET, dynamo=True, external_data=False, verbose=False)
    _set_stream_metadata(path, reference.model_id)
  with open(os.path.join(directory, onnx_engine.METADATA), "w") as f:
    json.dump({**meta, "model_id": reference.model_id, "quantize": None,
               "int8_weights": None}, f, indent=1)
  if quantize:
    feeds = (_record_feeds(directory, calibration) if quantize == "static" else None)
    for graph in steps:
      path = os.path.join(directory, f"{graph}.onnx")
      _quantize_graph(path, path, quantize, feeds and feeds[graph], int8_weights)
      _set_stream_metadata(path, model_id)
    with open(os.path.join(directory, onnx_engine.METADATA), "w") as f:
      json.dump(meta, f, indent=1)
  return directory


def _set_stream_metadata(path, model_id):
  import onnx
  from avsep_jax.stream import onnx_engine
  proto = onnx.load(path)
  for key, value in (("format", onnx_engine.FORMAT_TAG), ("model_id", str(model_id))):
    entry = next((p for p in proto.metadata_props if p.key == key), None)
    if entry is None:
      entry = proto.metadata_props.add()
      entry.key = key
    entry.value = value
  onnx.save(proto, path)
  onnx.checker.check_model(path, full_check=True)


def _record_feeds(directory, recordings):
  """{graph: [feed dict]} of the f32 step graphs streaming `recordings` (batch 1 each),
  at most _MAX_CALIBRATION_FEEDS per graph, evenly spread."""
  from avsep_jax.stream import onnx_engine

  class Recorder(onnx_engine.OnnxStreamer):
    feeds = {g: [] for g in onnx_engine.GRAPHS}

    def _run(self, graph, state, data):
      io = self._io[graph]
      self.feeds[graph].append({**{k: state[k] for k in io["reads"]}, io["data"]: data})
      return super()._run(graph, state, data)

  recorder = Recorder(directory)
  step = recorder.step_samples
  for mixture, video, speaker_mask in recordings:
    mixture = np.asarray(mixture, np.float32)
    video, speaker_mask = np.asarray(video), np.asarray(speaker_mask, bool)
    if mixture.ndim == 1:
      mixture, video, speaker_mask = mixture[None], video[None], speaker_mask[None]
    for i in range(mixture.shape[0]):
      t = mixture.shape[1] // step * step
      recorder.run(mixture[i:i + 1, :t], video[i:i + 1], speaker_mask[i:i + 1])
  out = {}
  for graph, feeds in recorder.feeds.items():
    keep = np.unique(np.linspace(0, len(feeds) - 1, _MAX_CALIBRATION_FEEDS).astype(int))
    out[graph] = [feeds[k] for k in keep]
  return out


def _quantize_graph(src, dst, mode, feeds=None, weights=INT8_WEIGHTS[0]):
  """INT8 MatMuls of graph `src` written to `dst` (may be `src`); the STFT convs stay
  float. `feeds`: the calibration inputs for 'static' (a list of {input: array});
  `weights`: one of INT8_WEIGHTS."""
  from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                        quantize_dynamic, quantize_static)
  if weights not in INT8_WEIGHTS:
    raise ValueError(f"INT8 weights must be one of {INT8_WEIGHTS}, got {weights!r}")
  qtype = QuantType.QUInt8 if weights == "u8" else QuantType.QInt8
  common = dict(op_types_to_quantize=["MatMul"], per_channel=True, weight_type=qtype,
                reduce_range=weights == "s7", nodes_to_exclude=_batched_weight_matmuls(src))
  tmp = dst + ".int8"
  if mode == "dynamic":
    quantize_dynamic(src, tmp, **common)
  else:
    class Reader(CalibrationDataReader):
      def __init__(self):
        self.it = iter(feeds)

      def get_next(self):
        return next(self.it, None)

    quantize_static(src, tmp, Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=qtype, **common)
  os.replace(tmp, dst)


def _batched_weight_matmuls(path):
  """Names of the MatMuls by a constant weight of rank 3 or more (the band separator's
  per-band layers, (K, C, N)). They stay float: onnxruntime's integer MatMul takes
  per-channel scales of 2-D weights only (a dynamic INT8 graph fails at run time with
  "b zero point is not valid"), and static QDQ would share one scale per input channel
  across every band. They are a small share of the separator's dense multiply-adds
  (8% in `lite`, 2% in `full`, per frame)."""
  import onnx
  graph = onnx.load(str(path), load_external_data=False).graph
  rank = {t.name: len(t.dims) for t in graph.initializer}
  return [n.name for n in graph.node
          if n.op_type == "MatMul" and rank.get(n.input[1], 0) > 2]


def saturating_matmuls(path):
  """The integer MatMuls of an ONNX graph whose int16 pair sums can saturate on x86-64
  without VNNI, with their worst pair sum.

  onnxruntime runs an integer MatMul by constant weights (MatMulInteger of dynamic
  INT8; MatMul of a DequantizeLinear'd initializer in QDQ) with u8 activations (s8
  ones are shifted to u8) on a kernel chosen by the weights' type: u8 widens to int16
  before multiplying (exact); s8 without VNNI uses VPMADDUBSW, which sums two adjacent
  products of a column, each up to 255 x weight, in int16. Weights (K, N) are safe when
  in each column the two largest positive and the two most negative weights times 255
  stay in int16, whatever order the kernel packs K in. (Products of two activations in
  QDQ, attention's QK and AV, run as u8 x u8 after onnxruntime's x86 rewrite of s8
  activations: the 7-bit static export, whose only s8 operands there are activations,
  agrees alike with and without VNNI.)

  Returns:
    [(MatMul node name, worst pair sum)] of those that can saturate.
  """
  import onnx
  from onnx import numpy_helper
  graph = onnx.load(str(path)).graph
  constants = {t.name: t for t in graph.initializer}
  producer = {o: n for n in graph.node for o in n.output}
  worst = []
  for node in graph.node:
    name = node.input[1] if node.op_type in ("MatMul", "MatMulInteger") else None
    if node.op_type == "MatMul":
      dq = producer.get(name)
      name = dq.input[0] if dq is not None and dq.op_type == "DequantizeLinear" else None
    if name not in constants:
      continue
    w = numpy_helper.to_array(constants[name])
    if w.dtype != np.int8:
      continue
    w = np.sort(w.astype(np.int32), axis=-2)
    high = 255 * np.maximum(w[..., -2:, :], 0).sum(axis=-2).max()
    low = 255 * np.minimum(w[..., :2, :], 0).sum(axis=-2).min()
    if high > _INT16_RANGE[1] or low < _INT16_RANGE[0]:
      worst.append((node.name, int(high if high > -low else low)))
  return worst
