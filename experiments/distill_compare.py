r"""Does distillation help the student? It trained with and without its teacher.

  python experiments/distill_compare.py --teacher=TEACHER_WORKDIR --steps=2000 \
      --out=/tmp/distill_compare [--config=configs/distill.py:lite] [--config.k=v ...]

Scores the teacher on the validation mixtures the trainer uses, then trains the
student of `--config` twice for the same `--steps`, from the same initial weights on the
same batches, each with `python -m avsep_jax.main` (given this script's --config
arguments): plainly (`config.trainer=train`) in OUT/plain and distilled from --teacher
in OUT/distilled. Prints the three validation SI-SNRi and writes them to
OUT/distill_compare.json. Rerunning resumes either run from its checkpoints.

Smoke check (a few minutes on CPU, an untrained teacher from the test fixtures):

  python experiments/distill_compare.py --config=configs/distill.py:smoke \
      --teacher=TEACHER --steps=2 --out=/tmp/distill_smoke --config.data_dir=DIR
"""

import json
import os
import subprocess
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from avsep_jax import distill
from avsep_jax import evaluation
from avsep_jax import parallel
from avsep_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/distill.py:lite", "Distillation config file[:variant].")
_TEACHER = flags.DEFINE_string("teacher", None, "The teacher's training workdir.")
_STEPS = flags.DEFINE_integer("steps", 2000, "Training steps of each student.")
_OUT = flags.DEFINE_string("out", "/tmp/distill_compare", "Output directory.")


def teacher_si_snri(config, data_dir, teacher):
  """The teacher's SI-SNRi stats on the validation mixtures the trainer scores."""
  _, _, batch_sharding = train.make_mesh(config)
  predict = train.make_predict(config, teacher.model, teacher.shardings, batch_sharding)
  records = []
  for batch in train.validation_batches(config, data_dir):
    out, _ = predict(teacher.params, parallel.global_batch(batch, batch_sharding))
    records += evaluation.score_batch(parallel.local_rows(out), batch["sources"],
                                      batch["mixture"], batch["speaker_mask"],
                                      pesq_stoi=False)
  return evaluation.summarize(records)["all"]["si_snri"]


def train_student(trainer, workdir):
  """Runs `python -m avsep_jax.main` as a user would, with this script's --config
  arguments, and returns the SI-SNRi stats of its last validation."""
  steps = _STEPS.value
  config_args = [a for a in sys.argv[1:] if a.startswith("--config")]
  subprocess.run(
      [sys.executable, "-m", "avsep_jax.main", f"--workdir={workdir}", *config_args,
       f"--config.teacher_workdir={_CONFIG.value.teacher_workdir}",
       f"--config.trainer={trainer}", f"--config.total_steps={steps}",
       f"--config.eval_every_steps={steps}", f"--config.checkpoint_every_steps={steps}"],
      check=True)
  with open(os.path.join(workdir, "eval", f"validation_{steps}.json")) as f:
    return json.load(f)["summary"]["all"]["si_snri"]


def main(argv):
  del argv
  config = _CONFIG.value
  config.teacher_workdir = _TEACHER.value or config.teacher_workdir
  distill.check_distill_config(config)
  mesh, rules, _ = train.make_mesh(config)
  teacher = distill.load_teacher(config, mesh, rules)  # fails before any training
  results = {"teacher": teacher_si_snri(config, train.ensure_dataset(config), teacher)}
  # Same config, seed and data: both students start from the same weights.
  results["plain"] = train_student("train", os.path.join(_OUT.value, "plain"))
  results["distilled"] = train_student("distill", os.path.join(_OUT.value, "distilled"))

  print(f"validation SI-SNRi after {_STEPS.value} steps, {config.eval_examples} "
        f"mixtures (mean ± 95 % CI, dB); teacher {teacher.source}:")
  for name in ("plain", "distilled", "teacher"):
    r = results[name]
    print(f"  {name:>9}  {r['mean']:7.2f} ± {r['ci95']:.2f}  (n={r['n']})")
  gain = results["distilled"]["mean"] - results["plain"]["mean"]
  print(f"  distilled - plain: {gain:+.2f} dB")
  path = os.path.join(_OUT.value, "distill_compare.json")
  evaluation.write_json(path, results, steps=_STEPS.value, teacher=teacher.source,
                        config=config.to_dict())
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
