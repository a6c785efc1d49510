"""Speech with a phone timeline, from eSpeak NG (through ctypes) or flite.

eSpeak NG comes as a shared library plus its data in the `espeakng-loader`
wheel; `espeak_process` binds the few C functions it needs with ctypes. eSpeak
reports a PHONEME event with the output sample at which each phoneme starts, so
the timeline is sample-accurate. Its ASCII phoneme names ("mnemonics", e.g.
'aI', '@L') are mapped to lowercase ARPAbet without stress digits, the phone
set of CMUdict, plus 'sil' for silence.

flite (Debian package `flite`, optional) adds three natural voices made by a
different method (slt, rms, awb); their phones come from its `-psdur` output.

Reproducibility: eSpeak keeps state from one synthesis to the next within a
process (a pitch-flutter index in its wave generator, and a noise RNG seeded
from the clock), draws from libc's rand(), and for some texts reads memory it
never wrote. Every eSpeak synthesis therefore runs in a new interpreter of its
own (`espeak_process`), with its RNG seeded from `seed`; the calling process
never synthesises. Audio is then byte-identical across calls, runs, worker
counts and callers (a worker pool, a Beam worker).

Audio is 16 kHz mono float32 in [-1, 1): eSpeak's 22.05 kHz int16 resampled
with soxr (in float64), flite's 16 kHz int16, divided by 32768. Levels are the
engines' own.
"""

from collections.abc import Sequence
import dataclasses
import multiprocessing
import os
import shutil
import subprocess
import tempfile
import wave

import espeakng_loader
import numpy as np
import soxr
import tqdm

from avsep_jax.data.synthav import espeak_process

SAMPLE_RATE = 16_000
SILENCE = "sil"
# CMUdict's 39 phones, lowercase and without stress digits.
ARPABET_PHONES = frozenset(
    "aa ae ah ao aw ay b ch d dh eh er ey f g hh ih iy jh k l m n ng ow oy p r "
    "s sh t th uh uw v w y z zh".split())
VOWELS = frozenset("aa ae ah ao aw ay eh er ey ih iy ow oy uh uw".split())

# The Latin-script English voices of eSpeak NG (en-shaw is Shavian script).
ESPEAK_VOICES = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029",
                 "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
# flite's natural 16 kHz voices whose -psdur times end where the audio ends;
# kal is 8 kHz, and kal16's diphone times overrun the audio by ~0.1 s.
FLITE_VOICES = ("slt", "rms", "awb")
MIN_RATE, MAX_RATE = 80, 449  # words per minute
DEFAULT_RATE = 175  # eSpeak's default, and the rate at which flite is unscaled

