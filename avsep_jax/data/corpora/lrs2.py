"""LRS2-BBC: BBC programme clips, split by the official lists.

Layout of the manual directory (as extracted from the BBC's archives):

    <manual_dir>/mvlrs_v1/main/<19-digit id>/<NNNNN>.{mp4,txt}
    <manual_dir>/mvlrs_v1/pretrain/<19-digit id>/<NNNNN>.{mp4,txt}
    <manual_dir>/{pretrain,train,val,test}.txt     one `<id>/<NNNNN>` per line

Only the lists define the splits (train, val and test clips all live in `main/`); a
list line may carry a trailing tag (e.g. `NF`), which is ignored. LRS2 has no speaker
labels: the programme id stands in for the speaker, so a mixture's voices come from
different programmes.
"""

import os
from typing import ClassVar

import tensorflow_datasets as tfds

from avsep_jax.data.corpora import common

_ROOT = "mvlrs_v1"
# Split -> (list file, folder under mvlrs_v1).
_LISTS = {"train": ("train.txt", "main"), "validation": ("val.txt", "main"),
          "test": ("test.txt", "main")}
_PRETRAIN = ("pretrain.txt", "pretrain")


def read_list(path):
  """`<id>/<NNNNN>` of every non-empty line (first field only)."""
  with open(path, encoding="utf-8") as f:
    return [line.split()[0] for line in f if line.strip()]


def _clips(manual_dir, list_file, part):
  path = os.path.join(manual_dir, list_file)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"LRS2 list {path} is missing.\n{LRS2.MANUAL_DOWNLOAD_INSTRUCTIONS}")
  clips = []
  for item in read_list(path):
    stem = os.path.join(manual_dir, _ROOT, part, item)
    clips.append(common.Clip(clip_id=f"{part}/{item}", speaker_id=item.split("/")[0],
                             video=f"{stem}.mp4", transcript=f"{stem}.txt"))
  return clips


def list_clips(manual_dir, config):
  """{split: [Clip]} of LRS2 under `manual_dir` (train + pretrain with `with_pretrain`)."""
  if not os.path.isdir(os.path.join(manual_dir, _ROOT)):
    raise FileNotFoundError(f"{manual_dir} has no {_ROOT}/ folder.\n"
                            f"{LRS2.MANUAL_DOWNLOAD_INSTRUCTIONS}")
  splits = {split: _clips(manual_dir, *spec) for split, spec in _LISTS.items()}
  if config.with_pretrain:
    splits["train"] = _clips(manual_dir, *_PRETRAIN) + splits["train"]
  return splits


class LRS2(common.CorpusBuilder, skip_registration=True):
  """LRS2-BBC (Afouras et al.): mouth ROIs from our face pipeline, 16 kHz audio."""

  name = "lrs2"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict] = {"1.0.0": "First release."}
  HOMEPAGE = "https://www.robots.ox.ac.uk/~vgg/data/lip_reading/lrs2.html"
  BUILDER_CONFIGS: ClassVar[list] = [
      common.CorpusConfig(name="main", description="train/val/test lists, main/ only."),
      common.CorpusConfig(name="pretrain", description="train list plus pretrain/.",
                          with_pretrain=True),
  ]
  DEFAULT_CONFIG_NAME = "main"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download LRS2-BBC (registration with the BBC), extract it and pass the directory that
holds mvlrs_v1/ and the lists as --manual_dir:
    <manual_dir>/mvlrs_v1/main/<id>/<NNNNN>.mp4 (+ .txt)
    <manual_dir>/mvlrs_v1/pretrain/<id>/<NNNNN>.mp4 (+ .txt)   (config 'pretrain')
    <manual_dir>/train.txt, val.txt, test.txt, pretrain.txt"""

  def list_clips(self, manual_dir):
    return list_clips(manual_dir, self.builder_config)
