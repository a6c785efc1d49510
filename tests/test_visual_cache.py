"""The frozen encoder's feature cache: equal to the live encoder bit for bit, keyed by
the encoder and the dataset version, and what a training step reads in place of video."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avsep_jax import separate
from avsep_jax import train
from avsep_jax import visual_cache
from avsep_jax.data import pipeline
from avsep_jax.data import sources
from avsep_jax.model import avsep
from avsep_jax.model import visual as visual_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET = "synthav/tiny"


def frozen_config(data_dir, seed=0):
  """The smoke separator with a (nominally) pretrained, frozen encoder."""
  config, _ = separate.load_config(None, os.path.join(ROOT, "configs/2spk.py:smoke"))
  config.update(dataset=DATASET, data_dir=data_dir, visual_init="pretrained",
                visual_learning_rate=0.0, seed=seed, segment_seconds=1.0,
                oracle_cue_steps=0, warmup_steps=1)
  return config


def init_state(config):
  mesh, rules, batch_sharding = train.make_mesh(config)
  optimizer, schedule = train.make_optimizer(config)
  model = train.AVSeparator(config.model)
  state, _, shardings = train.create_train_state(config, model, optimizer, mesh, rules)
  return model, optimizer, schedule, state, shardings, batch_sharding


def live_frame_features(config, visual_params, video, num_frames=None):
  """The model's own visual encoder on (B, S, F, H, W) video, frame stage only."""
  opts = avsep.video_options(config.model, avsep.layer_options(config.model))
  encoder = visual_lib.VisualEncoder(config.model.visual, opts)
  fn = jax.jit(lambda p, v, n: encoder.apply(
      {"params": p}, v, n, method=visual_lib.VisualEncoder.frame_features))
  return np.asarray(fn(visual_params, video, num_frames).astype(jnp.float32))


@pytest.fixture(scope="module")
def built(tiny_data_dir, run_once):
  """(config, encoder params, cache directory, expected meta): the validation split's
  cache beside the tiny dataset, built by one xdist worker, opened by the others."""
  config = frozen_config(tiny_data_dir)
  params = jax.device_get(init_state(config)[3].params["visual_encoder"])

  def ensure(_=None):
    return visual_cache.ensure(config.model, params, DATASET, tiny_data_dir,
                               splits=("validation",))

  run_once("visual_cache_tiny", ensure)
  return (config, params) + ensure()