# eSpeak mnemonic -> ARPAbet as the General American voice (en-us) says it.
# Mnemonics are looked up without their stress prefix; pauses ('_', '_:', '_!',
# '_|', ...) all start with '_' and become 'sil'. A diphthong that ends in a
# schwa or an r is split into two phones sharing its duration.
ESPEAK_TO_ARPABET = {
    # Consonants, and the allophones eSpeak names separately.
    "b": ("b",), "d": ("d",), "f": ("f",), "g": ("g",), "h": ("hh",),
    "j": ("y",), "k": ("k",), "l": ("l",), "m": ("m",), "n": ("n",),
    "p": ("p",), "r": ("r",), "s": ("s",), "t": ("t",), "v": ("v",),
    "w": ("w",), "z": ("z",), "N": ("ng",), "S": ("sh",), "Z": ("zh",),
    "T": ("th",), "D": ("dh",), "tS": ("ch",), "dZ": ("jh",),
    "t#": ("t",),  # flap, as in "city"; CMUdict writes t
    "t2": ("t",), "t[": ("t",),  # unreleased t (en-us), dental t (en-029)
    "d#": ("d",), "z#": ("z",),  # voicing follows the neighbours
    "w#": ("w",),  # voiceless w of Scottish "which"
    "r-": ("r",),  # linking r between vowels
    ";": ("y",),  # linking y glide after an i-vowel ("ability_able")
    "?": ("t",),  # glottal stop for t ("bitten"); CMUdict writes t
    "n-": ("n",),  # syllabic n
    # Vowels.
    "@": ("ah",), "@-": ("ah",), "@2": ("ah",), "@5": ("ah",), "a#": ("ah",),
    "V": ("ah",), "@L": ("ah", "l"),
    "3": ("er",), "3:": ("er",), "IR": ("er",), "VR": ("er",),
    "0": ("aa",), "A:": ("aa",), "A@": ("aa", "r"),
    "a": ("ae",), "aa": ("ae",),
    "E": ("eh",), "e@": ("eh", "r"),
    "I": ("ih",), "I2": ("ih",), "I#": ("ih",), "i@3": ("ih", "r"),
    "i": ("iy",), "i:": ("iy",), "i@": ("iy", "ah"),
    "O:": ("ao",), "O2": ("ao",), "O@": ("ao", "r"), "o@": ("ao", "r"),
    "OI": ("oy",), "oU": ("ow",),
    "U": ("uh",), "U@": ("uh", "r"), "u:": ("uw",),
    "aI": ("ay",), "aI2": ("ay",), "aI3": ("ay", "er"), "aI@": ("ay", "ah"),
    "aU": ("aw",), "eI": ("ey",),
}
# The other voices say the r-coloured vowels without an r: they are
# non-rhotic, or (en-gb-scotland) follow the vowel with an r phoneme of its own,
# except in U@, which Scottish pronounces with its r. Other accent differences
# keep the phoneme's label (West Midlands "time", said with an oy, stays ay):
# labels are phonemic, but an r is only written where one is pronounced.
_NON_RHOTIC = {
    "3": ("ah",), "A@": ("aa",), "e@": ("eh", "ah"), "i@3": ("ih", "ah"),
    "U@": ("uh", "ah"), "O@": ("ao",), "o@": ("ao",), "aI3": ("ay", "ah"),
}
ACCENT_OVERRIDES = {
    "en-us": {},
    "en-gb-scotland": {**_NON_RHOTIC, "e@": ("eh",), "i@3": ("ih",),
                       "U@": ("uh", "r")},
    **{name: _NON_RHOTIC for name in ESPEAK_VOICES
       if name not in ("en-us", "en-gb-scotland")},
}
# flite prints CMUdict phones, plus 'pau' for pauses and 'ax' for schwa.
_FLITE_TO_ARPABET = {"pau": SILENCE, "ax": "ah"}
# SynthAV sentences have no articles: a lone 'a' is GRID's letter, which both
# engines would read as the article (a schwa). 'eigh' makes them say "ay".
_SPOKEN_SPELLINGS = {"a": "eigh"}


@dataclasses.dataclass(frozen=True)
class Voice:
  """A synthetic speaker: an engine voice and its prosody.

  Attributes:
    engine: 'espeak' or 'flite'.
    name: an eSpeak voice from ESPEAK_VOICES, optionally with a variant from
      espeak-ng-data/voices/!v after a '+' ('en-us+f3'; the variant is
      case-sensitive), or a flite voice from FLITE_VOICES.
    pitch: eSpeak base pitch, 0..100; 50 is the variant's own.
    pitch_range: eSpeak intonation range, 0..100; 0 is monotone, 50 default.
    rate: speaking rate in words per minute, 80..449 (eSpeak switches to a
      speed-up that breaks its phoneme timing from 450). flite has no rate in
      words per minute: its durations are scaled by DEFAULT_RATE / rate.
  """

  engine: str = "espeak"
  name: str = "en-us"
  pitch: int = 50
  pitch_range: int = 50
  rate: int = DEFAULT_RATE

  def __post_init__(self):
    if self.engine == "espeak":
      if self.base not in ESPEAK_VOICES or self.name.endswith("+"):
        raise ValueError(
            f"unknown eSpeak voice {self.name!r}: use one of {ESPEAK_VOICES}, "
            "optionally with '+variant'.")
    elif self.engine == "flite":
      if self.name not in FLITE_VOICES:
        raise ValueError(
            f"unknown flite voice {self.name!r}: use one of {FLITE_VOICES}.")
      # slt and awb follow flite's F0 target features but rms ignores them.
      if (self.pitch, self.pitch_range) != (50, 50):
        raise ValueError("flite voices take no pitch settings; leave pitch and "
                         f"pitch_range at 50 (got {self.pitch}, "
                         f"{self.pitch_range}).")
    else:
      raise ValueError(
          f"unknown engine {self.engine!r}: use 'espeak' or 'flite'.")
    for field, low, high in (("pitch", 0, 100), ("pitch_range", 0, 100),
                             ("rate", MIN_RATE, MAX_RATE)):
      value = getattr(self, field)
      # Integers only: they go to C ints and into `speaker_id`.
      if (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
          or not low <= value <= high):
        unit = " words per minute" if field == "rate" else ""
        raise ValueError(
            f"{field} must be an integer in {low}..{high}{unit}, got "
            f"{value!r}.")

  @property
  def base(self) -> str:
    """The voice without its variant ('en-us' for 'en-us+f3')."""
    return self.name.partition("+")[0]

  @property
  def variant(self) -> str:
    """The eSpeak variant ('f3' for 'en-us+f3'), '' for none."""
    return self.name.partition("+")[2]

  @property
  def speaker_id(self) -> str:
    """A stable id naming every setting, e.g. 'espeak:en-us+f3:p60:r50:w170'."""
    return (f"{self.engine}:{self.name}:p{self.pitch}:r{self.pitch_range}:"
            f"w{self.rate}")


