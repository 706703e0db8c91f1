import struct
import zlib

import pytest
import torch

from firmware_gen.beats import encode
from firmware_gen.image import HEADER_SIZE, ImageError, LinearImage
from firmware_gen.program import build_program
from hw.config import EngineConfig
from hw.layouts import weight_layout
from sim.cases import random_case
from core.pattern import PatternConfig
from core.quantize import compress_linear


@pytest.fixture
def layer_and_image():
    torch.manual_seed(0)
    linear = torch.nn.Linear(30, 22)
    layer = compress_linear(linear, torch.randn(16, 30))
    return layer, LinearImage.from_layer(layer)


def test_round_trip_is_exact(layer_and_image, tmp_path):
    layer, image = layer_and_image
    path = tmp_path / "layer.tslw"
    image.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["layer.tslw"]  # no temporary file left behind
    loaded = LinearImage.load(path)
    assert loaded.to_bytes() == image.to_bytes()
    assert torch.equal(loaded.weight_q(), layer.weight_q)
    for name in ("pattern_ids", "values", "pool_positions", "bias", "multiplier", "shift"):
        assert torch.equal(getattr(loaded, name), getattr(image, name)), name
    x_q = layer.quantize_input(torch.randn(5, 30))
    assert torch.equal(loaded.golden(x_q)[1], layer.forward_int(x_q)[1])


def _with_header(blob: bytes, **fields) -> bytes:
    names = ["magic", "version", "header_size", "k", "n", "p", "out", "in", "sx", "sy", "size", "crc"]
    values = dict(zip(names, struct.unpack_from("<4sHHBBHIIddII", blob)))
    values.update(fields)
    return struct.pack("<4sHHBBHIIddII20x", *(values[n] for n in names)) + blob[HEADER_SIZE:]


def _resealed(blob: bytes) -> bytes:
    """The image with its CRC recomputed (header with a zero CRC field, then the payload)."""
    header = bytearray(blob[:HEADER_SIZE])
    header[40:44] = bytes(4)
    crc = zlib.crc32(blob[HEADER_SIZE:], zlib.crc32(bytes(header)))
    header[40:44] = struct.pack("<I", crc)
    return bytes(header) + blob[HEADER_SIZE:]


def test_corrupt_image_is_refused(layer_and_image):
    blob = bytearray(layer_and_image[1].to_bytes())
    blob[HEADER_SIZE + 100] ^= 0x01
    with pytest.raises(ImageError, match="corrupt: CRC32 of header and payload"):
        LinearImage.from_bytes(bytes(blob))


def test_header_fields_are_under_the_checksum_and_reserved_bytes_are_checked(layer_and_image):
    blob = layer_and_image[1].to_bytes()
    for offset in (20, 27, 28, 35):  # bytes of the input and output scales
        flipped = bytearray(blob)
        flipped[offset] ^= 0x04
        with pytest.raises(ImageError, match="corrupt: CRC32"):
            LinearImage.from_bytes(bytes(flipped))
    reserved = bytearray(blob)
    reserved[50] = 1
    with pytest.raises(ImageError, match="corrupt: CRC32"):
        LinearImage.from_bytes(bytes(reserved))
    with pytest.raises(ImageError, match="reserved header bytes 44..63 are not zero"):
        LinearImage.from_bytes(_resealed(bytes(reserved)))


@pytest.mark.parametrize("field,index,value,message", [
    ("values", (0, 0, 0), 200, r"values has values in \[.*, 200\], outside \[-127, 127\]"),
    ("values", (0, 0, 0), -128, r"outside \[-127, 127\]"),
    ("pattern_ids", (0, 0), 65539, r"pattern_ids has values in \[0, 65539\], outside \[0, 31\]"),
    ("multiplier", (0,), 65536, r"multiplier has values in .*outside \[0, 65535\]"),
    ("shift", (1,), 48, r"shift has values in .*outside \[0, 47\]"),
    ("bias", (2,), 2**31, r"bias has values in .*outside \[-2147483648, 2147483647\]"),
])
def test_save_refuses_values_that_would_wrap_and_writes_nothing(layer_and_image, tmp_path, field, index, value, message):
    image = layer_and_image[1]
    tensor = getattr(image, field).to(torch.int64).clone()
    tensor[index] = value
    setattr(image, field, tensor)
    with pytest.raises(ImageError, match=message):
        image.save(tmp_path / "bad.tslw")
    assert list(tmp_path.iterdir()) == []


def test_truncated_image_is_refused(layer_and_image):
    blob = layer_and_image[1].to_bytes()
    with pytest.raises(ImageError, match="truncated"):
        LinearImage.from_bytes(blob[:-1])
    with pytest.raises(ImageError, match="shorter than the 64-byte header"):
        LinearImage.from_bytes(blob[:10])


def test_wrong_version_and_magic_are_refused(layer_and_image):
    blob = layer_and_image[1].to_bytes()
    with pytest.raises(ImageError, match="unsupported image version 3"):
        LinearImage.from_bytes(_with_header(blob, version=3))
    with pytest.raises(ImageError, match="version 1 left the header outside its checksum: re-create it"):
        LinearImage.from_bytes(_with_header(blob, version=1))
    with pytest.raises(ImageError, match="not a Tessera linear image"):
        LinearImage.from_bytes(_with_header(blob, magic=b"ABCD"))


def test_pattern_id_outside_pool_is_refused_even_with_valid_crc(layer_and_image):
    image = layer_and_image[1]
    blob = bytearray(image.to_bytes())
    c = image.config
    ids_offset = HEADER_SIZE + c.pool_size * c.kept_per_block + image.bias.shape[0] * 8
    blob[ids_offset:ids_offset + 2] = struct.pack("<H", c.pool_size)
    with pytest.raises(ImageError, match=r"pattern_ids has values in \[0, 32\], outside \[0, 31\]"):
        LinearImage.from_bytes(_resealed(bytes(blob)))


def test_beat_encoder_refuses_values_that_do_not_fit():
    layout = weight_layout(EngineConfig())
    with pytest.raises(ValueError, match="does not fit 8-bit signed"):
        encode(layout, {"pattern": 0, "values": [128] + [0] * 7})
    with pytest.raises(ValueError, match="pattern = 32 does not fit 5-bit unsigned"):
        encode(layout, {"pattern": 32, "values": [0] * 8})


def test_program_refuses_mismatched_engine():
    image, x_q = random_case(4, 8, 8, PatternConfig(), seed=0)
    with pytest.raises(ValueError, match="table holds 16"):
        build_program(image, x_q, EngineConfig(pattern=PatternConfig(pool_size=16)))
    with pytest.raises(ValueError, match="activation buffer"):
        build_program(image, x_q, EngineConfig(max_in_features=4))
    with pytest.raises(ValueError, match="x_q must be int8"):
        build_program(image, x_q.to(torch.int32), EngineConfig())
