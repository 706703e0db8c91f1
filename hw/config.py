"""Configuration of the pattern-sparse matmul engine, shared by hw/, firmware_gen/ and the benchmarks."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace

from core.pattern import PatternConfig

#: Width of the token and block counters in a RUN command.
COUNT_BITS = 16


def refuse(component, message: str):
    """Raise ``ValueError(message)`` from a component's constructor. The half-built component is marked
    as never to be elaborated, so Amaranth does not also warn that it was created and not used."""
    component._MustUse__silence = True
    raise ValueError(message)


@dataclass(frozen=True)
class EngineConfig:
    """Parameters of :class:`hw.pattern_matmul.PatternMatmulEngine`.

    Parameters
    ----------
    pattern : PatternConfig
        Block size k, weights kept per block n (also the multipliers per lane) and pool size P (patterns
        in the on-chip pattern table): the pattern geometry of the contract, :class:`core.pattern.PatternConfig`.
    lanes : int
        Tokens processed in parallel; the engine has ``lanes × kept_per_block`` multipliers.
    max_in_features : int
        Depth of each of the activation buffer's two banks, in input features (a multiple of
        ``block_size``): the largest K of a RUN.
    pattern_id_bits : int or None
        Width of a pattern id; ``None`` uses the minimum, ``ceil(log2(pool_size))``.
    weight_bits : int
        Width of a signed weight value: 8 for int8 weights; the attention unit's P·V, whose weights are
        the probabilities 0 … 255, needs 9.
    """

    pattern: PatternConfig = PatternConfig()
    lanes: int = 8
    max_in_features: int = 4096
    pattern_id_bits: int | None = None
    weight_bits: int = 8

    def __post_init__(self):
        if isinstance(self.pattern, dict):  # from JSON
            object.__setattr__(self, "pattern", PatternConfig(**self.pattern))
        if not isinstance(self.pattern, PatternConfig):
            raise ValueError(f"pattern must be a PatternConfig, got {type(self.pattern).__name__}")
        for name in ("lanes", "max_in_features"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.weight_bits not in range(8, 19):
            raise ValueError(f"weight_bits must be in [8, 18] (a multiplier input), got {self.weight_bits!r}")
        k, p = self.pattern.block_size, self.pattern.pool_size
        if self.max_in_features % k:
            raise ValueError(f"max_in_features={self.max_in_features} is not a multiple of block_size={k}")
        if self.max_in_blocks > 2**COUNT_BITS:
            raise ValueError(f"max_in_features={self.max_in_features} needs more than {2**COUNT_BITS} blocks")
        if self.pattern_id_bits is not None and 2**self.pattern_id_bits < p:
            raise ValueError(
                f"pool_size={p} does not fit pattern_id_bits={self.pattern_id_bits} "
                f"(at most {2**self.pattern_id_bits} ids)"
            )

    @property
    def id_bits(self) -> int:
        return self.pattern_id_bits if self.pattern_id_bits is not None else max(1, math.ceil(math.log2(self.pattern.pool_size)))

    @property
    def coord_bits(self) -> int:
        """Bits of a row or column index inside a block."""
        return max(1, math.ceil(math.log2(self.pattern.block_size)))

    @property
    def multipliers(self) -> int:
        return self.lanes * self.pattern.kept_per_block

    @property
    def dense_chunks(self) -> int:
        """Weight beats per block in dense mode: k² positions, ``kept_per_block`` per beat."""
        return -(-self.pattern.positions // self.pattern.kept_per_block)

    def dense_chunk_positions(self) -> list[list[int]]:
        """Row-major block positions of each beat of a dense block: chunk ``c`` carries positions
        ``c·n … c·n + n − 1``; past the block's last position (``k²`` not a multiple of ``n``) a slot repeats
        it and its value is 0."""
        k2, n = self.pattern.positions, self.pattern.kept_per_block
        return [[min(c * n + j, k2 - 1) for j in range(n)] for c in range(self.dense_chunks)]

    @property
    def max_in_blocks(self) -> int:
        return self.max_in_features // self.pattern.block_size

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "EngineConfig":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: dict) -> "EngineConfig":
        """From :meth:`to_json`'s dict; a flat dict with ``block_size``/``kept_per_block``/``pool_size``
        at the top (the layout before ``pattern`` held them) is read too."""
        data = dict(data)
        flat = {name: data.pop(name) for name in ("block_size", "kept_per_block", "pool_size") if name in data}
        if flat:
            if "pattern" in data:
                raise ValueError(f"engine config gives both 'pattern' and {sorted(flat)}")
            data["pattern"] = flat
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown engine config keys: {sorted(unknown)}; known: {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as error:  # e.g. an unknown key inside "pattern"
            raise ValueError(f"bad engine config: {error}") from None


class _JsonConfig:
    """``to_json`` / ``from_json`` of a config dataclass whose nested configs are read from dicts by its
    ``__post_init__``; an unknown key is an error naming it."""

    _what = "config"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str):
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"an {cls._what} config is a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown {cls._what} config keys: {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


def _require_positive(config, names) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class AttentionConfig(_JsonConfig):
    """Parameters of :class:`hw.attention_unit.AttentionUnit`.

    Parameters
    ----------
    engine : EngineConfig
        The MAC array it computes Q·Kᵀ and P·V on: ``lanes`` query rows per softmax tile (a multiple of
        the block size), the attention map's block size, kept per block and pool size, and
        ``weight_bits = 9`` for the probabilities (0 … 255) as P·V's weights. Its activation buffer is
        sized here: ``max(max_seq, max_head_dim)`` rounded up to a block.
    max_seq : int
        Longest sequence (queries and keys per head).
    max_head_dim : int
        Largest head dimension, a multiple of the block size.
    patterns_per_cycle : int
        Pattern masses formed per cycle by the selection (:class:`hw.pattern_select.PatternSelect`), at
        most the pool's size; by default the fewest that choose a block in no more cycles than its
        ``k`` reads, ``⌈pool_size / k⌉`` (8 of a pool of 32 with k = 4), so the select pass is paced by
        the reads and no mass adders sit idle.
    """

    engine: EngineConfig = EngineConfig(weight_bits=9)
    max_seq: int = 128
    max_head_dim: int = 64
    patterns_per_cycle: int | None = None
    _what = "attention"

    def __post_init__(self):
        if isinstance(self.engine, dict):  # from JSON
            object.__setattr__(self, "engine", EngineConfig.from_dict(self.engine))
        if self.patterns_per_cycle is None:
            pattern = self.engine.pattern
            object.__setattr__(self, "patterns_per_cycle", -(-pattern.pool_size // pattern.block_size))
        _require_positive(self, ("max_seq", "max_head_dim", "patterns_per_cycle"))
        k = self.engine.pattern.block_size
        if self.engine.lanes % k:
            raise ValueError(f"engine.lanes={self.engine.lanes} must be a multiple of block_size={k}: "
                             "a softmax tile holds whole block rows of the attention map")
        if self.max_head_dim % k:
            raise ValueError(f"max_head_dim={self.max_head_dim} is not a multiple of block_size={k}")
        if self.engine.weight_bits < 9:
            raise ValueError(f"engine.weight_bits={self.engine.weight_bits}: P·V's weights are probabilities "
                             "0 … 255 and need 9 signed bits")
        if self.patterns_per_cycle > self.engine.pattern.pool_size:
            raise ValueError(f"patterns_per_cycle={self.patterns_per_cycle} exceeds pool_size={self.engine.pattern.pool_size}")
        need = -(-max(self.max_seq, self.max_head_dim) // k) * k
        if self.engine.max_in_features != need:
            object.__setattr__(self, "engine", replace(self.engine, max_in_features=need))

    @property
    def seq_blocks(self) -> int:
        return -(-self.max_seq // self.engine.pattern.block_size)



@dataclass(frozen=True)
class AcceleratorConfig(_JsonConfig):
    """Parameters of the whole-encoder accelerator: its units and its on-chip memories.

    Parameters
    ----------
    engine : EngineConfig
        The MAC array of the linear layers (pattern geometry of the model's linears).
    attention : AttentionConfig
        The attention unit (attention-map pattern geometry, longest sequence, largest head).
    max_width : int
        Longest LayerNorm row: the largest hidden size.
    scratch_bytes : int
        On-chip int8 activation memory (the ``scratch`` address space of :mod:`hw.commands`).
    wide_words : int
        On-chip memory of 32-bit values (the ``wide`` address space).
    chunk_rows : int
        Block rows of a linear's weights held on chip at once, in each of two banks: one bank is read
        from DRAM while the engine runs every token of the sequence over the other, so each weight is
        read once per layer per sequence and the fetch overlaps the compute. A power of two. The chunks
        of a linear chain into one engine RUN, so a chunk costs no tile load of its own and only the
        first chunk's fetch is not overlapped: chunks are best small, but not below ``engine.lanes``,
        where loading a tile's activations (``lanes`` beats a block column) outlasts its compute
        (``chunk_rows`` beats a block column) and the engine waits for them.
    """

    engine: EngineConfig = EngineConfig()
    attention: AttentionConfig = AttentionConfig()
    max_width: int = 1024
    scratch_bytes: int = 2**20
    wide_words: int = 2**17
    chunk_rows: int = 8
    _what = "accelerator"

    def __post_init__(self):
        if isinstance(self.engine, dict):
            object.__setattr__(self, "engine", EngineConfig.from_dict(self.engine))
        if isinstance(self.attention, dict):
            object.__setattr__(self, "attention", AttentionConfig(**self.attention))
        _require_positive(self, ("max_width", "scratch_bytes", "wide_words", "chunk_rows"))
        if self.chunk_rows & (self.chunk_rows - 1):
            raise ValueError(f"chunk_rows={self.chunk_rows} must be a power of two: a linear's full chunks are "
                             "counted by a shift")

    @property
    def max_seq(self) -> int:
        return self.attention.max_seq

