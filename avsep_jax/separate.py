r"""Separates the voices of the faces in a video: one wav per tracked face.

  python -m avsep_jax.separate --input talk.mp4 [--checkpoint WORKDIR] --output DIR \
      [--which best|latest] [--config configs/2spk.py:lite] [--mp4] \
      [--chunk_seconds 6] [--overlap_seconds 1] [--overwrite]

Faces are found and tracked with RetinaFace (`vision.pipeline.face_tracks`), keeping as
many tracks as the model has speaker slots (the most visible ones; the others are
reported as dropped). The model then separates the soundtrack in overlapping chunks of
`--chunk_seconds` (each chunk is F video frames and F * 640 samples, the shape the model
takes), crossfaded where they overlap. Slot k always holds track k's mouth, so a voice
stays in its slot from one chunk to the next.

DIR receives `speaker_<slot>.wav` (16 kHz mono) per kept track, `summary.json` (input,
checkpoint step, frames, tracks with their frames and times, dropped tracks) and, with
--mp4, `speaker_<slot>.mp4`: the input video (at 25 fps) with that voice as its sound.
Everything is written to a temporary directory beside DIR and renamed at the end, so a
failed run leaves nothing behind. Errors (missing or unreadable input, no audio or video
stream, no face, a checkpoint that does not fit) print one `error:` line and exit 1.

The checkpoint is a training workdir (`python -m avsep_jax.main --workdir=...`, or its
`checkpoints/` folder): the model's config is read from its `config.json` unless
--config names a config file. Only the parameters are restored (the EMA parameters when
the run kept them). Without --checkpoint, the weights that ship with the code
(`avsep_jax.pretrained.DEFAULT`: `lite`, 2 to 6 speakers) are used.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import tqdm
from absl import logging

# Model loading lives in `loading`; its names stay importable from here, where notebooks
# and outside tools have always found them (DESIGN.md, stable entry points).
from avsep_jax.loading import (CheckpointError, LoadedModel, abstract_params,  # pylint: disable=unused-import
                               checkpoint_paths, load_config, load_model, load_shipped,
                               make_separate_fn)
from avsep_jax.vision import avio, pipeline
from avsep_jax.vision import weights as detector_weights

SUMMARY_FILE = "summary.json"
# Mixtures in training are sums of sources at RMS 0.05 (+/- 5 dB), peak-limited to 0.9:
# inputs are brought to about that level, and the outputs back to the input's.
_TARGET_RMS = 0.07
_MAX_GAIN = 100.0


def chunk_starts(num_frames, chunk_frames, overlap_frames):
  """First frames of equal chunks covering [0, num_frames), overlapping by at least
  `overlap_frames`; the last chunk ends at the end (so every chunk has one shape)."""
  if num_frames <= chunk_frames:
    return [0]
  hop = chunk_frames - overlap_frames
  starts = list(range(0, num_frames - chunk_frames, hop))
  starts.append(num_frames - chunk_frames)
  return starts


def crossfade_weights(length, fade_in, fade_out):
  """(length,) linear ramps up over `fade_in` and down over `fade_out` samples, strictly
  positive, so overlapping chunks can be averaged by their weights."""
  w = np.ones(length, np.float32)
  if fade_in:
    w[:fade_in] = (np.arange(fade_in, dtype=np.float32) + 0.5) / fade_in
  if fade_out:
    w[length - fade_out:] = np.minimum(
        w[length - fade_out:], (np.arange(fade_out, 0, -1, dtype=np.float32) - 0.5)
        / fade_out)
  return w


def separate_chunks(separate_fn, audio, rois, present, num_slots, starts, chunk,
                    samples_per_frame, progress=None):
  """Separates a whole soundtrack chunk by chunk.

  Args:
    separate_fn: from `make_separate_fn`.
    audio: (F * samples_per_frame,) float32 mixture.
    rois: (N, F, H, W) uint8 mouth ROIs of the N <= num_slots tracks (slot order).
    present: (N, F) bool, where each track's face is in the video; a chunk's slot is
      masked out when its face is absent throughout the chunk.
    num_slots: the model's speaker slots (N are used, the rest masked).
    starts: first frames of the chunks, `chunk_starts(F, chunk, overlap)`.
    chunk: chunk length in video frames, at most F.
    samples_per_frame: 640 at 16 kHz / 25 fps.
    progress: optional callable receiving 1 per chunk.

  Returns:
    (N, F * samples_per_frame) float32 voices.
  """
  n, num_frames = rois.shape[:2]
  out = np.zeros((n, num_frames * samples_per_frame), np.float32)
  total = np.zeros(num_frames * samples_per_frame, np.float32)
  length = chunk * samples_per_frame
  for i, start in enumerate(starts):
    a, b = start * samples_per_frame, (start + chunk) * samples_per_frame
    fade_in = (starts[i - 1] + chunk - start) * samples_per_frame if i else 0
    fade_out = (start + chunk - starts[i + 1]) * samples_per_frame if i + 1 < len(
        starts) else 0
    w = crossfade_weights(length, min(fade_in, length), min(fade_out, length))
    mask = np.zeros((1, num_slots), bool)
    mask[0, :n] = present[:, start:start + chunk].any(axis=1)
    if mask.any():
      video = np.zeros((1, num_slots, chunk) + rois.shape[2:], np.uint8)
      video[0, :n] = rois[:, start:start + chunk]
      voices = separate_fn(audio[None, a:b], video, mask)[0, :n]
      out[:, a:b] += voices * w
    total[a:b] += w
    if progress is not None:
      progress(1)
  return out / total


def level_gain(audio):
  """Gain bringing `audio` to the training mixtures' loudness (capped for near-silence)."""
  rms = float(np.sqrt(np.mean(np.square(audio)))) if audio.size else 0.0
  if rms < 1e-6:
    return 1.0
  gain = min(_TARGET_RMS / rms, _MAX_GAIN)
  peak = float(np.abs(audio).max()) * gain
  return gain * min(1.0, 0.9 / peak) if peak > 0 else gain


