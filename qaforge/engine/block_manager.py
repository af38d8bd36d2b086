"""Paged KV cache bookkeeping with hashed blocks (prefix caching) and reference counts.

Block ids index the model runner's KV tensors. A full block's hash chains the hash of the block before
it, so a hit on block i means the whole prefix up to block i is the same. Freed blocks keep their hash
and go to the end of the free list: the least recently freed block is reused first (LRU eviction).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .sequence import Sequence


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.hash = -1
        self.token_ids: list[int] = []

    def reset(self) -> None:
        self.ref_count = 1
        self.hash = -1
        self.token_ids = []


def compute_hash(token_ids: list[int], prefix: int = -1) -> int:
    return hash((prefix, tuple(token_ids))) & 0x7FFF_FFFF_FFFF_FFFF


def chain_start(seq: Sequence) -> int:
    """The prefix of a sequence's first block hash: the same tokens under another LoRA adapter have other KV,
    so each adapter starts its own chain (negative: never equal to a real, masked hash). Adapters start at -3:
    CPython hashes -1 and -2 alike, so -2 would share the base model's chain."""
    return -2 - seq.lora_id if seq.lora_id else -1


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, max_num_seqs: int, max_blocks_per_seq: int,
                 enable_prefix_caching: bool = True):
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.hash_to_block_id: dict[int, int] = {}
        self.free_block_ids: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.used_block_ids: set[int] = set()
        # one row per sequence holding blocks: the model runner gathers block tables from here
        self.table = np.zeros((max_num_seqs, max_blocks_per_seq), dtype=np.int32)
        self.free_rows = list(range(max_num_seqs - 1, -1, -1))
        self.prefix_query_tokens = 0
        self.prefix_hit_tokens = 0

    # -- blocks ---------------------------------------------------------------------------------
    def _allocate_block(self, block_id: int) -> Block:
        block = self.blocks[block_id]
        assert block.ref_count == 0
        block.reset()
        del self.free_block_ids[block_id]
        self.used_block_ids.add(block_id)
        return block

    def _pop_free_block(self) -> Block:
        block_id = next(iter(self.free_block_ids))
        return self._allocate_block(block_id)

    def _free_block(self, block_id: int) -> None:
        assert self.blocks[block_id].ref_count == 0
        self.used_block_ids.discard(block_id)
        self.free_block_ids[block_id] = None

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_block_ids)

    @property
    def usage(self) -> float:
        return len(self.used_block_ids) / max(1, self.num_blocks)

    # -- sequences ------------------------------------------------------------------------------
    def can_allocate(self, seq: Sequence) -> bool:
        return bool(self.free_rows) and self.num_free_blocks >= seq.num_blocks(self.block_size)

    def allocate(self, seq: Sequence, commit: bool = True) -> None:
        """Give seq blocks for all its tokens, reusing cached prefix blocks. With commit=False its new full
        blocks stay unfindable until `commit` says their KV is computed (a chunked prompt): a later prompt
        must never hit a block whose KV is not written yet."""
        assert not seq.block_table and seq.row < 0
        bs = self.block_size
        seq.row = self.free_rows.pop()
        seq.num_cached_tokens = 0
        max_hit_blocks = (len(seq) - 1) // bs  # at least the last prompt token is computed
        h = chain_start(seq)
        hashes: list[int] = []
        cache_miss = not self.enable_prefix_caching
        for i in range(seq.num_blocks(bs)):
            tokens = seq.block(i, bs)
            full = len(tokens) == bs
            h = compute_hash(tokens, h) if (full and self.enable_prefix_caching) else -1
            hashes.append(h)
            block_id = self.hash_to_block_id.get(h, -1) if h != -1 else -1
            if (block_id == -1 or i >= max_hit_blocks or self.blocks[block_id].hash != h
                    or self.blocks[block_id].token_ids != tokens):
                cache_miss = True
            if cache_miss:
                block = self._pop_free_block()
            else:
                seq.num_cached_tokens += bs
                if block_id in self.used_block_ids:
                    block = self.blocks[block_id]
                    block.ref_count += 1
                else:
                    block = self._allocate_block(block_id)
                block.hash = h  # a hit keeps its identity (allocating a free block reset it)
                block.token_ids = tokens
            seq.block_table.append(block.block_id)
        seq.block_hashes = hashes
        seq.num_hashed_blocks = seq.num_cached_tokens // bs
        seq.num_computed_tokens = seq.num_cached_tokens
        self.table[seq.row, : len(seq.block_table)] = seq.block_table
        self.prefix_query_tokens += len(seq)
        self.prefix_hit_tokens += seq.num_cached_tokens
        if commit:
            self.commit(seq, len(seq))

    def commit(self, seq: Sequence, num_tokens: int) -> None:
        """The step being scheduled computes seq's KV up to num_tokens: its full blocks below that become
        prefix-cache hits for prompts admitted from now on (in this step too, since every layer stores the
        whole batch's KV before any attention reads it)."""
        bs = self.block_size
        end = min(num_tokens // bs, len(seq.block_hashes))
        for i in range(seq.num_hashed_blocks, end):
            h = seq.block_hashes[i]
            if h == -1:
                break
            block = self.blocks[seq.block_table[i]]
            block.hash = h
            block.token_ids = seq.block(i, bs)
            self.hash_to_block_id[h] = block.block_id
        seq.num_hashed_blocks = max(seq.num_hashed_blocks, end)

    def deallocate(self, seq: Sequence) -> None:
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free_block(block_id)
        seq.block_table = []
        seq.block_hashes = []
        seq.num_hashed_blocks = 0
        seq.num_computed_tokens = 0
        if seq.row >= 0:
            self.free_rows.append(seq.row)
            seq.row = -1

    def can_append(self, seq: Sequence) -> bool:
        need = len(seq.block_table) < seq.num_blocks(self.block_size)
        return self.num_free_blocks >= int(need)

    def may_append(self, seq: Sequence) -> None:
        """Called before a decode step that writes the KV of seq's last token."""
        self.append_slot(seq)

    def append_slot(self, seq: Sequence) -> bool:
        """can_append + may_append in one call (the decode loop's hot path); False: no free block."""
        bs = self.block_size
        bt = seq.block_table
        n = len(seq.token_ids)
        if len(bt) * bs < n:
            if not self.free_block_ids:
                return False
            block = self._pop_free_block()
            bt.append(block.block_id)
            self.table[seq.row, len(bt) - 1] = block.block_id
        if self.enable_prefix_caching and n % bs == 0:
            self._hash_last_block(seq)
        return True

    def reserve_next_slot(self, seq: Sequence) -> None:
        """Async scheduling: room for the KV of the token after seq's last, whose id is still on the device.
        No hash here (its tokens are not known yet): `hash_filled_block` once the id has reached the host.
        The caller has checked that a free block exists."""
        bt = seq.block_table
        if len(bt) * self.block_size < len(seq.token_ids) + 1:
            block = self._pop_free_block()
            bt.append(block.block_id)
            self.table[seq.row, len(bt) - 1] = block.block_id

    def hash_filled_block(self, seq: Sequence) -> None:
        """The deferred half of `append_slot` for a reserved slot: the token just appended fills the last block."""
        if self.enable_prefix_caching and len(seq.token_ids) % self.block_size == 0:
            self._hash_last_block(seq)

    def _hash_last_block(self, seq: Sequence) -> None:
        """seq's last block fills up in this step: make it a prefix-cache block (its chain must be hashed)."""
        bs = self.block_size
        bt = seq.block_table
        prefix = self.blocks[bt[-2]].hash if len(bt) > 1 else chain_start(seq)
        if len(bt) == 1 or prefix != -1:
            tokens = seq.block(len(bt) - 1, bs)
            h = compute_hash(tokens, prefix)
            block = self.blocks[bt[-1]]
            if block.ref_count == 1:  # never rewrite the identity of a shared block
                block.hash = h
                block.token_ids = tokens
                self.hash_to_block_id[h] = block.block_id
