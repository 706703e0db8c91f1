"""The stream program that runs heads of self-attention on :class:`hw.attention_unit.AttentionUnit`, and
the decoding of what comes back (context, and the score and probability taps)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from core.atomic import write_atomic
from core.encoder import exp_table
from core.integer import attention
from firmware_gen.beats import decode_leaf_array, encode
from hw.attention_unit import exp_table_layout, head_layout, pool_layout
from hw.config import AttentionConfig
from hw.layouts import activation_layout, output_layout
from hw.softmax_unit import probability_block_layout, scores_layout


@dataclass
class AttentionHead:
    """One head: int8 ``q, k, v [L, d]``, the real tokens ``0 … valid_length − 1`` and the layer's constants."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    valid_length: int
    exp_multiplier: int
    exp_shift: int
    context_multiplier: int
    context_shift: int

    @property
    def length(self) -> int:
        return self.q.shape[0]

    def golden(self, pool: torch.Tensor | None, table: torch.Tensor | None = None):
        """``(scores [L, L], probs [L, L], ids or None, context [L, d])`` of the contract (with another
        exponential table when given)."""
        valid = (torch.arange(self.length) < self.valid_length)[None]
        heads = [t.to(torch.int64)[None, None] for t in (self.q, self.k, self.v)]
        table = exp_table() if table is None else table
        scores, probs, ids, context = attention(*heads, valid, self.exp_multiplier, self.exp_shift, table,
                                                self.context_multiplier, self.context_shift, pool)
        return scores[0, 0], probs[0, 0], (ids[0, 0] if ids is not None else None), context[0, 0]


