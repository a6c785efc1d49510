"""Phase reconstruction from a magnitude spectrogram by fast Griffin-Lim."""

import jax
import jax.numpy as jnp
import numpy as np

from avsep_jax.signal.stft import istft
from avsep_jax.signal.stft import magnitude as stft_magnitude
from avsep_jax.signal.stft import num_frames
from avsep_jax.signal.stft import stft


def _frobenius_norm(x):
  """Norm over the last two axes, with a zero instead of a NaN gradient at 0.

  A perfect reconstruction (or digital silence) has a zero residual, where the
  gradient of sqrt is infinite.
  """
  sum_sq = jnp.sum(x**2, axis=(-2, -1))
  nonzero = sum_sq > 0
  return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sum_sq, 1.0)), 0.0)


def spectral_convergence(magnitude: jnp.ndarray,
                         complex_spec: jnp.ndarray) -> jnp.ndarray:
  """||M - |X|||_F / ||M||_F over the last two axes.

  Args:
    magnitude: (..., F, K) target magnitude M.
    complex_spec: (..., F, K) spectrogram X (complex, or a non-negative
      magnitude), same shape as `magnitude`.

  Returns:
    (...,) float32; 0 for a perfect match, finite for a silent target.
  """
  magnitude = jnp.asarray(magnitude)
  complex_spec = jnp.asarray(complex_spec)
  if magnitude.ndim < 2 or magnitude.shape != complex_spec.shape:
    raise ValueError(
        f"spectral_convergence expects two (..., frames, bins) arrays of the "
        f"same shape, got {magnitude.shape} and {complex_spec.shape}.")
  # Sums over whole spectrograms; keep them out of bf16.
  magnitude = magnitude.astype(jnp.float32)
  distance = _frobenius_norm(magnitude - stft_magnitude(complex_spec))
  # A silent target would divide by zero (and a loss masked by multiplying
  # with 0 would turn NaN); with this floor it gives a large finite value, or
  # 0 if X is silent too. Spectrograms of audible signals have norms >> 1e-7.
  return distance / jnp.maximum(_frobenius_norm(magnitude), 1e-7)


def griffin_lim(magnitude: jnp.ndarray,
                *,
                n_fft: int,
                win_length: int,
                hop_length: int,
                length: int,
                n_iter: int = 32,
                momentum: float = 0.99,
                init_phase: jnp.ndarray | None = None,
                key: jax.Array | None = None,
                return_history: bool = False):
  """Fast Griffin-Lim (Perraudin et al. 2013), as in `librosa.griffinlim`.

  Each iteration projects the current complex estimate onto the consistent
  spectrograms (istft then stft), extrapolates with `momentum` against the
  previous projection, and keeps only the phase.

  Args:
    magnitude: (..., F, n_fft // 2 + 1) target magnitude, F = 1 + length //
      hop_length.
    n_fft: FFT size of the STFT that produced `magnitude`.
    win_length: its Hann window length.
    hop_length: its hop.
    length: number of samples T of the waveform to reconstruct.
    n_iter: number of iterations.
    momentum: librosa's momentum, a Python float; 0 gives plain Griffin-Lim,
      and librosa warns above 1.
    init_phase: (..., F, n_fft // 2 + 1) initial phase in radians, e.g. the
      mixture phase. Takes precedence over `key`.
    key: PRNG key for a uniformly random initial phase, used when
      `init_phase` is None.
    return_history: also return the spectral convergence of the consistent
      spectrogram at every iteration.

  Returns:
    (..., T) float32 waveform; with `return_history`, also (..., n_iter)
    spectral convergence, which should mostly fall.
  """
  magnitude = jnp.asarray(magnitude)
  if not isinstance(n_iter, (int, np.integer)) or n_iter < 1:
    raise ValueError(f"n_iter must be a positive Python int, got {n_iter!r}.")
  if not isinstance(length, (int, np.integer)) or length <= 0:
    raise ValueError(f"length must be a positive Python int, got {length!r}.")
  if not isinstance(momentum, (int, float)) or momentum < 0:
    raise ValueError(
        f"momentum must be a non-negative Python float, got {momentum!r}.")
  expected = (num_frames(length, hop_length), n_fft // 2 + 1)
  if magnitude.ndim < 2 or magnitude.shape[-2:] != expected:
    raise ValueError(
        f"griffin_lim expects a (..., {expected[0]}, {expected[1]}) magnitude "
        f"for length={length}, hop_length={hop_length}, n_fft={n_fft}, got "
        f"shape {magnitude.shape}.")
  # The projections are STFT round trips; see `stft` for why float32.
  magnitude = magnitude.astype(jnp.float32)

  if init_phase is not None:
    init_phase = jnp.asarray(init_phase)
    if init_phase.shape != magnitude.shape:
      raise ValueError(
          f"init_phase must have the magnitude's shape {magnitude.shape}, got "
          f"{init_phase.shape}.")
    init_phase = init_phase.astype(jnp.float32)
  elif key is not None:
    init_phase = jax.random.uniform(key, magnitude.shape, jnp.float32,
                                    0.0, 2.0 * np.pi)
  else:
    raise ValueError(
        "griffin_lim needs an initial phase: pass init_phase or a PRNG key.")

  scale = dict(n_fft=n_fft, win_length=win_length, hop_length=hop_length)
  # librosa's extrapolation weight for the previous projection.
  alpha = momentum / (1.0 + momentum)
  tiny = np.finfo(np.float32).tiny

  def step(carry, _):
    angles, previous = carry
    waveform = istft(magnitude * angles, length=length, **scale)
    rebuilt = stft(waveform, **scale)
    angles = rebuilt - alpha * previous
    angles = angles / (jnp.abs(angles) + tiny)
    return (angles, rebuilt), spectral_convergence(magnitude, rebuilt)

  init = (jnp.exp(1j * init_phase), jnp.zeros(magnitude.shape, jnp.complex64))
  (angles, _), history = jax.lax.scan(step, init, None, length=n_iter)
  waveform = istft(magnitude * angles, length=length, **scale)
  if return_history:
    return waveform, jnp.moveaxis(history, 0, -1)
  return waveform
