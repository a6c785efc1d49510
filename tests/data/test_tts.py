"""Tests for avsep_jax.data.synthav.tts: audio, phone timelines, determinism."""

import ctypes

import numpy as np
import pytest

from avsep_jax.data.synthav import text as text_lib
from avsep_jax.data.synthav import tts

SR = tts.SAMPLE_RATE
GRID = "bin blue at f two now"
# A comma makes eSpeak pause mid-utterance: a long silence inside the speech.
WITH_PAUSE = "bin blue at f two now, place red at a one soon"
needs_flite = pytest.mark.skipif(not tts.flite_available(),
                                 reason="flite is not installed")


def _segment(utt, start_s, end_s):
  return utt.audio[round(start_s * SR):round(end_s * SR)]


def _rms(x):
  return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _check_timeline(utt):
  """Phones are known, contiguous from 0 to the end of the audio (1 ms)."""
  assert utt.audio.dtype == np.float32 and utt.audio.ndim == 1
  assert np.all(np.abs(utt.audio) <= 1.0)
  phones = utt.phones
  assert phones[0][1] == 0.0
  assert abs(phones[-1][2] - len(utt.audio) / SR) < 1e-3
  for (_, _, end), (_, start, _) in zip(phones, phones[1:]):
    assert end == start
  for phone, start, end in phones:
    assert phone in tts.ARPABET_PHONES or phone == tts.SILENCE, phone
    assert end > start
  # eSpeak starts vowels and sonorants at sample 0; speech always ends in a
  # pause.
  assert phones[-1][0] == tts.SILENCE


def _num_vowels(utt):
  """Vowel phones: about one per syllable (a centring diphthong gives two)."""
  return sum(p in tts.VOWELS for p, _, _ in utt.phones)


