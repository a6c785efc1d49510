"""Short-time Fourier transform and its inverse, matching librosa.

Conventions follow `librosa.stft` / `librosa.istft` with `window='hann'`,
`center=True` and `pad_mode='reflect'`, except that spectrograms are laid out
time-major, `(..., frames, bins)`, which is what sequence models consume.

Framing and overlap-add are written with pads, reshapes and slices only (no
gather or scatter), because scatter-adds are slow on TPU and these ops lower
to plain copies everywhere.
"""

import math

import jax.numpy as jnp
import numpy as np

# (n_fft, win_length, hop_length) at 16 kHz; the first is the main scale
# (257 bins, 100 frames per second), the others feed multi-resolution losses.
SCALES = ((512, 400, 160), (256, 200, 80), (1024, 800, 320))


def num_frames(num_samples: int, hop_length: int, causal: bool = False) -> int:
  """Number of STFT frames of a `num_samples`-long signal (centred or causal)."""
  return num_samples // hop_length if causal else 1 + num_samples // hop_length


def causal_padding(n_fft: int, win_length: int, hop_length: int) -> int:
  """Zeros before the signal in causal framing: frame t's window then ends at
  (t + 1) * hop_length, so it needs no sample later than that (no look-ahead), and
  overlap-add finishes a sample win_length - hop_length samples after it arrives."""
  return n_fft - (n_fft - win_length) // 2 - hop_length


def _check_scale(n_fft, win_length, hop_length):
  """Raises ValueError unless the STFT parameters are a usable scale.

  They must be Python ints (they fix array shapes, so they cannot be traced),
  n_fft must be even so that `num_frames` holds, and the window must fit into
  the FFT.
  """
  for name, value in (("n_fft", n_fft), ("win_length", win_length),
                      ("hop_length", hop_length)):
    if (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
        or value <= 0):
      raise ValueError(f"{name} must be a positive Python int, got {value!r}.")
  if n_fft % 2:
    raise ValueError(f"n_fft must be even, got {n_fft}.")
  if win_length > n_fft:
    raise ValueError(
        f"win_length ({win_length}) must not exceed n_fft ({n_fft}).")


def steady_window_sum(n_fft: int, win_length: int, hop_length: int) -> np.ndarray:
  """(hop_length,) float32: the overlap-added squared window away from the ends, one
  period of it (sample i of every hop). Inside a signal it is the iSTFT's normaliser."""
  squared = window(n_fft, win_length).astype(np.float64) ** 2
  squared = np.pad(squared, (0, -len(squared) % hop_length))
  return squared.reshape(-1, hop_length).sum(axis=0).astype(np.float32)


def window(n_fft: int, win_length: int) -> np.ndarray:
  """Periodic Hann window of `win_length` zero-padded centred to `n_fft`.

  Equals `librosa.util.pad_center(scipy.signal.get_window('hann', win_length,
  fftbins=True), size=n_fft)`. Built with NumPy so it is a trace-time constant.

  Returns:
    (n_fft,) float32.
  """
  n = np.arange(win_length)
  hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)
  left = (n_fft - win_length) // 2
  return np.pad(hann, (left, n_fft - win_length - left)).astype(np.float32)


def magnitude(spec: jnp.ndarray) -> jnp.ndarray:
  """|spec|, with a zero instead of a NaN gradient where spec == 0.

  `jnp.abs` differentiates to spec / |spec|, which is NaN on digital silence
  (padded speakers, zero-padded utterances) and would poison a whole batch.
  """
  power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2
  nonzero = power > 0
  return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, power, 1.0)), 0.0)


def _frame(x, n_fft, hop_length, n_frames):
  """Slices (..., L) into (..., n_frames, n_fft) frames `hop_length` apart."""
  hops_per_frame = math.ceil(n_fft / hop_length)
  n_hops = n_frames + hops_per_frame - 1
  # Frames end by (n_frames - 1) * hop_length + n_fft <= n_hops * hop_length:
  # samples cropped here are unused, and zeros appended only reach frames
  # past n_fft, where they are cropped off below.
  x = x[..., :n_hops * hop_length]
  x = jnp.pad(x, [(0, 0)] * (x.ndim - 1)
              + [(0, n_hops * hop_length - x.shape[-1])])
  hops = x.reshape(x.shape[:-1] + (n_hops, hop_length))
  frames = jnp.concatenate(
      [hops[..., k:k + n_frames, :] for k in range(hops_per_frame)], axis=-1)
  return frames[..., :n_fft]


def _overlap_add(frames, hop_length):
  """Sums (..., F, n_fft) frames placed `hop_length` apart.

  Returns:
    (..., n_fft + hop_length * (F - 1)).
  """
  *batch, n_frames, n_fft = frames.shape
  hops_per_frame = math.ceil(n_fft / hop_length)
  frames = jnp.pad(frames, [(0, 0)] * (frames.ndim - 1)
                   + [(0, hops_per_frame * hop_length - n_fft)])
  hops = frames.reshape(*batch, n_frames, hops_per_frame, hop_length)
  no_pad = [(0, 0)] * len(batch)
  # Hop k of frame f lands on output hop f + k: shift each hop column by k.
  out = sum(
      jnp.pad(hops[..., k, :],
              no_pad + [(k, hops_per_frame - 1 - k), (0, 0)])
      for k in range(hops_per_frame))
  out = out.reshape(*batch, (n_frames + hops_per_frame - 1) * hop_length)
  return out[..., :n_fft + hop_length * (n_frames - 1)]


