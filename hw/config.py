"""Configuration of the pattern-sparse matmul engine, shared by hw/, firmware_gen/ and the benchmarks."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

from sw.pattern import PatternConfig

#: Width of the token and block counters in a RUN command.
COUNT_BITS = 16


@dataclass(frozen=True)
class EngineConfig:
    """Parameters of :class:`hw.pattern_matmul.PatternMatmulEngine`.

    Parameters
    ----------
    block_size : int
        k, the side of a weight block (k×k).
    kept_per_block : int
        n, weights kept per block; also the multipliers per lane.
    pool_size : int
        P, patterns in the on-chip pattern table.
    lanes : int
        Tokens processed in parallel; the engine has ``lanes × kept_per_block`` multipliers.
    max_in_features : int
        Depth of each of the activation buffer's two banks, in input features (a multiple of
        ``block_size``): the largest K of a RUN.
    pattern_id_bits : int or None
        Width of a pattern id; ``None`` uses the minimum, ``ceil(log2(pool_size))``.
    """

    block_size: int = 4
    kept_per_block: int = 8
    pool_size: int = 32
    lanes: int = 8
    max_in_features: int = 4096
    pattern_id_bits: int | None = None

    def __post_init__(self):
        self.pattern_config  # validates k, n, P
        for name in ("lanes", "max_in_features"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_in_features % self.block_size:
            raise ValueError(f"max_in_features={self.max_in_features} is not a multiple of block_size={self.block_size}")
        if self.max_in_blocks > 2**COUNT_BITS:
            raise ValueError(f"max_in_features={self.max_in_features} needs more than {2**COUNT_BITS} blocks")
        if self.pattern_id_bits is not None and 2**self.pattern_id_bits < self.pool_size:
            raise ValueError(
                f"pool_size={self.pool_size} does not fit pattern_id_bits={self.pattern_id_bits} "
                f"(at most {2**self.pattern_id_bits} ids)"
            )

    @property
    def pattern_config(self) -> PatternConfig:
        return PatternConfig(self.block_size, self.kept_per_block, self.pool_size)

    @property
    def id_bits(self) -> int:
        return self.pattern_id_bits if self.pattern_id_bits is not None else max(1, math.ceil(math.log2(self.pool_size)))

    @property
    def coord_bits(self) -> int:
        """Bits of a row or column index inside a block."""
        return max(1, math.ceil(math.log2(self.block_size)))

    @property
    def multipliers(self) -> int:
        return self.lanes * self.kept_per_block

    @property
    def dense_chunks(self) -> int:
        """Weight beats per block in dense mode: k² positions, ``kept_per_block`` per beat."""
        return -(-self.block_size**2 // self.kept_per_block)

    @property
    def max_in_blocks(self) -> int:
        return self.max_in_features // self.block_size

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "EngineConfig":
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown engine config keys: {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)