@dataclasses.dataclass
class Utterance:
  """One synthesized utterance.

  Attributes:
    audio: (num_samples,) float32 at SAMPLE_RATE, in [-1, 1).
    phones: (phone, start_s, end_s) in order: ARPAbet phones or 'sil',
      contiguous, from 0 to num_samples / SAMPLE_RATE, with times on the
      16 kHz sample grid. Silence before the first phoneme (eSpeak has none
      before vowels and sonorants: they start at sample 0) and after the last
      is 'sil'.
    text: the text as given to `synthesize`.
    speaker_id: `Voice.speaker_id` of the voice that spoke it.
  """

  audio: np.ndarray
  phones: tuple[tuple[str, float, float], ...]
  text: str
  speaker_id: str


def espeak_to_arpabet(mnemonic: str, voice: str) -> tuple[str, ...]:
  """ARPAbet phones of one eSpeak phoneme event as `voice` pronounces it.

  Args:
    mnemonic: the ASCII phoneme name of a PHONEME event, possibly with a stress
      prefix ("'aI").
    voice: a base voice from ESPEAK_VOICES.

  Returns:
    One or two phones from ARPABET_PHONES, or ('sil',) for a pause.

  Raises:
    ValueError: for a mnemonic missing from ESPEAK_TO_ARPABET.
  """
  name = mnemonic.lstrip("',%=")
  if name.startswith("_"):
    return (SILENCE,)
  phones = ACCENT_OVERRIDES[voice].get(name, ESPEAK_TO_ARPABET.get(name))
  if phones is None:
    raise ValueError(
        f"eSpeak phoneme {mnemonic!r} (voice {voice!r}) has no ARPAbet "
        "mapping; add it to ESPEAK_TO_ARPABET.")
  return phones


