"""RetinaFace (MobileNetV2 backbone, FPN, SSH, three heads) in Flax, batched over frames.

A port of the frozen TensorFlow graph shipped in the `retinaface==1.1.1` wheel (the
weights come from `avsep_jax.vision.weights`). Module and parameter names follow the
graph's Keras names, so the weight import is a mechanical renaming, and every number
below (padding, BatchNorm epsilons, anchors, variances, thresholds) is the graph's.

Detection runs as one jitted function per frame size: resize (optional) -> zero padding to
a multiple of 32 -> network -> anchor decoding -> score threshold -> pre-NMS top-k ->
greedy NMS -> the `max_faces` best survivors. NMS stays inside jit (a fixed-size top-k
followed by a sequential suppression loop) so that a batch of frames is one device call
with a fixed output shape on CPU and GPU alike, with no per-frame host round trip. It is
exactly the graph's NMS (no pre-NMS top-k there) whenever at most `max_candidates`
anchors pass the score threshold; `Detections.num_candidates` says when that was not the
case.
"""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from avsep_jax.depthwise import DepthwiseConv

Dtype = Any

# MobileNetV2 (alpha 1.0) blocks 1..15 as (output channels, stride); expansion 6 throughout.
# The graph cuts the backbone after block 15 (no block 16, no Conv_1).
_BLOCKS = ((24, 2), (24, 1), (32, 2), (32, 1), (32, 1), (64, 2), (64, 1), (64, 1),
           (64, 1), (96, 1), (96, 1), (96, 1), (160, 2), (160, 1), (160, 1))
# Blocks whose outputs feed the FPN: strides 8, 16, 32.
_PYRAMID_BLOCKS = (5, 12, 15)
_BACKBONE_EPS = 1e-3         # Keras MobileNetV2 BatchNorm
_HEAD_EPS = 1.001e-5         # FPN/SSH BatchNorm (Keras default 1e-3 was not used there)
_FPN_CHANNELS = 64
_LEAKY_SLOPE = 0.1

# Anchors: per pyramid level, its stride and the two square anchor sizes (pixels).
STEPS = (8, 16, 32)
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
VARIANCES = (0.1, 0.2)
# The graph reads only multiples of 32 (its prior grid uses ceil(H/step), the strided
# convs floor): inputs are zero-padded at the bottom/right up to one.
SIZE_MULTIPLE = 32

# Stride-2 convs pad only the bottom/right, then convolve VALID (Keras' correct_pad for
# even sizes); 3x3 stride-1 convs pad one pixel on every side.
_PAD_S2 = ((0, 1), (0, 1))
_PAD_SAME3 = ((1, 1), (1, 1))


def _batch_norm(eps, name, dtype):
  return nn.BatchNorm(use_running_average=True, epsilon=eps, dtype=dtype, name=name)


class MobileNetV2(nn.Module):
  """MobileNetV2 trunk up to block 15; returns the stride 8, 16 and 32 features.

  Attributes:
    dtype: compute dtype.
  """

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """(N, H, W, 3) in [-1, 1] -> [(N, H/8, W/8, 32), (N, H/16, W/16, 96), (N, H/32, W/32, 160)]."""
    dt = self.dtype

    def conv_bn(h, features, kernel, name, bn_name, strides=1, padding="VALID",
                depthwise=False, act=True):
      if depthwise:
        # Nine shifted products: XLA's CPU backend runs grouped convs 9-34x slower.
        h = DepthwiseConv((3, 3), (strides, strides),
                          _PAD_S2 if strides == 2 else _PAD_SAME3, dtype=dt, name=name)(h)
      else:
        h = nn.Conv(features, (kernel, kernel), strides=strides, padding=padding,
                    use_bias=False, dtype=dt, name=name)(h)
      h = _batch_norm(_BACKBONE_EPS, bn_name, dt)(h)
      return jax.nn.relu6(h) if act else h

    x = conv_bn(x, 32, 3, "Conv1", "bn_Conv1", strides=2, padding=_PAD_S2)
    x = conv_bn(x, 32, 3, "expanded_conv_depthwise", "expanded_conv_depthwise_BN",
                depthwise=True)
    x = conv_bn(x, 16, 1, "expanded_conv_project", "expanded_conv_project_BN", act=False)
    features = []
    for i, (out, stride) in enumerate(_BLOCKS, start=1):
      hidden = 6 * x.shape[-1]
      b = f"block_{i}"
      h = conv_bn(x, hidden, 1, f"{b}_expand", f"{b}_expand_BN")
      h = conv_bn(h, hidden, 3, f"{b}_depthwise", f"{b}_depthwise_BN", strides=stride,
                  depthwise=True)
      h = conv_bn(h, out, 1, f"{b}_project", f"{b}_project_BN", act=False)
      x = x + h if stride == 1 and x.shape[-1] == out else h
      if i in _PYRAMID_BLOCKS:
        features.append(x)
    return features