# ------------------------------------------------------------------------- Outputs


class OutputDir:
  """A directory filled under a temporary name beside it and renamed when complete.

  Parents that do not exist are created, and removed again if the run fails.
  """
  def __init__(self, path, overwrite=False):
    self.path = os.path.abspath(path)
    if os.path.exists(self.path) and not os.path.isdir(self.path):
      raise FileExistsError(f"output {self.path} exists and is not a directory")
    if os.path.isdir(self.path) and os.listdir(self.path) and not overwrite:
      raise FileExistsError(f"output {self.path} exists and is not empty; pass "
                            f"--overwrite to replace it")
    self.overwrite = overwrite
    self.created = []
    self.tmp = None

  def __enter__(self):
    parent = os.path.dirname(self.path)
    missing = []
    while not os.path.isdir(parent):
      missing.append(parent)
      parent = os.path.dirname(parent)
    for d in reversed(missing):
      os.mkdir(d)
      self.created.append(d)
    self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.path)}.partial-",
                                dir=os.path.dirname(self.path))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp's 0700 would outlive the rename
    return self.tmp

  def __exit__(self, exc_type, exc, tb):
    if exc_type is None:
      old = None
      if os.path.isdir(self.path):
        if os.listdir(self.path):
          old = tempfile.mkdtemp(prefix=f".{os.path.basename(self.path)}.old-",
                                 dir=os.path.dirname(self.path))
          os.replace(self.path, os.path.join(old, "previous"))
        else:
          os.rmdir(self.path)
      os.replace(self.tmp, self.path)
      if old:
        shutil.rmtree(old, ignore_errors=True)
      return False
    shutil.rmtree(self.tmp, ignore_errors=True)
    for d in reversed(self.created):
      try:
        os.rmdir(d)
      except OSError:
        break
    return False


def _with_times(track_summary, fps):
  s = dict(track_summary)
  s["start_s"] = round(s["first_frame"] / fps, 3)
  s["end_s"] = round((s["last_frame"] + 1) / fps, 3)
  return s


