r"""How much do simple lip features say about a slot's speech activity?

  python experiments/lip_activity_probe.py --data_dir=/tmp/tfds

On 2-speaker SynthAV mixtures: the correlation of each slot's mouth darkness with its
own and with the other speaker's per-frame activity, and the validation cross-entropy
of a logistic regression on hand-made mouth features (darkness and motion of the mouth
region, +/- 3 frames) against the activity targets the trainer's lip-activity loss
uses, beside a constant predictor. A baseline for that loss.

On single validation utterances, where the bound on any lip cue comes from: how closely
the rendered mouth opening measured from pixels follows the articulation track it was
drawn from, and how closely that track follows the audio's per-frame activity, without
and with the audio-video offset SynthAV stores.
"""

from absl import app
from absl import flags
import jax.numpy as jnp
import numpy as np

from avsep_jax import signal
from avsep_jax.data import pipeline
from avsep_jax.data import sources
from avsep_jax.data.synthav import render

_DATA_DIR = flags.DEFINE_string("data_dir", "/tmp/tfds", "TFDS data directory.")
_DATASET = flags.DEFINE_string("dataset", "synthav/small", "Dataset name.")
_TRAIN = flags.DEFINE_integer("train_examples", 256, "Mixtures to fit on.")
_VAL = flags.DEFINE_integer("val_examples", 64, "Validation mixtures.")
_UTTERANCES = flags.DEFINE_integer("utterances", 40, "Validation utterances to correlate.")

_SHIFTS = range(-3, 4)
_FRAME = 640  # samples per video frame at 16 kHz / 25 fps


def features(split, count):
  """(frames x 14 features, targets, darkness (N, F), targets (N, F)) of one split."""
  config = pipeline.MixConfig(min_speakers=2, max_speakers=2, slots=2,
                              segment_seconds=2.0, gain_db=(-5.0, 5.0))
  ds = pipeline.make_dataset(_DATASET.value, split, _DATA_DIR.value, config,
                             batch_size=8, seed=1, num_examples=count)
  xs, ys = [], []
  for batch in ds:
    target = np.asarray(signal.activity_targets(jnp.asarray(batch["sources"]), _FRAME))
    mouth = batch["video"][..., 30:60, 24:64].astype(np.float32) / 255  # (B, S, F, h, w)
    dark = -mouth.mean((-1, -2))
    dark -= dark.mean(-1, keepdims=True)
    motion = np.abs(np.diff(mouth, axis=2, prepend=mouth[:, :, :1])).mean((-1, -2))
    f = target.shape[-1]
    xs.append(np.stack([np.roll(dark, k, -1)[..., :f] for k in _SHIFTS]
                       + [np.roll(motion, k, -1)[..., :f] for k in _SHIFTS], -1))
    ys.append(target)
  return np.concatenate(xs), np.concatenate(ys)


def utterance_correlations(count):
  """Mean correlations over `count` validation utterances: (pixels vs the track drawn,
  track without offset vs audio activity, track as drawn (with offset) vs activity)."""
  source, _ = sources.open_split(_DATASET.value, "validation", _DATA_DIR.value)
  pixels, plain, shifted = [], [], []
  for i in range(min(count, len(source))):
    r = source[i]
    frames = r["video"].shape[0]
    phones = list(zip([p.decode() if isinstance(p, bytes) else p
                       for p in r["phones"]["phone"]],
                      r["phones"]["start"], r["phones"]["end"]))
    drawn = render.expected_opening(phones, frames, offset_frames=int(r["av_offset"]))
    track = render.expected_opening(phones, frames)
    audio = np.asarray(r["audio"], np.float32)
    activity = np.asarray(signal.activity_targets(jnp.asarray(audio), _FRAME))
    f = min(frames, len(activity))
    pixels.append(np.corrcoef(render.mouth_opening(r["video"]), drawn)[0, 1])
    plain.append(np.corrcoef(track[:f], activity[:f])[0, 1])
    shifted.append(np.corrcoef(drawn[:f], activity[:f])[0, 1])
  return tuple(float(np.nanmean(c)) for c in (pixels, plain, shifted))


def cross_entropy(z, y):
  return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def main(argv):
  del argv
  pixels, plain, shifted = utterance_correlations(_UTTERANCES.value)
  print(f"{_UTTERANCES.value} validation utterances: mouth opening from pixels vs the "
        f"track drawn: corr {pixels:.2f}; track vs audio activity: corr {plain:.2f}, "
        f"{shifted:.2f} with the stored audio-video offset")
  x_train, y_train = features("train", _TRAIN.value)
  x_val, y_val = features("validation", _VAL.value)

  dark = x_val[..., 3]  # the unshifted darkness feature, (N, 2, F)
  own = np.nanmean([np.corrcoef(dark[i, s], y_val[i, s])[0, 1]
                    for i in range(len(dark)) for s in range(2)])
  other = np.nanmean([np.corrcoef(dark[i, s], y_val[i, 1 - s])[0, 1]
                      for i in range(len(dark)) for s in range(2)])
  print(f"mouth darkness vs activity: corr {own:.2f} (own slot), {other:.2f} (other)")

  x_train, y_train = x_train.reshape(-1, 14), y_train.ravel()
  x_val, y_val = x_val.reshape(-1, 14), y_val.ravel()
  mu, sd = x_train.mean(0), x_train.std(0) + 1e-8
  x_train, x_val = (x_train - mu) / sd, (x_val - mu) / sd
  w, b = np.zeros(14), 0.0
  for _ in range(2000):  # full-batch gradient descent on the (convex) logistic loss
    g = 1 / (1 + np.exp(-(x_train @ w + b))) - y_train
    w -= 0.5 * x_train.T @ g / len(g)
    b -= 0.5 * g.mean()
  prior = np.log(y_train.mean() / (1 - y_train.mean()))
  floor = -np.mean(y_val * np.log(np.clip(y_val, 1e-7, 1))
                   + (1 - y_val) * np.log(np.clip(1 - y_val, 1e-7, 1)))
  print(f"validation cross-entropy: logistic regression {cross_entropy(x_val @ w + b, y_val):.3f}, "
        f"constant {cross_entropy(np.full_like(y_val, prior), y_val):.3f}, "
        f"entropy floor {floor:.3f}")


if __name__ == "__main__":
  app.run(main)