class ConvBN(nn.Module):
  """Conv (no bias) -> BatchNorm -> optional LeakyReLU(0.1): the FPN/SSH unit.

  Attributes:
    features: output channels.
    kernel: 1 or 3 (3 pads one pixel on each side).
    leaky: apply LeakyReLU(0.1) after the norm.
    dtype: compute dtype.
  """

  features: int
  kernel: int
  leaky: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """(N, H, W, C) -> (N, H, W, features)."""
    pad = _PAD_SAME3 if self.kernel == 3 else "VALID"
    x = nn.Conv(self.features, (self.kernel,) * 2, padding=pad, use_bias=False,
                dtype=self.dtype, name="conv")(x)
    x = _batch_norm(_HEAD_EPS, "bn", self.dtype)(x)
    return nn.leaky_relu(x, _LEAKY_SLOPE) if self.leaky else x


def _upsample_to(x, size):
  """Nearest-neighbour resize with half-pixel centres (TF's ResizeNearestNeighbor) to `size`.

  For inputs whose sides are multiples of 32 this is exactly a 2x repeat; the gather
  form keeps any other size correct too.
  """
  rows = np.minimum(((np.arange(size[0]) + 0.5) * x.shape[1] / size[0]).astype(int),
                    x.shape[1] - 1)
  cols = np.minimum(((np.arange(size[1]) + 0.5) * x.shape[2] / size[1]).astype(int),
                    x.shape[2] - 1)
  return x[:, rows][:, :, cols]


class FPN(nn.Module):
  """Feature pyramid: 1x1 laterals to 64 channels, top-down sums, 3x3 smoothing."""

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, c3, c4, c5):
    """Backbone features -> [P3, P4, P5], each (N, h, w, 64)."""
    kw = {"features": _FPN_CHANNELS, "leaky": True, "dtype": self.dtype}
    l3 = ConvBN(kernel=1, name="ConvBN", **kw)(c3)
    l4 = ConvBN(kernel=1, name="ConvBN_1", **kw)(c4)
    p5 = ConvBN(kernel=1, name="ConvBN_2", **kw)(c5)
    p4 = ConvBN(kernel=3, name="ConvBN_3", **kw)(l4 + _upsample_to(p5, l4.shape[1:3]))
    p3 = ConvBN(kernel=3, name="ConvBN_4", **kw)(l3 + _upsample_to(p4, l3.shape[1:3]))
    return [p3, p4, p5]


class SSH(nn.Module):
  """SSH context module: 3x3, 5x5 and 7x7 receptive fields (stacked 3x3s), concat, ReLU."""

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """(N, h, w, 64) -> (N, h, w, 64)."""
    kw = {"kernel": 3, "dtype": self.dtype}
    c3 = ConvBN(32, leaky=False, name="ConvBN", **kw)(x)
    c5a = ConvBN(16, leaky=True, name="ConvBN_1", **kw)(x)
    c5 = ConvBN(16, leaky=False, name="ConvBN_2", **kw)(c5a)
    c7a = ConvBN(16, leaky=True, name="ConvBN_3", **kw)(c5a)
    c7 = ConvBN(16, leaky=False, name="ConvBN_4", **kw)(c7a)
    return jax.nn.relu(jnp.concatenate([c3, c5, c7], axis=-1))


