"""Seeds derived from the run's seed, so that any plan or candidate can be made again alone."""

from __future__ import annotations

import hashlib

__all__ = ["derive_seed"]


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (run seed, scene id, index, ...)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1
