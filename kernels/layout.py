"""Block-sparse attention layout: the one description that the dense reference, the torch gather path and
the OpenAI Triton kernel all consume (compact form, like FlexAttention's BlockMask).

For every (sequence, head, query block) the layout lists which key/value blocks may be attended:

    kv_num_blocks [B, H, NQB] int32        how many KV blocks this query block visits
    kv_indices    [B, H, NQB, MAXB] int32  their block indices, ascending; entries at or past the count
                                           are padding and must be ignored (they hold 0)

H may be 1, meaning one layout shared by every head. Inside the listed blocks, the element-wise rules are:
  * causal: query i (0-based among the q_len queries, which are the LAST q_len positions of the kv_len
    sequence, so decode works unchanged) sees key j only if j <= i + (kv_len - q_len);
  * keys at j >= kv_len (the tail of a partial last block) never count.
A query row that sees no key at all produces an output of zeros, never NaN: every backend follows this.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class BlockLayout:
    kv_num_blocks: torch.Tensor
    kv_indices: torch.Tensor
    q_block: int
    kv_block: int
    q_len: int
    kv_len: int

    def __post_init__(self):
        if self.kv_num_blocks.dim() != 3 or self.kv_indices.dim() != 4:
            raise ValueError(f"kv_num_blocks must be [B,H,NQB] and kv_indices [B,H,NQB,MAXB]; got "
                             f"{tuple(self.kv_num_blocks.shape)} and {tuple(self.kv_indices.shape)}")
        if self.kv_indices.shape[:3] != self.kv_num_blocks.shape:
            raise ValueError("kv_indices and kv_num_blocks disagree on [B,H,NQB]")
        if self.kv_num_blocks.shape[2] != self.num_q_blocks:
            raise ValueError(f"layout has {self.kv_num_blocks.shape[2]} query blocks, q_len {self.q_len} with "
                             f"q_block {self.q_block} needs {self.num_q_blocks}")

    @property
    def num_q_blocks(self) -> int:
        return -(-self.q_len // self.q_block)

    @property
    def num_kv_blocks(self) -> int:
        return -(-self.kv_len // self.kv_block)

    @classmethod
    def from_block_mask(cls, block_mask: torch.Tensor, q_block: int, kv_block: int, q_len: int,
                        kv_len: int) -> "BlockLayout":
        """block_mask bool [B, H, NQB, NKB] -> compact layout (indices ascending, padding 0)."""
        mask = block_mask.bool()
        counts = mask.sum(-1).to(torch.int32)
        maxb = max(int(counts.max()) if counts.numel() else 0, 1)
        # Stable sort puts the selected blocks first, in ascending order.
        order = torch.sort((~mask).to(torch.int8), dim=-1, stable=True).indices[..., :maxb]
        keep = torch.arange(maxb, device=mask.device) < counts[..., None]
        indices = torch.where(keep, order, torch.zeros_like(order)).to(torch.int32)
        return cls(counts.contiguous(), indices.contiguous(), q_block, kv_block, q_len, kv_len)

    def block_mask(self) -> torch.Tensor:
        """bool [B, H, NQB, NKB]: True where the query block visits the KV block."""
        b, h, nqb, maxb = self.kv_indices.shape
        keep = torch.arange(maxb, device=self.kv_indices.device) < self.kv_num_blocks[..., None]
        mask = torch.zeros(b, h, nqb, self.num_kv_blocks + 1, dtype=torch.bool, device=keep.device)
        # Padding entries are scattered into a spare last column, then dropped.
        target = torch.where(keep, self.kv_indices.long(), torch.full_like(self.kv_indices.long(), self.num_kv_blocks))
        mask.scatter_(-1, target, True)
        return mask[..., : self.num_kv_blocks]

    def token_mask(self, causal: bool) -> torch.Tensor:
        """bool [B, H, q_len, kv_len]: the element-wise mask that the layout means (for dense references)."""
        mask = self.block_mask()
        mask = mask.repeat_interleave(self.q_block, 2)[:, :, : self.q_len]
        mask = mask.repeat_interleave(self.kv_block, 3)[:, :, :, : self.kv_len]
        if causal:
            q_pos = torch.arange(self.q_len, device=mask.device)[:, None] + (self.kv_len - self.q_len)
            mask = mask & (torch.arange(self.kv_len, device=mask.device)[None, :] <= q_pos)
        return mask

    def attended_pairs(self, causal: bool) -> int:
        """Number of (query, key) pairs that the layout computes, summed over batch and heads."""
        return int(self.token_mask(causal).sum())

    def computed_block_pairs(self) -> int:
        """Number of (query block, KV block) tiles visited: what a block-sparse kernel actually multiplies."""
        return int(self.kv_num_blocks.sum())


def dense_causal_pairs(q_len: int, kv_len: int) -> int:
    """(query, key) pairs of full causal attention with the queries at the end of the sequence."""
    offset = kv_len - q_len
    return sum(min(i + offset + 1, kv_len) for i in range(q_len))
