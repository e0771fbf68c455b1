"""Randomness that resumes: every seed the project draws from is a pure function of what it is for."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (e.g. seed, rank, step; or seed, shape, side), the
    same on every machine, process and run: the training stream, dropout masks and random bases use it."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)
