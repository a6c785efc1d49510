"""Mouth ROIs rendered from phone timelines follow what the phones say."""

import zlib

import numpy as np
import pytest

from avsep_jax.data.synthav import render
from avsep_jax.data.synthav import visemes

FPS = 25
SPEECH_PHONES = sorted(p for p in visemes.PHONE_TO_VISEME
                       if p != visemes.SILENCE)


def timeline(spec):
  """[(phone, duration_s)] -> contiguous [(phone, start_s, end_s)] from 0."""
  out, t = [], 0.0
  for phone, duration in spec:
    out.append((phone, t, t + duration))
    t += duration
  return out


def random_timeline(rng, seconds=3.0):
  """Random phones of 60-200 ms, with a few pauses, filling `seconds`."""
  spec, total = [("sil", 0.05)], 0.05
  while total < seconds - 0.1:
    if rng.uniform() < 0.08:
      spec.append(("sil", rng.uniform(0.1, 0.3)))
    else:
      spec.append((SPEECH_PHONES[rng.integers(len(SPEECH_PHONES))],
                   rng.uniform(0.06, 0.2)))
    total += spec[-1][1]
  return timeline(spec + [("sil", 0.1)])


def held_phones(phones, hold_s=0.2):
  """Each phone held for `hold_s`, then as long a pause: its 3 middle frames."""
  spec = [x for p in phones for x in ((p, hold_s), ("sil", hold_s))]
  frames_per_phone = int(round(2 * hold_s * FPS))
  middle = int(hold_s * FPS) // 2
  return timeline(spec), frames_per_phone, middle


def appearance(seed):
  return render.sample_appearance(np.random.default_rng(seed))


SENTENCE = timeline([("sil", 0.2), ("b", 0.08), ("aa", 0.16), ("m", 0.09),
                     ("iy", 0.14), ("sil", 0.15), ("f", 0.1), ("uw", 0.15),
                     ("th", 0.08), ("ay", 0.2), ("l", 0.07), ("ow", 0.18),
                     ("p", 0.08), ("s", 0.1), ("sil", 0.32)])


def test_shape_dtype_and_determinism():
  frames = 52
  video = render.render_mouth(SENTENCE, frames, appearance(0),
                              np.random.default_rng(1))
  assert video.shape == (frames, 88, 88) and video.dtype == np.uint8
  again = render.render_mouth(SENTENCE, frames, appearance(0),
                              np.random.default_rng(1))
  np.testing.assert_array_equal(video, again)
  other_face = render.render_mouth(SENTENCE, frames, appearance(7),
                                   np.random.default_rng(1))
  other_take = render.render_mouth(SENTENCE, frames, appearance(0),
                                   np.random.default_rng(2))
  for other in (other_face, other_take):
    assert np.abs(video.astype(int) - other).mean() > 5
  assert render.render_mouth(SENTENCE, 10, appearance(0),
                             np.random.default_rng(1), size=64).shape == (
                                 10, 64, 64)
  # Lips, cavity and teeth: a wide range of gray levels without clipping
  # most of the frame.
  assert np.percentile(video, 99) - np.percentile(video, 1) > 40
  assert (video == 255).mean() < 0.01


def test_video_follows_its_own_timeline_not_another():
  # Measured on these seeds: own r = 0.89-0.97 (mean 0.94), other r =
  # -0.21..0.24 (mean -0.01). Over 100 random videos with offsets: own
  # 0.85-0.99 (mean 0.96), other -0.45..0.50 (mean 0.00, std 0.20).
  rng = np.random.default_rng(0)
  frames = 75
  timelines = [random_timeline(rng) for _ in range(6)]
  own, other = [], []
  for i, phones in enumerate(timelines):
    video = render.render_mouth(phones, frames, appearance(10 + i),
                                np.random.default_rng(i))
    measured = render.mouth_opening(video)
    own.append(np.corrcoef(
        measured, render.expected_opening(phones, frames))[0, 1])
    unrelated = timelines[(i + 1) % len(timelines)]
    other.append(np.corrcoef(
        measured, render.expected_opening(unrelated, frames))[0, 1])
  own, other = np.array(own), np.array(other)
  assert own.min() > 0.85, own
  assert abs(other.mean()) < 0.2, other
  assert (own - other).min() > 0.5, (own, other)


