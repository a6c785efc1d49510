r"""Test-split table of a weights file (or the shipped weights), as --mode=evaluate makes.

  python experiments/evaluate_weights.py [--weights=FILE.safetensors] \
      --data_dir=/tmp/tfds [--test_examples=50] [--json=OUT.json]

`--mode=evaluate` scores a training workdir's checkpoint; weights that came back from
elsewhere (a GPU sprint's weights.safetensors) or ship with the code have no workdir.
This scores them on the same mixtures: the test split of the weights' own dataset,
each speaker count 2..max_speakers, mixed with `train.mix_config` and the seed
`evaluate_checkpoint` uses (config.seed + 11), so the two tables compare row for row.
"""

from absl import app
from absl import flags
import numpy as np
import tqdm

from avsep_jax import evaluation
from avsep_jax import loading
from avsep_jax import pretrained
from avsep_jax import train
from avsep_jax.data import pipeline

_WEIGHTS = flags.DEFINE_string("weights", pretrained.DEFAULT, "A pretrained-format file.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (built there if absent).")
_TEST_EXAMPLES = flags.DEFINE_integer("test_examples", None,
                                      "Mixtures per speaker count (default: config's).")
_BATCH = flags.DEFINE_integer("batch_size", 4, "Mixtures per call.")
_JSON = flags.DEFINE_string("json", None, "Also write the summary here.")
_SECONDS = flags.DEFINE_float(
    "segment_seconds", None, "Mixture length (default: the config's, as trained); "
    "set it to compare weights trained on other lengths on the same mixtures.")
_DTYPE = flags.DEFINE_string(
    "dtype", None, "Compute dtype (default: the file's config; weights trained with "
    "bfloat16 compute on a GPU are served in float32 on CPUs).")


def main(argv):
  del argv
  loaded = loading.load_shipped(_WEIGHTS.value)
  config = loaded.config
  if _DTYPE.value:
    config.model.dtype = _DTYPE.value
  if _SECONDS.value:
    config.segment_seconds = _SECONDS.value
  config.data_dir = _DATA_DIR.value
  data_dir = train.ensure_dataset(config)
  separate_fn = loading.make_separate_fn(loaded)
  examples = _TEST_EXAMPLES.value or config.test_examples
  records = []
  for n in range(min(2, config.max_speakers), config.max_speakers + 1):
    data = pipeline.make_dataset(config.dataset, "test", data_dir,
                                 train.mix_config(config, n), batch_size=_BATCH.value,
                                 seed=config.seed + 11, num_examples=examples)
    for batch in tqdm.tqdm(data, desc=f"test, {n} speakers", unit="batch"):
      out = separate_fn(batch["mixture"], batch["video"], batch["speaker_mask"])
      records += evaluation.score_batch(np.asarray(out), batch["sources"],
                                        batch["mixture"], batch["speaker_mask"],
                                        pesq_stoi=False)
  summary = evaluation.summarize(records)
  print(f"{_WEIGHTS.value} (step {loaded.step}, {config.model.dtype} compute), "
        f"{config.dataset} test split, {config.segment_seconds:g} s mixtures:")
  print(evaluation.format_table(summary))
  if _JSON.value:
    evaluation.write_json(_JSON.value, summary, split="test", weights=_WEIGHTS.value,
                          step=loaded.step)
    print(f"wrote {_JSON.value}")


if __name__ == "__main__":
  app.run(main)
