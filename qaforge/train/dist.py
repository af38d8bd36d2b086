"""Which process of a launch this is. torchrun and `accelerate launch` set WORLD_SIZE and RANK; a plain
run sets neither and is one process of one."""

from __future__ import annotations

import os


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