def test_bilabials_close_the_mouth_and_aa_opens_it_widest():
  phones, period, middle = held_phones(SPEECH_PHONES)
  frames = len(SPEECH_PHONES) * period
  expected = render.expected_opening(phones, frames)
  measured = []
  for seed in range(4):
    video = render.render_mouth(phones, frames, appearance(seed),
                                np.random.default_rng(seed))
    opening = render.mouth_opening(video).reshape(-1, period)
    measured.append(opening[:, middle - 1:middle + 2].mean(axis=1))
  measured = np.median(measured, axis=0)
  target = expected.reshape(-1, period)[:, middle]
  for name, values in (("expected", target), ("measured", measured)):
    by_phone = dict(zip(SPEECH_PHONES, values))
    bilabial = max(by_phone[p] for p in ("p", "b", "m"))
    rest = [v for p, v in by_phone.items() if p not in ("p", "b", "m")]
    assert bilabial < min(rest), (name, by_phone)
    assert by_phone["aa"] == max(values), (name, by_phone)
  # A closure reaches the target though it is shorter than two frames, even
  # between open vowels.
  short_b = timeline([("aa", 0.2), ("b", 0.05), ("aa", 0.2)])
  assert render.expected_opening(short_b, 11).min() < 0.1


@pytest.mark.parametrize("offset", [3, -2])
def test_offset_shifts_the_video_by_whole_frames(offset):
  frames = 52
  base = render.expected_opening(SENTENCE, frames)
  shifted = render.expected_opening(SENTENCE, frames, offset_frames=offset)
  if offset > 0:
    np.testing.assert_array_equal(shifted[offset:], base[:-offset])
  else:
    np.testing.assert_array_equal(shifted[:offset], base[-offset:])

  def opening(k):
    video = render.render_mouth(SENTENCE, frames, appearance(3),
                                np.random.default_rng(5), offset_frames=k)
    x = render.mouth_opening(video)
    return (x - x.mean()) / x.std()

  a, b = opening(0), opening(offset)
  lags = np.arange(-6, 7)
  xcorr = [np.mean(a[max(0, -lag):frames - max(0, lag)] *
                   b[max(0, lag):frames - max(0, -lag)]) for lag in lags]
  assert lags[np.argmax(xcorr)] == offset


def test_outside_the_timeline_the_mouth_rests():
  track = visemes.articulation_track([("aa", 1.0, 1.4)], 60)
  for name, values in track.items():
    assert values.min() >= 0 and values.max() <= 1, name
    np.testing.assert_allclose(values[:20], 0.0, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(values[-20:], 0.0, atol=1e-6, err_msg=name)
  assert track["open"][30] > 0.95
  np.testing.assert_array_equal(render.expected_opening([], 5), 0.0)


def test_bad_input_is_named():
  app, rng = appearance(0), np.random.default_rng(0)
  cases = [
      ([("aa", 0.0, 0.1), ("b", 0.2, 0.3)], 5, 88, "contiguous"),
      ([("aa", 0.2, 0.3), ("b", 0.0, 0.2)], 5, 88, "contiguous"),
      ([("aa", 0.3, 0.2)], 5, 88, "before it starts"),
      ([("aa", 0.0, 0.1), ("xx", 0.1, 0.2)], 5, 88, "unknown phone 'xx'"),
      ([("AA1", 0.0, 0.1)], 5, 88, "unknown phone 'AA1'"),
      ([("aa", 0.0)], 5, 88, "triple"),
      ([("aa", 0.0, float("nan"))], 5, 88, "non-finite"),
      (SENTENCE, 0, 88, "num_frames"),
      (SENTENCE, -3, 88, "num_frames"),
      (SENTENCE, 5, 16, "size"),
  ]
  for phones, frames, size, message in cases:
    with pytest.raises(ValueError, match=message):
      render.render_mouth(phones, frames, app, rng, size=size)
  with pytest.raises(ValueError, match="unknown phone"):
    render.expected_opening([("q", 0.0, 0.1)], 5)
  with pytest.raises(ValueError, match=r"\(F, H, W\)"):
    render.mouth_opening(np.zeros((88, 88)))


def test_contact_sheet_and_png(tmp_path):
  frames = np.arange(5 * 4 * 3).reshape(5, 4, 3).astype(np.uint8)
  sheet = render.contact_sheet(frames, 2, pad=1)
  assert sheet.shape == (3 * 5 - 1, 2 * 4 - 1) and sheet.dtype == np.uint8
  np.testing.assert_array_equal(sheet[5:9, 4:7], frames[3])
  path = tmp_path / "sheet.png"
  render.save_png(str(path), sheet)
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  idat = data.index(b"IDAT")
  length = int.from_bytes(data[idat - 4:idat], "big")
  rows = np.frombuffer(zlib.decompress(data[idat + 4:idat + 4 + length]),
                       np.uint8).reshape(sheet.shape[0], -1)
  np.testing.assert_array_equal(rows[:, 1:], sheet)
