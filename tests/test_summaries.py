"""TensorBoard events: what a call wrote is in the file when it returns, so a process
killed right after logging a step (SIGKILL, or a peer's death in a multi-process run)
keeps that step's scalars; audio and images read back with TensorBoard's own reader."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
from tensorboard.backend.event_processing import event_accumulator

from avsep_jax import summaries


def _read(workdir):
  acc = event_accumulator.EventAccumulator(
      str(workdir / "tensorboard"), size_guidance={"audio": 0, "images": 0})
  acc.Reload()
  return acc


def test_scalars_survive_sigkill(tmp_path):
  script = textwrap.dedent(f"""
      import os, signal
      from avsep_jax import summaries
      writer = summaries.Writer({str(tmp_path)!r})
      for step in range(1, 6):
        writer.scalars(step, {{"train/loss": 1.0 / step}})
      os.kill(os.getpid(), signal.SIGKILL)
  """)
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        cwd=os.getcwd())
  assert proc.returncode == -signal.SIGKILL, proc.stderr
  acc = _read(tmp_path)
  got = {e.step: e.value for e in acc.Scalars("train/loss")}
  np.testing.assert_allclose([got[s] for s in range(1, 6)], [1.0 / s for s in range(1, 6)])


def test_examples_are_audio_and_images(tmp_path):
  writer = summaries.Writer(str(tmp_path))
  rng = np.random.default_rng(0)
  batch = {"mixture": rng.normal(size=(2, 4000)).astype(np.float32),
           "speaker_mask": np.array([[1, 1, 0], [1, 0, 0]], bool)}
  separated = rng.normal(size=(2, 3, 4000)).astype(np.float32) * 0.1
  masks = rng.uniform(size=(2, 3, 25, 201)).astype(np.float32)
  writer.examples(7, batch, separated, masks, sample_rate=16000)
  writer.close()
  acc = _read(tmp_path)
  tags = acc.Tags()
  assert set(tags["audio"]) == {"example0/mixture", "example0/speaker0_separated",
                                "example0/speaker1_separated", "example1/mixture",
                                "example1/speaker0_separated"}
  assert set(tags["images"]) == {"example0/mixture_spectrogram", "example0/speaker0_mask",
                                 "example0/speaker1_mask", "example1/mixture_spectrogram",
                                 "example1/speaker0_mask"}
  mask = acc.Images("example0/speaker1_mask")[0]
  assert (mask.step, mask.width, mask.height) == (7, 25, 201)
  audio = acc.Audio("example1/mixture")[0]
  assert audio.sample_rate == 16000 and audio.length_frames == 4000
