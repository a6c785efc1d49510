"""VoxCeleb2: celebrity interview clips, speaker-labelled, without transcripts.

Layout of the manual directory (as extracted from `vox2_dev_mp4_part*`,
`vox2_test_mp4.zip` and, optionally, the `aac` archives):

    <manual_dir>/{dev,test}/mp4/<idXXXXX>/<YouTube id>/<NNNNN>.mp4
    <manual_dir>/{dev,test}/aac/<idXXXXX>/<YouTube id>/<NNNNN>.m4a    (optional)

The audio comes from the `.m4a` beside a clip when the aac tree is there, else from the
mp4's own sound track. `test/` is the test split; validation is a held-out share of the
`dev/` speakers (by a hash of the speaker id).
"""

import glob
import os
from typing import ClassVar

import tensorflow_datasets as tfds

from avsep_jax.data.corpora import common


def part_clips(manual_dir, part):
  """Clips of `dev` or `test`, sorted, with their m4a where it exists."""
  clips = []
  pattern = os.path.join(manual_dir, part, "mp4", "*", "*", "*.mp4")
  for video in sorted(glob.glob(pattern)):
    speaker, youtube, utt = video[:-len(".mp4")].split(os.sep)[-3:]
    audio = os.path.join(manual_dir, part, "aac", speaker, youtube, f"{utt}.m4a")
    clips.append(common.Clip(
        clip_id=f"{part}/{speaker}/{youtube}/{utt}", speaker_id=speaker, video=video,
        audio=audio if os.path.isfile(audio) else None))
  return clips


def list_clips(manual_dir, config):
  """{split: [Clip]} of VoxCeleb2 under `manual_dir`."""
  missing = [p for p in ("dev", "test")
             if not os.path.isdir(os.path.join(manual_dir, p, "mp4"))]
  if missing:
    folders = ", ".join(f"{p}/mp4/" for p in missing)
    raise FileNotFoundError(f"{manual_dir} has no {folders}\n"
                            f"{VoxCeleb2.MANUAL_DOWNLOAD_INSTRUCTIONS}")
  train, validation = common.split_by_speaker(
      part_clips(manual_dir, "dev"), config.validation_fraction,
      config.min_validation_speakers)
  return {"train": train, "validation": validation,
          "test": part_clips(manual_dir, "test")}


class VoxCeleb2(common.CorpusBuilder, skip_registration=True):
  """VoxCeleb2 (Chung et al.): mouth ROIs from our face pipeline, 16 kHz audio."""

  name = "voxceleb2"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict] = {"1.0.0": "First release."}
  HOMEPAGE = "https://www.robots.ox.ac.uk/~vgg/data/voxceleb/vox2.html"
  BUILDER_CONFIGS: ClassVar[list] = [
      common.CorpusConfig(name="main", description="dev (2% of speakers held out for "
                          "validation) and test."),
  ]
  DEFAULT_CONFIG_NAME = "main"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download VoxCeleb2 (vox2_dev_mp4_part*, vox2_test_mp4.zip; the aac archives are
optional), extract them and pass the directory holding dev/ and test/ as --manual_dir:
    <manual_dir>/dev/mp4/<idXXXXX>/<YouTube id>/<NNNNN>.mp4
    <manual_dir>/test/mp4/<idXXXXX>/<YouTube id>/<NNNNN>.mp4
    <manual_dir>/{dev,test}/aac/<idXXXXX>/<YouTube id>/<NNNNN>.m4a   (optional)"""

  def list_clips(self, manual_dir):
    return list_clips(manual_dir, self.builder_config)