class RetinaFace(nn.Module):
  """The network of the frozen graph: pixels in, per-anchor regressions and scores out.

  Attributes:
    dtype: compute dtype (parameters stay float32).
  """

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images):
    """Runs the network.

    Args:
      images: (N, H, W, 3) RGB values in [0, 255], H and W multiples of 32.

    Returns:
      dict with `loc` (N, A, 4) box regressions, `landmarks` (N, A, 10) landmark
      regressions and `scores` (N, A) face probabilities; anchors ordered as
      `prior_boxes(H, W)`.
    """
    x = images.astype(self.dtype) / 127.5 - 1.0   # Keras MobileNetV2 'tf' preprocessing
    feats = MobileNetV2(self.dtype, name="MobileNetV2_extrator")(x)
    pyramid = FPN(self.dtype, name="FPN")(*feats)
    n = images.shape[0]
    outs = {"loc": [], "landmarks": [], "logits": []}
    for i, p in enumerate(pyramid):
      p = SSH(self.dtype, name=f"SSH_{i}")(p)
      # 1x1 heads with 2 anchors per location: the reshape makes the anchor index vary
      # fastest, then x, then y, as the graph's priors do.
      for key, head, width in (("loc", "BboxHead", 4), ("landmarks", "LandmarkHead", 10),
                               ("logits", "ClassHead", 2)):
        y = nn.Conv(2 * width, (1, 1), dtype=self.dtype, name=f"{head}_{i}")(p)
        outs[key].append(y.reshape(n, -1, width))
    out = {k: jnp.concatenate(v, axis=1).astype(jnp.float32) for k, v in outs.items()}
    out["scores"] = jax.nn.softmax(out.pop("logits"), axis=-1)[..., 1]
    return out


