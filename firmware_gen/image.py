"""The packed weight image of one pattern-pruned, int8-quantized linear layer.

Byte layout, version 2 (all little-endian)::

    header (64 bytes)
      0  magic            4s   b"TSLW"
      4  version          u16  2
      6  header_size      u16  64
      8  block_size       u8   k
      9  kept_per_block   u8   n
     10  pool_size        u16  P
     12  out_features     u32  N
     16  in_features      u32  K
     20  input_scale      f64  activation scale s_x
     28  output_scale     f64  output scale s_y
     36  payload_size     u32  bytes after the header
     40  crc32            u32  zlib.crc32 of the whole header (this field as zero) and the payload
     44  reserved         20 bytes of zero (checked on load)
    payload
      pattern pool      P × n      u8   kept positions of each pattern (row·k + col), ascending
      channel params    N' × 8     per padded output channel: bias i32, multiplier u16, shift u8, 0 u8
      pattern ids       Nb × Kb    u16  row-major over the block grid
      kept values       Nb × Kb × n i8  per block, in its pattern's position order

``N' = Nb·k`` and ``K' = Kb·k`` are N and K rounded up to multiples of k (padding rule of
``core.pattern``); padded channels have bias, multiplier and shift 0.

Every field is range-checked before it is written (a value that would wrap in its field is refused,
never stored) and again after it is read. Version 1 (its checksum covered the payload only) is refused
with a message; re-create such an image from its layer.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core import golden
from core.atomic import write_atomic
from core.pattern import PatternConfig, PatternPool, padded_shape, unpack_pattern_blocks
from core.quantize import QuantizedPatternLinear

MAGIC = b"TSLW"
VERSION = 2
_HEADER = struct.Struct("<4sHHBBHIIddII20s")
_CRC_OFFSET = 40
HEADER_SIZE = _HEADER.size
_CHANNEL = np.dtype([("bias", "<i4"), ("multiplier", "<u2"), ("shift", "u1"), ("reserved", "u1")])


class ImageError(ValueError):
    """A weight image is corrupt, truncated, of another version, or inconsistent."""


@dataclass
class LinearImage:
    config: PatternConfig
    out_features: int
    in_features: int
    input_scale: float
    output_scale: float
    pool_positions: torch.Tensor  # [P, n] int64
    pattern_ids: torch.Tensor  # [Nb, Kb] int64
    values: torch.Tensor  # [Nb, Kb, n] int8
    bias: torch.Tensor  # [N'] int64
    multiplier: torch.Tensor  # [N'] int64
    shift: torch.Tensor  # [N'] int64

    @property
    def block_grid(self) -> tuple[int, int]:
        n_pad, k_pad = padded_shape(self.out_features, self.in_features, self.config.block_size)
        return n_pad // self.config.block_size, k_pad // self.config.block_size

    @classmethod
    def from_layer(cls, layer: QuantizedPatternLinear) -> "LinearImage":
        n_pad, _ = padded_shape(layer.out_features, layer.in_features, layer.config.block_size)

        def padded(t):
            out = torch.zeros(n_pad, dtype=torch.int64)
            out[: layer.out_features] = t.to(torch.int64)
            return out

        return cls(
            config=layer.config, out_features=layer.out_features, in_features=layer.in_features,
            input_scale=float(layer.input_scale), output_scale=float(layer.output_scale),
            pool_positions=layer.pool.positions(), pattern_ids=layer.pattern_ids.to(torch.int64),
            values=layer.packed_values().to(torch.int8),
            bias=padded(layer.bias_q), multiplier=padded(layer.multiplier), shift=padded(layer.shift),
        )

    def pool(self) -> PatternPool:
        c = self.config
        masks = torch.zeros(c.pool_size, c.positions, dtype=torch.bool)
        masks.scatter_(1, self.pool_positions, True)
        return PatternPool(c, masks)

    def weight_q(self) -> torch.Tensor:
        """The dense int8 weight matrix ``[N, K]``."""
        return unpack_pattern_blocks(self.values, self.pattern_ids, self.pool(), (self.out_features, self.in_features))

    def golden(self, x_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Golden ``(int32 accumulators, int8 outputs)`` of the layer this image holds."""
        n = self.out_features
        return golden.linear(x_q, self.weight_q(), self.bias[:n], self.multiplier[:n], self.shift[:n])

    # --- bytes ------------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        self.validate("image to write")
        c = self.config
        channels = np.zeros(self.bias.shape[0], dtype=_CHANNEL)
        channels["bias"], channels["multiplier"], channels["shift"] = self.bias.numpy(), self.multiplier.numpy(), self.shift.numpy()
        payload = b"".join([
            self.pool_positions.numpy().astype(np.uint8).tobytes(),
            channels.tobytes(),
            self.pattern_ids.numpy().astype("<u2").tobytes(),
            self.values.numpy().astype(np.int8).tobytes(),
        ])
        fields = (MAGIC, VERSION, HEADER_SIZE, c.block_size, c.kept_per_block, c.pool_size, self.out_features,
                  self.in_features, self.input_scale, self.output_scale, len(payload))
        crc = zlib.crc32(payload, zlib.crc32(_HEADER.pack(*fields, 0, bytes(20))))
        return _HEADER.pack(*fields, crc, bytes(20)) + payload

    @classmethod
    def from_bytes(cls, blob: bytes, source: str = "image") -> "LinearImage":
        if len(blob) < HEADER_SIZE:
            raise ImageError(f"{source}: truncated: {len(blob)} bytes, shorter than the {HEADER_SIZE}-byte header")
        (magic, version, header_size, k, n, p, out_features, in_features, input_scale, output_scale,
         payload_size, crc, reserved) = _HEADER.unpack_from(blob)
        if magic != MAGIC:
            raise ImageError(f"{source}: not a Tessera linear image (magic {magic!r}, expected {MAGIC!r})")
        if version != VERSION:
            hint = "; version 1 left the header outside its checksum: re-create it with LinearImage.from_layer(...).save()" if version == 1 else ""
            raise ImageError(f"{source}: unsupported image version {version}; this reader supports version {VERSION}{hint}")
        if header_size != HEADER_SIZE:
            raise ImageError(f"{source}: header size {header_size}, expected {HEADER_SIZE}")
        try:
            config = PatternConfig(k, n, p)
        except ValueError as e:
            raise ImageError(f"{source}: invalid pattern parameters: {e}") from None
        if out_features < 1 or in_features < 1:
            raise ImageError(f"{source}: invalid shape {out_features}×{in_features}")
        n_pad, k_pad = padded_shape(out_features, in_features, k)
        nb, kb = n_pad // k, k_pad // k
        sizes = [p * n, n_pad * _CHANNEL.itemsize, nb * kb * 2, nb * kb * n]
        if payload_size != sum(sizes):
            raise ImageError(f"{source}: payload size {payload_size} does not match the {out_features}×{in_features} shape ({sum(sizes)})")
        if len(blob) != HEADER_SIZE + payload_size:
            kind = "truncated" if len(blob) < HEADER_SIZE + payload_size else "has trailing bytes"
            raise ImageError(f"{source}: {kind}: {len(blob)} bytes, expected {HEADER_SIZE + payload_size}")
        payload = blob[HEADER_SIZE:]
        header = bytearray(blob[:HEADER_SIZE])
        header[_CRC_OFFSET:_CRC_OFFSET + 4] = bytes(4)
        actual = zlib.crc32(payload, zlib.crc32(bytes(header)))
        if actual != crc:
            raise ImageError(f"{source}: corrupt: CRC32 of header and payload {actual:#010x} does not match the stored {crc:#010x}")
        if reserved != bytes(20):
            raise ImageError(f"{source}: reserved header bytes 44..63 are not zero")
        bounds = np.cumsum([0] + sizes)
        part = [payload[bounds[i]:bounds[i + 1]] for i in range(4)]
        positions = torch.from_numpy(np.frombuffer(part[0], np.uint8).reshape(p, n).astype(np.int64))
        channels = np.frombuffer(part[1], _CHANNEL)
        ids = torch.from_numpy(np.frombuffer(part[2], "<u2").reshape(nb, kb).astype(np.int64))
        values = torch.from_numpy(np.frombuffer(part[3], np.int8).reshape(nb, kb, n).copy())
        image = cls(config, out_features, in_features, input_scale, output_scale, positions, ids, values,
                    torch.from_numpy(channels["bias"].astype(np.int64)),
                    torch.from_numpy(channels["multiplier"].astype(np.int64)),
                    torch.from_numpy(channels["shift"].astype(np.int64)))
        image.validate(source)
        return image

    def validate(self, source: str = "image") -> None:
        """Every field within the range of its field in the byte layout and of the contract."""
        c = self.config
        if c.block_size > 255 or c.kept_per_block > 255 or c.pool_size > 2**16 - 1:
            raise ImageError(f"{source}: pattern parameters {c} do not fit the header (k, n ≤ 255, P < 2^16)")
        if not (0 < self.out_features < 2**32 and 0 < self.in_features < 2**32):
            raise ImageError(f"{source}: shape {self.out_features}×{self.in_features} does not fit the header")
        n_pad, _ = padded_shape(self.out_features, self.in_features, c.block_size)
        grid = self.block_grid
        expected = {"pool_positions": (c.pool_size, c.kept_per_block), "pattern_ids": grid, "values": (*grid, c.kept_per_block),
                    "bias": (n_pad,), "multiplier": (n_pad,), "shift": (n_pad,)}
        limits = {"values": (-golden.WEIGHT_MAX, golden.WEIGHT_MAX), "pattern_ids": (0, c.pool_size - 1),
                  "bias": (golden.ACC_MIN, golden.ACC_MAX), "multiplier": (0, golden.MULTIPLIER_MAX),
                  "shift": (0, golden.SHIFT_MAX), "pool_positions": (0, c.positions - 1)}
        for name, shape in expected.items():
            tensor = getattr(self, name)
            if tuple(tensor.shape) != shape:
                raise ImageError(f"{source}: {name} has shape {tuple(tensor.shape)}, expected {shape}")
            try:
                golden.require_int(name, tensor, *limits[name])
            except (TypeError, ValueError) as error:
                raise ImageError(f"{source}: {error}") from None
        pos = self.pool_positions
        if bool((pos >= c.positions).any()) or bool((pos[:, 1:] <= pos[:, :-1]).any()):
            raise ImageError(f"{source}: pattern pool positions must be ascending and below {c.positions}")
        try:
            self.pool()
        except ValueError as e:
            raise ImageError(f"{source}: invalid pattern pool: {e}") from None
        if not (math.isfinite(self.input_scale) and self.input_scale > 0 and math.isfinite(self.output_scale) and self.output_scale > 0):
            raise ImageError(f"{source}: scales must be positive and finite")

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically: a temporary file in the same folder, then a rename."""
        write_atomic(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LinearImage":
        return cls.from_bytes(Path(path).read_bytes(), source=str(path))
