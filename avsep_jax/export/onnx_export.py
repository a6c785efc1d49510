"""ONNX export of the PyTorch mirror, and an onnxruntime runner for the exported file.

The export goes through `torch.onnx.export(dynamo=True)` (opset 20) with a dynamic
batch, mixture length and video frame count; the weights are stored inside the .onnx
file (no sidecar `.data`). The model config travels in the file's metadata, so the
runner refuses an ONNX file that is not ours and a caller can check the config.

Why the mirror and not jax2onnx: the mirror's STFT/iSTFT are convolutions that export
with a dynamic length, while jax2onnx fails on masks built in the graph from a dynamic
length (see the serving notes), which the alignment and attention masks need.
"""

import json
import os

import ml_collections
import numpy as np

INPUT_NAMES = ("mixture", "video", "speaker_mask")
OUTPUT_NAMES = ("waveforms",)
FORMAT_TAG = "avsep_jax.export.onnx/1"
OPSET = 20
# Export-time example: 0.4 s, within the dynamic ranges below.
_EXAMPLE_SAMPLES = 6_400


def export_onnx(mirror, model_config, path, *, max_seconds=600):
  """Writes `mirror` (AVSeparatorTorch) to `path` as one self-contained ONNX file.

  Inputs: mixture (B, T) float32, video (B, S, F, H, W) uint8, speaker_mask (B, S)
  bool, S = model_config.num_speakers; B, T and F are dynamic (T >= the largest
  n_fft). Output: waveforms (B, S, T) float32.

  Raises:
    NotImplementedError: alignment 'soft_dtw', whose table the mirror fills cell by
      cell, so its graph would be fixed to one length.
  """
  import onnx
  import torch
  from torch.export import Dim

  if model_config.fusion.alignment != "interpolate":
    raise NotImplementedError(
        f"ONNX export supports fusion.alignment='interpolate' only, not "
        f"{model_config.fusion.alignment!r}: the soft-DTW table is unrolled per cell, "
        f"which fixes the input length")
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


def quantize_int8(src, dst):
  """Dynamic INT8 quantization of the weight matmuls (the STFT convs stay float).

  MatMul only: quantizing the STFT/iSTFT convolutions costs far more accuracy than it
  saves time (see the serving notes). Keeps the metadata of `src`.
  """
  import onnx
  from onnxruntime.quantization import QuantType, quantize_dynamic
  config = read_config(src)
  quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"],
                   per_channel=True, weight_type=QuantType.QInt8)
  proto = onnx.load(str(dst))
  _set_metadata(proto, config)
  onnx.save(proto, str(dst))
  return dst