def stft(x: jnp.ndarray,
         n_fft: int = 512,
         win_length: int = 400,
         hop_length: int = 160,
         causal: bool = False) -> jnp.ndarray:
  """Centred STFT: `librosa.stft(x, pad_mode='reflect')`, time-major.

  With `causal`, frames are placed for streaming instead: zeros before the signal
  (`causal_padding`) and none after, so frame t uses samples up to (t + 1) * hop only.

  Args:
    x: (..., T) real waveform, T > n_fft // 2 (reflect padding mirrors
      n_fft // 2 samples at each end; causal framing needs T >= hop_length).
    n_fft: FFT size; even.
    win_length: Hann window length, <= n_fft.
    hop_length: frame step in samples.
    causal: causal framing.

  Returns:
    (..., num_frames(T, hop_length, causal), n_fft // 2 + 1) complex64.
  """
  _check_scale(n_fft, win_length, hop_length)
  x = jnp.asarray(x)
  if x.ndim < 1:
    raise ValueError(f"stft expects a (..., T) waveform, got shape {x.shape}.")
  if jnp.iscomplexobj(x):
    raise ValueError(f"stft expects a real waveform, got dtype {x.dtype}.")
  if causal:
    if x.shape[-1] < hop_length:
      raise ValueError(f"causal stft needs at least hop_length = {hop_length} "
                       f"samples, got T = {x.shape[-1]}.")
    x = x.astype(jnp.float32)
    pad = causal_padding(n_fft, win_length, hop_length)
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, 0)])
    frames = _frame(x, n_fft, hop_length, num_frames(x.shape[-1] - pad, hop_length,
                                                     causal=True))
    return jnp.fft.rfft(frames * window(n_fft, win_length), axis=-1)
  if x.shape[-1] <= n_fft // 2:
    raise ValueError(
        f"stft needs more than n_fft // 2 = {n_fft // 2} samples for reflect "
        f"padding, got T = {x.shape[-1]}.")
  # Each bin sums n_fft products; bf16's 8-bit mantissa would lose most of
  # the quieter bins, so the transform always runs in float32.
  x = x.astype(jnp.float32)
  pad = n_fft // 2
  x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
  frames = _frame(x, n_fft, hop_length, num_frames(x.shape[-1] - 2 * pad,
                                                   hop_length))
  return jnp.fft.rfft(frames * window(n_fft, win_length), axis=-1)


def istft(spec: jnp.ndarray,
          n_fft: int = 512,
          win_length: int = 400,
          hop_length: int = 160,
          length: int | None = None,
          causal: bool = False) -> jnp.ndarray:
  """Inverse of `stft`, `librosa.istft(spec.T, ..., length=length)`.

  Windowed overlap-add divided by the overlapping squared windows (samples
  where that sum is below float32's smallest normal are left undivided, as in
  librosa), with the centre padding trimmed.

  Args:
    spec: (..., F, n_fft // 2 + 1) complex spectrogram.
    n_fft: FFT size; even.
    win_length: Hann window length, <= n_fft.
    hop_length: frame step in samples.
    length: output length; zero-padded or cropped to it. Defaults to
      hop_length * (F - 1) (hop_length * F when causal).
    causal: inverts `stft(..., causal=True)`. Its last win_length - hop_length
      samples have fewer frames over them than in a longer signal: they are
      divided by no less than the interior's normaliser, so they fade instead of
      amplifying error (they are not reconstructed exactly).

  Returns:
    (..., length) float32.
  """
  _check_scale(n_fft, win_length, hop_length)
  spec = jnp.asarray(spec)
  if spec.ndim < 2:
    raise ValueError(
        f"istft expects a (..., frames, bins) spectrogram, got shape "
        f"{spec.shape}.")
  if spec.shape[-1] != n_fft // 2 + 1:
    raise ValueError(
        f"istft expects n_fft // 2 + 1 = {n_fft // 2 + 1} bins for n_fft = "
        f"{n_fft}, got {spec.shape[-1]}.")
  if length is not None and (not isinstance(length, (int, np.integer))
                             or length < 0):
    raise ValueError(f"length must be a non-negative Python int, got "
                     f"{length!r}.")
  # Same precision policy as `stft`: reduced-precision inputs are cast up.
  spec = spec.astype(jnp.complex64)
  n_frames = spec.shape[-2]
  win = window(n_fft, win_length)
  frames = jnp.fft.irfft(spec, n=n_fft, axis=-1) * win
  y = _overlap_add(frames, hop_length)
  # The same overlap-add of the squared window gives the normaliser, aligned
  # with `y` sample for sample.
  win_sum = _overlap_add(jnp.broadcast_to(win**2, (n_frames, n_fft)),
                         hop_length)
  if causal:
    # The last win_length - hop_length samples lie under fewer windows than the rest;
    # dividing by their small sums would blow up rounding error there. No sample is
    # divided by less than the interior's smallest sum (so those samples fade out).
    win_sum = jnp.maximum(win_sum, steady_window_sum(n_fft, win_length, hop_length).min())
  tiny = np.finfo(np.float32).tiny
  y = y / jnp.where(win_sum > tiny, win_sum, 1.0)

  if causal:
    start = causal_padding(n_fft, win_length, hop_length)
    if length is None:
      length = n_frames * hop_length
  else:
    start = n_fft // 2
  if length is None:
    length = y.shape[-1] - 2 * start
  shortfall = max(0, start + length - y.shape[-1])
  y = jnp.pad(y, [(0, 0)] * (y.ndim - 1) + [(0, shortfall)])
  return y[..., start:start + length]