@pytest.mark.slow
def test_cached_features_equal_the_live_encoder_bit_for_bit(built, tiny_data_dir):
  config, params, directory, expected = built
  features = visual_cache.SplitFeatures(directory, "validation", expected)
  source, _ = sources.open_split(DATASET, "validation", tiny_data_dir)
  assert len(features) == len(source)
  # The first, a middle and the last record (each length compiles the encoder anew).
  for i in (0, len(source) // 2, len(source) - 1):
    video = np.asarray(source[i]["video"])
    f = len(video)
    # The utterance as the cache encodes it: padded to a multiple of BUCKET_FRAMES
    # frames, which the encoder reads as zeros beyond its end.
    bucket = -(-f // visual_cache.BUCKET_FRAMES) * visual_cache.BUCKET_FRAMES
    batch = np.zeros((1, 1, bucket) + video.shape[1:], np.uint8)
    batch[0, 0, :f] = video
    live = live_frame_features(config, params, batch, np.int32(f))[0, 0, :f]
    assert features[i].dtype == np.float32 and features[i].shape == live.shape
    np.testing.assert_array_equal(features[i], live, err_msg=f"record {i}")
    # The bare utterance: other shapes, other rounding, but the same frames.
    bare = live_frame_features(config, params, video[None, None])[0, 0]
    np.testing.assert_allclose(features[i], bare, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_a_missing_cache_is_built_and_a_foreign_one_refused(built, tiny_data_dir, capsys,
                                                            tmp_path):
  config, params, directory, expected = built
  assert directory.startswith(sources.dataset_dir(DATASET, tiny_data_dir))
  meta_path = os.path.join(directory, "meta.json")
  stamp = os.stat(meta_path).st_mtime_ns
  # Present: opened, not rebuilt, and nothing said.
  again = visual_cache.ensure(config.model, params, DATASET, tiny_data_dir,
                              splits=("validation",))
  assert again == (directory, expected) and os.stat(meta_path).st_mtime_ns == stamp
  assert "building" not in capsys.readouterr().out
  # Another encoder has another key, so another directory: it builds its own.
  other = jax.device_get(init_state(frozen_config(tiny_data_dir, seed=1))[3]
                         .params["visual_encoder"])
  other_key = visual_cache.fingerprint(config.model, other)
  assert other_key != expected["fingerprint"]
  assert visual_cache.cache_dir(DATASET, tiny_data_dir, "1.1.0", other_key) != directory
  # The transformer is not cached: its weights do not change the key.
  retrained = dict(params, transformer=jax.tree.map(lambda x: x + 1, params["transformer"]))
  assert visual_cache.fingerprint(config.model, retrained) == expected["fingerprint"]
  # Opened for another encoder, or another dataset version: refused, naming which.
  with pytest.raises(visual_cache.CacheMismatchError, match="fingerprint"):
    visual_cache.SplitFeatures(directory, "validation",
                               dict(expected, fingerprint=other_key))
  with pytest.raises(visual_cache.CacheMismatchError, match="version '1.1.0', not '9.9.9'"):
    visual_cache.SplitFeatures(directory, "validation", dict(expected, version="9.9.9"))
  with pytest.raises(FileNotFoundError, match="no split 'train'"):
    visual_cache.SplitFeatures(directory, "train", expected)
  # A directory whose meta.json says it holds another version is refused by ensure too
  # (in a copy of the dataset: the other tests read this cache meanwhile).
  copy = tmp_path / "tfds"
  shutil.copytree(tiny_data_dir, copy)
  meta = json.loads(open(meta_path).read())
  with open(os.path.join(directory.replace(tiny_data_dir, str(copy)), "meta.json"),
            "w") as f:
    json.dump(dict(meta, version="0.0.1"), f)
  with pytest.raises(visual_cache.CacheMismatchError, match="delete that directory"):
    visual_cache.ensure(config.model, params, DATASET, str(copy), splits=("validation",))


@pytest.mark.slow
def test_mixtures_carry_the_cached_features_of_their_crops(built, tiny_data_dir):
  config, params, directory, expected = built
  features = visual_cache.SplitFeatures(directory, "validation", expected)
  mix = train.mix_config(config)

  def first_batch(**kw):
    return next(iter(pipeline.make_dataset(DATASET, "validation", tiny_data_dir, mix,
                                           batch_size=4, seed=3, num_examples=4, **kw)))

  plain, cached = first_batch(), first_batch(visual_features=features)
  assert "video" not in cached and "video" in plain
  np.testing.assert_array_equal(plain["mixture"], cached["mixture"])
  live = live_frame_features(config, params, plain["video"])
  got = cached["visual_features"]
  assert got.shape == live.shape and got.dtype == np.float32
  real = plain["speaker_mask"]
  assert not np.any(got[~real])          # padded slots stay empty
  # Inside the crop both saw the same frames; at its ends the cache saw the
  # utterance's neighbouring frames, the live encoder zero padding.
  edge = config.model.visual.stem_kernel[0] // 2
  np.testing.assert_allclose(got[real][:, edge:-edge], live[real][:, edge:-edge],
                             rtol=1e-5, atol=1e-5)
  assert not np.allclose(got[real][:, :edge], live[real][:, :edge], atol=1e-5)


@pytest.mark.slow
def test_the_model_on_cached_features_reads_no_frame_stage_weight(built, tiny_data_dir):
  config, params, directory, expected = built
  model, _, _, state, shardings, batch_sharding = init_state(config)
  assert train.uses_visual_cache(config)
  assert not train.uses_visual_cache(dict(config, visual_learning_rate=1e-4))
  features = visual_cache.SplitFeatures(directory, "validation", expected)
  batch = train.compact_slots(next(iter(pipeline.make_dataset(
      DATASET, "validation", tiny_data_dir, train.mix_config(config), batch_size=2,
      seed=0, num_examples=2, visual_features=features))))
  # Validation's predict (and the train step) hand the batch's features to the model.
  predict = train.make_predict(config, model, shardings.params, batch_sharding)
  out, _ = predict(state.params, batch)
  # The frame stage's weights set to NaN: a model that ran the visual CNN would give
  # NaN; on cached features it gives the same voices.
  poisoned = dict(state.params["visual_encoder"])
  for name in visual_cache.FRAME_STAGE:
    poisoned[name] = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), poisoned[name])
  again, _ = predict(state.params | {"visual_encoder": poisoned}, batch)
  assert np.all(np.isfinite(out)) and np.any(out)
  np.testing.assert_array_equal(out, again)
  # The model refuses features of the wrong width, naming the expected shape.
  with pytest.raises(ValueError, match=r"visual_features must be \(B, S, F, 16\)"):
    model.apply({"params": state.params}, batch["mixture"], None, batch["speaker_mask"],
                visual_features=batch["visual_features"][..., :3])
