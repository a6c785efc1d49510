"""LRS3-TED: TED and TEDx talk clips.

Layout of the manual directory (as extracted from the archives):

    <manual_dir>/{pretrain,trainval,test}/<11-char YouTube id>/<NNNNN>.{mp4,txt}

No split lists ship: `test/` is the test split, and validation is a held-out share of
the `trainval/` talks (by a hash of the talk id, so it is the same on every machine).
The talk id stands in for the speaker (LRS3 has no speaker labels; a talk has one
main speaker).
"""

import glob
import os
from typing import ClassVar

import tensorflow_datasets as tfds

from avsep_jax.data.corpora import common


def part_clips(manual_dir, part):
  """Clips of one part folder, sorted."""
  clips = []
  for video in sorted(glob.glob(os.path.join(manual_dir, part, "*", "*.mp4"))):
    stem = video[:-len(".mp4")]
    talk, utt = stem.split(os.sep)[-2:]
    clips.append(common.Clip(clip_id=f"{part}/{talk}/{utt}", speaker_id=talk,
                             video=video, transcript=f"{stem}.txt"))
  return clips


def list_clips(manual_dir, config):
  """{split: [Clip]} of LRS3 under `manual_dir`."""
  missing = [p for p in ("trainval", "test")
             if not os.path.isdir(os.path.join(manual_dir, p))]
  if missing:
    folders = ", ".join(f"{p}/" for p in missing)
    raise FileNotFoundError(f"{manual_dir} has no {folders}\n"
                            f"{LRS3.MANUAL_DOWNLOAD_INSTRUCTIONS}")
  train, validation = common.split_by_speaker(
      part_clips(manual_dir, "trainval"), config.validation_fraction,
      config.min_validation_speakers)
  if config.with_pretrain:
    held = {c.speaker_id for c in validation}
    train = [c for c in part_clips(manual_dir, "pretrain")
             if c.speaker_id not in held] + train
  return {"train": train, "validation": validation,
          "test": part_clips(manual_dir, "test")}


class LRS3(common.CorpusBuilder, skip_registration=True):
  """LRS3-TED (Afouras et al.): mouth ROIs from our face pipeline, 16 kHz audio."""

  name = "lrs3"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict] = {"1.0.0": "First release."}
  HOMEPAGE = "https://www.robots.ox.ac.uk/~vgg/data/lip_reading/lrs3.html"
  BUILDER_CONFIGS: ClassVar[list] = [
      common.CorpusConfig(name="main", description="trainval (2% of talks held out "
                          "for validation) and test."),
      common.CorpusConfig(name="pretrain", description="main plus pretrain/ in train.",
                          with_pretrain=True),
  ]
  DEFAULT_CONFIG_NAME = "main"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download LRS3-TED, extract it and pass the directory holding its part folders as
--manual_dir:
    <manual_dir>/trainval/<YouTube id>/<NNNNN>.mp4 (+ .txt)
    <manual_dir>/test/<YouTube id>/<NNNNN>.mp4 (+ .txt)
    <manual_dir>/pretrain/<YouTube id>/<NNNNN>.mp4 (+ .txt)   (config 'pretrain')"""

  def list_clips(self, manual_dir):
    return list_clips(manual_dir, self.builder_config)
