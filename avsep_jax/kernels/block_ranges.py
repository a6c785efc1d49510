"""Which key blocks a query block visits, and the reverse: the flash kernels' loop bounds.

Every mask the kernels support is, per row, one interval of keys: query i sees key j when
`i - left <= j <= i + right` and `j < key_length` (causal is `right = 0`). So a query
block sees one contiguous run of key blocks, and of those only the ones at either end can
be partly masked. The kernels loop over exactly the ranges computed here, and
`visited_key_blocks` evaluates the same function outside a kernel so that tests can
check that a window costs what it implies, not T / block.

The functions take Python ints or int32 scalars (traced inside a kernel), and use only
ops that every Pallas lowering has (min, max, integer division of non-negative values).
"""

import dataclasses

import jax.numpy as jnp
from jax import lax


@dataclasses.dataclass(frozen=True)
class Band:
  """Static part of the mask: query i sees key j when i - left <= j <= i + right.

  None on a side means unbounded. Hashable, so it can be a static argument.
  """

  left: int | None = None
  right: int | None = None

  @classmethod
  def from_args(cls, causal, window):
    """The band of `causal` and an optional `(left, right)` window."""
    left, right = (None, None) if window is None else (int(window[0]), int(window[1]))
    if causal:
      right = 0 if right is None else min(right, 0)
    return cls(left, right)

  def sides(self, q_len, k_len):
    """(left, right) as ints; an unbounded side is wider than any offset."""
    unbounded = q_len + k_len
    return (unbounded if self.left is None else self.left,
            unbounded if self.right is None else self.right)


def _cdiv(a, b):
  """ceil(a / b) for a >= 0 and a static b > 0."""
  return _div(a + (b - 1), b)


def _div(a, b):
  """floor(a / b) for a >= 0 and a static b > 0 (truncation is floor here)."""
  if isinstance(a, int):
    return a // b
  return lax.div(a, lax.full_like(a, b))


def _clip(x, lo, hi):
  return jnp.minimum(jnp.maximum(x, lo), hi)


def key_block_range(q_block, key_length, *, block_q, block_k, q_len, k_len, band):
  """Key blocks visited by one query block (forward and dq).

  Args:
    q_block: index of the query block (int or int32 scalar).
    key_length: number of real keys of this example, <= k_len (int or int32 scalar).
    block_q, block_k: block sizes (static).
    q_len, k_len: unpadded sequence lengths (static).
    band: the `Band`.

  Returns:
    (lo, full_lo, full_hi, hi): blocks [lo, hi) are visited; inside, blocks
    [full_lo, full_hi) are visible to every query row of the block and need no mask.
    lo <= full_lo <= full_hi <= hi.
  """
  left, right = band.sides(q_len, k_len)
  first = q_block * block_q
  # Rows past q_len are padding whose outputs are dropped: they need not widen the range.
  last = jnp.minimum(first + block_q, q_len) - 1
  lo = _div(jnp.maximum(first - left, 0), block_k)
  hi = jnp.maximum(_cdiv(jnp.clip(last + right + 1, 0, key_length), block_k), lo)
  full_lo = _cdiv(jnp.maximum(last - left, 0), block_k)
  full_hi = _div(jnp.clip(first + right + 1, 0, key_length), block_k)
  full_lo = _clip(full_lo, lo, hi)
  full_hi = _clip(full_hi, full_lo, hi)
  return lo, full_lo, full_hi, hi


def query_block_range(k_block, key_length, *, block_q, block_k, q_len, k_len, band):
  """Query blocks that see some key of one key block (dk, dv); see `key_block_range`.

  Padded query rows may fall inside the returned "full" range: their output cotangent
  is zero, so they add nothing whatever the mask says.
  """
  left, right = band.sides(q_len, k_len)
  first = k_block * block_k
  last = first + block_k - 1
  last_real = jnp.minimum(last, key_length - 1)
  lo = _div(jnp.maximum(first - right, 0), block_q)
  hi = _cdiv(jnp.clip(last_real + left + 1, 0, q_len), block_q)
  # A block of padding keys is seen by nobody.
  hi = jnp.where(first < key_length, jnp.maximum(hi, lo), lo)
  full_lo = _cdiv(jnp.maximum(last - right, 0), block_q)
  full_hi = _div(jnp.maximum(first + left + 1, 0), block_q)
  full_lo = jnp.where(last < key_length, _clip(full_lo, lo, hi), hi)
  full_hi = _clip(full_hi, full_lo, hi)
  return lo, full_lo, full_hi, hi
