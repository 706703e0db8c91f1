"""Analytical cycle model of :class:`hw.pattern_matmul.PatternMatmulEngine`, and whole-encoder projections.

The engine's timing is fixed by its config and the matmul's shape, so cycles can be computed without
simulating. For one ``RUN`` of ``M`` tokens, ``kb = ceil(K/k)`` block columns and ``nb = ceil(N/k)``
block rows, with ``L`` lanes, ``c`` weight beats per block (1 in pattern mode, ``k²/n`` dense) and
streams that never stall:

* tile ``t`` (``m_t ≤ L`` tokens) loads ``m_t · kb`` activation beats into one bank of the activation
  buffer while tile ``t − 1`` computes from the other bank;
* a tile consumes ``nb · kb · c`` weight beats, one per cycle, except that the beat ending a block row
  waits until the previous row's ``m_t`` outputs have left the output stage (``m_t + D`` cycles after
  that row ended, ``D = ROW_DRAIN_CYCLES``, derived from the components' latencies);
* a run's cycle count ends when the sink has seen the last output beat.

So, when loading hides behind compute (``L · kb ≤ nb · kb · c``) and rows are longer than their drain
(``kb · c ≥ m + D``)::

    cycles = m_0·kb + T · nb·kb·c + m_last + RUN_TAIL_CYCLES

and MAC utilization in pattern mode tends to ``nb·kb / (nb·kb + m_0·kb/T)``, i.e. 1 for many tiles.
:func:`matmul_cycles` follows the engine's handshakes exactly (a per-tile, per-row recurrence), so it
also covers short rows and slow loads; the benchmark checks it against Verilator on every shape.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from hw.activation_buffer import READ_LATENCY
from hw.config import EngineConfig
from hw.mac_array import ARRAY_LATENCY
from hw.pattern_matmul import ROW_LATENCY

#: Cycles from a row-ending weight beat to the first cycle its successor may be accepted, beyond the
#: row's output beats: the row reaches the output stage after the activation read and the MAC array;
#: the output stage takes it in the cycle after its last lane and the sequencer's reservation lifts.
ROW_DRAIN_CYCLES = READ_LATENCY + ARRAY_LATENCY + 1
#: Cycles from a run's last row-ending beat to ``done`` in the harness, beyond the last tile's output
#: beats: the engine's row latency, then the sink's registered ``done``.
RUN_TAIL_CYCLES = ROW_LATENCY + 1


@dataclass(frozen=True)
class MatmulCycles:
    """Cycle estimate of one matmul RUN."""

    tokens: int
    in_features: int
    out_features: int
    dense: bool
    cycles: int
    useful_macs: int  # MACs on kept weights of real tokens: the work a perfect array of this size does
    multipliers: int

    @property
    def utilization(self) -> float:
        return self.useful_macs / (self.multipliers * self.cycles)

    def to_dict(self) -> dict:
        return {**asdict(self), "utilization": self.utilization}


def matmul_cycles(config: EngineConfig, tokens: int, in_features: int, out_features: int, *,
                  dense: bool = False) -> MatmulCycles:
    """Cycles of one RUN of ``Y[tokens, out_features] = X[tokens, in_features] · Wᵀ`` on ``config``,
    counted as the simulation harness counts them (from the RUN command's transfer to ``done``)."""
    for name, value in (("tokens", tokens), ("in_features", in_features), ("out_features", out_features)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    k, lanes = config.pattern.block_size, config.lanes
    kb, nb = -(-in_features // k), -(-out_features // k)
    if kb > config.max_in_blocks:
        raise ValueError(f"in_features={in_features} exceeds the engine's activation buffer ({config.max_in_features})")
    beats_per_row = kb * (config.dense_chunks if dense else 1)
    tile_tokens = [min(lanes, tokens - base) for base in range(0, tokens, lanes)]

    # Cycle 0 is the RUN transfer. load_end[t]: last cycle of tile t's load; compute_end[t]: cycle its
    # last weight beat is accepted. A bank frees in the cycle after compute_end of the tile before.
    load_end: list[int] = []
    compute_end: list[int] = []
    last_row_end = None  # cycle the previous row-ending beat was accepted
    last_row_tokens = 0
    for t, m in enumerate(tile_tokens):
        load_start = 1 if t == 0 else load_end[t - 1] + 1
        if t >= 2:
            load_start = max(load_start, compute_end[t - 2] + 1)
        load_end.append(load_start + m * kb - 1)
        start = load_end[t] + 1 if t == 0 else max(load_end[t] + 1, compute_end[t - 1] + 1)
        for _ in range(nb):
            row_end = start + beats_per_row - 1
            if last_row_end is not None:
                row_end = max(row_end, last_row_end + last_row_tokens + ROW_DRAIN_CYCLES)
            last_row_end, last_row_tokens = row_end, m
            start = row_end + 1
        compute_end.append(last_row_end)
    cycles = last_row_end + last_row_tokens + RUN_TAIL_CYCLES
    useful = tokens * out_features * in_features * config.pattern.kept_per_block // k**2
    return MatmulCycles(tokens, in_features, out_features, dense, cycles, useful, config.multipliers)


# --- whole encoders ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class EncoderShape:
    """The matmul shapes of a BERT-family encoder."""

    name: str
    layers: int
    hidden: int
    heads: int
    intermediate: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def matmuls(self, seq: int) -> list[dict]:
        """One layer's matmuls as engine RUNs: ``name, tokens, in, out, dense, count`` (RUNs per layer).

        Linear layers are pattern-pruned weights. The attention products run on the same engine with
        an activation as the streamed operand: ``Q·Kᵀ`` per head in dense mode (K is not pruned), and
        ``P·V`` per head as ``Vᵀ · Pᵀ`` with the pattern-pruned attention map as the weights.
        """
        h, d, f = self.hidden, self.head_dim, self.intermediate
        return [
            {"name": "query/key/value", "tokens": seq, "in": h, "out": h, "dense": False, "count": 3},
            {"name": "attention output", "tokens": seq, "in": h, "out": h, "dense": False, "count": 1},
            {"name": "FFN in", "tokens": seq, "in": h, "out": f, "dense": False, "count": 1},
            {"name": "FFN out", "tokens": seq, "in": f, "out": h, "dense": False, "count": 1},
            {"name": "scores Q·Kᵀ", "tokens": seq, "in": d, "out": seq, "dense": True, "count": self.heads},
            {"name": "context P·V", "tokens": d, "in": seq, "out": seq, "dense": False, "count": self.heads},
        ]


BERT_BASE = EncoderShape("BERT-base", layers=12, hidden=768, heads=12, intermediate=3072)
MINILM_L6 = EncoderShape("all-MiniLM-L6-v2", layers=6, hidden=384, heads=12, intermediate=1536)


def encoder_cycles(config: EngineConfig, encoder: EncoderShape, seq: int, *, dense: bool = False) -> dict:
    """Cycles of every matmul of a whole encoder at sequence length ``seq``, run one after another.

    ``dense=True`` runs every matmul in dense mode: the same array with nothing pruned.
    Non-matmul work (softmax, LayerNorm, GELU, requantization between layers) is not modelled.
    """
    rows, total, useful = [], 0, 0
    for op in encoder.matmuls(seq):
        run = matmul_cycles(config, op["tokens"], op["in"], op["out"], dense=dense or op["dense"])
        count = op["count"] * encoder.layers
        rows.append({**op, "dense": run.dense, "cycles_each": run.cycles, "cycles": run.cycles * count,
                     "utilization": run.utilization})
        total += run.cycles * count
        useful += run.useful_macs * count
    return {"encoder": encoder.name, "seq": seq, "lanes": config.lanes, "multipliers": config.multipliers,
            "cycles": total, "useful_macs": useful, "utilization": useful / (config.multipliers * total), "matmuls": rows}
