"""Per-channel requantization of an int32 accumulator to int8 (see ``sim.golden.requantize``)."""

from amaranth import Const, Module, Mux, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from sim import golden


class Requantizer(wiring.Component):
    """``saturate_int8((value · multiplier + 2**(shift-1)) >> shift)``; purely combinational.

    Interface attributes
    --------------------
    value : In(signed(32))
        Accumulator including bias.
    multiplier : In(unsigned(16))
        Requantization multiplier.
    shift : In(unsigned(6))
        Right shift, 0 … 47 (larger values are outside the contract).
    result : Out(signed(8))
        Rounded half up, saturated to [-128, 127].

    Latency: 0 cycles.
    """

    value: In(signed(golden.ACC_BITS))
    multiplier: In(unsigned(golden.MULTIPLIER_BITS))
    shift: In(unsigned(golden.SHIFT_MAX.bit_length()))
    result: Out(signed(8))

    def elaborate(self, platform):
        m = Module()
        product = self.value * self.multiplier  # exact: signed 32 × unsigned 16
        width = golden.ACC_BITS + golden.MULTIPLIER_BITS + 1
        half = (Const(1, width) << self.shift) >> 1  # 0 when shift == 0
        rounded = (product + half) >> self.shift  # arithmetic shift: floor
        m.d.comb += self.result.eq(
            Mux(rounded > golden.INT8_MAX, golden.INT8_MAX, Mux(rounded < golden.INT8_MIN, golden.INT8_MIN, rounded))
        )
        return m
