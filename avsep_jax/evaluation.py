"""Host-side evaluation of separated speech: per-speaker scores and summaries.

`score_batch` turns one batch of estimates into one record per real speaker,
`summarize` reduces records to means with 95 % confidence intervals per
speaker count, `format_table` prints them, and `write_json` stores them. The
trainer's periodic validation and the `evaluate` mode share these functions,
so validation curves and final tables are the same numbers.

SI-SNR and SDR come from `avsep_jax.signal` (one jitted call per batch);
wideband PESQ (ITU-T P.862.2, `pesq`) and STOI (`pystoi`) are the usual
perceptual companions, computed per speaker on the host.
"""

import json
import math
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from avsep_jax import parallel
from avsep_jax import signal

# Metrics in record, summary and table order.
_TIME_DOMAIN_METRICS = ("si_snr", "si_snri", "si_snri_pit", "sdr", "sdri")
_PERCEPTUAL_METRICS = ("pesq", "stoi")
# Decimals shown by `format_table`: dB and PESQ (MOS scale) differences below
# 0.01 are noise; STOI lives in [0, 1].
_DECIMALS = {"stoi": 3}


@jax.jit
def _time_domain_scores(estimates, sources, mixture, speaker_mask):
  """(B, S, T), (B, S, T), (B, T), (B, S) -> {metric: (B, S)} in dB.

  si_snri_pit scores each reference against the estimate the best slot assignment
  gives it: how well the voices are separated, whoever's slot they come out of.
  """
  _, perm = signal.pit_loss(estimates, sources, speaker_mask)
  assigned = jnp.take_along_axis(estimates, perm[:, :, None], axis=1)
  return {
      "si_snr": signal.si_snr(estimates, sources),
      "si_snri": signal.si_snr_improvement(estimates, sources, mixture),
      "si_snri_pit": signal.si_snr_improvement(assigned, sources, mixture),
      "sdr": signal.sdr(estimates, sources),
      "sdri": signal.sdr_improvement(estimates, sources, mixture),
  }


def _pesq(reference, estimate, sample_rate):
  """Wideband PESQ, NaN where the signals give it nothing to score."""
  # Imported where used: runs with eval_pesq_stoi off (GPU hosts, which have no pesq
  # wheel) need neither package.
  import pesq  # pylint: disable=g-import-not-at-top
  try:
    return float(pesq.pesq(sample_rate, reference, estimate, "wb"))
  except (pesq.NoUtterancesError, pesq.BufferTooShortError):
    # A silent or mostly silent reference, or one shorter than 0.25 s.
    return math.nan
  except ValueError:
    # pesq 0.0.4 raises "cannot convert float NaN to integer" when the
    # estimate is numerically silent (all zeros, or peaks near 1e-30) or has
    # a NaN sample. Sample rate and mode, its other ValueErrors, are checked
    # by `score_batch` before any call.
    return math.nan


def _stoi(reference, estimate, sample_rate):
  """STOI, NaN where pystoi has too little speech to score."""
  import pystoi  # pylint: disable=g-import-not-at-top  (see _pesq)
  if not np.any(reference):
    # pystoi returns 0 for a silent reference: a score it did not measure.
    return math.nan
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    value = float(pystoi.stoi(reference, estimate, sample_rate))
  # With fewer than 30 frames (~0.4 s) of speech left after dropping the
  # reference's silent frames, pystoi warns and returns 1e-5 as a sentinel.
  if any("Not enough STFT frames" in str(w.message) for w in caught):
    return math.nan
  return value


