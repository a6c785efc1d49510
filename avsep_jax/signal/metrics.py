"""Separation quality metrics in dB: SI-SNR, BSS-eval SDR and improvements.

All metrics reduce the last (time) axis and are batched over the others, e.g.
`(B, S, T) -> (B, S)`. They compute in float32 whatever the input dtype:
energies of seconds of audio summed in bf16 would carry ~2 significant digits,
which is already a dB-level error.
"""

import math

import jax.numpy as jnp
import numpy as np


def _check_pair(name, estimate, reference):
  estimate = jnp.asarray(estimate)
  reference = jnp.asarray(reference)
  if estimate.ndim < 1 or estimate.shape != reference.shape:
    raise ValueError(
        f"{name} expects estimate and reference of the same (..., T) shape, "
        f"got {estimate.shape} and {reference.shape}.")
  return estimate.astype(jnp.float32), reference.astype(jnp.float32)


def _energy(x):
  return jnp.sum(x**2, axis=-1)


def si_snr(estimate: jnp.ndarray,
           reference: jnp.ndarray,
           eps: float = 1e-8) -> jnp.ndarray:
  """Scale-invariant SNR (Le Roux et al. 2019) of zero-mean signals, in dB.

  Both signals have their mean removed, then
  target = <e, r> r / ||r||^2 and SI-SNR = 10 log10(||target||^2 /
  ||e - target||^2), each energy offset by `eps`. Equals
  `fast_bss_eval.si_sdr(reference, estimate, zero_mean=True)` for a single
  reference.

  Args:
    estimate: (..., T).
    reference: (..., T).
    eps: keeps silent signals finite (two silent signals give 0 dB).

  Returns:
    (...,) float32.
  """
  estimate, reference = _check_pair("si_snr", estimate, reference)
  estimate = estimate - jnp.mean(estimate, axis=-1, keepdims=True)
  reference = reference - jnp.mean(reference, axis=-1, keepdims=True)
  gain = (jnp.sum(estimate * reference, axis=-1, keepdims=True)
          / (_energy(reference)[..., None] + eps))
  target = gain * reference
  return 10.0 * jnp.log10(
      (_energy(target) + eps) / (_energy(estimate - target) + eps))


def _unit_norm(x):
  norm = jnp.sqrt(_energy(x))[..., None]
  return x / jnp.maximum(norm, np.finfo(np.float32).tiny)


