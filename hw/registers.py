"""The accelerator's control and status registers on its AXI4-Lite slave, as a register map.

Written in the manner of amaranth-soc's ``csr.Register`` (a register is a class listing typed fields
with their access), which the package registry only carries as an empty placeholder. Offsets, field
positions and access come from here for the register file in the hardware, for the C header
firmware_gen writes (``firmware_gen/compiler.py``) and for the host driver in simulation.
"""

from __future__ import annotations

from dataclasses import dataclass

from hw.commands import ErrorCause

#: Value of the ID register: "TSRA" (Tessera accelerator), then the register map's version in ``VERSION``.
ID_MAGIC = 0x41525354
VERSION = 1


@dataclass(frozen=True)
class Field:
    """``width`` bits at ``offset`` of a register; ``access``: ``r`` read-only, ``rw`` read-write,
    ``w1`` write 1 to act (reads as 0)."""

    name: str
    offset: int
    width: int
    access: str
    doc: str


class Register:
    """A 32-bit register: its fields, listed as class attributes by subclasses."""

    fields: tuple[Field, ...] = ()
    doc = ""

    @classmethod
    def value(cls, word: int, name: str) -> int:
        """Field ``name`` of a register value ``word`` read from the bus."""
        f = cls.field(name)
        return (word >> f.offset) & ((1 << f.width) - 1)

    @classmethod
    def field(cls, name: str) -> Field:
        for f in cls.fields:
            if f.name == name:
                return f
        raise KeyError(f"{cls.__name__} has no field {name!r}")


class Control(Register):
    doc = "Start a run, or reset the core between runs."
    fields = (
        Field("start", 0, 1, "w1", "run the command stream at COMMAND_ADDR"),
        Field("reset", 1, 1, "w1", "abandon a run and return to idle (clears done and error)"),
    )


class Status(Register):
    doc = "What the core is doing."
    fields = (
        Field("busy", 0, 1, "r", "a run is in progress"),
        Field("done", 1, 1, "r", "the last run reached END"),
        Field("error", 2, 1, "r", "the last run stopped with an error (cause in ERROR)"),
    )


class Error(Register):
    doc = "Why the last run stopped, and where."
    fields = (
        Field("cause", 0, len(ErrorCause.__members__).bit_length(), "r", "an ErrorCause (hw.commands)"),
        Field("command", 16, 16, "r", "index of the command that failed"),
    )


class CommandAddress(Register):
    doc = "DRAM address of the first command."
    fields = (Field("address", 0, 32, "rw", "byte address, 64-byte aligned"),)


class CyclesLow(Register):
    doc = "Cycles of the current or last run, low word (reading it latches the high word)."
    fields = (Field("count", 0, 32, "r", "bits 0–31"),)


class CyclesHigh(Register):
    doc = "Cycles of the current or last run, high word as latched."
    fields = (Field("count", 0, 32, "r", "bits 32–63"),)


class Layer(Register):
    doc = "Progress of the current or last run."
    fields = (
        Field("layer", 0, 16, "r", "encoder layers finished (NORM commands that end a layer)"),
        Field("commands", 16, 16, "r", "commands finished"),
    )


class Ident(Register):
    doc = "Identification: reads ID_MAGIC."
    fields = (Field("magic", 0, 32, "r", "0x41525354"),)


class Version(Register):
    doc = "Register map version."
    fields = (Field("version", 0, 32, "r", "VERSION"),)


#: The register map: (name, byte offset, register class).
REGISTER_MAP: tuple[tuple[str, int, type[Register]], ...] = (
    ("CONTROL", 0x00, Control),
    ("STATUS", 0x04, Status),
    ("ERROR", 0x08, Error),
    ("COMMAND_ADDR", 0x0C, CommandAddress),
    ("CYCLES_LO", 0x10, CyclesLow),
    ("CYCLES_HI", 0x14, CyclesHigh),
    ("LAYER", 0x18, Layer),
    ("ID", 0x1C, Ident),
    ("VERSION", 0x20, Version),
)


def offset(name: str) -> int:
    for n, off, _ in REGISTER_MAP:
        if n == name:
            return off
    raise KeyError(f"no register {name!r}")


def markdown_table() -> str:
    """One row per field of every register: register, offset, field, bits, access, meaning."""
    lines = ["| register | offset | field | bits | access | meaning |", "|---|---:|---|---|---|---|"]
    for name, off, register in REGISTER_MAP:
        for f in register.fields:
            lines.append(f"| {name} | 0x{off:02X} | `{f.name}` | {f.offset}–{f.offset + f.width - 1} | {f.access} | {f.doc} |")
    return "\n".join(lines)
