"""Top-K of long score rows on CPU through block maxima, for evaluation.

`block_topk` lives in `recsys.scoring.topk`, beside `topk_rows`, so that evaluation and `recsys
recommend` (`masked_topk`) select through one implementation and list the same items in the same
order, ties included; this module names it where evaluation looks for it.
"""

from __future__ import annotations

from recsys.scoring.topk import block_size, block_topk

__all__ = ["block_size", "block_topk"]
