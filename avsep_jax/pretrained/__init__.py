r"""The weights that ship with the code: one trained model in one safetensors file.

`python -m avsep_jax.separate` (through `separate.load_model(None)`) uses `DEFAULT`
when no checkpoint is given, so a new user separates a video with no training;
`python -m avsep_jax.stream` uses `DEFAULT_STREAM`, a causal model, when it is present.

The file holds the parameters, flattened to 'a/b/c' names, and, in its metadata, the
run's config (JSON), a card (where the weights come from, the command that made the
file, their scores) and the storage scheme (`STORAGES`). Shipped files store matrices and
conv kernels as int8 with one scale per output channel: a quarter of float32's bytes,
so the repository travels under its size budget (tests/test_repo_size.py), moving no
reference mixture's score by more than 0.034 dB (BENCHMARKS.md); `load` returns float32
either way. It is made from a training workdir by

  python -m avsep_jax.pretrained --checkpoint=WORKDIR --data_dir=DIR \
      [--test_json=WORKDIR/eval/test_best_<step>.json] [--output=PATH] [--storage=int8]

which scores the weights on `reference_mixtures` (20 fixed 2-speaker mixtures of the
test split of SynthAV `tiny`, built under DIR if absent) and writes that figure into the
card; README.md quotes it, and tests/test_pretrained.py makes the same mixtures and
checks the figure with an independent metric (fast_bss_eval).
"""

import json
import os

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from avsep_jax import checkpoints
from avsep_jax import signal
from avsep_jax.data import pipeline

FORMAT_TAG = "avsep_jax.pretrained/2"
# How `save` stores the tensors (the file's metadata names its scheme; `load` reads both).
STORAGES = {
    "int8": ("matrices and conv kernels (ndim >= 2) as int8, symmetric, with one float32 "
             "scale per output channel (last axis) under '<name>:scale'; other tensors "
             "float32"),
    "float32": "every tensor float32",
}
_SCALE = ":scale"  # key suffix of an int8 tensor's scales (':' is in no param name)
DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       "lite_6spk.safetensors")
# The causal (`configs/6spk.py:stream`) model for `python -m avsep_jax.stream`.
DEFAULT_STREAM = os.path.join(os.path.dirname(DEFAULT), "stream_6spk.safetensors")

# The reference mixtures: 2 speakers of SynthAV tiny's test split (held-out voices,
# the same utterances on every machine), 2 s each, as in training.
REFERENCE_DATASET = "synthav/tiny"
REFERENCE_COUNT = 20
REFERENCE_SPEAKERS = 2
REFERENCE_SECONDS = 2.0
REFERENCE_SEED = 2026


def quantize_int8(w):
  """Symmetric int8 with one scale per output channel, the round trip `q * scale`.

  Args:
    w: float array (..., C), C output channels (Flax kernels keep them last).

  Returns:
    q int8 (..., C) in [-127, 127], scale float32 (C,): w ≈ q * scale, off by at most
    scale / 2 per element.
  """
  w = np.asarray(w, np.float32)
  scale = np.max(np.abs(w.reshape(-1, w.shape[-1])), axis=0) / 127
  q = np.round(w / np.where(scale > 0, scale, 1)).clip(-127, 127)  # all-zero channels
  return q.astype(np.int8), scale.astype(np.float32)


def save(path, params, config, card, storage="int8"):
  """Writes `params` (nested dict of arrays), `config` (ConfigDict) and `card` (dict)
  to one safetensors file, atomically (a temporary file renamed). `storage` is a key of
  `STORAGES`: 'int8' (the shipped form) or 'float32' (exact)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  if storage not in STORAGES:
    raise ValueError(f"storage {storage!r} is none of {sorted(STORAGES)}")
  tensors = {}
  for name, value in traverse_util.flatten_dict(params, sep="/").items():
    value = np.array(value, np.float32, order="C")
    if storage == "int8" and value.ndim >= 2:
      tensors[name], tensors[name + _SCALE] = quantize_int8(value)
    else:
      tensors[name] = value
  tmp = f"{path}.partial"
  save_file(tensors, tmp, metadata={"format": FORMAT_TAG, "storage": storage,
                                    "config": config.to_json(), "card": json.dumps(card)})
  os.replace(tmp, path)


def load(path=DEFAULT):
  """(config ConfigDict, params nested dict of float32 arrays, card dict) of a file
  written by `save` (int8 tensors come back as `q * scale`).

  Raises:
    FileNotFoundError: no such file.
    ValueError: not a file of `save` (or of another version of it).
  """
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no shipped weights at {path}")
  try:
    with safe_open(path, framework="numpy") as f:
      meta = f.metadata() or {}
  except Exception as e:  # safetensors raises its own error types for foreign files
    raise ValueError(f"{path} is not a safetensors file ({e})") from e
  if meta.get("format") != FORMAT_TAG or meta.get("storage") not in STORAGES:
    raise ValueError(f"{path} is not a file of avsep_jax.pretrained (format "
                     f"{meta.get('format')!r}, want {FORMAT_TAG!r} with a storage of "
                     f"{sorted(STORAGES)})")
  config = checkpoints.config_from_json(meta["config"])
  tensors = load_file(path)
  flat = {name: (value.astype(np.float32) * tensors[name + _SCALE]
                 if name + _SCALE in tensors else value)
          for name, value in tensors.items() if not name.endswith(_SCALE)}
  return config, traverse_util.unflatten_dict(flat, sep="/"), json.loads(meta["card"])


def reference_mixtures(data_dir, slots, count=REFERENCE_COUNT):
  """The fixed reference mixtures, padded to a model's `slots`.

  Returns:
    dict of numpy arrays: mixture (N, T), sources (N, slots, T), video
    (N, slots, F, 88, 88) uint8, speaker_mask (N, slots) bool; N = count, T = 32000.
  """
  config = pipeline.MixConfig(max_speakers=REFERENCE_SPEAKERS,
                              min_speakers=REFERENCE_SPEAKERS, slots=slots,
                              segment_seconds=REFERENCE_SECONDS)
  ds = pipeline.make_dataset(REFERENCE_DATASET, "test", data_dir, config,
                             batch_size=count, seed=REFERENCE_SEED, num_examples=count)
  return next(iter(ds))


def si_snri(separate_fn, mixtures, batch_size=4):
  """(N,) SI-SNRi in dB of each mixture, averaged over its speakers.

  Args:
    separate_fn: (mixture (B, T), video (B, S, F, H, W), mask (B, S)) -> (B, S, T),
      e.g. `separate.make_separate_fn(loaded)`.
    mixtures: from `reference_mixtures`.
    batch_size: mixtures per call (one compiled shape: N must be a multiple).
  """
  n = len(mixtures["mixture"])
  if n % batch_size:
    raise ValueError(f"{n} mixtures are not whole batches of {batch_size}")
  scores = []
  for i in range(0, n, batch_size):
    part = {k: v[i:i + batch_size] for k, v in mixtures.items()}
    estimates = separate_fn(part["mixture"], part["video"], part["speaker_mask"])
    gain = signal.si_snr_improvement(jnp.asarray(estimates), part["sources"],
                                     part["mixture"])
    mask = part["speaker_mask"]
    scores.append(np.sum(np.where(mask, gain, 0.0), axis=1) / mask.sum(axis=1))
  return np.concatenate(scores)
