"""Tenant shards: which writer shard applies a tenant's intents, and what each shard is named.

With ``WRITER_SHARDS`` = N above 1, the writer runs as N shards (``jobplatform writer --shard
K/N``), each single-active under its own advisory lock and consuming its own lanes. Producers
(the emitter, hence the actors and the publish client) route every intent by its tenant, so all
the intents of one entity reach one shard, in order:

- a tenant listed in ``WRITER_SHARD_MAP`` (``"7=1,12=0"``) goes to the shard named there;
- any other tenant goes to ``jump_hash(tenant, N)``: a stable hash that needs no table and, when
  N grows by one, moves only 1/(N+1) of the tenants (jump consistent hashing over a 64-bit
  digest of the tenant id).

Names by shard (N = 1 keeps today's names, so an unsharded deployment changes nothing):

=========================  ======================  =====================================
what                       N = 1                   shard K of N > 1
=========================  ======================  =====================================
lanes                      ``writes.fast``         ``writes.fast.K``, ``writes.bulk.K``
advisory lock              ``WRITER_LOCK_KEY``     ``WRITER_LOCK_KEY`` + K
=========================  ======================  =====================================
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from jobplatform.errors import ConfigError

__all__ = ["ShardMap", "ShardSpec", "jump_hash", "parse_shard_map", "shard_queue"]

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """Shard ``index`` of ``count`` (``"K/N"`` on the command line)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigError(f"shard {self.index}/{self.count}: K/N needs 0 <= K < N")

    @classmethod
    def parse(cls, text: str) -> ShardSpec:
        """``"K/N"`` -> ShardSpec(K, N); raises :class:`ConfigError` for anything else."""
        found = _SPEC.match(text)
        if found is None:
            raise ConfigError(f"--shard {text!r}: expected K/N, e.g. 0/2 (shard 0 of 2)")
        return cls(int(found.group(1)), int(found.group(2)))

    @property
    def sharded(self) -> bool:
        return self.count > 1

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    def lock_key(self, base: int) -> int:
        """This shard's advisory lock key: ``base`` + K (``base`` itself when unsharded)."""
        return base + self.index if self.sharded else base

    def suffix(self, name: str) -> str:
        """``name`` as this shard's (``writes.fast`` -> ``writes.fast.1``)."""
        return shard_queue(name, self.index, self.count)


def shard_queue(name: str, index: int, count: int) -> str:
    """The queue ``name`` of shard ``index`` of ``count``: ``name`` itself when unsharded."""
    return name if count <= 1 else f"{name}.{index}"


def jump_hash(key: int, buckets: int) -> int:
    """Jump consistent hash of ``key`` (any int; a tenant id) into ``range(buckets)``.

    The same key always lands in the same bucket, on every host and Python version; growing
    ``buckets`` from N to N+1 moves a key only if it lands in the new bucket.
    """
    if buckets < 1:
        raise ValueError("buckets must be at least 1")
    digest = hashlib.blake2b(str(key).encode(), digest_size=8).digest()
    state = int.from_bytes(digest, "big")
    bucket, candidate = -1, 0
    while candidate < buckets:
        bucket = candidate
        state = (state * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        candidate = int((bucket + 1) * (float(1 << 31) / float((state >> 33) + 1)))
    return bucket


@dataclass(frozen=True, slots=True)
class ShardMap:
    """Routes a tenant to its shard: the table first, else :func:`jump_hash`."""

    count: int = 1
    table: Mapping[int, int] | None = None

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError(f"WRITER_SHARDS: {self.count}: at least 1")
        for tenant, shard in (self.table or {}).items():
            if not 0 <= shard < self.count:
                raise ConfigError(f"WRITER_SHARD_MAP: tenant {tenant} -> shard {shard}, but "
                                  f"WRITER_SHARDS is {self.count}")

    def shard_of(self, tenant_id: int) -> int:
        if self.count == 1:
            return 0
        if self.table:
            found = self.table.get(tenant_id)
            if found is not None:
                return found
        return jump_hash(tenant_id, self.count)


def parse_shard_map(text: str) -> dict[int, int]:
    """``"7=1, 12=0"`` -> ``{7: 1, 12: 0}``; raises :class:`ConfigError` for a bad entry."""
    table: dict[int, int] = {}
    for part in text.split(","):
        entry = part.strip()
        if not entry:
            continue
        tenant, sep, shard = entry.partition("=")
        try:
            if not sep:
                raise ValueError(entry)
            table[int(tenant)] = int(shard)
        except ValueError:
            raise ConfigError(f"WRITER_SHARD_MAP: {entry!r}: expected TENANT=SHARD, "
                              "comma-separated") from None
    return table
