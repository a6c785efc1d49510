r"""What INT8 costs in separation quality and gains in speed, on a trained model.

  python experiments/int8_quality.py --checkpoint=WORKDIR --data_dir=/tmp/tfds \
      [--examples=32] [--seconds=2] [--speakers=2] [--calibration=8] [--json=OUT] \
      [--int8_weights=u8,s7,s8] [--rounds=1]

On `--examples` fixed SynthAV test mixtures of `--speakers` speakers it runs the
checkpoint through JAX (f32), ONNX f32, ONNX with dynamic INT8 MatMuls and ONNX with
static QDQ INT8 MatMuls calibrated on `--calibration` validation mixtures. An offline
model runs on whole mixtures (what `python -m avsep_jax.export --format onnx` writes);
a causal (`configs/*.py:stream`) model is streamed step by step (`--format stream`; its
JAX stream equals the offline model) and calibrated on its streaming states. Reports
SI-SNRi and SDRi (fast_bss_eval, an implementation independent of this project's) of
the delay-compensated outputs against the clean sources, mean and 95 % interval, the
drop against f32, the agreement of each engine's output with JAX f32 (SNR in dB) and
the real-time factor (compute time / audio time).

--checkpoint may also name a weights file of `avsep_jax.pretrained` (the shipped
`lite_6spk.safetensors`, or `stream_6spk.safetensors`, a causal model). --int8_weights
compares INT8 weight formats (`onnx_export.INT8_WEIGHTS`; the first is the export's
default). The INT8 kernels onnxruntime picks depend on the processor (VNNI or not), so
the output names the processor and the instruction sets the libraries saw; to measure
the AVX2-only path on a processor with AVX-512 VNNI, run the script under
`experiments/avx2_only.c` (LD_PRELOAD; its header says how).
"""

import json
import os
import platform
import tempfile
import time

from absl import app
from absl import flags
import fast_bss_eval
import numpy as np

from avsep_jax import separate
from avsep_jax.data import pipeline
from avsep_jax.export import convert
from avsep_jax.export import onnx_export
from avsep_jax.stream import driver
from avsep_jax.stream import engine
from avsep_jax.stream import onnx_engine

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Training workdir.")
_DATA_DIR = flags.DEFINE_string("data_dir", "/tmp/tfds", "TFDS data directory.")
_DATASET = flags.DEFINE_string("dataset", "synthav/small", "Dataset.")
_EXAMPLES = flags.DEFINE_integer("examples", 32, "Test mixtures.")
_SPEAKERS = flags.DEFINE_integer("speakers", 2, "Speakers per mixture.")
_CALIBRATION = flags.DEFINE_integer("calibration", 8, "Validation mixtures to calibrate.")
_SECONDS = flags.DEFINE_float("seconds", 2.0, "Mixture length.")
_STEP_MS = flags.DEFINE_float("step_ms", 20.0, "Audio per step (causal models).")
_JSON = flags.DEFINE_string("json", None, "Also write the results here.")
_ROUNDS = flags.DEFINE_integer("rounds", 1, "Timed runs per mixture and engine; the "
                               "fastest counts (other load on the CPU only slows).")
_INT8_WEIGHTS = flags.DEFINE_list("int8_weights", [onnx_export.INT8_WEIGHTS[0]],
                                  "INT8 weight formats to compare.")


def processor():
  """The processor's model and the instruction sets libraries see (numpy reads CPUID
  as onnxruntime's MLAS does, so an `avx2_only` run shows no AVX-512 here)."""
  from numpy._core._multiarray_umath import __cpu_features__ as features
  with open("/proc/cpuinfo") as f:
    model = next((line.split(":", 1)[1].strip() for line in f
                  if line.startswith("model name")), platform.processor())
  return {"model": model, **{k: bool(features.get(k)) for k in
                             ("AVX2", "AVX512F", "AVX512BW", "AVX512VNNI")}}


def mixtures(split, count, config, seed):
  """`count` fixed batches of one mixture: mixture (1, T), video, speaker_mask, sources."""
  mix = pipeline.MixConfig(min_speakers=_SPEAKERS.value, max_speakers=_SPEAKERS.value,
                           slots=config.num_speakers, segment_seconds=_SECONDS.value,
                           gain_db=(-5.0, 5.0))
  ds = pipeline.make_dataset(_DATASET.value, split, _DATA_DIR.value, mix, batch_size=1,
                             seed=seed, num_examples=count)
  return [{k: np.asarray(v) for k, v in b.items()} for b in ds]


def improvements(out, batch, delay):
  """SI-SNRi and SDRi (dB) of the real speakers of one (1, S, T) output `delay` samples
  behind its input."""
  t = out.shape[-1] - delay
  est = out[0, :, delay:]
  ref = batch["sources"][0, :, :t]
  mix = batch["mixture"][0, :t]
  keep = batch["speaker_mask"][0]
  est, ref = est[keep].astype(np.float64), ref[keep].astype(np.float64)
  si = fast_bss_eval.si_sdr(ref, est) - fast_bss_eval.si_sdr(ref, np.stack([mix] * len(ref)))
  sdr = fast_bss_eval.sdr(ref, est) - fast_bss_eval.sdr(ref, np.stack([mix] * len(ref)))
  return si, sdr


def summary(values):
  v = np.concatenate(values)
  return float(v.mean()), float(1.96 * v.std(ddof=1) / np.sqrt(len(v)))


