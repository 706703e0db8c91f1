"""Per-channel requantization of an int32 accumulator to int8 (see ``core.golden.requantize``)."""

from amaranth import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from core import golden

#: Cycles from ``value``/``multiplier``/``shift`` to ``result`` while ``en`` stays high.
REQUANTIZER_LATENCY = 4


class Requantizer(wiring.Component):
    """``saturate_int8((value · multiplier + 2**(shift-1)) >> shift)``, in four pipeline stages.

    Stage 1 multiplies, stage 2 adds the rounding half, stage 3 shifts, stage 4 saturates, so no stage
    has more than one wide operation. All stages advance together when ``en`` is high and hold otherwise
    (a stall of the stream around it).

    Interface attributes
    --------------------
    en : In(1)
        Advance the pipeline by one stage.
    value : In(signed(32))
        Accumulator including bias.
    multiplier : In(unsigned(16))
        Requantization multiplier.
    shift : In(unsigned(6))
        Right shift, 0 … 47 (larger values are outside the contract).
    result : Out(signed(8))
        Rounded half up, saturated to [-128, 127].

    Latency: ``REQUANTIZER_LATENCY`` (4) enabled cycles.
    """

    en: In(1)
    value: In(signed(golden.ACC_BITS))
    multiplier: In(unsigned(golden.MULTIPLIER_BITS))
    shift: In(unsigned(golden.SHIFT_MAX.bit_length()))
    result: Out(signed(8))

    def elaborate(self, platform):
        m = Module()
        width = golden.ACC_BITS + golden.MULTIPLIER_BITS + 1
        product = Signal(signed(width))  # exact: signed 32 × unsigned 16
        rounded = Signal(signed(width + 1))
        shifted = Signal.like(rounded)
        shift_1, shift_2 = Signal.like(self.shift), Signal.like(self.shift)
        with m.If(self.en):
            half = (Const(1, width) << shift_1) >> 1  # 0 when shift == 0
            m.d.sync += [
                product.eq(self.value * self.multiplier), shift_1.eq(self.shift),
                rounded.eq(product + half), shift_2.eq(shift_1),
                shifted.eq(rounded >> shift_2),  # arithmetic shift: floor
                self.result.eq(Mux(shifted > golden.INT8_MAX, golden.INT8_MAX,
                                   Mux(shifted < golden.INT8_MIN, golden.INT8_MIN, shifted))),
            ]
        return m
