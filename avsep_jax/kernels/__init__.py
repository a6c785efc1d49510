"""Pallas kernels and their plain-JAX references.

`flash_attention` (module `flash`, so the function does not shadow its module) and
`reference_attention` are the stable entry points.
"""

from avsep_jax.kernels.flash import (
    SUPPORTED_DTYPES,
    SUPPORTED_HEAD_DIMS,
    BlockSizes,
    flash_attention,
    visited_key_blocks,
    visited_query_blocks,
)
from avsep_jax.kernels.reference import reference_attention

__all__ = [
    "SUPPORTED_DTYPES",
    "SUPPORTED_HEAD_DIMS",
    "BlockSizes",
    "flash_attention",
    "reference_attention",
    "visited_key_blocks",
    "visited_query_blocks",
]