def build_summary(faces, loaded, args, chunk_frames, starts, gain, files):
  """The JSON document describing one separation; `starts` are the chunks' first
  frames, `chunk_frames` their length."""
  base = faces.summary()
  tracks = []
  for t in base["tracks"]:
    t = _with_times(t, faces.fps)
    t.update(files[t["slot"]])
    tracks.append(t)
  return {
      "input": os.path.abspath(args.input),
      "checkpoint": {"path": loaded.checkpoint_dir, "step": loaded.step,
                     "which": loaded.which, "params": loaded.params_key,
                     "config": loaded.config_source},
      "model_slots": loaded.num_slots,
      "sample_rate": faces.sample_rate,
      "fps": faces.fps,
      "frames": faces.num_frames,
      "duration_s": base["duration_s"],
      "frame_size": base["frame_size"],
      # The least overlap used: at least the one asked for, 0 with a single chunk.
      "chunks": {"count": len(starts), "frames": chunk_frames,
                 "overlap_frames": min((a + chunk_frames - b
                                        for a, b in zip(starts, starts[1:])), default=0)},
      "input_gain": round(gain, 4),
      "tracks": tracks,
      "dropped_tracks": [_with_times(t, faces.fps) for t in base["dropped_tracks"]],
  }


def write_speaker_mp4(path, video_path, voice, fps, sample_rate):
  """The input video, resampled to `fps`, with `voice` as its only sound."""
  avio.write_video(path, avio.iter_frames(video_path, fps=fps), fps=fps, audio=voice,
                   sample_rate=sample_rate)


# ---------------------------------------------------------------------------- Main


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      prog="python -m avsep_jax.separate",
      description="One wav per tracked face in a video, plus summary.json.")
  parser.add_argument("--input", required=True, help="a video with sound (any container "
                      "FFmpeg reads)")
  parser.add_argument("--checkpoint", default=None,
                      help="training workdir (or its checkpoints/ folder); default: "
                      "the weights that ship with the code (lite, 2 to 6 speakers)")
  parser.add_argument("--output", required=True, help="directory to write (created; "
                      "written whole or not at all)")
  parser.add_argument("--which", choices=("best", "latest"), default="best",
                      help="checkpoint step: best validation SI-SNRi (default; the "
                      "newest when no step has a score) or the newest")
  parser.add_argument("--config", default=None,
                      help="configs/<file>.py[:variant] of the run, when its workdir has "
                      "no config.json")
  parser.add_argument("--mp4", action="store_true",
                      help="also write speaker_<slot>.mp4: the video with that voice")
  parser.add_argument("--chunk_seconds", type=float, default=6.0,
                      help="length of the pieces the model separates at once")
  parser.add_argument("--overlap_seconds", type=float, default=1.0,
                      help="least overlap of consecutive chunks (crossfaded)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace a non-empty --output")
  args = parser.parse_args(argv)
  if args.chunk_seconds < 0.2:
    parser.error("--chunk_seconds must be at least 0.2")
  if not 0 <= args.overlap_seconds < args.chunk_seconds:
    parser.error("--overlap_seconds must be in [0, chunk_seconds)")
  return args


