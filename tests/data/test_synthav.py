"""SynthAV builder: determinism, disjoint speakers, aligned streams, lips that follow speech."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest

from avsep_jax.data import sources
from avsep_jax.data.synthav import builder as builder_lib
from avsep_jax.data.synthav import render
from avsep_jax.data.synthav import tts


def records(data_dir, split):
  source, _ = sources.open_split("synthav/tiny", split, data_dir)
  return [source[i] for i in range(len(source))]


@pytest.mark.slow
def test_two_builds_give_identical_bytes(tiny_data_dir, tmp_path):
  builder_lib.build("tiny", str(tmp_path))
  files = sorted(pathlib.Path(tiny_data_dir).rglob("*.array_record-*"))
  assert len(files) == 3 + tts.flite_available()
  for f in files:
    other = tmp_path / f.relative_to(tiny_data_dir)
    assert f.read_bytes() == other.read_bytes(), f.name


def test_splits_have_the_configured_sizes_and_disjoint_speakers(tiny_data_dir):
  config = next(c for c in builder_lib.BUILDER_CONFIGS if c.name == "tiny")
  speakers = {}
  for split in builder_lib.SPLITS:
    recs = records(tiny_data_dir, split)
    speakers[split] = {r["speaker_id"] for r in recs}
    assert len(speakers[split]) == config.speakers[split]
    assert len(recs) == config.speakers[split] * config.utterances_per_speaker[split]
  assert not speakers["train"] & speakers["validation"]
  assert not speakers["train"] & speakers["test"]
  assert not speakers["validation"] & speakers["test"]
  if tts.flite_available():
    flite = {r["speaker_id"] for r in records(tiny_data_dir, builder_lib.FLITE_SPLIT)}
    assert len(flite) == config.speakers[builder_lib.FLITE_SPLIT]
    assert all(s.startswith(b"flite:") for s in flite), flite


@pytest.mark.parametrize("split", ["validation", builder_lib.FLITE_SPLIT])
def test_audio_and_video_lengths_agree(tiny_data_dir, split):
  if split == builder_lib.FLITE_SPLIT and not tts.flite_available():
    pytest.skip("flite is not installed")
  for r in records(tiny_data_dir, split):
    frames = r["video"].shape[0]
    assert r["video"].shape[1:] == (88, 88) and r["video"].dtype == np.uint8
    assert len(r["audio"]) == frames * 640  # 4 STFT hops of 160 per video frame
    assert abs(r["av_offset"]) <= builder_lib.MAX_AV_OFFSET
    ends = np.asarray(r["phones"]["end"])
    assert ends[-1] <= len(r["audio"]) / 16000 + 1e-3
    assert np.abs(r["audio"]).max() > 1000  # speech, not silence


def test_video_follows_the_speakers_own_phones(tiny_data_dir):
  recs = records(tiny_data_dir, "train")[:12]
  own, other = [], []
  for i, r in enumerate(recs):
    frames = r["video"].shape[0]
    measured = render.mouth_opening(r["video"])

    def expected(rec):
      phones = list(zip([p.decode() if isinstance(p, bytes) else p
                         for p in rec["phones"]["phone"]],
                        rec["phones"]["start"], rec["phones"]["end"]))
      return render.expected_opening(phones, frames, offset_frames=int(r["av_offset"]))

    own.append(np.corrcoef(measured, expected(r))[0, 1])
    other.append(np.corrcoef(measured, expected(recs[(i + 1) % len(recs)]))[0, 1])
  own, other = np.nan_to_num(own), np.nan_to_num(other)
  assert np.mean(own) > 0.6, own
  assert np.mean(own) > np.mean(other) + 0.4, (own, other)


def test_command_line_reports_location_and_size(tiny_data_dir):
  out = subprocess.run(
      [sys.executable, "-m", "avsep_jax.data.synthav", "--config=tiny",
       f"--data_dir={tiny_data_dir}"], capture_output=True, text=True, check=True).stdout
  assert "synth_av/tiny/1.1.0" in out and "MiB" in out and "already built" in out


def test_bad_input_gets_a_clear_error(tiny_data_dir, tmp_path):
  with pytest.raises(ValueError, match="unknown SynthAV config 'huge'"):
    builder_lib.build("huge", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="python -m avsep_jax.data.synthav --config=tiny"):
    sources.open_split("synthav/tiny", "train", str(tmp_path / "nothing"))
  with pytest.raises(ValueError, match="unknown dataset"):
    sources.open_split("lrs9/x", "train", str(tmp_path))
  with pytest.raises(ValueError, match="no split 'dev'"):
    sources.open_split("synthav/tiny", "dev", tiny_data_dir)
  # A damaged copy: truncated record files.
  damaged = tmp_path / "damaged"
  subprocess.run(["cp", "-r", tiny_data_dir, str(damaged)], check=True)
  for f in damaged.rglob("*train.array_record-*"):
    f.write_bytes(f.read_bytes()[:100])
  with pytest.raises(ValueError, match="damaged"):
    sources.open_split("synthav/tiny", "train", str(damaged))
