"""Frame features of a frozen visual encoder, computed once per utterance and kept beside
the dataset, so that a training step with a frozen encoder runs no visual CNN.

    {data_dir}/{builder}/{config}/visual_features/{version}/{fingerprint[:16]}/
        meta.json              what made it: dataset, version, fingerprint, width, splits
        {split}.npy            (all frames of the split, d_model) float32, record order
        {split}.offsets.npy    (records + 1,) int64: record i is rows [o[i], o[i + 1])

The fingerprint hashes the frame stage's weights (`VisualEncoder.frame_features`: 3D
stem, MobileFaceNet, projection) and the settings that shape its arithmetic, so another
encoder, or another version of the dataset, finds no cache here and builds its own (the
log says so); a directory whose meta.json disagrees with what it is opened for is
refused, naming the difference.

Each utterance is encoded whole by the live model's `frame_features`, as a (1, 1, F', H,
W) batch padded to F' (F rounded up to `BUCKET_FRAMES`) with the padding read as the
zeros beyond its end, so the build compiles once per F' (a handful) rather than once
per utterance length (over a hundred in SynthAV `small`, 2-5 s each). A cached row
equals the live encoder's on that batch bit for bit; on the bare utterance, XLA's CPU
kernels for another shape round differently (up to 1e-6, as the live encoder's own
output does between batch shapes). A training crop's first and last kt // 2 frames (kt
the stem's temporal kernel) differ more from the live encoder on the crop alone: the
cached ones saw the utterance's real neighbouring frames instead of zero padding.
Features are of the unaugmented video (augmentation trains the encoder, which is frozen).

The build runs in this process, not in the dataset builders' worker pool: one XLA
computation already uses every core, and each pool worker would compile and hold the
encoder again.
"""

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from avsep_jax.data import sources
from avsep_jax.model import avsep
from avsep_jax.model import visual as visual_lib

# The parameters of VisualEncoder.frame_features: the transformer after it is not cached.
FRAME_STAGE = ("stem3d", "trunk", "proj")
# Utterances are padded to a multiple of this many frames for the encoder.
BUCKET_FRAMES = 16


class CacheMismatchError(ValueError):
  """A cache directory holds features made for another encoder or dataset."""


def fingerprint(model_config, visual_params) -> str:
  """sha256 hex of the frame stage's weights and the settings its output depends on.

  Args:
    model_config: the separator's `config.model`.
    visual_params: the `visual_encoder` parameter tree (the transformer's are ignored).
  """
  h = hashlib.sha256()
  settings = {"visual": model_config.visual.to_dict(), "dtype": model_config.dtype,
              "param_dtype": model_config.param_dtype, "causal": model_config.causal,
              "roi_size": model_config.roi_size}
  h.update(json.dumps(settings, sort_keys=True, default=list).encode())
  leaves = jax.tree_util.tree_flatten_with_path({k: visual_params[k] for k in FRAME_STAGE})
  for path, leaf in sorted(leaves[0], key=lambda item: jax.tree_util.keystr(item[0])):
    value = np.asarray(leaf)
    h.update(f"{jax.tree_util.keystr(path)} {value.shape} {value.dtype}".encode())
    h.update(np.ascontiguousarray(value).tobytes())
  return h.hexdigest()


def cache_dir(dataset: str, data_dir: str, version: str, key: str) -> str:
  """Where the features of `dataset` at `version` by the encoder `key` live."""
  return os.path.join(sources.dataset_dir(dataset, data_dir), "visual_features",
                      version, key[:16])


def padded(video):
  """(F, H, W) -> ((1, 1, F', H, W) with F' the next multiple of BUCKET_FRAMES, F)."""
  f = len(video)
  pad = -f % BUCKET_FRAMES
  return np.pad(video, ((0, pad), (0, 0), (0, 0)))[None, None], f


def frame_encoder(model_config):
  """A jitted (visual_params, video (B, S, F, H, W) uint8, num_frames) -> (B, S, F, d)
  float32: the live model's frame stage (`VisualEncoder.frame_features`), with the
  model's inference layer options."""
  opts = avsep.video_options(model_config, avsep.layer_options(model_config))
  encoder = visual_lib.VisualEncoder(model_config.visual, opts)

  @jax.jit
  def encode(params, video, num_frames):
    return encoder.apply({"params": params}, video, num_frames,
                         method=visual_lib.VisualEncoder.frame_features).astype(jnp.float32)

  return encode


