"""Rounding rescale of an integer by a multiplier and a right shift, saturated to the result's width
(see ``core.golden.requantize``)."""

from amaranth import Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from core import golden

#: Cycles from ``value``/``multiplier``/``shift`` to ``result`` while ``en`` stays high.
REQUANTIZER_LATENCY = 5
#: Low bits of ``value`` in the low partial product: with them, each partial product is at most an
#: 18 × 18 signed multiply, one DSP multiplier of the ECP5 and the 7-series (18 × 25) families.
PARTIAL_BITS = 16


class Requantizer(wiring.Component):
    """``saturate((value · multiplier + 2**(shift-1)) >> shift)``, in five pipeline stages.

    Stage 1 forms two partial products, ``value``'s low :data:`PARTIAL_BITS` bits and its high bits
    each times ``multiplier`` (each fits one DSP multiplier), stage 2 sums them, stage 3 adds the
    rounding half, stage 4 shifts, stage 5 saturates to the range of ``result``, so no stage has more
    than one wide operation and no multiplier output feeds an adder in the same cycle. All stages advance together when ``en`` is
    high and hold otherwise (a stall of the stream around it). With the defaults it is the linear
    layer's requantization to int8; the integer exponential uses it for its exponent
    (:class:`hw.exp_unit.IntegerExp`).

    Parameters
    ----------
    value_shape : Shape
        Shape of ``value`` (default ``signed(32)``, the accumulator).
    result_shape : Shape
        Shape of ``result``; the rescaled value saturates to its range (default ``signed(8)``).

    Interface attributes
    --------------------
    en : In(1)
        Advance the pipeline by one stage.
    value : In(value_shape)
    multiplier : In(unsigned(16))
        Requantization multiplier.
    shift : In(unsigned(6))
        Right shift, 0 … 47 (larger values are outside the contract).
    result : Out(result_shape)
        Rounded half up, saturated.

    Latency: ``REQUANTIZER_LATENCY`` (5) enabled cycles.
    """

    def __init__(self, *, value_shape=signed(golden.ACC_BITS), result_shape=signed(8)):
        self._value_shape = Shape.cast(value_shape)
        self._result_shape = Shape.cast(result_shape)
        super().__init__({
            "en": In(1),
            "value": In(self._value_shape),
            "multiplier": In(unsigned(golden.MULTIPLIER_BITS)),
            "shift": In(unsigned(golden.SHIFT_MAX.bit_length())),
            "result": Out(self._result_shape),
        })

    def elaborate(self, platform):
        m = Module()
        width = self._value_shape.width + golden.MULTIPLIER_BITS + 1
        low_bits = min(PARTIAL_BITS, self._value_shape.width)
        high_shape = Shape(max(self._value_shape.width - low_bits, 1), self._value_shape.signed)
        low_product = Signal(unsigned(low_bits + golden.MULTIPLIER_BITS))
        high_product = Signal(signed(high_shape.width + golden.MULTIPLIER_BITS + 1))
        product = Signal(signed(width))  # exact: value × unsigned 16
        rounded = Signal(signed(width + 1))
        shifted = Signal.like(rounded)
        shift_1, shift_2, shift_3 = Signal.like(self.shift), Signal.like(self.shift), Signal.like(self.shift)
        low, high = _range(self._result_shape)
        high_value = self.value[low_bits:].as_signed() if self._value_shape.signed else self.value[low_bits:]
        if self._value_shape.width <= low_bits:
            high_value = Const(0, high_shape)
        with m.If(self.en):
            half = (Const(1, width) << shift_2) >> 1  # 0 when shift == 0
            m.d.sync += [
                low_product.eq(self.value[:low_bits] * self.multiplier),
                high_product.eq(high_value * self.multiplier), shift_1.eq(self.shift),
                product.eq((high_product << low_bits) + low_product), shift_2.eq(shift_1),
                rounded.eq(product + half), shift_3.eq(shift_2),
                shifted.eq(rounded >> shift_3),  # arithmetic shift: floor
                self.result.eq(Mux(shifted > high, high, Mux(shifted < low, low, shifted))),
            ]
        return m


def _range(shape: Shape) -> tuple[int, int]:
    if shape.signed:
        return -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1
    return 0, (1 << shape.width) - 1
