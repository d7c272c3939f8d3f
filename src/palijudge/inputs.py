"""What the model reads, `Inputs`: one typed value that batches (`data.batch`) produce
and the model (`model.paligemma`) consumes, in a layer below both, so data needs no model.
"""

from __future__ import annotations

import flax
import jax


@flax.struct.dataclass
class Inputs:
  """What the model reads: right-padded text, its masks, and the image (or its tokens).

  text, mask_ar, mask_input: (B, T) int32; image: (B, S, S, 3) f32 in [-1, 1];
  zimg: (B, P, D) image tokens from a frozen encoder's cache (then `image`
  is not read). mask_ar 0 marks the prefix (prompt), 1 the answer tokens.
  """
  text: jax.Array
  mask_ar: jax.Array
  mask_input: jax.Array
  image: jax.Array | None = None
  zimg: jax.Array | None = None

  def drop_last(self) -> Inputs:
    """The teacher-forced view: output t predicts token t + 1, so the last token is no input."""
    return self.replace(text=self.text[:, :-1], mask_ar=self.mask_ar[:, :-1],
                        mask_input=self.mask_input[:, :-1])