def _read_meta(directory):
  path = os.path.join(directory, "meta.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def _write_meta(directory, meta):
  tmp = os.path.join(directory, f"meta.json.{os.getpid()}.tmp")
  with open(tmp, "w") as f:
    json.dump(meta, f, indent=1, sort_keys=True)
  os.replace(tmp, os.path.join(directory, "meta.json"))


def _check_meta(directory, meta, expected):
  for field, want in expected.items():
    if meta.get(field) != want:
      raise CacheMismatchError(
          f"the visual feature cache at {directory} was made for {field} "
          f"{meta.get(field)!r}, not {want!r}: delete that directory to rebuild it")


def build_split(directory, split, dataset, data_dir, encode, visual_params):
  """Encodes every record of `split` in order; writes {split}.npy and its offsets.

  Returns:
    The number of records.
  """
  source, _ = sources.open_split(dataset, split, data_dir)
  rows, offsets = [], [0]
  for i in tqdm.tqdm(range(len(source)), desc=f"visual features, {split}", unit="utt"):
    video, f = padded(np.asarray(source[i]["video"]))
    rows.append(np.asarray(encode(visual_params, video, np.int32(f)))[0, 0, :f])
    offsets.append(offsets[-1] + f)
  for name, value in ((f"{split}.npy", np.concatenate(rows)),
                      (f"{split}.offsets.npy", np.asarray(offsets, np.int64))):
    tmp = os.path.join(directory, f"{name}.{os.getpid()}.tmp")  # builders may race
    with open(tmp, "wb") as f:
      np.save(f, value)
    os.replace(tmp, os.path.join(directory, name))
  return len(source)


def ensure(model_config, visual_params, dataset: str, data_dir: str,
           splits=("train", "validation")) -> tuple[str, dict]:
  """The cache directory for this encoder and dataset, with `splits` built.

  Splits the cache lacks are built now (on the first process, the others wait); a
  directory made for something else is refused.

  Returns:
    (directory, expected): what `open_split` needs.
  """
  if "://" in data_dir:
    raise ValueError(f"the visual feature cache is read as local memory-mapped files; "
                     f"{data_dir} is remote: use a local data_dir or visual_cache=False")
  version = sources.dataset_version(dataset, data_dir)
  if version is None:
    raise FileNotFoundError(f"{dataset} is not built under {data_dir}")
  key = fingerprint(model_config, visual_params)
  directory = cache_dir(dataset, data_dir, version, key)
  expected = {"dataset": dataset, "version": version, "fingerprint": key,
              "d_model": int(model_config.visual.d_model)}
  meta = _read_meta(directory)
  if meta is not None:
    _check_meta(directory, meta, expected)
  missing = [s for s in splits if s not in (meta or {}).get("splits", {})]
  if missing and jax.process_index() == 0:
    print(f"visual feature cache: none for encoder {key[:16]} and {dataset} {version} "
          f"({', '.join(missing)}); building it in {directory}")
    os.makedirs(directory, exist_ok=True)
    meta = meta or dict(expected, splits={})
    encode = frame_encoder(model_config)
    params = jax.device_get({k: visual_params[k] for k in FRAME_STAGE})
    for split in missing:
      meta["splits"][split] = build_split(directory, split, dataset, data_dir, encode,
                                          params)
      _write_meta(directory, meta)  # after the arrays: a split is listed once complete
  if missing and jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f"visual cache {directory}")
  return directory, expected


class SplitFeatures:
  """One split's cached features, indexed like the split's source:
  `features[i]` is record i's (F_i, d_model) float32 frames (memory-mapped)."""

  def __init__(self, directory: str, split: str, expected: dict):
    meta = _read_meta(directory)
    if meta is None:
      raise FileNotFoundError(f"no visual feature cache at {directory} (no meta.json)")
    _check_meta(directory, meta, expected)
    if split not in meta.get("splits", {}):
      raise FileNotFoundError(f"the visual feature cache at {directory} has no split "
                              f"{split!r}; it has {sorted(meta.get('splits', {}))}")
    self.rows = np.load(os.path.join(directory, f"{split}.npy"), mmap_mode="r")
    self.offsets = np.load(os.path.join(directory, f"{split}.offsets.npy"))
    if len(self.offsets) != meta["splits"][split] + 1 or self.offsets[-1] != len(self.rows):
      raise CacheMismatchError(f"the visual feature cache at {directory} is damaged "
                               f"({split}: offsets and rows disagree); delete it")

  def __len__(self):
    return len(self.offsets) - 1

  def __getitem__(self, i):
    return self.rows[self.offsets[i]:self.offsets[i + 1]]