def _espeak_utterance(text: str, voice: Voice, seed: int):
  """eSpeak audio at 16 kHz and its phoneme starts (phones, sample at 16k)."""
  pcm, events = espeak_process.run({
      "library": espeakng_loader.get_library_path(),
      "data": espeakng_loader.get_data_path(),
      "name": voice.name, "base": voice.base, "variant": voice.variant,
      "rate": voice.rate, "pitch": voice.pitch, "pitch_range": voice.pitch_range,
      "seed": seed, "text": text})
  # Resampled as float64: soxr's int16 path returns a different last ~30 ms from
  # call to call for longer inputs (it depends on memory it did not write).
  audio = np.clip(soxr.resample(np.frombuffer(pcm, np.int16).astype(np.float64),
                                espeak_process.ESPEAK_RATE, SAMPLE_RATE),
                  -32768, 32767)
  # sample * 16000 / 22050 = sample * 320 / 441, rounded to the nearest.
  starts = [(espeak_to_arpabet(name, voice.base), (2 * 320 * sample + 441)
             // (2 * 441)) for name, sample in events]
  return audio, starts


def flite_available() -> bool:
  """Whether the `flite` command is installed."""
  return shutil.which("flite") is not None


def _flite_utterance(text: str, voice: Voice):
  """flite audio (16 kHz int16) and its phone starts (phones, sample)."""
  if not flite_available():
    raise RuntimeError("flite is not installed (apt-get install flite).")
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "speech.wav")
    out = subprocess.run(
        ["flite", "-voice", voice.name, "--setf",
         f"duration_stretch={DEFAULT_RATE / voice.rate!r}", "-psdur",
         "-t", text, "-o", path],
        capture_output=True, text=True, check=True)
    with wave.open(path, "rb") as f:
      if (f.getframerate(), f.getnchannels(), f.getsampwidth()) != (
          SAMPLE_RATE, 1, 2):
        raise RuntimeError(f"flite voice {voice.name} wrote "
                           f"{f.getframerate()} Hz, {f.getnchannels()} "
                           f"channels, {f.getsampwidth()} bytes per sample.")
      audio = np.frombuffer(f.readframes(f.getnframes()), "<i2")
  starts, start = [], 0
  for item in out.stdout.split():  # 'phone:end_s' pairs
    phone, _, end_s = item.partition(":")
    phone = _FLITE_TO_ARPABET.get(phone, phone)
    if phone != SILENCE and phone not in ARPABET_PHONES:
      raise ValueError(f"flite phone {phone!r} is not ARPAbet.")
    starts.append(((phone,), start))
    start = round(float(end_s) * SAMPLE_RATE)
  return audio, starts


def _phone_timeline(starts, num_samples: int):
  """Contiguous (phone, start_s, end_s) covering [0, num_samples].

  Args:
    starts: (phones, first sample) per engine phoneme, in time order. Each
      lasts until the next starts, the last until the end of the audio, and a
      phoneme of several phones splits its span evenly among them.
    num_samples: length of the audio.

  Returns:
    The timeline without empty segments and with runs of 'sil' merged; the
    span before the first phoneme is 'sil'.
  """
  bounds = [min(max(sample, 0), num_samples) for _, sample in starts]
  bounds.append(num_samples)
  if any(later < earlier for earlier, later in zip(bounds, bounds[1:])):
    raise RuntimeError(f"phoneme times go backwards: {starts}")
  segments = [(SILENCE, 0, bounds[0])]
  for (phones, _), begin, end in zip(starts, bounds, bounds[1:]):
    cuts = [begin + (end - begin) * k // len(phones)
            for k in range(len(phones) + 1)]
    segments.extend(zip(phones, cuts, cuts[1:]))
  merged = []
  for phone, begin, end in segments:
    if end <= begin:
      continue
    if phone == SILENCE and merged and merged[-1][0] == SILENCE:
      merged[-1] = (SILENCE, merged[-1][1], end)
    else:
      merged.append((phone, begin, end))
  return tuple((phone, begin / SAMPLE_RATE, end / SAMPLE_RATE)
               for phone, begin, end in merged)


def synthesize(text: str, voice: Voice, seed: int) -> Utterance:
  """Speaks `text` with `voice`.

  The result depends only on the arguments (byte-identical audio on every
  call): eSpeak runs in a new process of its own. A lone word 'a' is read
  as the letter name, as in GRID sentences.

  Args:
    text: non-empty text, e.g. from `text.sentence`.
    voice: the speaker.
    seed: 0 <= seed < 2**63; seeds eSpeak's noise generator (breathy
      variants). flite is deterministic and ignores it.

  Returns:
    The utterance, with audio at SAMPLE_RATE and its phone timeline.

  Raises:
    ValueError: for empty text, text with no speech, an unknown eSpeak variant
      or a phoneme without an ARPAbet mapping.
  """
  if not text.strip():
    raise ValueError("text is empty.")
  if not 0 <= seed < 2**63:
    raise ValueError(f"seed must be in [0, 2**63), got {seed}.")
  spoken = " ".join(_SPOKEN_SPELLINGS.get(w, w) for w in text.split())
  if voice.engine == "espeak":
    audio, starts = _espeak_utterance(spoken, voice, seed)
  else:
    audio, starts = _flite_utterance(spoken, voice)
  phones = _phone_timeline(starts, len(audio))
  if all(phone == SILENCE for phone, _, _ in phones):
    raise ValueError(f"{voice.name} says nothing for {text!r}.")
  return Utterance(audio=audio.astype(np.float32) / 32768, phones=phones,
                   text=text, speaker_id=voice.speaker_id)


def _synthesize_job(job: tuple[str, Voice, int]) -> Utterance:
  return synthesize(*job)


def synthesize_many(jobs: Sequence[tuple[str, Voice, int]], num_workers: int,
                    progress: bool = False) -> list[Utterance]:
  """`synthesize(text, voice, seed)` for each job, in `num_workers` processes.

  The results are the same, byte for byte, for any `num_workers`.

  Args:
    jobs: (text, voice, seed) triples.
    num_workers: processes to use; 1 synthesizes from this process.
    progress: show a tqdm progress bar.

  Returns:
    The utterances, in the order of `jobs`.
  """
  jobs = list(jobs)
  if num_workers < 1:
    raise ValueError(f"num_workers must be >= 1, got {num_workers}.")
  results = []
  with tqdm.tqdm(total=len(jobs), unit="utt", desc="tts",
                 disable=not progress) as bar:
    if num_workers == 1 or len(jobs) <= 1:
      for job in jobs:
        results.append(_synthesize_job(job))
        bar.update()
    else:
      # Workers persist; each synthesis still gets its own process (see
      # `synthesize`), so which worker runs a job does not matter.
      context = multiprocessing.get_context("fork")
      with context.Pool(min(num_workers, len(jobs))) as pool:
        for utterance in pool.imap(_synthesize_job, jobs):
          results.append(utterance)
          bar.update()
  return results
