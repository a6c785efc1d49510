"""Tests for avsep_jax.data.synthav.text and .voices."""

import importlib.resources
import os
import re

import espeakng_loader
import numpy as np
import pytest

from avsep_jax.data.synthav import text
from avsep_jax.data.synthav import tts
from avsep_jax.data.synthav import voices

ESPEAK_SPLITS = ("train", "validation", "test")


def test_word_list():
  words = text.words()
  assert 3000 <= len(words) <= 5000
  assert len(set(words)) == len(words)
  assert all(re.fullmatch(r"[a-z]{2,10}", w) for w in words)
  path = importlib.resources.files(text.__package__) / "resources/words.txt"
  assert len(path.read_bytes()) < 60_000


def test_grid_sentences_follow_the_grammar():
  rng = np.random.default_rng(0)
  seen = [set() for _ in text.GRID_GRAMMAR]
  for _ in range(1000):
    words = text.grid_sentence(rng).split(" ")
    assert len(words) == 6
    for slot, word, used in zip(text.GRID_GRAMMAR, words, seen):
      assert word in slot
      used.add(word)
  assert [len(used) for used in seen] == [4, 4, 4, 25, 10, 4]
  assert "w" not in text.GRID_GRAMMAR[3]


def test_word_sentences_use_listed_words():
  rng = np.random.default_rng(0)
  vocabulary = set(text.words())
  lengths = set()
  for _ in range(300):
    words = text.word_sentence(rng, min_words=2, max_words=5).split(" ")
    assert set(words) <= vocabulary
    lengths.add(len(words))
  assert lengths == {2, 3, 4, 5}


def test_sentences_are_deterministic_and_mixed():
  def draw(seed, grid_fraction=0.5):
    rng = np.random.default_rng(seed)
    return [text.sentence(rng, grid_fraction) for _ in range(200)]

  assert draw(7) == draw(7)
  assert draw(7) != draw(8)
  grid_like = [s.split(" ")[0] in text.GRID_GRAMMAR[0] and len(s.split()) == 6
               for s in draw(7)]
  assert 0.35 < np.mean(grid_like) < 0.7
  assert all(s.split(" ")[0] in text.GRID_GRAMMAR[0] for s in draw(1, 1.0))
  assert not any(len(s.split()) == 6 and s.split()[3] in text.GRID_GRAMMAR[3]
                 for s in draw(1, 0.0))


def test_text_errors():
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match="min_words <= max_words"):
    text.word_sentence(rng, 5, 4)
  with pytest.raises(ValueError, match="grid_fraction"):
    text.sentence(rng, 1.5)


def test_variant_tables_cover_espeak_data():
  files = set(os.listdir(os.path.join(espeakng_loader.get_data_path(),
                                      "voices", "!v")))
  groups = [*voices.SPLIT_VARIANTS.values(), voices.EXCLUDED_VARIANTS]
  listed = [v for group in groups for v in group if v]
  assert len(listed) == len(set(listed)), "a variant is listed twice"
  assert set(listed) == files


def test_splits_are_disjoint_in_variants():
  variants = {split: set(voices.SPLIT_VARIANTS[split])
              for split in ESPEAK_SPLITS}
  assert not variants["train"] & variants["validation"]
  assert not variants["train"] & variants["test"]
  assert not variants["validation"] & variants["test"]
  drawn = {split: {(v.base, v.variant) for v in voices.speakers(split, 300, 0)}
           for split in ESPEAK_SPLITS}
  for split in ESPEAK_SPLITS:
    assert {variant for _, variant in drawn[split]} <= variants[split]
    assert {base for base, _ in drawn[split]} == set(tts.ESPEAK_VOICES)


@pytest.mark.parametrize("split", ESPEAK_SPLITS)
def test_speakers(split):
  many = voices.speakers(split, 300, seed=0)
  assert len({v.speaker_id for v in many}) == 300
  assert voices.speakers(split, 300, seed=0) == many
  assert voices.speakers(split, 300, seed=1) != many
  # Prefixes are spread over the variants first.
  num_variants = len(voices.SPLIT_VARIANTS[split])
  assert len({v.variant for v in many[:num_variants]}) == num_variants
  assert voices.speakers(split, 10, seed=0) == many[:10]
  for v in many:
    assert v.pitch in voices.PITCHES and v.rate in voices.RATES
    assert v.pitch_range in voices.PITCH_RANGES


@pytest.mark.parametrize("split", ESPEAK_SPLITS)
def test_first_speakers_speak(split):
  jobs = [("place green by q four soon", voice, 0)
          for voice in voices.speakers(split, 4, seed=0)]
  for utt in tts.synthesize_many(jobs, num_workers=2):
    assert len(utt.audio) > tts.SAMPLE_RATE // 2


def test_speaker_errors():
  total = (len(voices.TEST_VARIANTS) * len(tts.ESPEAK_VOICES)
           * len(voices.PITCHES) * len(voices.PITCH_RANGES)
           * len(voices.RATES))
  with pytest.raises(ValueError, match=f"has {total} distinct speakers"):
    voices.speakers("test", total + 1, seed=0)
  assert len(voices.speakers("test", total, seed=0)) == total
  with pytest.raises(ValueError, match="unknown split"):
    voices.speakers("dev", 1, seed=0)


@pytest.mark.skipif(not tts.flite_available(), reason="flite not installed")
def test_flite_split():
  assert [v.name for v in voices.flite_speakers()] == list(tts.FLITE_VOICES)
  flite = voices.speakers("test_flite", 12, seed=0)
  assert len({v.speaker_id for v in flite}) == 12
  assert {v.name for v in flite[:3]} == set(tts.FLITE_VOICES)
  with pytest.raises(ValueError, match="has 12 distinct speakers"):
    voices.speakers("test_flite", 13, seed=0)