@dataclass
class AttentionProgram:
    """The beats of every input stream for ``heads``, run one after another, with ``pool`` (bool
    ``[P', k²]``, P' ≤ P) when the attention map is pruned. ``exp_table`` (256 entries) is loaded in
    place of the unit's built-in table when given."""

    config: AttentionConfig
    heads: list[AttentionHead]
    pool: torch.Tensor | None = None
    exp_table: torch.Tensor | None = None

    def __post_init__(self):
        cfg, k = self.config, self.config.engine.pattern.block_size
        for i, h in enumerate(self.heads):
            length, dim = h.q.shape
            for name, t in (("q", h.q), ("k", h.k), ("v", h.v)):
                if t.shape != (length, dim) or t.dtype != torch.int8:
                    raise ValueError(f"head {i}: {name} must be int8 [{length}, {dim}], got {t.dtype} {tuple(t.shape)}")
            if not 1 <= length <= cfg.max_seq:
                raise ValueError(f"head {i}: length {length} is outside 1 … max_seq={cfg.max_seq}")
            if dim % k or not k <= dim <= cfg.max_head_dim:
                raise ValueError(f"head {i}: head dim {dim} is not a multiple of {k} up to max_head_dim={cfg.max_head_dim}")
            if not 0 <= h.valid_length <= length:
                raise ValueError(f"head {i}: valid_length {h.valid_length} is outside 0 … {length}")
        if self.pool is not None:
            p = cfg.engine.pattern
            if self.pool.dim() != 2 or self.pool.shape[1] != p.positions or not 1 <= self.pool.shape[0] <= p.pool_size:
                raise ValueError(f"pool must be bool [≤{p.pool_size}, {p.positions}], got {tuple(self.pool.shape)}")
            if bool((self.pool.sum(1) != p.kept_per_block).any()):
                raise ValueError(f"every pool mask must keep {p.kept_per_block} positions")

    def golden(self):
        return [h.golden(self.pool, self.exp_table) for h in self.heads]

    def streams(self) -> dict[str, list[int]]:
        cfg = self.config
        k = cfg.engine.pattern.block_size
        beats = {"pool": [], "exp_table": [], "cmd": [], "queries": [], "keys": [], "values": []}
        if self.exp_table is not None:
            beats["exp_table"] = [encode(exp_table_layout(), {"addr": i, "data": int(v)}) for i, v in enumerate(self.exp_table.tolist())]
        if self.pool is not None:
            padded = torch.cat([self.pool, self.pool[:1].expand(cfg.engine.pattern.pool_size - self.pool.shape[0], -1)])
            for i, mask in enumerate(padded.tolist()):
                beats["pool"].append(encode(pool_layout(cfg), {"id": i, "mask": sum(int(b) << p for p, b in enumerate(mask))}))
        act = activation_layout(cfg.engine)
        for h in self.heads:
            beats["cmd"].append(encode(head_layout(cfg), {
                "length": h.length, "valid_length": h.valid_length, "head_blocks": h.q.shape[1] // k,
                "prune": int(self.pool is not None), "exp_multiplier": h.exp_multiplier, "exp_shift": h.exp_shift,
                "context_multiplier": h.context_multiplier, "context_shift": h.context_shift}))
            for name, t in (("queries", h.q), ("keys", h.k), ("values", h.v)):
                beats[name] += [encode(act, {"values": row}) for row in t.reshape(-1, k).tolist()]
        return beats

    def widths(self) -> dict[str, int]:
        """Bits of a beat of every stream, taps included."""
        cfg = self.config
        return {"pool": pool_layout(cfg).size, "exp_table": exp_table_layout().size, "cmd": head_layout(cfg).size,
                "queries": activation_layout(cfg.engine).size, "keys": activation_layout(cfg.engine).size,
                "values": activation_layout(cfg.engine).size, "context": output_layout(cfg.engine).size,
                "scores": scores_layout(cfg.engine).size, "blocks": probability_block_layout(cfg.engine).size}

    def write_hex(self, folder: str | os.PathLike) -> dict[str, Path]:
        """One ``$readmemh`` file per input stream (``<name>.hex``); returns their paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        widths, paths = self.widths(), {}
        for name, beats in self.streams().items():
            digits = -(-widths[name] // 4)
            paths[name] = write_atomic(folder / f"{name}.hex", "".join(f"{b:0{digits}x}\n" for b in beats))
        return paths

    # --- what comes back -------------------------------------------------------------------------------

    def score_beats(self) -> int:
        k = self.config.engine.pattern.block_size
        return sum(h.length * -(-h.length // k) for h in self.heads)

    def block_beats(self) -> int:
        k = self.config.engine.pattern.block_size
        return sum((-(-h.length // k)) ** 2 for h in self.heads)

    def context_beats(self) -> int:
        k = self.config.engine.pattern.block_size
        return sum(-(-h.length // k) * h.q.shape[1] for h in self.heads)

    def decode_context(self, beats: list[int]) -> list[torch.Tensor]:
        """Per head, ``[L, d]`` int8 from the ``context`` beats (per tile of channels, per block of
        queries, per channel: ``k`` queries)."""
        if len(beats) != self.context_beats():
            raise ValueError(f"expected {self.context_beats()} context beats, got {len(beats)}")
        cfg = self.config.engine
        k, lanes, layout = cfg.pattern.block_size, cfg.lanes, output_layout(cfg)
        out, it = [], iter(beats)
        for h in self.heads:
            blocks, dim = -(-h.length // k), h.q.shape[1]
            context = torch.zeros(blocks * k, dim, dtype=torch.int64)
            for base in range(0, dim, lanes):
                for bn in range(blocks):
                    for c in range(base, min(base + lanes, dim)):
                        context[bn * k:(bn + 1) * k, c] = torch.tensor(decode_leaf_array(layout, next(it), ("values",)))
            out.append(context[:h.length])
        return out

    def decode_scores(self, taps: list[int]) -> list[torch.Tensor]:
        """Per head, ``[L, L]`` int32 scores from the score tap (per tile of queries, per key block, per
        query: ``k`` keys)."""
        cfg = self.config.engine
        k, lanes, layout = cfg.pattern.block_size, cfg.lanes, scores_layout(cfg)
        out, it = [], iter(taps)
        for h in self.heads:
            blocks = -(-h.length // k)
            scores = torch.zeros(h.length, blocks * k, dtype=torch.int64)
            for base in range(0, h.length, lanes):
                for bn in range(blocks):
                    for q in range(base, min(base + lanes, h.length)):
                        scores[q, bn * k:(bn + 1) * k] = torch.tensor(decode_leaf_array(layout, next(it), ("values",)))
            out.append(scores[:, :h.length])
        if next(it, None) is not None:
            raise ValueError("more score taps than the heads produce")
        return out

    def decode_blocks(self, taps: list[int]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Per head, ``(probs [L, L], pattern ids [⌈L/k⌉, ⌈L/k⌉] or None)`` from the probability-block tap."""
        cfg = self.config.engine
        k, layout = cfg.pattern.block_size, probability_block_layout(cfg)
        out, it = [], iter(taps)
        for h in self.heads:
            blocks = -(-h.length // k)
            probs = torch.zeros(blocks * k, blocks * k, dtype=torch.int64)
            ids = torch.zeros(blocks, blocks, dtype=torch.int64)
            for qb in range(blocks):
                for kb in range(blocks):
                    word = next(it)
                    ids[qb, kb] = decode_leaf_array(layout, word, ("pattern",))[0]
                    probs[qb * k:(qb + 1) * k, kb * k:(kb + 1) * k] = torch.tensor(
                        decode_leaf_array(layout, word, ("values",))).reshape(k, k)
            out.append((probs[:h.length, :h.length], ids if self.pool is not None else None))
        if next(it, None) is not None:
            raise ValueError("more probability blocks than the heads produce")
        return out
