"""Lip-reading pretraining: frame labels, labelled clips, the trainer, and separators
that start from its visual encoder (`config.visual_init`)."""

import json
import os

import jax
import numpy as np
import pytest

from avsep_jax import lipread
from avsep_jax import loading
from avsep_jax import separate
from avsep_jax import train
from avsep_jax.data import lipread as data_lib
from avsep_jax.data import sources
from avsep_jax.data.synthav import render
from avsep_jax.data.synthav import visemes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference_label(timeline, t):
  """The viseme at time t, by a plain scan of [start, end) spans."""
  for phone, start, end in timeline:
    if start <= t < end:
      return visemes.PHONE_TO_VISEME[phone]
  return visemes.PHONE_TO_VISEME[visemes.SILENCE]


def random_timeline(rng):
  phones = [p for p in visemes.PHONE_TO_VISEME if p != visemes.SILENCE]
  t = float(rng.uniform(0, 0.3))
  timeline = []
  for _ in range(int(rng.integers(1, 30))):
    # Some phones last no time at all (eSpeak writes them): never a frame's label.
    length = 0.0 if rng.random() < 0.1 else float(rng.uniform(0.005, 0.2))
    timeline.append((str(rng.choice(phones)), t, t + length))
    t += length
  return timeline


@pytest.mark.parametrize("offset", [-2, 0, 1, 2])
def test_frame_visemes_match_a_plain_scan(offset):
  rng = np.random.default_rng(offset + 10)
  for _ in range(20):
    timeline = random_timeline(rng)
    frames = int(rng.integers(1, 120))
    got = visemes.frame_visemes(timeline, frames, 25, offset)
    times = visemes.frame_times(frames, 25, offset)
    assert got.dtype == np.int32 and got.shape == (frames,)
    np.testing.assert_array_equal(got, [reference_label(timeline, t) for t in times])
  assert (visemes.frame_visemes([], 5) == 0).all()
  with pytest.raises(ValueError, match="unknown phone"):
    visemes.frame_visemes([("xx", 0.0, 0.1)], 5)


def test_labels_follow_what_the_rendered_mouth_does(tiny_data_dir):
  """The labels' jaw opening (the viseme table's target) against the opening measured
  from the pixels: best aligned at the stored audio-video offset, so the lag is applied
  with the right sign (a wrong sign moves the peak by twice the offset)."""
  source, _ = sources.open_split("synthav/tiny", "validation", tiny_data_dir)
  target = np.array([visemes.VISEMES[i][1][0] for i in range(visemes.NUM_VISEMES)])
  right, wrong = [], []
  for i in range(len(source)):
    utt = source[i]
    measured = render.mouth_opening(utt["video"])
    timeline = list(zip(utt["phones"]["phone"], utt["phones"]["start"],
                        utt["phones"]["end"]))

    def corr(k):
      labels = visemes.frame_visemes(timeline, len(measured), 25, k)
      return np.corrcoef(measured, target[labels])[0, 1]

    offset = int(utt["av_offset"])
    np.testing.assert_array_equal(data_lib.utterance_visemes(utt),
                                  visemes.frame_visemes(timeline, len(measured), 25,
                                                        offset))
    best = max(range(-4, 5), key=corr)
    assert abs(best - offset) <= 1, (i, best, offset)
    if offset:
      right.append(corr(offset))
      wrong.append(corr(-offset))
  assert np.mean(right) > 0.6 and np.mean(right) > np.mean(wrong) + 0.1, (right, wrong)


def test_clips_are_labelled_windows(tiny_data_dir):
  ds = data_lib.make_dataset("synthav/tiny", "validation", tiny_data_dir, frames=30,
                             batch_size=2, seed=3, num_examples=4)
  batches = list(ds)
  assert len(batches) == 2
  b = batches[0]
  assert b["video"].shape == (2, 30, 88, 88) and b["video"].dtype == np.uint8
  assert b["visemes"].shape == (2, 30) and b["visemes"].dtype == np.int32
  assert b["visemes"].max() < data_lib.NUM_CLASSES
  # Each clip is a window of its utterance: find it by its frames, check its labels.
  source, _ = sources.open_split("synthav/tiny", "validation", tiny_data_dir)
  for row in range(2):
    utt = source[int(np.flatnonzero(
        [source[i]["speaker_index"] == b["speaker_index"][row]
         and any((source[i]["video"] == b["video"][row, 0]).all(axis=(1, 2)))
         for i in range(len(source))])[0])]
    start = int(np.flatnonzero((utt["video"] == b["video"][row, 0]).all(axis=(1, 2)))[0])
    labels = data_lib.utterance_visemes(utt)
    if start + 30 <= len(labels):
      np.testing.assert_array_equal(b["visemes"][row], labels[start:start + 30])
  # The same seed gives the same clips.
  again = next(iter(data_lib.make_dataset("synthav/tiny", "validation", tiny_data_dir,
                                          frames=30, batch_size=2, seed=3,
                                          num_examples=4)))
  np.testing.assert_array_equal(again["video"], b["video"])


def test_short_utterances_are_edge_padded():
  video = np.arange(3)[:, None, None] * np.ones((3, 2, 2), np.uint8)
  labels = np.array([5, 6, 7], np.int32)
  v, l = data_lib.window(video, labels, 8, np.random.default_rng(0))
  assert v.shape == (8, 2, 2) and l.shape == (8,)
  # Padding repeats the first and last frame, and their labels, in step.
  np.testing.assert_array_equal(v[:, 0, 0] + 5, l)