def sdr(estimate: jnp.ndarray,
        reference: jnp.ndarray,
        filter_length: int = 512,
        load_diag: float = 1e-6) -> jnp.ndarray:
  """BSS-eval (v3/v4) SDR of one estimate against one reference, in dB.

  The target is the least-squares projection of the estimate onto the span of
  `filter_length` delayed copies of the reference (delays 0 ..
  filter_length - 1, signals zero-padded by filter_length - 1 samples), and
  SDR = 10 log10(||target||^2 / ||estimate - target||^2).

  This is `fast_bss_eval.sdr` for one reference, and also
  `mir_eval.separation.bss_eval_sources`' SDR: with several sources mir_eval
  projects estimate j onto the delays of reference j alone (the projection
  onto all references only splits the error into interference and artefacts),
  so its SDR for source j is this function applied to (estimate j,
  reference j). No mean is removed (as in both references). A silent
  reference or estimate gives -inf or NaN; mir_eval rejects them outright.

  Args:
    estimate: (..., T).
    reference: (..., T).
    filter_length: number of delays L of the allowed distortion filter.
    load_diag: added to the diagonal of the (L, L) Toeplitz Gram matrix of the
      unit-norm reference, so that references with nearly empty frequency
      bands, whose Gram matrices are nearly singular, still give a stable
      float32 solve. Its effect on full-band signals is ~1e-3 dB. Such
      references (e.g. narrowband audio resampled to 16 kHz) are beyond
      float32: expect a few tenths of a dB below the float64 references.

  Returns:
    (...,) float32.
  """
  if (not isinstance(filter_length, (int, np.integer))
      or isinstance(filter_length, bool) or filter_length <= 0):
    raise ValueError(
        f"filter_length must be a positive Python int, got {filter_length!r}.")
  estimate, reference = _check_pair("sdr", estimate, reference)
  # SDR is invariant to the scale of either signal; unit norms keep the Gram
  # matrix entries O(1) in float32 and make `load_diag` relative.
  estimate = _unit_norm(estimate)
  reference = _unit_norm(reference)
  num_samples = estimate.shape[-1]
  padded = num_samples + filter_length - 1
  # Linear (not circular) correlations and convolutions up to `padded` taps.
  n = 2 ** math.ceil(math.log2(padded))
  ref_f = jnp.fft.rfft(reference, n=n)
  autocorr = jnp.fft.irfft(jnp.abs(ref_f)**2, n=n)[..., :filter_length]
  xcorr = jnp.fft.irfft(jnp.conj(ref_f) * jnp.fft.rfft(estimate, n=n),
                        n=n)[..., :filter_length]
  lags = np.abs(np.subtract.outer(np.arange(filter_length),
                                  np.arange(filter_length)))
  gram = autocorr[..., lags] + load_diag * np.eye(filter_length,
                                                  dtype=np.float32)
  coefs = jnp.linalg.solve(gram, xcorr[..., None])[..., 0]
  # Build the target explicitly rather than using the coherence xcorr . coefs:
  # the residual energy is then only second-order in the float32 error of
  # `coefs`, which matters at high SDR where 1 - coherence is tiny.
  target = jnp.fft.irfft(ref_f * jnp.fft.rfft(coefs, n=n), n=n)[..., :padded]
  residual = jnp.pad(estimate, [(0, 0)] * (estimate.ndim - 1)
                     + [(0, filter_length - 1)]) - target
  return 10.0 * jnp.log10(_energy(target) / _energy(residual))


def _broadcast_mixture(mixture, reference):
  """Broadcasts a mixture to the references' (..., S, T) or (..., T) shape.

  A mixture with one axis fewer than the references lacks their source axis
  (e.g. (B, T) for (B, S, T)); one is inserted before time.
  """
  mixture = jnp.asarray(mixture)
  reference = jnp.asarray(reference)
  if reference.ndim >= 2 and mixture.ndim == reference.ndim - 1:
    mixture = mixture[..., None, :]
  try:
    return jnp.broadcast_to(mixture, reference.shape)
  except ValueError:
    raise ValueError(
        f"mixture of shape {mixture.shape} cannot be broadcast to the "
        f"reference shape {reference.shape}.") from None


def si_snr_improvement(estimate: jnp.ndarray, reference: jnp.ndarray,
                       mixture: jnp.ndarray) -> jnp.ndarray:
  """SI-SNRi: si_snr(estimate, reference) - si_snr(mixture, reference).

  Args:
    estimate: (..., S, T) or (..., T).
    reference: same shape as `estimate`.
    mixture: (..., T) without the source axis, or broadcastable to the
      reference's shape.

  Returns:
    The reference's shape without T, float32, in dB.
  """
  return (si_snr(estimate, reference)
          - si_snr(_broadcast_mixture(mixture, reference), reference))


def sdr_improvement(estimate: jnp.ndarray,
                    reference: jnp.ndarray,
                    mixture: jnp.ndarray,
                    filter_length: int = 512) -> jnp.ndarray:
  """SDRi: sdr(estimate, reference) - sdr(mixture, reference).

  Args:
    estimate: (..., S, T) or (..., T).
    reference: same shape as `estimate`.
    mixture: (..., T) without the source axis, or broadcastable to the
      reference's shape.
    filter_length: as in `sdr`.

  Returns:
    The reference's shape without T, float32, in dB.
  """
  return (sdr(estimate, reference, filter_length)
          - sdr(_broadcast_mixture(mixture, reference), reference,
                filter_length))
