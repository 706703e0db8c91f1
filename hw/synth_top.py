"""Pin-light wrappers around the engine and the attention unit for synthesis and place-and-route estimates."""

from __future__ import annotations

from amaranth import Cat, Module, Shape, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.attention_unit import AttentionUnit
from hw.config import AttentionConfig, EngineConfig
from hw.pattern_matmul import PatternMatmulEngine

#: The engine's input streams, in the order of the ``load`` bits and of the fields of the shift chain.
INPUT_STREAMS = ("cmd", "activations", "weights", "params")
#: The attention unit's input streams, likewise.
ATTENTION_INPUT_STREAMS = ("cmd", "pool", "exp_table", "queries", "keys", "values")


class SynthTop(wiring.Component):
    """:class:`~hw.pattern_matmul.PatternMatmulEngine` behind a handful of pins.

    The engine's stream payloads are hundreds of bits wide, far more than a package has pins. This
    harness feeds them from one serial-in shift chain and folds the output payload into a small
    checksum register, so every engine input comes from a pin, every engine output reaches one,
    and the synthesizer can optimize no engine logic away. It is for resource and Fmax estimates
    (``bench/synth.py``) and is not an interface anyone should integrate.

    The shift chain is the concatenation of the four input payloads (``cmd`` at bit 0, then
    ``activations``, ``weights``, ``params``; see :attr:`chain_fields`). While ``shift`` is high,
    ``sdi`` enters at bit 0 and every bit moves one place up. :meth:`serial_bits` gives the bits
    that load one field. Each input stream has a valid flag: bit ``i`` of ``load`` sets the flag of
    ``INPUT_STREAMS[i]``, and the transfer clears it. Loading while a flag is set changes a payload
    that is still offered, which breaks the stream rules: drive the harness one beat at a time
    (shift, load, wait until ``pending`` falls).

    Every output beat transferred XORs its payload, folded to ``checksum_bits`` bits (bit ``i`` is
    the XOR of payload bits ``i``, ``i + checksum_bits``, …), into ``checksum``.

    A ``load`` bit copies its field of the chain into the stream's payload register, so the offered
    payload comes from a register that the placer puts next to the logic it feeds, as a command or
    operand register would be in a real integration, not from the chain that snakes across the die.

    What the harness adds to the engine (:attr:`harness_flip_flops` counts its flip-flops):
    the shift chain (:attr:`chain_width` FFs, no reset), the payload registers (as many), one valid
    flag per input stream (4 FFs), the input pins ``sdi``, ``shift``, ``load`` and ``out_ready``
    registered once (6 + 1 FFs: the pins drive nothing directly, so no path starts at a pad) and the
    checksum register (``checksum_bits`` FFs); plus a few dozen LUTs for the XOR fold and the flag logic, which the
    reports do not subtract.

    Parameters
    ----------
    config : EngineConfig
        Configuration of the wrapped engine.
    checksum_bits : int
        Width of the output checksum (default 8).

    Interface attributes
    --------------------
    sdi : In(1)
        Serial data into the shift chain.
    shift : In(1)
        Shift the chain by one bit this cycle.
    load : In(4)
        Bit ``i`` offers the field of ``INPUT_STREAMS[i]`` on that stream (sets its valid flag).
    out_ready : In(1)
        ``outputs.ready`` of the engine, one cycle later.
    pending : Out(1)
        Some input stream's valid flag is set (its beat has not been taken yet).
    busy : Out(1)
        The engine's ``busy``.
    error : Out(1)
        The engine's ``error``.
    checksum : Out(checksum_bits)
        XOR of the folded payloads of every output beat so far.

    Latency: a beat is offered the cycle after its ``load`` bit; ``checksum`` changes the cycle
    after an output transfer.
    """

    #: The wrapped design's input streams (``load`` bits, shift chain fields), its output stream, and its
    #: instance name in the netlist.
    input_streams = INPUT_STREAMS
    output_stream = "outputs"
    design_name = "engine"

    def __init__(self, config: EngineConfig, *, checksum_bits: int = 8):
        if not isinstance(checksum_bits, int) or checksum_bits < 1:
            raise ValueError(f"checksum_bits must be a positive integer, got {checksum_bits!r}")
        self._config = config
        self._checksum_bits = checksum_bits
        self.design = self._design(config)
        fields, offset = {}, 0
        for name in self.input_streams:
            width = len(Value.cast(getattr(self.design, name).payload))
            fields[name] = (offset, width)
            offset += width
        self._chain_fields = fields
        super().__init__({
            "sdi": In(1),
            "shift": In(1),
            "load": In(len(self.input_streams)),
            "out_ready": In(1),
            "pending": Out(1),
            "busy": Out(1),
            "error": Out(1),
            "checksum": Out(checksum_bits),
        })

    def _design(self, config):
        return PatternMatmulEngine(config)

    @property
    def chain_fields(self) -> dict[str, tuple[int, int]]:
        """``stream name → (offset, width)`` of its payload in the shift chain."""
        return dict(self._chain_fields)

    @property
    def chain_width(self) -> int:
        return sum(width for _, width in self._chain_fields.values())

    @property
    def harness_flip_flops(self) -> int:
        """Flip-flops the harness adds around the engine: shift chain, payload registers, valid flags,
        the registered input pins, checksum."""
        return 2 * self.chain_width + 2 * len(self.input_streams) + 3 + self._checksum_bits

    @property
    def pins(self) -> int:
        """Package pins the design needs: its ports' bits plus ``clk`` and ``rst``."""
        return sum(Shape.cast(member.shape).width for member in self.signature.members.values()) + 2

    def serial_bits(self, name: str, value: int) -> list[int]:
        """Values of ``sdi``, one per shifting cycle, that leave ``value`` in the field of stream ``name``
        (other fields are overwritten)."""
        offset, width = self._chain_fields[name]
        if not 0 <= value < 1 << width:
            raise ValueError(f"{name} payload {value:#x} does not fit {width} bits")
        # The last bit shifted in ends at chain bit 0: send the field's MSB first, then `offset` fillers.
        return [(value >> i) & 1 for i in reversed(range(width))] + [0] * offset

    def elaborate(self, platform):
        m = Module()
        m.submodules[self.design_name] = engine = self.design

        # The input pins pass a register each, so every path inside starts at a flip-flop.
        sdi, shift, load = Signal(), Signal(), Signal.like(self.load)
        m.d.sync += [sdi.eq(self.sdi), shift.eq(self.shift), load.eq(self.load)]
        chain = Signal(self.chain_width, reset_less=True)
        with m.If(shift):
            m.d.sync += chain.eq(Cat(sdi, chain[:-1]))

        valid = Signal(len(self.input_streams))
        for i, name in enumerate(self.input_streams):
            stream = getattr(engine, name)
            offset, width = self._chain_fields[name]
            # The offered payload is a register of its own, loaded from the chain with its valid flag:
            # the chain snakes across the die, the payload registers are placed beside their logic.
            payload = Signal(width, name=f"{name}_payload")
            m.d.comb += [stream.payload.eq(payload), stream.valid.eq(valid[i])]
            with m.If(stream.ready):
                m.d.sync += valid[i].eq(0)
            with m.If(load[i]):
                m.d.sync += [valid[i].eq(1), payload.eq(chain[offset:offset + width])]

        out_ready = Signal()
        outputs = getattr(engine, self.output_stream)
        m.d.sync += out_ready.eq(self.out_ready)
        m.d.comb += outputs.ready.eq(out_ready)
        payload = Value.cast(outputs.payload)
        bits = self._checksum_bits
        fold = Cat(*(Cat(*(payload[j] for j in range(i, len(payload), bits))).xor() for i in range(bits)))
        with m.If(outputs.valid & out_ready):
            m.d.sync += self.checksum.eq(self.checksum ^ fold)

        m.d.comb += [self.pending.eq(valid.any()), self.busy.eq(engine.busy), self.error.eq(engine.error)]
        return m


class AttentionSynthTop(SynthTop):
    """:class:`~hw.attention_unit.AttentionUnit` behind the same handful of pins as :class:`SynthTop`.

    The shift chain holds the payloads of :data:`ATTENTION_INPUT_STREAMS` (bit ``i`` of ``load`` offers
    the ``i``-th); ``context`` beats fold into ``checksum``. The unit's two verification taps are left
    unconnected: the logic behind them also feeds the probability buffer and the context, so nothing
    else is optimized away. Ports, accounting and driving rules are :class:`SynthTop`'s.

    Parameters
    ----------
    config : AttentionConfig
    checksum_bits : int
    """

    input_streams = ATTENTION_INPUT_STREAMS
    output_stream = "context"
    design_name = "attention"

    def __init__(self, config: AttentionConfig, *, checksum_bits: int = 8):
        super().__init__(config, checksum_bits=checksum_bits)

    def _design(self, config):
        return AttentionUnit(config)
