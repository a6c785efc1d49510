r"""Streams a recording through a causal model and reports end-to-end latency.

  python -m avsep_jax.stream [--model PATH] --input VIDEO_OR_NPZ --output DIR \
      [--no-realtime] [--step_ms 20] [--which best|latest] [--config FILE.py:variant] \
      [--overwrite]

--model is a training workdir of a causal model (`configs/*.py:stream`, run in JAX), a
weights file of `python -m avsep_jax.pretrained` holding one (run in JAX), or a
directory written by `python -m avsep_jax.export --format stream` (run by
onnxruntime); without it, the causal weights that ship with the code
(`avsep_jax.pretrained.DEFAULT_STREAM`) when present. --input is a video with sound (faces are tracked as in `separate`) or an
.npz with `mixture` (T,) float at 16 kHz, `video` (S, F, 88, 88) uint8 mouth ROIs at
25 fps and optionally `speaker_mask` (S,) bool.

Input is fed at real-time pace (each audio step when its last sample would have arrived,
each video frame at its time), or as fast as possible with --no-realtime. End-to-end
latency of a step's output = from the arrival of the oldest sample it holds to the
output being ready: step + overlap-add delay (win - hop) + waiting + compute (see
README, "Streaming"). At the end its p50/p95/p99 and the compute time per step are
printed. Each mouth frame is encoded when it arrives, in the idle time before the
audio step that first needs it (one hop later at least). DIR receives `speaker_<slot>.wav` (aligned with the input: the delay removed)
and `latency.json`. Problems print one `error:` line and exit 1.
"""

import argparse
import json
import os
import sys

import numpy as np
import tqdm
from absl import logging

from avsep_jax import pretrained
from avsep_jax import separate
from avsep_jax.stream import driver
from avsep_jax.stream import engine
from avsep_jax.vision import avio
from avsep_jax.vision import pipeline


def load_streamer(path, step_ms, which="best", config_arg=None):
  """A JAX `Streamer` for a training workdir or a weights file, an `OnnxStreamer` for
  an export; path None: the shipped causal weights."""
  if path is None:
    if not os.path.isfile(pretrained.DEFAULT_STREAM):
      raise ValueError(f"no causal weights ship with the code yet "
                       f"({pretrained.DEFAULT_STREAM}); pass --model: a workdir of "
                       f"configs/6spk.py:stream or its export")
    path = pretrained.DEFAULT_STREAM
  if path.endswith(".safetensors") and os.path.isfile(path):
    loaded = separate.load_shipped(path)
    return engine.Streamer(loaded.config.model, loaded.params, step_ms=step_ms)
  if os.path.isdir(os.path.join(path, "checkpoints")) or os.path.basename(
      os.path.normpath(path)) == "checkpoints":
    loaded = separate.load_model(path, which, config_arg)
    return engine.Streamer(loaded.config.model, loaded.params, step_ms=step_ms)
  if os.path.isdir(path) and any(f.endswith(".onnx") for f in os.listdir(path)):
    from avsep_jax.stream import onnx_engine  # pylint: disable=g-import-not-at-top
    return onnx_engine.OnnxStreamer(path)
  raise ValueError(f"--model {path} is neither a training workdir (with checkpoints/), "
                   f"a weights file of `python -m avsep_jax.pretrained` nor a directory "
                   f"from `python -m avsep_jax.export --format stream`")


def load_input(path, num_slots, roi_size):
  """(mixture (T,), video (S, F, H, W) uint8, speaker_mask (S,)) padded to num_slots."""
  if not os.path.isfile(path):
    raise ValueError(f"no such input: {path}")
  if path.endswith(".npz"):
    with np.load(path) as data:
      missing = {"mixture", "video"} - set(data.files)
      if missing:
        raise ValueError(f"{path} lacks {sorted(missing)} (it has {data.files})")
      mixture = np.asarray(data["mixture"], np.float32)
      video = np.asarray(data["video"])
      mask = (np.asarray(data["speaker_mask"], bool) if "speaker_mask" in data.files
              else np.ones(video.shape[:1], bool))
  else:
    faces = pipeline.face_tracks(path, max_tracks=num_slots, roi_size=roi_size)
    mixture, video = faces.audio, faces.rois
    mask = np.ones(len(video), bool)
  if mixture.ndim != 1 or video.ndim != 4 or video.shape[2:] != (roi_size, roi_size):
    raise ValueError(f"expected mixture (T,) and video (S, F, {roi_size}, {roi_size}), "
                     f"got {mixture.shape} and {video.shape}")
  if not 1 <= len(video) <= num_slots or mask.shape != video.shape[:1]:
    raise ValueError(f"{len(video)} faces for a model with {num_slots} slots "
                     f"(speaker_mask {mask.shape})")
  pad = num_slots - len(video)
  video = np.concatenate([video, np.zeros((pad,) + video.shape[1:], video.dtype)])
  return mixture, video, np.concatenate([mask, np.zeros(pad, bool)])


