"""The SynthAV speaker inventory, split into disjoint voices.

An eSpeak speaker is an English voice (the accent: en-us, en-gb-scotland, ...)
with a voice variant (the timbre: formant scalings, pitch register, glottal
source), a pitch, a pitch range and a rate. The splits partition the variants,
never the accents: a validation or test timbre is never heard in training, at
any pitch, rate or accent. Variants are first grouped into families whose
formants 1-3 are scaled alike (within 5 percentage points, e.g. f3, f4 and
aunty), and a family stays in one split, so no held-out variant has a
near-copy in training: every held-out variant's scaling of formants 1-5
differs from that of each variant of another split by at least 9 percentage
points in some formant.

flite's voices form one more held-out split, 'test_flite': a different
synthesizer altogether.
"""

import itertools

import numpy as np

from avsep_jax.data.synthav import tts

# Variants of espeak-ng-data/voices/!v, by split ('' is no variant).
TRAIN_VARIANTS = (
    # The default voice's family: formants 1-3 within 5% of the default.
    "", "Denis", "Diogo", "Gene", "Gene2", "Henrique", "Hugo", "Mario", "Mike",
    "Nguyen", "adam", "anika", "benjamin", "john", "klatt3", "klatt4",
    "klatt5", "klatt6", "m1", "m3", "m4", "m6", "m7", "m8", "max", "michel",
    "miguel", "pablo", "pedro", "quincy", "rob", "robert", "sandro",
    # Other families; victor is Denis's and Michael gustave's near-copy.
    "Alex", "Alicia", "Andy", "AnxiousAndy", "aunty", "f3", "f4", "david",
    "grandma", "gustave", "marcelo", "Michael", "iven2", "iven3", "iven4",
    "kaukovalta", "m2", "norbert", "shelby", "victor", "zac",
)
VALIDATION_VARIANTS = ("belinda", "linda", "f2", "f5", "Reed", "m5")
TEST_VARIANTS = ("Annie", "f1", "steph", "steph2", "boris", "edward",
                 "edward2", "travis")
# The rest do not sound like a natural speaker (judged from the voice files
# and from voiced-frame, F0 and clipping statistics of synthesized speech).
EXCLUDED_VARIANTS = (
    # Effects: whispers, a croak, robots, a demon, a speed-up.
    "whisper", "whisperf", "croak", "Demonic", "UniRobot", "anikaRobot",
    "robosoft", "robosoft2", "robosoft3", "robosoft4", "robosoft5",
    "robosoft6", "robosoft7", "robosoft8", "fast",
    # Whispered, creaky or trembling: under 22% voiced frames at default pitch.
    "caleb", "grandpa", "announcer", "Storm", "klatt", "klatt2",
    # Echoes at 80% amplitude or more: a room effect rather than a voice.
    "RicishayMax", "RicishayMax2", "RicishayMax3", "Marco",
    # Formants far out of the human range (e.g. Lee's F3 at 9%, F4 at 290%).
    "Lee", "Tweaky", "ian",
    # Clip more than 0.2% of samples at pitch 20..80.
    "Andrea", "Jacky", "Mr serious", "antonio", "ed", "iven", "mike2", "paul",
    "steph3",
)
SPLIT_VARIANTS = {
    "train": TRAIN_VARIANTS,
    "validation": VALIDATION_VARIANTS,
    "test": TEST_VARIANTS,
}
SPLITS = (*SPLIT_VARIANTS, "test_flite")

# Prosody settings every (accent, variant) pair is combined with.
PITCHES = (30, 40, 50, 60, 70)
PITCH_RANGES = (30, 50, 70)
RATES = (140, 160, 180, 200)  # words per minute


def _espeak_speakers(variants, seed: int):
  """Every speaker of `variants` as (name, pitch, pitch_range, rate).

  The order cycles fastest through the variants, then through the accents,
  then through the prosody settings, each in a seeded random order; so the
  first len(variants) speakers have different variants, and the first
  len(variants) * len(ESPEAK_VOICES) different (variant, accent) pairs.
  """
  rng = np.random.default_rng(seed)
  variant_rank = rng.permutation(len(variants))
  prosody = list(itertools.product(PITCHES, PITCH_RANGES, RATES))
  keyed = []
  for variant, v_rank in zip(variants, variant_rank):
    accent_rank = rng.permutation(len(tts.ESPEAK_VOICES))
    for accent, a_rank in zip(tts.ESPEAK_VOICES, accent_rank):
      name = f"{accent}+{variant}" if variant else accent
      prosody_rank = rng.permutation(len(prosody))
      for settings, p_rank in zip(prosody, prosody_rank):
        keyed.append(((p_rank, a_rank, v_rank), (name, *settings)))
  keyed.sort(key=lambda item: item[0])
  return [speaker for _, speaker in keyed]


def flite_speakers() -> list[tts.Voice]:
  """The flite voices at their natural rate: slt (female), rms and awb."""
  if not tts.flite_available():
    raise RuntimeError("flite is not installed (apt-get install flite).")
  return [tts.Voice("flite", name) for name in tts.FLITE_VOICES]


def speakers(split: str, num_speakers: int, seed: int = 0) -> list[tts.Voice]:
  """`num_speakers` distinct speakers of `split`.

  Any number of speakers is spread as evenly as possible over the split's
  variants, then accents (see `_espeak_speakers`); the same arguments always
  give the same list.

  Args:
    split: one of SPLITS. 'test_flite' has the flite voices at every rate of
      RATES (it needs flite installed).
    num_speakers: how many speakers to return.
    seed: picks which speakers and their order.

  Returns:
    `num_speakers` voices with distinct `speaker_id`s.

  Raises:
    ValueError: for an unknown split, or more speakers than the split has.
  """
  if split == "test_flite":
    # The flite voices in turn, each round at another rate.
    rng = np.random.default_rng(seed)
    names = [voice.name for voice in flite_speakers()]
    inventory = [("flite", names[n], 50, 50, RATES[r])
                 for r in rng.permutation(len(RATES))
                 for n in rng.permutation(len(names))]
  elif split in SPLIT_VARIANTS:
    inventory = [("espeak", *speaker)
                 for speaker in _espeak_speakers(SPLIT_VARIANTS[split], seed)]
  else:
    raise ValueError(f"unknown split {split!r}; choose from {SPLITS}.")
  if not 0 <= num_speakers <= len(inventory):
    raise ValueError(
        f"split {split!r} has {len(inventory)} distinct speakers; "
        f"{num_speakers} requested.")
  return [tts.Voice(*speaker) for speaker in inventory[:num_speakers]]