@functools.lru_cache(maxsize=32)
def prior_boxes(height, width):
  """Anchors of the graph for an (height, width) input, in pixels.

  Returns:
    (A, 4) float32 rows (cx, cy, w, h), level by level (strides 8, 16, 32), then y, x,
    anchor size; A = 2 * sum(ceil(H/s) * ceil(W/s)).
  """
  rows = []
  for step, sizes in zip(STEPS, MIN_SIZES):
    ys, xs = np.meshgrid(np.arange(-(-height // step)), np.arange(-(-width // step)),
                         indexing="ij")
    for_level = np.stack(np.broadcast_arrays(
        (xs[..., None] + 0.5) * step, (ys[..., None] + 0.5) * step,
        np.array(sizes, np.float64), np.array(sizes, np.float64)), axis=-1)
    rows.append(for_level.reshape(-1, 4))
  return np.concatenate(rows).astype(np.float32)


def decode(loc, landmarks, priors):
  """Anchor regressions -> boxes and landmarks in pixels of the network's input.

  Args:
    loc: (..., A, 4) box regressions.
    landmarks: (..., A, 10) landmark regressions.
    priors: (A, 4) from `prior_boxes`.

  Returns:
    boxes (..., A, 4) as x1, y1, x2, y2 and points (..., A, 5, 2) as x, y.
  """
  centre, size = priors[:, :2], priors[:, 2:]
  c = centre + loc[..., :2] * VARIANCES[0] * size
  wh = size * jnp.exp(loc[..., 2:] * VARIANCES[1])
  boxes = jnp.concatenate([c - wh / 2, c + wh / 2], axis=-1)
  lm = landmarks.reshape(*landmarks.shape[:-1], 5, 2)
  points = centre[:, None] + lm * VARIANCES[0] * size[:, None]
  return boxes, points


def box_iou(a, b):
  """IoU of every box of `a` (..., N, 4) with every box of `b` (..., M, 4) -> (..., N, M).

  Degenerate boxes have IoU 0 with everything, as in TF's NonMaxSuppression.
  """
  area_a = jnp.prod(a[..., 2:] - a[..., :2], axis=-1)
  area_b = jnp.prod(b[..., 2:] - b[..., :2], axis=-1)
  lo = jnp.maximum(a[..., :, None, :2], b[..., None, :, :2])
  hi = jnp.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
  inter = jnp.prod(jnp.clip(hi - lo, 0.0), axis=-1)
  union = area_a[..., :, None] + area_b[..., None, :] - inter
  ok = (area_a[..., :, None] > 0) & (area_b[..., None, :] > 0)
  return jnp.where(ok, inter / jnp.where(ok, union, 1.0), 0.0)


def greedy_nms(boxes, scores, valid, iou_threshold):
  """Greedy non-maximum suppression of one frame's candidates, jittable.

  Args:
    boxes: (K, 4) candidate boxes sorted by descending score.
    scores: (K,) their scores (only used to keep the signature self-explanatory).
    valid: (K,) bool, candidates that passed the score threshold (a prefix, as sorted).
    iou_threshold: a candidate is dropped if its IoU with a kept, higher-scoring
      candidate is strictly greater.

  Returns:
    (K,) bool: the candidates kept.
  """
  del scores
  iou = box_iou(boxes, boxes)
  n = jnp.sum(valid)

  # Visiting candidates in score order: at step i only higher-scoring ones can be kept,
  # so `keep` needs no mask of earlier indices. Stopping at the last valid candidate
  # makes a frame with one face a handful of iterations.
  def body(state):
    i, keep = state
    suppressed = jnp.any(keep & (iou[:, i] > iou_threshold))
    return i + 1, keep.at[i].set(valid[i] & ~suppressed)

  _, keep = jax.lax.while_loop(lambda s: s[0] < n, body,
                               (jnp.int32(0), jnp.zeros(valid.shape, bool)))
  return keep


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
  """Post-processing and input settings of `FaceDetector`.

  Attributes:
    score_threshold: keep anchors whose face probability is strictly above (graph: 0.5).
    iou_threshold: NMS IoU above which the lower-scoring box is dropped (graph: 0.4).
    max_candidates: pre-NMS top-k (fixed size for jit); the graph has none, so results
      equal the graph's whenever at most this many anchors pass the threshold.
    max_faces: detections returned per frame, best first.
    max_size: if set, frames whose longer side exceeds it are resized (antialiased,
      bilinear) to it before detection; coordinates are mapped back to the input frame.
    dtype: network compute dtype.
  """

  score_threshold: float = 0.5
  iou_threshold: float = 0.4
  max_candidates: int = 512
  max_faces: int = 32
  max_size: int | None = None
  dtype: Dtype = jnp.float32


@dataclasses.dataclass
class Detections:
  """Faces in a batch of frames, padded to `max_faces`; numpy arrays.

  Attributes:
    boxes: (N, M, 4) x1, y1, x2, y2 in pixels of the input frames.
    scores: (N, M) face probabilities, descending per frame.
    landmarks: (N, M, 5, 2) x, y: eye, eye, nose, mouth corner, mouth corner, each pair
      left-to-right in the image.
    valid: (N, M) bool, which rows are detections.
    num_candidates: (N,) anchors above the score threshold (more than
      `max_candidates` means the pre-NMS top-k dropped some).
  """

  boxes: np.ndarray
  scores: np.ndarray
  landmarks: np.ndarray
  valid: np.ndarray
  num_candidates: np.ndarray

  def frame(self, i):
    """The valid detections of frame i: (boxes (n, 4), scores (n,), landmarks (n, 5, 2))."""
    v = self.valid[i]
    return self.boxes[i][v], self.scores[i][v], self.landmarks[i][v]

  def __len__(self):
    return self.boxes.shape[0]


def network_size(height, width, max_size=None):
  """(scale, (h, w) after resizing, (H, W) padded to a multiple of 32) for a frame size."""
  scale = 1.0
  if max_size is not None and max(height, width) > max_size:
    scale = max_size / max(height, width)
  h, w = max(1, round(height * scale)), max(1, round(width * scale))
  hp = -(-h // SIZE_MULTIPLE) * SIZE_MULTIPLE
  wp = -(-w // SIZE_MULTIPLE) * SIZE_MULTIPLE
  return scale, (h, w), (hp, wp)


@functools.partial(jax.jit, static_argnames=("config",))
def detect_batch(variables, frames, config=DetectorConfig()):
  """Detects faces in a batch of same-sized frames: one jitted call.

  Args:
    variables: RetinaFace variables ({'params', 'batch_stats'}).
    frames: (N, H, W, 3) RGB, uint8 or float in [0, 255].
    config: a `DetectorConfig` (static).

  Returns:
    dict of arrays as in `Detections` (landmark pairs in the network's order, not yet
    sorted by x), coordinates in pixels of `frames`.
  """
  n, height, width, _ = frames.shape
  scale, (h, w), (hp, wp) = network_size(height, width, config.max_size)
  x = frames.astype(jnp.float32)
  if (h, w) != (height, width):
    x = jax.image.resize(x, (n, h, w, 3), "linear", antialias=True)
  # Zero padding as the wheel pads (it becomes -1 after the network's normalisation).
  x = jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
  out = RetinaFace(config.dtype).apply(variables, x)
  boxes, points = decode(out["loc"], out["landmarks"], jnp.asarray(prior_boxes(hp, wp)))
  scores = out["scores"]
  passed = scores > config.score_threshold
  k = min(config.max_candidates, scores.shape[1])
  top_scores, idx = jax.lax.top_k(jnp.where(passed, scores, -1.0), k)
  take = jax.vmap(lambda a, i: a[i])
  cand_boxes, cand_points = take(boxes, idx), take(points, idx)
  cand_valid = top_scores > config.score_threshold
  keep = jax.vmap(greedy_nms, in_axes=(0, 0, 0, None))(
      cand_boxes, top_scores, cand_valid, config.iou_threshold)
  m = min(config.max_faces, k)
  out_scores, sel = jax.lax.top_k(jnp.where(keep, top_scores, -1.0), m)
  inv = 1.0 / scale
  return {
      "boxes": take(cand_boxes, sel) * inv,
      "scores": jnp.maximum(out_scores, 0.0),
      "landmarks": take(cand_points, sel) * inv,
      "valid": take(keep, sel),
      "num_candidates": jnp.sum(passed, axis=1),
  }


def order_landmark_pairs(landmarks):
  """Sorts the eye pair and the mouth-corner pair left-to-right in the image.

  The network emits the subject's right eye/mouth corner first, which is the left one in
  the image for any upright face; sorting makes the DESIGN.md contract hold for tilted
  or mirrored faces too. (..., 5, 2) -> (..., 5, 2).
  """
  lm = np.array(landmarks, copy=True)
  for a, b in ((0, 1), (3, 4)):
    swap = lm[..., a, 0] > lm[..., b, 0]
    lm[swap, a], lm[swap, b] = landmarks[swap, b], landmarks[swap, a]
  return lm


class FaceDetector:
  """RetinaFace with the imported weights, over numpy frames in batches.

  Example:
    detector = FaceDetector()
    dets = detector(frames)            # (N, H, W, 3) uint8 RGB
    boxes, scores, landmarks = dets.frame(0)
  """

  def __init__(self, variables=None, config=DetectorConfig(), batch_size=8):
    """Loads the cached weights unless `variables` are given (see `weights.load_variables`).

    Args:
      variables: RetinaFace variables, or None for the imported frozen-graph weights.
      config: post-processing and input settings.
      batch_size: frames per device call; a last short batch is padded to it so that
        every call reuses one compiled program.
    """
    if variables is None:
      from avsep_jax.vision import weights  # pylint: disable=import-outside-toplevel
      variables = weights.load_variables()
    self.variables = jax.device_put(variables)
    self.config = config
    self.batch_size = batch_size

  def __call__(self, frames, pad_to_batch=None):
    """Detects faces.

    Args:
      frames: (N, H, W, 3) or (H, W, 3) uint8 RGB (all frames one size).
      pad_to_batch: pad a short last batch with blank frames to `batch_size`, so that
        no second program is compiled for it (a video's last batch); default: for
        N > 1 (a single image runs alone).

    Returns:
      `Detections` for the N frames (N = 1 for a single image).
    """
    frames = np.asarray(frames)
    if frames.ndim == 3:
      frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
      raise ValueError(f"expected (N, H, W, 3) RGB frames, got shape {frames.shape}")
    if pad_to_batch is None:
      pad_to_batch = len(frames) > 1
    parts = []
    for start in range(0, len(frames), self.batch_size):
      chunk = frames[start:start + self.batch_size]
      real = len(chunk)
      if pad_to_batch and real < self.batch_size:
        blank = np.zeros((self.batch_size - real,) + chunk.shape[1:], chunk.dtype)
        chunk = np.concatenate([chunk, blank])
      out = jax.device_get(detect_batch(self.variables, chunk, self.config))
      parts.append({k: v[:real] for k, v in out.items()})
    if not parts:
      m = self.config.max_faces
      return Detections(np.zeros((0, m, 4), np.float32), np.zeros((0, m), np.float32),
                        np.zeros((0, m, 5, 2), np.float32), np.zeros((0, m), bool),
                        np.zeros((0,), np.int32))
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    out["landmarks"] = order_landmark_pairs(out["landmarks"])
    return Detections(**out)