def percentiles(seconds):
  return {f"p{q}": round(float(np.percentile(seconds, q)) * 1000, 3) for q in (50, 95, 99)}


def run(args):
  streamer = load_streamer(args.model, args.step_ms, args.which, args.config)
  cfg = streamer.config
  mixture, video, mask = load_input(args.input, cfg.num_speakers, cfg.roi_size)
  out_dir = separate.OutputDir(args.output, overwrite=args.overwrite)
  gain = separate.level_gain(mixture)
  step, delay = streamer.step_samples, streamer.delay
  # Whole steps, plus enough to flush the delay so the last input sample comes out.
  steps = -(-(len(mixture) + delay) // step)
  padded = np.zeros((1, steps * step), np.float32)
  padded[0, :len(mixture)] = mixture * gain
  with tqdm.tqdm(total=steps, unit="step", desc="stream", disable=None,
                 dynamic_ncols=True) as bar:
    out, compute, latency, video_s = driver.drive(
        streamer, padded, video[None], mask[None], realtime=not args.no_realtime,
        on_step=lambda _: bar.update())
  voices = out[0, :, delay:delay + len(mixture)] / gain
  report = {
      "model": os.path.abspath(args.model or pretrained.DEFAULT_STREAM), "input": os.path.abspath(args.input),
      "realtime": not args.no_realtime, "steps": steps,
      "step_ms": 1000 * step / cfg.sample_rate,
      "overlap_add_delay_ms": 1000 * delay / cfg.sample_rate, "lookahead_ms": 0.0,
      "compute_ms": percentiles(compute), "end_to_end_ms": percentiles(latency),
      "video_frame_ms": percentiles(video_s),
      "real_time_factor": float((np.sum(compute) + np.sum(video_s))
                                / (steps * step / cfg.sample_rate)),
  }
  with out_dir as tmp:
    for slot in np.flatnonzero(mask):
      avio.write_audio(os.path.join(tmp, f"speaker_{slot}.wav"), voices[slot],
                       cfg.sample_rate)
    with open(os.path.join(tmp, "latency.json"), "w") as f:
      json.dump({**report, "compute_s": compute.tolist(), "latency_s": latency.tolist(),
                 "video_frame_s": video_s.tolist()},
                f, indent=1)
  c, e = report["compute_ms"], report["end_to_end_ms"]
  v = report["video_frame_ms"]
  print(f"video frames: encoded on arrival, p50/p95 {v['p50']:.2f}/{v['p95']:.2f} ms")
  print(f"{steps} steps of {report['step_ms']:g} ms: compute p50/p95/p99 "
        f"{c['p50']:.2f}/{c['p95']:.2f}/{c['p99']:.2f} ms, real-time factor "
        f"{report['real_time_factor']:.3f}; end-to-end p50/p95/p99 {e['p50']:.1f}/"
        f"{e['p95']:.1f}/{e['p99']:.1f} ms (step {report['step_ms']:g} + overlap-add "
        f"{report['overlap_add_delay_ms']:g} + look-ahead 0 + waiting and compute)")
  print(f"wrote {out_dir.path}")
  return report


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m avsep_jax.stream",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--model", default=None,
                      help="training workdir, weights file or stream export; default: "
                      "the shipped causal weights")
  parser.add_argument("--input", required=True)
  parser.add_argument("--output", required=True)
  parser.add_argument("--no-realtime", "--no_realtime", dest="no_realtime",
                      action="store_true", help="feed input as fast as possible")
  parser.add_argument("--step_ms", "--step-ms", type=float, default=20.0)
  parser.add_argument("--which", choices=("best", "latest"), default="best")
  parser.add_argument("--config", default=None)
  parser.add_argument("--overwrite", action="store_true")
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.ERROR)
  try:
    run(args)
  except (ValueError, FileExistsError, PermissionError, avio.MediaError) as e:
    sys.stdout.flush()
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
