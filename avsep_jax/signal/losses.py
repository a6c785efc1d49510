"""Training losses: negative SI-SNR, permutation-invariant training, MR-STFT, and
the per-frame speech activity that the visual stream learns to predict."""

import itertools
from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from avsep_jax.signal.griffin_lim import spectral_convergence
from avsep_jax.signal.metrics import si_snr
from avsep_jax.signal.stft import magnitude
from avsep_jax.signal.stft import SCALES
from avsep_jax.signal.stft import stft

# S! grows fast: 6 speakers is 720 permutations, 7 would be 5040.
_MAX_SPEAKERS = 6


def negative_si_snr(estimate: jnp.ndarray,
                    reference: jnp.ndarray) -> jnp.ndarray:
  """-si_snr(estimate, reference): (..., T), (..., T) -> (...,)."""
  return -si_snr(estimate, reference)


def pit_loss(
    estimates: jnp.ndarray,
    references: jnp.ndarray,
    speaker_mask: jnp.ndarray,
    pair_loss: Callable[[jnp.ndarray, jnp.ndarray],
                        jnp.ndarray] = negative_si_snr,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Exact permutation-invariant loss over all S! assignments.

  The (B, S, S) matrix of pair losses is computed once; every permutation's
  cost is gathered from it. Estimate slot i and reference j are valid iff
  speaker_mask[b, i] (resp. [b, j]); a permutation is allowed only if it
  matches valid estimates to valid references (so padded slots go to padded
  slots), and its loss is the mean pair loss over the valid references.

  Args:
    estimates: (B, S, T), S <= 6.
    references: (B, S, T).
    speaker_mask: (B, S) bool, False for padded speakers.
    pair_loss: (..., T), (..., T) -> (...,), e.g. `negative_si_snr`.

  Returns:
    loss: (B,) float32, 0 for examples without valid speakers.
    permutation: (B, S) int32; permutation[b, j] is the estimate assigned to
      reference j.
  """
  estimates = jnp.asarray(estimates)
  references = jnp.asarray(references)
  speaker_mask = jnp.asarray(speaker_mask)
  if estimates.ndim != 3 or estimates.shape != references.shape:
    raise ValueError(
        f"pit_loss expects (B, S, T) estimates and references of the same "
        f"shape, got {estimates.shape} and {references.shape}.")
  if speaker_mask.shape != estimates.shape[:2]:
    raise ValueError(
        f"speaker_mask must have shape (B, S) = {estimates.shape[:2]}, got "
        f"{speaker_mask.shape}.")
  if speaker_mask.dtype != jnp.bool_:
    raise ValueError(
        f"speaker_mask must be bool, got dtype {speaker_mask.dtype}.")
  num_speakers = estimates.shape[1]
  if not 1 <= num_speakers <= _MAX_SPEAKERS:
    raise ValueError(
        f"pit_loss enumerates all S! permutations and supports 1 to "
        f"{_MAX_SPEAKERS} speakers, got S = {num_speakers}.")

  batch = estimates.shape[0]
  pair_shape = (batch, num_speakers, num_speakers, estimates.shape[-1])
  # losses[b, i, j] = pair_loss(estimate i, reference j). Under jit the
  # broadcasts fuse into the pair loss instead of materialising S copies.
  losses = pair_loss(jnp.broadcast_to(estimates[:, :, None], pair_shape),
                     jnp.broadcast_to(references[:, None], pair_shape))
  # perms[p, j] = estimate assigned to reference j under permutation p.
  perms = np.array(list(itertools.permutations(range(num_speakers))),
                   dtype=np.int32)
  refs = np.arange(num_speakers)
  assigned = losses[:, perms, refs]  # (B, P, S)
  valid_refs = speaker_mask[:, None, :]
  costs = jnp.sum(jnp.where(valid_refs, assigned, 0.0), axis=-1)
  allowed = jnp.all(speaker_mask[:, perms] == valid_refs, axis=-1)
  costs = jnp.where(allowed, costs, jnp.inf)
  # The identity is always allowed, so the minimum is finite.
  best = jnp.argmin(costs, axis=-1)
  best_cost = jnp.take_along_axis(costs, best[:, None], axis=-1)[:, 0]
  num_valid = jnp.sum(speaker_mask, axis=-1)
  loss = best_cost / jnp.maximum(num_valid, 1)
  return loss, jnp.asarray(perms)[best]


def multi_resolution_stft_loss(
    estimate: jnp.ndarray,
    reference: jnp.ndarray,
    scales: Sequence[tuple[int, int, int]] = SCALES,
    eps: float = 1e-7,
) -> jnp.ndarray:
  """Multi-resolution STFT loss (Yamamoto et al. 2020, Parallel WaveGAN).

  Mean over scales of the spectral convergence ||S_ref| - |S_est|||_F /
  ||S_ref||_F plus the mean |log(|S_est| + eps) - log(|S_ref| + eps)|.

  Args:
    estimate: (..., T), T > n_fft // 2 for every scale.
    reference: (..., T).
    scales: (n_fft, win_length, hop_length) triples.
    eps: floor inside the logs, so silence does not give -inf.

  Returns:
    (...,) float32; 0 iff the magnitudes match at every scale.
  """
  estimate = jnp.asarray(estimate)
  reference = jnp.asarray(reference)
  if estimate.ndim < 1 or estimate.shape != reference.shape:
    raise ValueError(
        f"multi_resolution_stft_loss expects estimate and reference of the "
        f"same (..., T) shape, got {estimate.shape} and {reference.shape}.")
  if not scales:
    raise ValueError("multi_resolution_stft_loss needs at least one scale.")
  total = 0.0
  for n_fft, win_length, hop_length in scales:
    est_mag = magnitude(stft(estimate, n_fft, win_length, hop_length))
    ref_mag = magnitude(stft(reference, n_fft, win_length, hop_length))
    log_distance = jnp.abs(jnp.log(est_mag + eps) - jnp.log(ref_mag + eps))
    total += (spectral_convergence(ref_mag, est_mag)
              + jnp.mean(log_distance, axis=(-2, -1)))
  return total / len(scales)


def activity_targets(sources: jnp.ndarray, frame_length: int,
                     range_db: float = 40.0) -> jnp.ndarray:
  """Per-frame speech activity of each source, as a soft target in [0, 1].

  A frame's level is its mean power in dB relative to the loudest frame of the same
  source, mapped linearly from -range_db (0) to 0 dB (1). Silent sources give 0.

  Args:
    sources: (..., T) waveforms.
    frame_length: samples per frame (the video frame: sample_rate / fps).
    range_db: dynamic range mapped onto [0, 1].

  Returns:
    (..., T // frame_length) float32.
  """
  f = sources.shape[-1] // frame_length
  frames = sources[..., :f * frame_length].reshape(sources.shape[:-1] + (f, frame_length))
  power = jnp.mean(jnp.square(frames.astype(jnp.float32)), axis=-1)
  level = 10.0 * jnp.log10(power + 1e-10)
  loudest = jnp.max(level, axis=-1, keepdims=True)
  active = jnp.clip((level - loudest) / range_db + 1.0, 0.0, 1.0)
  return jnp.where(loudest > -90.0, active, 0.0)


def activity_loss(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
  """Binary cross-entropy with soft targets, mean over frames: (..., F) x2 -> (...,).

  Lengths may differ by the frame a video rounds to; the common prefix is compared.
  """
  f = min(logits.shape[-1], targets.shape[-1])
  logits, targets = logits[..., :f].astype(jnp.float32), targets[..., :f]
  per_frame = (jnp.maximum(logits, 0.0) - logits * targets
               + jnp.log1p(jnp.exp(-jnp.abs(logits))))
  return jnp.mean(per_frame, axis=-1)