def offline_engines(loaded, calibration, tmp):
  """{name: run(mixture (1, T), video, mask) -> (out (1, S, T), compute seconds)}, and
  the outputs' delay (0)."""
  config = loaded.config.model
  models = {"jax f32": separate.make_separate_fn(loaded)}
  f32 = os.path.join(tmp, "f32.onnx")
  onnx_export.export_onnx(convert.build_mirror(config, loaded.params), config, f32)
  models["onnx f32"] = onnx_export.OnnxSeparator(f32, threads=2)
  for mode in onnx_export.QUANTIZE_MODES:
    for weights in _INT8_WEIGHTS.value:
      path = os.path.join(tmp, f"{mode}_{weights}.onnx")
      onnx_export.quantize_int8(f32, path, mode, calibration, weights)
      models[f"onnx int8 {mode} {weights}"] = onnx_export.OnnxSeparator(path, threads=2)

  def timed(model):
    def run(mixture, video, mask):
      model(mixture, video, mask)  # compiles (JAX) and warms caches; the rest are timed
      seconds = []
      for _ in range(_ROUNDS.value):
        start = time.perf_counter()
        out = np.asarray(model(mixture, video, mask))
        seconds.append(time.perf_counter() - start)
      return out, min(seconds)
    return run

  return {name: timed(m) for name, m in models.items()}, 0


def stream_engines(loaded, calibration, tmp):
  """As `offline_engines`, streamed in `--step_ms` steps; the delay is the stream's."""
  config = loaded.config.model
  streamers = {"jax f32": engine.Streamer(config, loaded.params, step_ms=_STEP_MS.value)}
  variants = [("onnx f32", None, None)] + [
      (f"onnx int8 {mode} {weights}", mode, weights)
      for mode in onnx_export.QUANTIZE_MODES for weights in _INT8_WEIGHTS.value]
  for name, quantize, weights in variants:
    path = os.path.join(tmp, name.replace(" ", "_"))
    onnx_export.export_stream(config, loaded.params, path, step_ms=_STEP_MS.value,
                              quantize=quantize,
                              calibration=calibration if quantize == "static" else None,
                              int8_weights=weights or onnx_export.INT8_WEIGHTS[0])
    streamers[name] = onnx_engine.OnnxStreamer(path, threads=2)

  def streamed(streamer):
    def run(mixture, video, mask):
      step = streamer.step_samples  # whole steps: the stream drops a partial last one
      seconds = []
      for _ in range(_ROUNDS.value):
        out, compute, _, _ = driver.drive(
            streamer, mixture[:, :mixture.shape[1] // step * step], video, mask)
        # The first steps compile (JAX) or warm caches: their mean stands in for them.
        seconds.append(float(np.mean(compute[5:]) * len(compute)))
      return out, min(seconds)
    return run

  return ({name: streamed(s) for name, s in streamers.items()},
          streamers["jax f32"].delay)


def main(argv):
  del argv
  checkpoint = _CHECKPOINT.value
  loaded = (separate.load_shipped(checkpoint) if checkpoint.endswith(".safetensors")
            else separate.load_model(checkpoint))
  config = loaded.config.model
  causal = bool(config.get("causal"))
  test = mixtures("test", _EXAMPLES.value, config, seed=7)
  calibration = [(b["mixture"], b["video"], b["speaker_mask"])
                 for b in mixtures("validation", _CALIBRATION.value, config, seed=8)]
  results = {"checkpoint": os.path.abspath(_CHECKPOINT.value), "step": loaded.step,
             "causal": causal, "examples": _EXAMPLES.value, "speakers": _SPEAKERS.value,
             "processor": processor(), "rows": []}
  print("processor:", results["processor"])
  with tempfile.TemporaryDirectory() as tmp:
    make = stream_engines if causal else offline_engines
    engines, delay = make(loaded, calibration, tmp)
    base, reference = None, []
    for name, run in engines.items():
      si, sdr, seconds, agreement = [], [], 0.0, []
      for k, batch in enumerate(test):
        out, compute = run(batch["mixture"], batch["video"], batch["speaker_mask"])
        a, b = improvements(out, batch, delay)
        if name == "jax f32":
          reference.append(out)
        ref = reference[k]
        error = max(np.sum((out - ref) ** 2), 1e-20)
        agreement.append(10 * np.log10(np.sum(ref ** 2) / error))
        si.append(a)
        sdr.append(b)
        seconds += compute
      audio_seconds = sum(b["mixture"].shape[1] for b in test) / config.sample_rate
      row = {"engine": name, "si_snri": summary(si), "sdri": summary(sdr),
             "real_time_factor": seconds / audio_seconds,
             "snr_vs_jax_f32_db": float(np.median(agreement))}
      base = base or row
      row["si_snri_drop"] = base["si_snri"][0] - row["si_snri"][0]
      results["rows"].append(row)
      print(f"{name:22s} SI-SNRi {row['si_snri'][0]:6.2f} ± {row['si_snri'][1]:.2f} dB  "
            f"SDRi {row['sdri'][0]:6.2f} ± {row['sdri'][1]:.2f} dB  "
            f"drop {row['si_snri_drop']:+.2f} dB  vs f32 {row['snr_vs_jax_f32_db']:5.1f} dB  "
            f"RTF {row['real_time_factor']:.3f}")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  flags.mark_flag_as_required("checkpoint")
  app.run(main)
