"""The stream program that runs one linear layer on :class:`hw.pattern_matmul.PatternMatmulEngine`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from firmware_gen.beats import decode_leaf_array, encode
from firmware_gen.image import LinearImage
from hw.config import COUNT_BITS, EngineConfig
from hw.layouts import (Opcode, activation_layout, channel_params_layout, command_layout, output_layout,
                        weight_layout)
from core.atomic import write_atomic
from core.pattern import pad_to_blocks, to_blocks


@dataclass
class MatmulProgram:
    """Encoded beats of every input stream, and what to expect on the output stream.

    ``weights`` and ``params`` hold one tile's worth; the driver replays them ``tiles`` times.
    """

    config: EngineConfig
    tokens: int
    out_features: int
    out_blocks: int
    dense: bool
    raw: bool
    commands: list[int]
    activations: list[int]
    weights: list[int]
    params: list[int]
    wide: bool = False

    @property
    def tiles(self) -> int:
        return -(-self.tokens // self.config.lanes)

    @property
    def output_beats(self) -> int:
        return self.tokens * self.out_blocks

    def streams(self) -> dict[str, tuple[list[int], int]]:
        """``name → (beats, replays)`` for every input stream."""
        return {"cmd": (self.commands, 1), "activations": (self.activations, 1),
                "weights": (self.weights, self.tiles), "params": (self.params, self.tiles)}

    def decode_outputs(self, beats: list[int]) -> torch.Tensor:
        """Output beats in stream order → ``[tokens, out_features]`` (int32 in raw mode, else int8)."""
        if len(beats) != self.output_beats:
            raise ValueError(f"expected {self.output_beats} output beats, got {len(beats)}")
        cfg, k, lanes = self.config, self.config.pattern.block_size, self.config.lanes
        layout = output_layout(cfg)
        y = torch.zeros(self.tokens, self.out_blocks * k, dtype=torch.int64)
        i = 0
        for tile in range(self.tiles):
            tile_tokens = min(lanes, self.tokens - tile * lanes)
            for bn in range(self.out_blocks):
                for lane in range(tile_tokens):
                    y[tile * lanes + lane, bn * k:(bn + 1) * k] = torch.tensor(decode_leaf_array(layout, beats[i], ("values",)))
                    i += 1
        y = y[:, : self.out_features]
        return y.to(torch.int32) if self.raw or self.wide else _checked_int8(y)

    def write_hex(self, folder: str | os.PathLike) -> dict[str, Path]:
        """One ``$readmemh`` file per input stream (``<name>.hex``); returns their paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        widths = {"cmd": command_layout, "activations": activation_layout, "weights": weight_layout, "params": channel_params_layout}
        paths = {}
        for name, (beats, _) in self.streams().items():
            digits = -(-widths[name](self.config).size // 4)
            paths[name] = write_atomic(folder / f"{name}.hex", "".join(f"{b:0{digits}x}\n" for b in beats))
        return paths


def _checked_int8(y: torch.Tensor) -> torch.Tensor:
    if bool((y < -128).any() or (y > 127).any()):
        raise ValueError("an output beat carries a value outside int8 in requantized mode")
    return y.to(torch.int8)


def build_program(image: LinearImage, x_q: torch.Tensor, config: EngineConfig, *, dense: bool = False,
                  raw: bool = False, wide: bool = False) -> MatmulProgram:
    """Encode ``image`` and activations ``x_q[M, K]`` (int8) into the engine's streams.

    ``dense=True`` streams every block whole (the same weights, no pattern skipping), for comparison.
    """
    pc = image.config
    if (pc.block_size, pc.kept_per_block) != (config.pattern.block_size, config.pattern.kept_per_block):
        raise ValueError(f"image blocks are {pc.block_size}×{pc.block_size} keeping {pc.kept_per_block}; "
                         f"the engine is built for {config.pattern.block_size}×{config.pattern.block_size} keeping {config.pattern.kept_per_block}")
    if pc.pool_size > config.pattern.pool_size:
        raise ValueError(f"image pool has {pc.pool_size} patterns; the engine's table holds {config.pattern.pool_size}")
    if x_q.dtype != torch.int8 or x_q.dim() != 2 or x_q.shape[1] != image.in_features:
        raise ValueError(f"x_q must be int8 [tokens, {image.in_features}], got {x_q.dtype} {tuple(x_q.shape)}")
    tokens = x_q.shape[0]
    k, n = config.pattern.block_size, config.pattern.kept_per_block
    nb, kb = image.block_grid
    for name, value in (("tokens", tokens), ("out_blocks", nb), ("in_blocks", kb)):
        if not 1 <= value < 2**COUNT_BITS:
            raise ValueError(f"{name}={value} outside the engine's 1 … {2**COUNT_BITS - 1}")
    if kb > config.max_in_blocks:
        raise ValueError(f"in_features={image.in_features} exceeds the engine's activation buffer ({config.max_in_features})")

    cmd_layout = command_layout(config)
    blank = {"op": 0, "dense": 0, "raw": 0, "wide": 0, "pattern_id": 0, "tokens": 0, "in_blocks": 0, "out_blocks": 0,
             "positions": [{"row": 0, "col": 0}] * n}
    commands = []
    if not dense:
        for pid, positions in enumerate(image.pool_positions.tolist()):
            commands.append(encode(cmd_layout, {**blank, "op": Opcode.LOAD_PATTERN.value, "pattern_id": pid,
                                                "positions": [{"row": p // k, "col": p % k} for p in positions]}))
    commands.append(encode(cmd_layout, {**blank, "op": Opcode.RUN.value, "dense": int(dense), "raw": int(raw), "wide": int(wide),
                                        "tokens": tokens, "in_blocks": kb, "out_blocks": nb}))

    # Activations: per tile, per token, its K' values as kb block columns (zero-padded to K').
    x_pad = torch.zeros(tokens, kb * k, dtype=torch.int64)
    x_pad[:, : image.in_features] = x_q.to(torch.int64)
    a_layout = activation_layout(config)
    activations = [encode(a_layout, {"values": row}) for row in x_pad.reshape(tokens * kb, k).tolist()]

    w_layout = weight_layout(config)
    if dense:
        blocks = to_blocks(pad_to_blocks(image.weight_q().to(torch.int64), k), k)  # [nb, kb, k²]
        chunks = torch.zeros(nb, kb, config.dense_chunks * n, dtype=torch.int64)
        chunks[..., : k * k] = blocks
        weights = [encode(w_layout, {"pattern": 0, "values": c}) for c in chunks.reshape(-1, n).tolist()]
    else:
        weights = [encode(w_layout, {"pattern": pid, "values": vals})
                   for pid, vals in zip(image.pattern_ids.flatten().tolist(), image.values.reshape(-1, n).tolist())]

    p_layout = channel_params_layout(config)
    bias, mult, shift = (t.reshape(nb, k).tolist() for t in (image.bias, image.multiplier, image.shift))
    params = [encode(p_layout, {"bias": bias[i], "multiplier": mult[i], "shift": shift[i]}) for i in range(nb)]
    return MatmulProgram(config, tokens, image.out_features, nb, dense, raw, commands, activations, weights, params, wide)
