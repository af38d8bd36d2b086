"""A request inside the engine: token ids, status, KV blocks."""
from __future__ import annotations

from enum import Enum, auto
from itertools import count

from .sampling_params import SamplingParams


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


class Sequence:
    _ids = count()

    def __init__(self, token_ids: list[int], params: SamplingParams, request_id: str | None = None,
                 lora_id: int = 0):
        self.seq_id = next(Sequence._ids)
        self.request_id = request_id if request_id is not None else str(self.seq_id)
        self.token_ids: list[int] = list(token_ids)
        self.num_prompt_tokens = len(token_ids)
        self.params = params
        self.status = SequenceStatus.WAITING
        self.num_cached_tokens = 0        # tokens whose KV came from the prefix cache at the last prefill
        self.num_computed_tokens = 0      # tokens whose KV is in the cache (a chunked prompt grows it step by step)
        self.block_hashes: list[int] = []  # chained hash of each full block at allocation (-1: not full / off)
        self.num_hashed_blocks = 0        # leading blocks already findable in the prefix cache
        self.block_table: list[int] = []
        self.row = -1                     # row in the block manager's block-table array while it holds blocks
        self.finish_reason: str | None = None
        self.generator = None             # torch.Generator for seeded sampling (created lazily)
        self.num_preemptions = 0
        self.lora_id = lora_id            # 0: the base model; else the engine's LoRA adapter id (layers/lora.py)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def last_token(self) -> int:
        return self.token_ids[-1]

    @property
    def num_completion_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def completion_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED

    def num_blocks(self, block_size: int) -> int:
        return -(-len(self.token_ids) // block_size)

    def block(self, i: int, block_size: int) -> list[int]:
        return self.token_ids[i * block_size: (i + 1) * block_size]
