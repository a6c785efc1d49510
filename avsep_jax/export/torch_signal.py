"""PyTorch mirror of `avsep_jax.signal.stft` / `istft` and `signal.griffin_lim`.

Written with convolutions only (no torch.stft/istft, no complex dtype), because that is
what exports to ONNX with a dynamic length (see the serving notes): the STFT is a
strided conv1d against windowed cos/sin bases after reflect padding, the iSTFT a
conv_transpose1d against windowed inverse-DFT bases divided by the overlap-added
squared window, both matching `avsep_jax.signal.stft/istft` (Hann window of win_length
centred in n_fft, centred or causal frames, librosa's normalisation). The window, the
causal padding and the steady window sum are `avsep_jax.signal.stft`'s own. Spectra
are pairs re, im of (N, frames, bins).
"""

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from avsep_jax.signal.stft import causal_padding
from avsep_jax.signal.stft import steady_window_sum
from avsep_jax.signal.stft import window

_TINY = float(np.finfo(np.float32).tiny)


def _dft_angles(n_fft, win_length):
  """The analysis window (n_fft,) and the DFT phase 2 pi k n / n_fft (bins, n_fft)."""
  k = np.arange(n_fft // 2 + 1)[:, None]
  n = np.arange(n_fft)[None, :]
  win = window(n_fft, win_length).astype(np.float64)
  return win, 2.0 * np.pi * k * n / n_fft


class STFT(nn.Module):
  """STFT as a conv1d: (N, T) -> re, im (N, frames, bins).

  Centred and reflect-padded (1 + T // hop frames), or with `causal` framing: zeros
  before the signal so frame t's window ends at sample (t + 1) * hop (T // hop frames).
  """

  def __init__(self, n_fft, win_length, hop_length, causal=False):
    super().__init__()
    self.n_fft, self.win_length, self.hop_length = n_fft, win_length, hop_length
    self.causal = causal
    win, angle = _dft_angles(n_fft, win_length)
    basis = np.concatenate([win * np.cos(angle), -win * np.sin(angle)], axis=0)
    self.register_buffer("basis", torch.tensor(basis[:, None, :], dtype=torch.float32),
                         persistent=False)

  def forward(self, x):
    if self.causal:
      pad = causal_padding(self.n_fft, self.win_length, self.hop_length)
      # The zeros after the signal only reach the window's zero tail, and give exactly
      # T // hop frames.
      x = F.pad(x[:, None, :], (pad, self.n_fft - self.hop_length - pad))
    else:
      pad = self.n_fft // 2
      x = F.pad(x[:, None, :], (pad, pad), mode="reflect")
    y = F.conv1d(x, self.basis, stride=self.hop_length)  # (N, 2*bins, frames)
    bins = self.n_fft // 2 + 1
    return y[:, :bins].transpose(1, 2), y[:, bins:].transpose(1, 2)


class ISTFT(nn.Module):
  """Inverse of `STFT` (signal.istft): re, im (N, frames, bins) -> (N, length)."""

  def __init__(self, n_fft, win_length, hop_length, causal=False):
    super().__init__()
    self.n_fft, self.win_length, self.hop_length = n_fft, win_length, hop_length
    self.causal = causal
    bins = n_fft // 2 + 1
    win, angle = _dft_angles(n_fft, win_length)
    # irfft: DC and Nyquist count once and their imaginary parts are ignored.
    weight = np.full((bins, 1), 2.0)
    weight[0] = weight[-1] = 1.0
    real = weight * np.cos(angle) / n_fft * win
    imag = -weight * np.sin(angle) / n_fft * win
    imag[0] = imag[-1] = 0.0
    basis = np.concatenate([real, imag], axis=0)[:, None, :]  # (2*bins, 1, n_fft)
    self.register_buffer("basis", torch.tensor(basis, dtype=torch.float32),
                         persistent=False)
    self.register_buffer("win_sq", torch.tensor((win ** 2)[None, None, :],
                                                dtype=torch.float32), persistent=False)

  def forward(self, re, im, length):
    """`length` is a Python int or a 0-d tensor (the mixture's sample count)."""
    spec = torch.cat([re, im], dim=-1).transpose(1, 2)  # (N, 2*bins, frames)
    y = F.conv_transpose1d(spec, self.basis, stride=self.hop_length)[:, 0]
    ones = torch.ones_like(spec[:1, :1])
    win_sum = F.conv_transpose1d(ones, self.win_sq, stride=self.hop_length)[0, 0]
    if self.causal:  # the partly covered tail fades instead of amplifying (signal.istft)
      floor = float(steady_window_sum(self.n_fft, self.win_length, self.hop_length).min())
      win_sum = torch.clamp(win_sum, min=floor)
    y = y / torch.where(win_sum > _TINY, win_sum, torch.ones_like(win_sum))
    if self.causal:
      start = causal_padding(self.n_fft, self.win_length, self.hop_length)
      # The last samples of a causal signal may lie past the last frame (less than one
      # hop): zeros, as signal.istft pads.
      y = F.pad(y, (0, self.hop_length))
    else:
      # Every scale has hop <= n_fft // 2, so start + length never passes the end.
      start = self.n_fft // 2
    return y[:, start:start + length]


def _unit_phase(re, im):
  """cos and sin of angle(re + i im), with angle(0) = 0 as jnp.angle."""
  mag = torch.sqrt(re * re + im * im)
  nonzero = mag > 0
  safe = torch.where(nonzero, mag, torch.ones_like(mag))
  return (torch.where(nonzero, re / safe, torch.ones_like(re)),
          torch.where(nonzero, im / safe, torch.zeros_like(im)))


def griffin_lim(mag, init_re, init_im, stft, istft, length, n_iter, momentum=0.99):
  """`signal.griffin_lim` on (N, frames, bins) magnitudes from the given phase."""
  alpha = momentum / (1.0 + momentum)
  a_re, a_im = init_re, init_im
  p_re = p_im = torch.zeros_like(mag)
  for _ in range(n_iter):
    r_re, r_im = stft(istft(mag * a_re, mag * a_im, length))
    a_re, a_im = r_re - alpha * p_re, r_im - alpha * p_im
    norm = torch.sqrt(a_re * a_re + a_im * a_im) + _TINY
    a_re, a_im = a_re / norm, a_im / norm
    p_re, p_im = r_re, r_im
  return istft(mag * a_re, mag * a_im, length)
