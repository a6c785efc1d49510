"""LRS2, LRS3 and VoxCeleb2 builders on small fake trees in each corpus's official layout.

Each clip is a tiny mp4 of a real face photo (scikit-image's astronaut or cameraman)
with a tone; one clip per corpus shows no face and must be skipped and counted. Each
built dataset is read back through `pipeline.make_dataset` for one batch of mixtures.
"""

import os
import pathlib
import sys
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from avsep_jax.data import corpora, pipeline, sources
from avsep_jax.data.corpora import common, lrs2
from avsep_jax.vision import avio

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "vision"))
import vision_images  # real photos shared with the vision tests

SIDE, FRAMES = 160, 12  # 0.48 s clips


def _face(k):
  """The k-th face picture: astronaut / cameraman, plain or mirrored."""
  photo = vision_images.astronaut() if k % 2 == 0 else vision_images.camera()
  photo = np.asarray(Image.fromarray(photo).resize((SIDE, SIDE), Image.BILINEAR))
  return photo[:, ::-1] if (k // 2) % 2 else photo


def _tone(k, seconds=FRAMES / 25):
  t = np.arange(int(seconds * 16_000)) / 16_000
  return (0.2 * np.sin(2 * np.pi * (220 + 40 * k) * t)).astype(np.float32)


def write_clip(path, k, face=True, audio=True):
  """A 0.48 s mp4 at 25 fps showing face picture k (or a cup of coffee) with tone k."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = _face(k) if face else vision_images.coffee()[:SIDE, :SIDE]
  avio.write_video(path, np.stack([image] * FRAMES), fps=25,
                   audio=_tone(k) if audio else None)


def write_m4a(path, audio, sample_rate=16_000):
  """AAC in an MPEG-4 audio file, like VoxCeleb2's aac tree."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with av.open(path, mode="w", format="ipod") as container:
    stream = container.add_stream("aac", rate=sample_rate, layout="mono")
    for start in range(0, len(audio), 1024):
      frame = av.AudioFrame.from_ndarray(audio[None, start:start + 1024], format="fltp",
                                         layout="mono")
      frame.sample_rate, frame.pts = sample_rate, start
      frame.time_base = Fraction(1, sample_rate)
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def transcript(path, words):
  """An LRS-style `.txt`: Text and Conf lines, then word timings."""
  lines = [f"Text:  {' '.join(words)}", "Conf:  5", "",
           "WORD START END ASDSCORE"]
  lines += [f"{w} {0.1 * i:.2f} {0.1 * i + 0.1:.2f} 4.5" for i, w in enumerate(words)]
  pathlib.Path(path).write_text("\n".join(lines) + "\n")


def make_lrs2(root):
  """Programmes 1..6: two per split; one val clip has no face; test.txt has NF tags."""
  splits = {"train": ["1000000000000000001/00001", "1000000000000000001/00002",
                      "1000000000000000002/00001"],
            "val": ["1000000000000000003/00001", "1000000000000000004/00001",
                    "1000000000000000004/00002"],
            "test": ["1000000000000000005/00001 NF", "1000000000000000006/00003"]}
  k = 0
  for split, items in splits.items():
    lines = []
    for item in items:
      clip = item.split()[0]
      stem = root / "mvlrs_v1" / "main" / clip
      write_clip(f"{stem}.mp4", k, face=clip != "1000000000000000004/00002")
      transcript(f"{stem}.txt", ["HELLO", "WORLD", str(k)])
      lines.append(item)
      k += 1
    (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
  (root / "pretrain.txt").write_text("")
  return {"train": 3, "validation": 2, "test": 2}, {"validation": {"no_face": 1}}


def make_lrs3(root):
  """Four trainval talks (two held out for validation), two test talks."""
  clips = [("trainval", "UGtFXtnWME4", "50021"), ("trainval", "UGtFXtnWME4", "50022"),
           ("trainval", "0Fi83BHQsMA", "00001"), ("trainval", "aaaaaaaaaaa", "00001"),
           ("trainval", "bbbbbbbbbbb", "00001"), ("test", "0Fi83BHQsMB", "00002"),
           ("test", "cccccccc-_c", "00001"), ("test", "cccccccc-_c", "00002")]
  for k, (part, talk, utt) in enumerate(clips):
    stem = root / part / talk / utt
    write_clip(f"{stem}.mp4", k, face=(talk, utt) != ("cccccccc-_c", "00002"))
    transcript(f"{stem}.txt", ["TED", "TALK", str(k)])
  # A pretrain/ part that the `main` config does not read.
  write_clip(str(root / "pretrain" / "zzzzzzzzzzz" / "00001.mp4"), 9)
  return None, {"test": {"no_face": 1}}


def make_voxceleb2(root):
  """Four dev speakers (two held out), two test speakers; audio from the aac tree for
  some clips (their mp4 has no sound), from the mp4 for the others."""
  clips = [("dev", "id00012", "21Uxsk56VDQ", "00001"),
           ("dev", "id00012", "abcdefghijk", "00002"),
           ("dev", "id00015", "0123456789a", "00001"),
           ("dev", "id02912", "88v-sPZl5-w", "00010"),
           ("dev", "id03000", "xxxxxxxxxxx", "00001"),
           ("test", "id00017", "01dfn2spqyE", "00001"),
           ("test", "id00061", "0G9G9oyFHI8", "00001")]
  for k, (part, speaker, youtube, utt) in enumerate(clips):
    separate_audio = k % 2 == 1
    write_clip(str(root / part / "mp4" / speaker / youtube / f"{utt}.mp4"), k,
               audio=not separate_audio)
    if separate_audio:
      write_m4a(str(root / part / "aac" / speaker / youtube / f"{utt}.m4a"), _tone(k))
  # A clip FFmpeg cannot read: skipped as unreadable.
  bad = root / "test" / "mp4" / "id00061" / "0G9G9oyFHI8" / "00002.mp4"
  bad.write_bytes(b"truncated download\n" * 20)
  return None, {"test": {"unreadable": 1}}


CORPORA = {"lrs2": make_lrs2, "lrs3": make_lrs3, "voxceleb2": make_voxceleb2}


# 7-8 s each: the fast tier builds LRS2.
@pytest.mark.parametrize("corpus", [
    c if c == "lrs2" else pytest.param(c, marks=pytest.mark.slow) for c in sorted(CORPORA)])
def test_build_and_mix_one_batch(corpus, tmp_path):
  manual_dir, data_dir = tmp_path / "manual", tmp_path / "tfds"
  counts, skipped = CORPORA[corpus](manual_dir)
  # One corpus goes through the worker pool; the others run in this process (cheaper).
  # The Beam path (the corpora's default) is compared with this one in test_beam.py.
  workers = 1 if corpus == "lrs3" else 0
  builder = corpora.build(corpus, str(manual_dir), str(data_dir), num_workers=workers,
                          use_beam=False)
  meta = builder.info.metadata
  splits = {k: v.num_examples for k, v in builder.info.splits.items()}
  assert set(splits) == {"train", "validation", "test"}
  if counts:
    assert splits == counts
  for split, count in splits.items():
    assert meta["skipped"][split] == skipped.get(split, {})
    assert count == meta["clips_listed"][split] - sum(skipped.get(split, {}).values())
    assert meta["speakers"][split] == 2

  # Read back from disk as the trainer does: by name, without the builder class.
  source, metadata = sources.open_split(corpus, "train", str(data_dir))
  example = source[0]
  frames = example["video"].shape[0]
  assert example["video"].shape == (frames, 88, 88) and example["video"].dtype == np.uint8
  assert example["audio"].shape == (frames * 640,) and example["audio"].dtype == np.int16
  assert frames == FRAMES and example["face_visibility"] == 1.0
  for i in range(len(source)):  # every clip: the tone (from the m4a where there is one)
    assert np.abs(source[i]["audio"]).max() > 1000
  assert example["video"].std() > 5  # a mouth, not a flat patch
  assert metadata["speakers"]["train"] == 2
  if corpus != "voxceleb2":
    texts = {source[i]["text"].decode() for i in range(len(source))}
    assert all(t.split()[:2] in (["HELLO", "WORLD"], ["TED", "TALK"]) for t in texts)

  mix = pipeline.MixConfig(max_speakers=2, min_speakers=2, segment_seconds=0.4)
  batch = next(iter(pipeline.make_dataset(corpus, "train", str(data_dir), mix,
                                          batch_size=2, seed=0)))
  assert batch["mixture"].shape == (2, 10 * 640)
  assert batch["video"].shape == (2, 2, 10, 88, 88)
  assert batch["speaker_mask"].all()
  np.testing.assert_allclose(batch["mixture"], batch["sources"].sum(1), atol=1e-5)


def test_lrs2_lists_keep_the_first_field_and_pretrain_joins_train(tmp_path):
  (tmp_path / "mvlrs_v1").mkdir()
  for name, lines in {"train.txt": "1/00001\n", "val.txt": "2/00001\n",
                      "test.txt": "3/00001 NF\n\n",
                      "pretrain.txt": "4/00001\n4/00002\n"}.items():
    (tmp_path / name).write_text(lines)
  main = lrs2.list_clips(str(tmp_path), lrs2.LRS2.BUILDER_CONFIGS[0])
  assert main["test"][0].clip_id == "main/3/00001"
  assert main["test"][0].video == str(tmp_path / "mvlrs_v1/main/3/00001.mp4")
  pre = lrs2.list_clips(str(tmp_path), lrs2.LRS2.BUILDER_CONFIGS[1])
  assert [c.clip_id for c in pre["train"]] == ["pretrain/4/00001", "pretrain/4/00002",
                                               "main/1/00001"]


def test_transcript_and_held_out_speakers(tmp_path):
  path = tmp_path / "00001.txt"
  transcript(path, ["{LAUGHTER}", "IT'S", "FINE"])
  assert common.read_transcript(str(path)) == "LAUGHTER IT'S FINE"
  ids = [f"talk{i}" for i in range(300)]
  held = common.held_out(ids, 0.02, 2)
  assert len(held) == 6 and held == common.held_out(list(reversed(ids)), 0.02, 2)
  assert len(common.held_out(["a", "b", "c"], 0.02, 2)) == 1  # two left to train on


def test_wrong_layout_names_what_is_expected(tmp_path):
  with pytest.raises(FileNotFoundError, match="trainval"):
    corpora.build("lrs3", str(tmp_path), str(tmp_path / "tfds"))
  with pytest.raises(FileNotFoundError, match="is not built.*data.corpora --corpus lrs2"):
    sources.open_split("lrs2", "train", str(tmp_path))
  assert sources.parse_name("lrs3") == ("lrs3", "main")
  assert sources.parse_name("voxceleb2/main") == ("voxceleb2", "main")
