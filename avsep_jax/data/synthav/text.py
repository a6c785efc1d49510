"""Sentences for SynthAV: the GRID corpus grammar and random common words.

GRID sentences ("bin blue at f two now") have a fixed six-slot grammar and a
51-word vocabulary, which makes them easy to lip-read and to check. Word
sentences draw from a few thousand common English words (`resources/words.txt`,
from SCOWL; see `resources/README.md`) to cover far more of English phonology.
Sentences are lowercase words separated by single spaces, without punctuation.
All randomness comes from the `np.random.Generator` passed in, so a seed fixes
the sentence.
"""

import functools
import importlib.resources

import numpy as np

# Slots of the GRID grammar (Cooke et al., 2006), in sentence order:
# command, colour, preposition, letter, digit, adverb.
GRID_GRAMMAR = (
    ("bin", "lay", "place", "set"),
    ("blue", "green", "red", "white"),
    ("at", "by", "in", "with"),
    # GRID leaves out 'w', the only letter whose name has several syllables.
    tuple("abcdefghijklmnopqrstuvxyz"),
    ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
     "nine"),
    ("again", "now", "please", "soon"),
)


@functools.cache
def words() -> tuple[str, ...]:
  """The word list for `word_sentence`: lowercase a-z words, 2..10 letters."""
  path = importlib.resources.files(__package__) / "resources" / "words.txt"
  lines = path.read_text(encoding="ascii").splitlines()
  return tuple(line for line in lines if line and not line.startswith("#"))


def _pick(rng: np.random.Generator, options) -> str:
  # Indexing with rng.integers (rather than rng.choice on strings) keeps the
  # draws cheap and the same for lists and tuples.
  return options[int(rng.integers(len(options)))]


def grid_sentence(rng: np.random.Generator) -> str:
  """A random sentence of the GRID grammar, e.g. 'bin blue at f two now'."""
  return " ".join(_pick(rng, slot) for slot in GRID_GRAMMAR)


def word_sentence(rng: np.random.Generator, min_words: int = 4,
                  max_words: int = 9) -> str:
  """`min_words`..`max_words` (inclusive) random words from `words()`."""
  if not 1 <= min_words <= max_words:
    raise ValueError(
        f"need 1 <= min_words <= max_words, got {min_words}, {max_words}.")
  vocabulary = words()
  num_words = int(rng.integers(min_words, max_words + 1))
  return " ".join(_pick(rng, vocabulary) for _ in range(num_words))


def sentence(rng: np.random.Generator, grid_fraction: float = 0.5) -> str:
  """A GRID sentence with probability `grid_fraction`, else a word sentence."""
  if not 0.0 <= grid_fraction <= 1.0:
    raise ValueError(f"grid_fraction must be in [0, 1], got {grid_fraction}.")
  if rng.random() < grid_fraction:
    return grid_sentence(rng)
  return word_sentence(rng)
