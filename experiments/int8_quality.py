r"""What INT8 costs in separation quality and gains in speed, streaming a trained model.

  python experiments/int8_quality.py --checkpoint=/tmp/wd_stream --data_dir=/tmp/tfds \
      [--examples=32] [--seconds=2] [--calibration=8] [--json=/tmp/int8.json]

The checkpoint is a causal (`configs/*.py:stream`) training run. On `--examples` fixed
2-speaker SynthAV test mixtures it streams each through: JAX (f32, equal to the offline
model), ONNX f32, ONNX with dynamic INT8 MatMuls and ONNX with static QDQ INT8 MatMuls
calibrated on the streaming states of `--calibration` validation mixtures; then reports
SI-SNRi and SDRi (fast_bss_eval, an implementation independent of this project's) of the
delay-compensated outputs against the clean sources, mean and 95 % interval, the drop
against f32, the agreement of each engine's output with JAX f32 (SNR in dB) and the
median compute per 20 ms step.
"""

import json
import os
import tempfile

from absl import app
from absl import flags
import fast_bss_eval
import numpy as np

from avsep_jax import separate
from avsep_jax.data import pipeline
from avsep_jax.export import onnx_export
from avsep_jax.stream import driver
from avsep_jax.stream import engine
from avsep_jax.stream import onnx_engine

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Causal model's training workdir.")
_DATA_DIR = flags.DEFINE_string("data_dir", "/tmp/tfds", "TFDS data directory.")
_DATASET = flags.DEFINE_string("dataset", "synthav/small", "Dataset.")
_EXAMPLES = flags.DEFINE_integer("examples", 32, "Test mixtures.")
_CALIBRATION = flags.DEFINE_integer("calibration", 8, "Validation mixtures to calibrate.")
_SECONDS = flags.DEFINE_float("seconds", 2.0, "Mixture length.")
_STEP_MS = flags.DEFINE_float("step_ms", 20.0, "Audio per step.")
_JSON = flags.DEFINE_string("json", None, "Also write the results here.")


def mixtures(split, count, config, seed):
  mix = pipeline.MixConfig(min_speakers=2, max_speakers=2, slots=config.num_speakers,
                           segment_seconds=_SECONDS.value, gain_db=(-5.0, 5.0))
  ds = pipeline.make_dataset(_DATASET.value, split, _DATA_DIR.value, mix, batch_size=1,
                             seed=seed, num_examples=count)
  return list(ds)


def improvements(out, batch, delay):
  """SI-SNRi and SDRi (dB) of the real speakers of one (1, S, T) streamed output."""
  t = out.shape[-1] - delay
  est = out[0, :, delay:]
  ref = np.asarray(batch["sources"])[0, :, :t]
  mix = np.asarray(batch["mixture"])[0, :t]
  keep = np.asarray(batch["speaker_mask"])[0]
  est, ref = est[keep].astype(np.float64), ref[keep].astype(np.float64)
  si = fast_bss_eval.si_sdr(ref, est) - fast_bss_eval.si_sdr(ref, np.stack([mix] * len(ref)))
  sdr = fast_bss_eval.sdr(ref, est) - fast_bss_eval.sdr(ref, np.stack([mix] * len(ref)))
  return si, sdr


def summary(values):
  v = np.concatenate(values)
  return float(v.mean()), float(1.96 * v.std(ddof=1) / np.sqrt(len(v)))


def main(argv):
  del argv
  loaded = separate.load_model(_CHECKPOINT.value)
  config = loaded.config.model
  test = mixtures("test", _EXAMPLES.value, config, seed=7)
  calibration = [(np.asarray(b["mixture"])[0], np.asarray(b["video"])[0],
                  np.asarray(b["speaker_mask"])[0])
                 for b in mixtures("validation", _CALIBRATION.value, config, seed=8)]
  results = {"checkpoint": os.path.abspath(_CHECKPOINT.value), "step": loaded.step,
             "examples": _EXAMPLES.value, "rows": []}
  with tempfile.TemporaryDirectory() as tmp:
    engines = {"jax f32": engine.Streamer(config, loaded.params, step_ms=_STEP_MS.value)}
    for name, quantize in (("onnx f32", None), ("onnx int8 dynamic", "dynamic"),
                           ("onnx int8 static", "static")):
      path = os.path.join(tmp, name.replace(" ", "_"))
      onnx_export.export_stream(config, loaded.params, path, step_ms=_STEP_MS.value,
                                quantize=quantize,
                                calibration=calibration if quantize == "static" else None)
      engines[name] = onnx_engine.OnnxStreamer(path, threads=2)
    base, reference = None, []
    for name, streamer in engines.items():
      si, sdr, compute, agreement = [], [], [], []
      for batch in test:
        step = streamer.step_samples
        mixture = np.asarray(batch["mixture"])
        mixture = mixture[:, :mixture.shape[1] // step * step]
        out, c, _, _ = driver.drive(streamer, mixture, np.asarray(batch["video"]),
                                 np.asarray(batch["speaker_mask"]))
        a, b = improvements(out, batch, streamer.delay)
        if name == "jax f32":
          reference.append(out)
        ref = reference[len(si)]
        agreement.append(10 * np.log10(np.sum(ref ** 2) / max(np.sum((out - ref) ** 2), 1e-20)))
        si.append(a)
        sdr.append(b)
        compute.append(c[5:])
      row = {"engine": name, "si_snri": summary(si), "sdri": summary(sdr),
             "compute_ms_p50": 1000 * float(np.median(np.concatenate(compute))),
             "snr_vs_jax_f32_db": float(np.median(agreement))}
      base = base or row
      row["si_snri_drop"] = base["si_snri"][0] - row["si_snri"][0]
      results["rows"].append(row)
      print(f"{name:18s} SI-SNRi {row['si_snri'][0]:6.2f} ± {row['si_snri'][1]:.2f} dB  "
            f"SDRi {row['sdri'][0]:6.2f} ± {row['sdri'][1]:.2f} dB  "
            f"drop {row['si_snri_drop']:+.2f} dB  vs f32 {row['snr_vs_jax_f32_db']:5.1f} dB  "
            f"compute p50 {row['compute_ms_p50']:.2f} ms")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  flags.mark_flag_as_required("checkpoint")
  app.run(main)
