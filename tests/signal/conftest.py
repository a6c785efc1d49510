"""Shared test signals for avsep_jax.signal."""

import numpy as np
import pytest
import scipy.signal

SAMPLE_RATE = 16000


def _speech_like(num_samples, seed):
  """Voiced-speech stand-in: a glottal pulse train with a gliding f0 through
  three formant resonators, a syllable-rate envelope, a pause, light noise,
  peak 0.9."""
  rng = np.random.default_rng(seed)
  t = np.arange(num_samples) / SAMPLE_RATE
  f0 = 120.0 + 40.0 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 2 * np.pi))
  phase = np.cumsum(f0) / SAMPLE_RATE
  pulses = np.diff(np.floor(phase), prepend=0.0)
  # Glottal pulses have a low-pass, decaying shape rather than being impulses.
  excitation = scipy.signal.lfilter([1.0], [1.0, -0.95], pulses)
  voice = excitation
  for formant, bandwidth in ((rng.uniform(500, 800), 80.0),
                             (rng.uniform(1100, 1800), 100.0),
                             (rng.uniform(2300, 3000), 150.0)):
    radius = np.exp(-np.pi * bandwidth / SAMPLE_RATE)
    theta = 2 * np.pi * formant / SAMPLE_RATE
    voice = scipy.signal.lfilter(
        [1.0 - radius], [1.0, -2 * radius * np.cos(theta), radius**2], voice)
  # Syllables at ~4 Hz, and one pause of 15% of the signal so that every
  # signal, however short, has both speech and near-silence.
  syllables = 0.2 + 0.8 * np.sin(2 * np.pi * 2.0 * t
                                 + rng.uniform(0, np.pi))**2
  pause = (t >= 0.4 * t[-1]) & (t < 0.55 * t[-1])
  signal = voice * syllables * ~pause
  signal = signal / np.max(np.abs(signal))
  signal = signal + 0.003 * rng.standard_normal(num_samples)
  signal = (0.9 * signal / np.max(np.abs(signal))).astype(np.float32)
  assert np.all(np.isfinite(signal))
  return signal


@pytest.fixture(name="speech_like", scope="session")
def speech_like_fixture():
  """speech_like(num_samples, seed) -> (num_samples,) float32, peak 0.9."""
  return _speech_like