def score_batch(estimates: np.ndarray,
                sources: np.ndarray,
                mixture: np.ndarray,
                speaker_mask: np.ndarray,
                *,
                sample_rate: int = 16000,
                pesq_stoi: bool = True) -> list[dict]:
  """Scores every real speaker of a batch.

  No permutation is searched: estimate slot s is the model's output for the
  speaker whose video is in slot s, and is scored against sources[:, s].

  Args:
    estimates: (B, S, T) separated speech.
    sources: (B, S, T) references; padded speakers' rows are ignored.
    mixture: (B, T) the model's input, the baseline of the improvements.
    speaker_mask: (B, S) bool, False for padded speakers.
    sample_rate: in Hz; wideband PESQ needs 16000.
    pesq_stoi: also compute PESQ and STOI (~30-40 ms per 3 s clip on one core);
      without them the records have no "pesq" and "stoi" keys.

  Returns:
    One dict per real speaker, in (example, slot) order: "num_speakers" (int,
    real speakers in its example), "si_snr", "si_snri", "si_snri_pit" (under the
    best slot assignment), "sdr", "sdri" (dB),
    and with `pesq_stoi` "pesq" (MOS-LQO, at most 4.64) and "stoi" (0 to 1).
    Values are Python floats; a metric that is undefined for a speaker (PESQ
    of a silent estimate, PESQ and STOI of a clip under ~0.4 s of speech, SDR
    of a silent estimate) is NaN or -inf, which `summarize` leaves out of the
    statistics and counts.

  Raises:
    ValueError: on inconsistent shapes, a non-bool mask, or `pesq_stoi` with
      a sample rate other than 16000.
  """
  # One host dtype whatever the model's output dtype (e.g. bfloat16): the
  # JAX metrics compute in float32 anyway, and pesq casts to it.
  estimates = np.asarray(estimates, np.float32)
  sources = np.asarray(sources, np.float32)
  mixture = np.asarray(mixture, np.float32)
  speaker_mask = np.asarray(speaker_mask)
  if estimates.ndim != 3 or estimates.shape != sources.shape:
    raise ValueError(
        f"score_batch expects (B, S, T) estimates and sources of the same "
        f"shape, got {estimates.shape} and {sources.shape}.")
  batch, num_slots, num_samples = estimates.shape
  if mixture.shape != (batch, num_samples):
    raise ValueError(
        f"mixture must have shape (B, T) = {(batch, num_samples)}, got "
        f"{mixture.shape}.")
  if speaker_mask.shape != (batch, num_slots) or speaker_mask.dtype != bool:
    raise ValueError(
        f"speaker_mask must be bool of shape (B, S) = {(batch, num_slots)}, "
        f"got {speaker_mask.dtype} {speaker_mask.shape}.")
  if pesq_stoi and sample_rate != 16000:
    raise ValueError(
        f"wideband PESQ needs 16000 Hz audio, got sample_rate={sample_rate}; "
        f"resample or pass pesq_stoi=False.")

  # Padded rows are scored too (fixed shapes, one compilation) and dropped.
  scores = jax.device_get(_time_domain_scores(estimates, sources, mixture, speaker_mask))
  records = []
  for b, s in zip(*np.nonzero(speaker_mask)):
    record = {"num_speakers": int(speaker_mask[b].sum())}
    record.update({k: float(scores[k][b, s]) for k in _TIME_DOMAIN_METRICS})
    if pesq_stoi:
      record["pesq"] = _pesq(sources[b, s], estimates[b, s], sample_rate)
      record["stoi"] = _stoi(sources[b, s], estimates[b, s], sample_rate)
    records.append(record)
  return records


def gather(records: list[dict]) -> list[dict]:
  """The `score_batch` records of every process (multi-process runs score their own
  shard of the evaluation data): all processes then summarize the same set. Every
  process must hold records with the same keys."""
  if jax.process_count() == 1:
    return records
  keys = sorted(records[0])
  # float32 in transit: collectives carry what JAX holds without x64.
  rows = np.array([[r[k] for k in keys] for r in records], np.float32)
  return [{k: (int(v) if k == "num_speakers" else float(v)) for k, v in zip(keys, row)}
          for row in parallel.gather_rows(rows)]


