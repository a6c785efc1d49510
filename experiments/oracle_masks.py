r"""How far each kind of output could go if it were perfect: oracle masks of the true
sources through the model's output path (`model.avsep.reconstruct`), on SynthAV test
mixtures at 2..6 speakers.

  python experiments/oracle_masks.py --data_dir=/tmp/tfds_small --examples=100 \
      [--json=OUT.json]

Rows: the complex ratio mask S / X (what the band separator outputs; the estimate's
phase is the source's), and the magnitude masks a sigmoid head on the mixture's phase
can output: ideal ratio |S| / |X| clipped to [0, 1], Wiener-like |S|^2 / sum |S_j|^2,
ideal binary (the loudest source takes the bin) and phase-sensitive
|S| cos(angle S - angle X) / |X| clipped to [0, 1]. Mixtures are those of
`--mode=evaluate` (train.mix_config, seed config.seed + 11) at the main STFT scale.
"""

import importlib.util
import json
import pathlib

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from avsep_jax import evaluation
from avsep_jax import signal
from avsep_jax import train
from avsep_jax.data import pipeline
from avsep_jax.model import avsep

_DATA_DIR = flags.DEFINE_string("data_dir", "/tmp/tfds", "TFDS data dir (built if absent).")
_DATASET = flags.DEFINE_string("dataset", "synthav/small", "Dataset.")
_EXAMPLES = flags.DEFINE_integer("examples", 100, "Mixtures per speaker count.")
_BATCH = flags.DEFINE_integer("batch_size", 10, "Mixtures per call.")
_JSON = flags.DEFINE_string("json", None, "Also write the table here.")
_SPEAKERS = flags.DEFINE_list("speakers", ["2", "3", "4", "5", "6"], "Speaker counts.")

_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "6spk.py"


def oracle_masks(spec, source_specs, speaker_mask):
  """{name: ((B, S, T, F) mask, phase)} of the true sources; (B, T, F) mixture spec,
  (B, S, T, F) source specs, (B, S) speaker mask."""
  x = spec[:, None]
  safe = jnp.where(jnp.abs(x) > 0, x, 1.0)
  ratio = jnp.where(jnp.abs(x) > 0, source_specs / safe, 0.0)
  power = jnp.abs(source_specs) ** 2 * speaker_mask[:, :, None, None]
  loudest = jnp.argmax(power, axis=1)
  binary = jax.nn.one_hot(loudest, power.shape[1], axis=1)
  return {
      "complex ratio S/X (band separator)": (ratio, "complex"),
      "ratio |S|/|X| clipped to [0, 1]": (jnp.clip(jnp.abs(ratio), 0.0, 1.0), "mixture"),
      "Wiener-like |S|^2/sum|S_j|^2": (power / (power.sum(1, keepdims=True) + 1e-20),
                                        "mixture"),
      "ideal binary": (binary, "mixture"),
      "phase-sensitive clipped to [0, 1]": (jnp.clip(ratio.real, 0.0, 1.0), "mixture"),
  }


def _si_snr(estimate, reference):
  """dB over the last axis, float64 NumPy (zero-mean, scale-invariant)."""
  estimate = estimate - estimate.mean(-1, keepdims=True)
  reference = reference - reference.mean(-1, keepdims=True)
  scale = (estimate * reference).sum(-1, keepdims=True) / (reference ** 2).sum(
      -1, keepdims=True)
  target = scale * reference
  return 10 * np.log10((target ** 2).sum(-1) / ((estimate - target) ** 2).sum(-1))


def si_snri_records(estimates, sources, mixture, speaker_mask):
  """`evaluation.score_batch`'s records, SI-SNRi only, in float64 NumPy: the oracle
  estimates reach float32 rounding, where a float32 metric would saturate."""
  estimates, sources = np.float64(estimates), np.float64(sources)
  mixture = np.broadcast_to(np.float64(mixture)[:, None], sources.shape)
  with np.errstate(invalid="ignore", divide="ignore"):  # padded (silent) slots
    gain = _si_snr(estimates, sources) - _si_snr(mixture, sources)
  return [{"num_speakers": int(speaker_mask[b].sum()), "si_snri": float(gain[b, s])}
          for b, s in zip(*np.nonzero(speaker_mask))]


def main(argv):
  del argv
  spec_ = importlib.util.spec_from_file_location("six", _CONFIG)
  six = importlib.util.module_from_spec(spec_)
  spec_.loader.exec_module(six)
  config = six.get_config("lite")
  config.dataset = _DATASET.value
  config.data_dir = _DATA_DIR.value
  data_dir = train.ensure_dataset(config)
  scale = tuple(signal.SCALES[0])

  @jax.jit
  def separate_all(mixture, sources, speaker_mask):
    spec = signal.stft(mixture, *scale)
    source_specs = signal.stft(sources, *scale)
    return {name: avsep.reconstruct(spec, mask, scale, mixture.shape[-1], phase)
            * speaker_mask[:, :, None]
            for name, (mask, phase) in oracle_masks(spec, source_specs,
                                                    speaker_mask).items()}

  records = {}
  counts = [str(int(n)) for n in _SPEAKERS.value]
  for n in map(int, counts):
    data = pipeline.make_dataset(config.dataset, "test", data_dir,
                                 train.mix_config(config, n), batch_size=_BATCH.value,
                                 seed=config.seed + 11, num_examples=_EXAMPLES.value)
    for batch in tqdm.tqdm(data, desc=f"{n} speakers", unit="batch"):
      outs = jax.device_get(separate_all(batch["mixture"], batch["sources"],
                                         batch["speaker_mask"]))
      for name, out in outs.items():
        records.setdefault(name, []).extend(si_snri_records(
            out, batch["sources"], batch["mixture"], batch["speaker_mask"]))
  names = list(oracle_masks(*(jnp.zeros((1, 1, 1), jnp.complex64),) * 2,
                            jnp.ones((1, 1), bool)))
  table = {name: evaluation.summarize(records[name]) for name in names}
  print(f"SI-SNRi (dB) of oracle masks, {config.dataset} test split, "
        f"{config.segment_seconds:g} s mixtures, {_EXAMPLES.value} per speaker count:")
  print("| oracle | " + " | ".join(f"{c} spk" for c in counts) + " |")
  print("| --- |" + " ---: |" * len(counts))
  for name, summary in table.items():
    cells = [f"{summary[c]['si_snri']['mean']:.1f}" for c in counts]
    print(f"| {name} | " + " | ".join(cells) + " |")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump({name: {c: summary[c]["si_snri"] for c in counts}
                 for name, summary in table.items()}, f, indent=1, default=float)
    print(f"wrote {_JSON.value}")


if __name__ == "__main__":
  app.run(main)