def test_datasets_without_phones_are_refused(monkeypatch, tiny_data_dir):
  real = sources.open_split

  def without_phones(*args):
    source, metadata = real(*args)
    return [{k: v for k, v in source[0].items() if k != "phones"}], metadata

  monkeypatch.setattr(sources, "open_split", without_phones)
  with pytest.raises(ValueError, match="no phone timelines"):
    data_lib.make_dataset("synthav/tiny", "train", tiny_data_dir, frames=4,
                          batch_size=1, seed=0)


def test_score_against_a_plain_count():
  labels = np.array([[1, 1, 2, 3], [1, 0, 0, 1]])
  predicted = np.array([[1, 2, 2, 3], [0, 0, 1, 1]])
  s = lipread.score(predicted, labels)
  assert s["frame_accuracy"] == pytest.approx(5 / 8)
  assert s["chance"] == pytest.approx(4 / 8)  # class 1
  assert s["recall_per_class"][1] == pytest.approx(2 / 4)
  assert s["recall_per_class"][0] == pytest.approx(1 / 2)
  assert s["recall_per_class"][5] is None


@pytest.fixture(scope="module")
def lipread_workdir(run_module, tiny_data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("lipread")
  done = run_module("avsep_jax.main", "--config=configs/lipread.py:smoke",
                    f"--workdir={workdir}", f"--config.data_dir={tiny_data_dir}")
  assert done.returncode == 0, done.stderr[-3000:]
  assert "validation frame accuracy" in done.stdout + done.stderr
  return workdir


# The lip-reading workdir is a smoke training run in a subprocess; the tests below add
# separator steps: about a minute in all, so they run in `make test`, not the fast tier.
@pytest.mark.slow
def test_the_trainer_writes_accuracy_and_evaluates_test(lipread_workdir, run_module,
                                                        tiny_data_dir):
  result = json.loads((lipread_workdir / "eval" / "validation_4.json").read_text())
  s = result["summary"]
  assert 0 <= s["frame_accuracy"] <= 1 and 0 < s["chance"] < 1
  assert s["frames"] == 4 * 25 and len(s["recall_per_class"]) == data_lib.NUM_CLASSES
  assert result["dataset"] == "synthav/tiny" and result["dataset_version"] == "1.1.0"
  done = run_module("avsep_jax.main", "--config=configs/lipread.py:smoke",
                    f"--workdir={lipread_workdir}", f"--config.data_dir={tiny_data_dir}",
                    "--mode=evaluate")
  assert done.returncode == 0, done.stderr[-3000:]
  assert "test split, checkpoint step" in done.stdout
  assert list((lipread_workdir / "eval").glob("test_best_*.json"))


def smoke_separator(**overrides):
  config, _ = separate.load_config(None, os.path.join(ROOT, "configs/2spk.py:smoke"))
  config.update(overrides)
  return config


def separator_state(config):
  mesh, rules, _ = train.make_mesh(config)
  optimizer, schedule = train.make_optimizer(config)
  model = train.AVSeparator(config.model)
  state, _, shardings = train.create_train_state(config, model, optimizer, mesh, rules)
  return model, optimizer, schedule, train.load_visual_init(config, state, shardings), \
      shardings


@pytest.mark.slow
def test_a_separator_starts_from_the_lip_reader_and_keeps_it_frozen(lipread_workdir,
                                                                    tiny_data_dir):
  saved, _ = loading.load_visual_encoder(
      str(lipread_workdir), loading.abstract_params(smoke_separator())["visual_encoder"])
  for rate, frozen in ((0.0, True), (1e-2, False)):
    config = smoke_separator(visual_init=str(lipread_workdir), visual_learning_rate=rate,
                             data_dir=tiny_data_dir, warmup_steps=1)
    model, optimizer, schedule, state, shardings = separator_state(config)
    jax.tree.map(np.testing.assert_array_equal, saved,
                 jax.device_get(state.params["visual_encoder"]))
    _, _, batch_sharding = train.make_mesh(config)
    step = train.make_train_step(config, model, optimizer, schedule, shardings,
                                 batch_sharding)
    batch = next(train.train_iterator(config, tiny_data_dir))
    before = jax.device_get(state.params)
    for _ in range(2):
      state, metrics = step(state, batch)
    after = jax.device_get(state.params)
    assert np.isfinite(metrics["loss"])
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), before, after)
    assert max(jax.tree.leaves(moved["separator"])) > 0
    visual = max(jax.tree.leaves(moved["visual_encoder"]))
    assert (visual == 0) if frozen else (visual > 0), (rate, visual)


@pytest.mark.slow
def test_visual_init_refuses_what_does_not_fit(lipread_workdir, tmp_path):
  with pytest.raises(loading.CheckpointError, match="no such checkpoint directory"):
    separator_state(smoke_separator(visual_init=str(tmp_path / "nowhere")))
  # An encoder of another size: the first parameter that differs is named.
  lite = loading.abstract_params(
      separate.load_config(None, os.path.join(ROOT, "configs/2spk.py:lite"))[0])
  with pytest.raises(loading.CheckpointError, match=r"params\['.*'\].* there, .* here"):
    loading.load_visual_encoder(str(lipread_workdir), lite["visual_encoder"])
  with pytest.raises(ValueError, match="audio_only has none"):
    config, _ = separate.load_config(None, os.path.join(ROOT, "configs/2spk.py:audio_only"))
    config.visual_init = str(lipread_workdir)
    separator_state(config)