def _stats(values):
  """Mean, 95 % CI half-width of the mean, and counts of one metric."""
  values = np.asarray(values, np.float64)
  finite = values[np.isfinite(values)]
  n = finite.size
  mean = float(np.mean(finite)) if n else math.nan
  # Student t with n - 1 degrees of freedom: validation sets per speaker
  # count can be small. One value has no spread to estimate.
  ci95 = (float(scipy.stats.t.ppf(0.975, n - 1) * np.std(finite, ddof=1)
                / math.sqrt(n)) if n >= 2 else math.nan)
  return {"mean": mean, "ci95": ci95, "n": n,
          "nonfinite": int(values.size - n)}


def summarize(records: list[dict]) -> dict:
  """Per speaker count and overall statistics of `score_batch` records.

  Args:
    records: dicts from `score_batch`, possibly from many batches.

  Returns:
    {"all": stats, "2": stats, "3": stats, ...}: "all" first, then one entry
    per speaker count present (as a string, ascending). stats maps each metric
    present in the records to {"mean", "ci95" (half-width of the Student-t
    95 % interval of the mean), "n" (finite values used), "nonfinite" (NaN
    or infinite values left out)}. An empty list gives {"all": {}}.
  """
  metrics = [m for m in _TIME_DOMAIN_METRICS + _PERCEPTUAL_METRICS
             if any(m in r for r in records)]
  groups = {"all": records}
  for count in sorted({r["num_speakers"] for r in records}):
    groups[str(count)] = [r for r in records if r["num_speakers"] == count]
  return {
      name: {m: _stats([r[m] for r in group if m in r]) for m in metrics}
      for name, group in groups.items()
  }


def format_table(summary: dict) -> str:
  """A fixed-width table of a `summarize` result.

  Rows are speaker counts, then "all"; columns are the number of scored
  speakers and each metric as "mean ± ci95". A footnote counts the non-finite
  values left out of each metric.
  """
  rows = [k for k in summary if k != "all"] + ["all"]
  metrics = list(summary["all"])
  header = ["speakers", "n"] + metrics
  lines = []
  for row in rows:
    stats = summary[row]
    # Every record has every metric, so any metric's counts give the rows'.
    count = (stats[metrics[0]]["n"] + stats[metrics[0]]["nonfinite"]
             if metrics else 0)
    cells = [row, str(count)]
    for m in metrics:
      d = _DECIMALS.get(m, 2)
      cells.append(f"{stats[m]['mean']:.{d}f} ± {stats[m]['ci95']:.{d}f}")
    lines.append(cells)
  widths = [max(len(c) for c in column) for column in zip(header, *lines)]

  def join(cells):
    return "  ".join(c.rjust(w) for c, w in zip(cells, widths))

  table = [join(header), join("-" * w for w in widths)]
  table += [join(cells) for cells in lines]
  table += [
      f"{m}: {s['nonfinite']} of {s['n'] + s['nonfinite']} values non-finite "
      f"(undefined, e.g. silent or too short), left out"
      for m, s in summary["all"].items() if s["nonfinite"]
  ]
  return "\n".join(table)


def _jsonable(value):
  """`value` with numpy scalars as Python ones and NaN/inf as None (null).

  Strict JSON has no NaN; json.dump's default NaN token breaks other readers.
  """
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, os.PathLike):
    return os.fspath(value)
  return value


def write_json(path, summary: dict, **extra) -> None:
  """Writes {"summary": summary, **extra} as JSON, atomically.

  The file appears complete or not at all (written to a temporary file in the
  same directory, then renamed over `path`), so a reader polling evaluation
  results never sees half a file. Non-finite numbers are written as null.

  Args:
    path: destination; missing parent directories are created.
    summary: from `summarize`.
    **extra: further top-level fields, e.g. step=..., checkpoint=...
  """
  text = json.dumps(_jsonable({"summary": summary, **extra}), indent=2,
                    allow_nan=False)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  # Same directory, so that os.replace is a rename within one file system.
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      f.write(text + "\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
