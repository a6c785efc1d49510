r"""The weights that ship with the code: one trained model in one safetensors file.

`python -m avsep_jax.separate` (through `separate.load_model(None)`) uses `DEFAULT`
when no checkpoint is given, so a new user separates a video with no training;
`python -m avsep_jax.stream` uses `DEFAULT_STREAM`, a causal model, when it is present.

The file holds the parameters (float32, flattened to 'a/b/c' names) and, in its
metadata, the run's config (JSON) and a card: where the weights come from, the command
that made the file, and their scores. It is made from a training workdir by

  python -m avsep_jax.pretrained --checkpoint=WORKDIR --data_dir=DIR \
      [--test_json=WORKDIR/eval/test_best_<step>.json] [--output=PATH]

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

FORMAT_TAG = "avsep_jax.pretrained/1"
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


def save(path, params, config, card):
  """Writes `params` (nested dict of arrays), `config` (ConfigDict) and `card` (dict)
  to one safetensors file, atomically (a temporary file renamed)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  flat = traverse_util.flatten_dict(params, sep="/")
  tensors = {k: np.array(v, np.float32, order="C") for k, v in flat.items()}
  tmp = f"{path}.partial"
  save_file(tensors, tmp, metadata={"format": FORMAT_TAG, "config": config.to_json(),
                                    "card": json.dumps(card)})
  os.replace(tmp, path)


def load(path=DEFAULT):
  """(config ConfigDict, params nested dict of float32 arrays, card dict) of a file
  written by `save`.

  Raises:
    FileNotFoundError: no such file.
    ValueError: not a file of `save`.
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
  if meta.get("format") != FORMAT_TAG:
    raise ValueError(f"{path} is not a file of avsep_jax.pretrained (format "
                     f"{meta.get('format')!r}, want {FORMAT_TAG!r})")
  config = checkpoints.config_from_json(meta["config"])
  params = traverse_util.unflatten_dict(load_file(path), sep="/")
  return config, params, json.loads(meta["card"])


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