def _median_f0(utt):
  """Crude F0 (Hz): autocorrelation peaks of 40 ms frames inside vowels."""
  frame = int(0.04 * SR)
  lags = np.arange(SR // 400, SR // 60)
  f0s = []
  for phone, start, end in utt.phones:
    if phone not in tts.VOWELS:
      continue
    seg = _segment(utt, start, end)
    for i in range(0, len(seg) - frame + 1, frame // 2):
      x = seg[i:i + frame] - seg[i:i + frame].mean()
      ac = np.correlate(x, x, "full")[frame - 1:]
      f0s.append(SR / lags[np.argmax(ac[lags])])
  return float(np.median(f0s))


def test_grid_sentence_audio_and_timeline():
  utt = tts.synthesize(GRID, tts.Voice("espeak", "en-us"), seed=0)
  _check_timeline(utt)
  assert 0.8 < len(utt.audio) / SR < 3.0
  assert utt.phones[0][0] == tts.SILENCE  # eSpeak's silence before a [b]
  assert utt.text == GRID
  assert utt.speaker_id == "espeak:en-us:p50:r50:w175"
  # One vowel per word: all words of this sentence have one syllable.
  assert _num_vowels(utt) == 6


def test_phone_sequence_of_a_known_sentence():
  utt = tts.synthesize(GRID, tts.Voice("espeak", "en-us"), seed=0)
  assert [p for p, _, _ in utt.phones] == (
      "sil b ih n b l uw ae t eh f t uw n aw sil".split())


def test_lone_a_is_read_as_the_letter():
  utt = tts.synthesize("set red at a one soon", tts.Voice(), seed=0)
  names = " ".join(p for p, _, _ in utt.phones)
  assert "ae t ey w ah n" in names


@pytest.mark.parametrize("name", ["en-us", "en-gb-x-rp+f4", "en-029+m2"])
def test_energy_follows_the_timeline(name):
  utt = tts.synthesize(WITH_PAUSE, tts.Voice("espeak", name), seed=0)
  _check_timeline(utt)
  vowel_rms = [_rms(_segment(utt, s, e)) for p, s, e in utt.phones
               if p in tts.VOWELS]
  long_silences = [(s, e) for p, s, e in utt.phones
                   if p == tts.SILENCE and e - s >= 0.05]
  assert long_silences, utt.phones
  # Echo variants (f4, m2) leave a faint tail in the pauses.
  for start, end in long_silences:
    assert _rms(_segment(utt, start, end)) < 0.1 * min(vowel_rms)
  assert min(vowel_rms) > 0.01


def test_words_match_syllables_roughly():
  rng = np.random.default_rng(3)
  for _ in range(5):
    sentence = text_lib.grid_sentence(rng)
    utt = tts.synthesize(sentence, tts.Voice("espeak", "en"), seed=0)
    # Six words; 'seven', 'zero' and 'again' have two syllables, and British
    # 'zero' ([z iy ah r ow]) has three vowels.
    assert 6 <= _num_vowels(utt) <= 10, (sentence, utt.phones)
  sentence = text_lib.word_sentence(rng, 8, 8)
  utt = tts.synthesize(sentence, tts.Voice("espeak", "en"), seed=0)
  assert 8 <= _num_vowels(utt) <= 8 * 4, (sentence, utt.phones)


@pytest.mark.parametrize("accent", tts.ESPEAK_VOICES)
def test_every_mnemonic_maps(accent):
  # The GRID vocabulary and 600 common words, in each accent: synthesize
  # raises on a mnemonic without an ARPAbet mapping.
  rng = np.random.default_rng(0)
  words = list(rng.choice(text_lib.words(), 600, replace=False))
  vocabulary = [w for slot in text_lib.GRID_GRAMMAR for w in slot]
  texts = [" ".join(words[i:i + 50]) for i in range(0, len(words), 50)]
  texts.append(" ".join(vocabulary))
  jobs = [(t, tts.Voice("espeak", accent), 0) for t in texts]
  for utt in tts.synthesize_many(jobs, num_workers=2):
    _check_timeline(utt)


def test_mapping_tables_hold_arpabet():
  tables = [tts.ESPEAK_TO_ARPABET, *tts.ACCENT_OVERRIDES.values()]
  for table in tables:
    for phones in table.values():
      assert 1 <= len(phones) <= 2
      assert set(phones) <= tts.ARPABET_PHONES
  assert set(tts.ACCENT_OVERRIDES) == set(tts.ESPEAK_VOICES)
  assert tts.espeak_to_arpabet("'aI@", "en-us") == ("ay", "ah")
  assert tts.espeak_to_arpabet("A@", "en-us") == ("aa", "r")
  assert tts.espeak_to_arpabet("A@", "en-gb-x-rp") == ("aa",)
  assert tts.espeak_to_arpabet("_:", "en") == ("sil",)
  with pytest.raises(ValueError, match="no ARPAbet mapping"):
    tts.espeak_to_arpabet("Q!", "en-us")


def test_phone_timeline_splits_merges_and_clips():
  timeline_of = tts._phone_timeline  # pylint: disable=protected-access
  starts = [(("sil",), 0), (("b",), 10), (("ah", "l"), 20), (("sil",), 31),
            (("sil",), 31), (("sil",), 40), (("sil",), 50)]
  assert [(p, round(s * SR), round(e * SR))
          for p, s, e in timeline_of(starts, 45)] == [
              ("sil", 0, 10), ("b", 10, 20), ("ah", 20, 25), ("l", 25, 31),
              ("sil", 31, 45)]
  # Silence before the first phoneme is added.
  assert [p for p, _, _ in timeline_of([(("b",), 5)], 9)] == ["sil", "b"]
  with pytest.raises(RuntimeError, match="backwards"):
    timeline_of([(("b",), 5), (("p",), 4)], 9)


def test_synthesize_many_is_deterministic():
  rng = np.random.default_rng(1)
  voices = [tts.Voice("espeak", "en-us"),
            tts.Voice("espeak", "en+f3", pitch=70, rate=150),
            # Flutter and breath noise: the state eSpeak keeps between calls.
            tts.Voice("espeak", "en-gb-x-rp+croak", pitch=40, rate=200),
            tts.Voice("espeak", "en-us+whisper")]
  jobs = [(text_lib.sentence(rng), voices[i % 4], i) for i in range(8)]
  runs = [tts.synthesize_many(jobs, num_workers=1),
          tts.synthesize_many(jobs, num_workers=2),
          tts.synthesize_many(jobs, num_workers=2)]
  for utts in runs[1:]:
    for a, b in zip(runs[0], utts):
      assert a.audio.tobytes() == b.audio.tobytes()
      assert a.phones == b.phones
  assert [u.text for u in runs[0]] == [t for t, _, _ in jobs]
  # synthesize alone gives the same bytes, whatever ran before it.
  assert tts.synthesize(*jobs[2]).audio.tobytes() == (
      runs[0][2].audio.tobytes())


def test_synthesis_ignores_the_callers_libc_rand_state():
  # The Reed variant draws from libc's rand(); a Beam worker's gRPC advances it.
  voice = tts.Voice("espeak", "en-gb-scotland+Reed", pitch=60, pitch_range=70, rate=180)
  before = tts.synthesize(GRID, voice, seed=3).audio
  libc = ctypes.CDLL(None)
  for _ in range(5):
    libc.rand()
  after = tts.synthesize(GRID, voice, seed=3).audio
  assert before.tobytes() == after.tobytes()


def test_long_utterances_are_identical_whatever_the_caller_did_before():
  # 3 s of speech: soxr's int16 resampling varied in its last ~30 ms from call to
  # call, with what the calling process had allocated and freed before.
  voice = tts.Voice("espeak", "en-gb-x-gbclan+f2", pitch=70, pitch_range=30, rate=160)
  text = "full some hospital leaved presence putts partial"
  rng = np.random.default_rng(0)
  audios = set()
  for _ in range(6):
    scratch = [bytes(int(n)) for n in rng.integers(1, 5000, 2000)]
    del scratch[::2]
    audios.add(tts.synthesize(text, voice, seed=49157003).audio.tobytes())
  assert len(audios) == 1


def test_voices_differ():
  a = tts.synthesize(GRID, tts.Voice("espeak", "en-us"), seed=0).audio
  b = tts.synthesize(GRID, tts.Voice("espeak", "en-us+f3"), seed=0).audio
  assert len(a) != len(b) or np.abs(a - b).max() > 0.1


def test_pitch_moves_f0():
  f0 = {pitch: _median_f0(tts.synthesize(
      WITH_PAUSE, tts.Voice("espeak", "en-us+m3", pitch=pitch), seed=0))
        for pitch in (20, 50, 80)}
  assert f0[20] * 1.15 < f0[50] and f0[50] * 1.15 < f0[80], f0
  assert 60 < f0[20] and f0[80] < 300, f0


def test_rate_changes_duration():
  slow = tts.synthesize(GRID, tts.Voice("espeak", "en", rate=100), seed=0)
  fast = tts.synthesize(GRID, tts.Voice("espeak", "en", rate=300), seed=0)
  assert len(slow.audio) > 2 * len(fast.audio)


@pytest.mark.parametrize("name", ["en-us+F3", "en-us+nosuchvariant"])
def test_unknown_variant_raises(name):
  with pytest.raises(ValueError, match=name.replace("+", r"\+")):
    tts.synthesize(GRID, tts.Voice("espeak", name), seed=0)


def test_invalid_arguments_raise():
  with pytest.raises(ValueError, match="unknown eSpeak voice 'de'"):
    tts.Voice("espeak", "de")
  with pytest.raises(ValueError, match="unknown eSpeak voice 'en-gb'"):
    tts.Voice("espeak", "en-gb")
  for rate in (79, 450):
    with pytest.raises(ValueError, match="rate must be an integer in 80..449"):
      tts.Voice("espeak", "en-us", rate=rate)
  with pytest.raises(ValueError, match="pitch must be an integer in 0..100"):
    tts.Voice("espeak", "en-us", pitch=101)
  with pytest.raises(ValueError, match="pitch_range must be an integer"):
    tts.Voice("espeak", "en-us", pitch_range=50.0)
  with pytest.raises(ValueError, match="unknown engine"):
    tts.Voice("festival", "kal")
  with pytest.raises(ValueError, match="unknown flite voice"):
    tts.Voice("flite", "kal")
  with pytest.raises(ValueError, match="no pitch settings"):
    tts.Voice("flite", "slt", pitch=60)
  for empty in ("", "  \n"):
    with pytest.raises(ValueError, match="text is empty"):
      tts.synthesize(empty, tts.Voice(), seed=0)
  with pytest.raises(ValueError, match="says nothing"):
    tts.synthesize("...", tts.Voice(), seed=0)


@needs_flite
@pytest.mark.parametrize("name", tts.FLITE_VOICES)
def test_flite_voice(name):
  slow = tts.synthesize(WITH_PAUSE, tts.Voice("flite", name, rate=120),
                        seed=0)
  fast = tts.synthesize(WITH_PAUSE, tts.Voice("flite", name, rate=240),
                        seed=5)
  for utt in (slow, fast):
    _check_timeline(utt)
    assert "ey" in [p for p, _, _ in utt.phones]  # the letter 'a'
  assert len(slow.audio) > 1.5 * len(fast.audio)
  again = tts.synthesize_many([(WITH_PAUSE, tts.Voice("flite", name, rate=120),
                                1)], num_workers=1)[0]
  assert again.audio.tobytes() == slow.audio.tobytes()
  assert again.phones == slow.phones
