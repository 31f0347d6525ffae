"""Server-assigned resource ids."""

from __future__ import annotations

import os
import time


def new_id() -> str:
    """A new server id: a time-ordered UUID (version 7, RFC 9562: 48 bits of Unix milliseconds,
    then 74 random bits). Ids created close together sort close together, so the storage
    indexes keyed by id take each write near the previous one instead of on a random page."""
    noise = int.from_bytes(os.urandom(10), "big")
    value = ((time.time_ns() // 1_000_000) & _MS_MASK) << 80 | noise & _RANDOM_MASK | _V7_BITS
    # uuid.UUID's own formatting costs a few µs more, on every request (each has an AuditEvent).
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_MS_MASK = (1 << 48) - 1
# version 7 in bits 76-79, variant 0b10 in bits 62-63; the random bits are those outside both
_RANDOM_MASK = ((1 << 80) - 1) & ~(0xF << 76) & ~(0x3 << 62)
_V7_BITS = 0x7 << 76 | 0x2 << 62