def run(args):
  """Separates `args.input` into `args.output`; returns the summary dict."""
  info = avio.probe(args.input)  # fails fast on a missing or unreadable file
  if not info.has_video:
    raise avio.MediaError(f"{args.input} has no video stream")
  if not info.has_audio:
    raise avio.MediaError(f"{args.input} has no audio stream")
  out = OutputDir(args.output, overwrite=args.overwrite)
  loaded = load_model(args.checkpoint, args.which, args.config)
  m = loaded.config.model
  fps, sample_rate = float(m.video_fps), int(m.sample_rate)
  samples_per_frame = sample_rate // int(m.video_fps)
  chunk_frames = max(2, round(args.chunk_seconds * fps))
  overlap_frames = round(args.overlap_seconds * fps)
  print(f"checkpoint: step {loaded.step} ({loaded.which}, {loaded.params_key}) of "
        f"{loaded.checkpoint_dir}; {loaded.num_slots} speaker slots")

  with tqdm.tqdm(total=avio.num_frames_at(info.duration, fps) or None, unit="frame",
                 desc="faces", disable=None, dynamic_ncols=True) as bar:
    faces = pipeline.face_tracks(args.input, max_tracks=loaded.num_slots,
                                 roi_size=int(m.roi_size), fps=fps,
                                 sample_rate=sample_rate, progress=bar.update)
  if faces.num_frames < 2:
    raise avio.MediaError(f"{args.input} is too short to separate "
                          f"({faces.num_frames} frame at {fps:g} fps)")
  kept = ", ".join(f"slot {i} = track {t.track_id}" for i, t in enumerate(faces.tracks))
  print(f"{faces.num_frames} frames ({faces.num_frames / fps:.2f} s): "
        f"{len(faces.tracks) + len(faces.dropped)} face track(s); {kept}")
  if faces.dropped:
    print(f"the model has {loaded.num_slots} slots: kept the {loaded.num_slots} most "
          f"visible tracks, dropped "
          + ", ".join(f"track {t.track_id} (in {t.visibility:.0%} of frames)"
                      for t in faces.dropped))

  gain = level_gain(faces.audio)
  separate_fn = make_separate_fn(loaded)
  chunk_frames = min(chunk_frames, faces.num_frames)
  starts = chunk_starts(faces.num_frames, chunk_frames, overlap_frames)
  present = np.stack([t.present for t in faces.tracks])
  with tqdm.tqdm(total=len(starts), unit="chunk", desc="separate", disable=None,
                 dynamic_ncols=True) as bar:
    voices = separate_chunks(separate_fn, faces.audio * gain, faces.rois, present,
                             loaded.num_slots, starts, chunk_frames, samples_per_frame,
                             progress=bar.update)
  voices /= gain
  peak = float(np.abs(voices).max()) if voices.size else 0.0
  if peak > 0.99:  # one gain for all voices keeps their balance
    voices *= 0.99 / peak

  with out as tmp:
    files = {}
    for slot, voice in enumerate(voices):
      name = f"speaker_{slot}"
      avio.write_audio(os.path.join(tmp, f"{name}.wav"), voice, sample_rate)
      files[slot] = {"wav": f"{name}.wav"}
    if args.mp4:
      for slot, voice in enumerate(tqdm.tqdm(voices, desc="mp4", unit="file",
                                             disable=None, dynamic_ncols=True)):
        name = f"speaker_{slot}.mp4"
        write_speaker_mp4(os.path.join(tmp, name), args.input, voice, fps, sample_rate)
        files[slot]["mp4"] = name
    summary = build_summary(faces, loaded, args, chunk_frames, starts, gain, files)
    with open(os.path.join(tmp, SUMMARY_FILE), "w") as f:
      json.dump(summary, f, indent=2)
  print(f"wrote {out.path}: " + ", ".join(
      sorted(n for v in files.values() for n in v.values())) + f", {SUMMARY_FILE}")
  return summary


# Failures a user can cause or fix: one line, no traceback.
_USER_ERRORS = (avio.MediaError, CheckpointError, detector_weights.WeightsNotFoundError,
                FileExistsError, PermissionError)


def main(argv=None):
  """Command-line entry point; returns the exit status."""
  args = parse_args(argv)
  # Orbax and the TFDS/absl stack log routine warnings; the user reads progress lines.
  logging.set_verbosity(logging.ERROR)
  try:
    run(args)
  except _USER_ERRORS as e:
    sys.stdout.flush()
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 1
  return 0


if __name__ == "__main__":
  status = main()
  if status:
    sys.stdout.flush()
    sys.stderr.flush()
    # Not sys.exit: Orbax's background reads of a rejected checkpoint would print pages
    # of asyncio noise at interpreter shutdown, burying the error line.
    os._exit(status)
  sys.exit(status)
