"""Signal processing for speech separation: STFT, phase reconstruction,
metrics and losses, as pure functions over jnp arrays.

The package re-exports functions named like their modules (`stft`), which
shadows those modules as package attributes; inside the package, import names
from the module path (`from avsep_jax.signal.stft import stft`).
"""

from avsep_jax.signal.griffin_lim import griffin_lim
from avsep_jax.signal.griffin_lim import spectral_convergence
from avsep_jax.signal.losses import activity_loss
from avsep_jax.signal.losses import activity_targets
from avsep_jax.signal.losses import multi_resolution_stft_loss
from avsep_jax.signal.losses import negative_si_snr
from avsep_jax.signal.losses import pit_loss
from avsep_jax.signal.metrics import sdr
from avsep_jax.signal.metrics import sdr_improvement
from avsep_jax.signal.metrics import si_snr
from avsep_jax.signal.metrics import si_snr_improvement
from avsep_jax.signal.stft import causal_padding
from avsep_jax.signal.stft import istft
from avsep_jax.signal.stft import num_frames
from avsep_jax.signal.stft import SCALES
from avsep_jax.signal.stft import steady_window_sum
from avsep_jax.signal.stft import stft
from avsep_jax.signal.stft import window

__all__ = [
    "SCALES", "activity_loss", "activity_targets", "causal_padding", "griffin_lim", "istft",
    "multi_resolution_stft_loss", "negative_si_snr", "num_frames", "pit_loss", "sdr",
    "sdr_improvement", "si_snr", "si_snr_improvement", "spectral_convergence", "steady_window_sum", "stft", "window",
]
