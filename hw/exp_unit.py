"""The integer exponential of the softmax, ``core.integer.int_exp``, as a pipeline."""

from amaranth import Module, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from core import golden
from core.encoder import EXP_FRACTION_BITS, EXP_OUT_BITS, exp_table
from hw.requantizer import REQUANTIZER_LATENCY, Requantizer

#: Cycles from ``delta`` to ``e`` while ``en`` stays high: the input register, the exponent rescale,
#: the table read, the entry registered, the shift.
EXP_LATENCY = 1 + REQUANTIZER_LATENCY + 3
#: Width of a score difference ``max_row(S) − S`` of int32 scores.
DELTA_BITS = 32


class IntegerExp(wiring.Component):
    """``e = table[t mod 2^F] >> floor(t / 2^F)`` with ``t = rounding_shift(delta · multiplier, shift)``.

    The exponent ``t`` comes from a :class:`~hw.requantizer.Requantizer` that saturates it to
    ``F + w`` bits, where ``w`` bits hold every whole part up to ``out_bits + 1``: a table entry is at
    most ``2^out_bits``, so every whole part above ``out_bits`` gives 0, saturated or not, and the
    result equals the contract's for every ``delta``. The table (``2^F`` entries of ``out_bits + 1``
    bits) starts as the contract's :func:`core.encoder.exp_table` and can be rewritten through
    ``table_write`` (the artifact stores it; a loaded table replaces the built-in one).

    Parameters
    ----------
    fraction_bits : int
        ``F``, the exponent's fractional bits (the table has ``2^F`` entries).
    out_bits : int
        ``e ≤ 2^out_bits``.

    Interface attributes
    --------------------
    en : In(1)
        Advance the pipeline by one stage.
    delta : In(unsigned(32))
        ``max_row(S) − S``.
    multiplier : In(unsigned(16)), shift : In(unsigned(6))
        The layer's ``exp_multiplier`` and ``exp_shift``.
    e : Out(unsigned(out_bits + 1))
        ``EXP_LATENCY`` (9) enabled cycles after ``delta``.
    table_write : In(1), table_addr : In(F), table_data : In(out_bits + 1)
        Write one table entry (takes effect for later reads).
    """

    def __init__(self, *, fraction_bits: int = EXP_FRACTION_BITS, out_bits: int = EXP_OUT_BITS):
        self._fraction_bits = fraction_bits
        self._out_bits = out_bits
        self._whole_bits = (out_bits + 1).bit_length()
        super().__init__({
            "en": In(1),
            "delta": In(unsigned(DELTA_BITS)),
            "multiplier": In(unsigned(golden.MULTIPLIER_BITS)),
            "shift": In(unsigned(golden.SHIFT_MAX.bit_length())),
            "e": Out(unsigned(out_bits + 1)),
            "table_write": In(1),
            "table_addr": In(fraction_bits),
            "table_data": In(out_bits + 1),
        })

    def elaborate(self, platform):
        m = Module()
        fraction = self._fraction_bits
        m.submodules.exponent = exponent = Requantizer(value_shape=unsigned(DELTA_BITS),
                                                       result_shape=unsigned(fraction + self._whole_bits))
        # The inputs are registered first: ``delta`` is usually a subtraction of memory outputs, which must
        # not meet the exponent's multipliers in the same cycle.
        m.d.comb += exponent.en.eq(self.en)
        with m.If(self.en):
            m.d.sync += [exponent.value.eq(self.delta), exponent.multiplier.eq(self.multiplier), exponent.shift.eq(self.shift)]

        table = exp_table(fraction, self._out_bits).tolist()
        m.submodules.table = memory = Memory(shape=unsigned(self._out_bits + 1), depth=len(table), init=table)
        write = memory.write_port()
        read = memory.read_port()
        m.d.comb += [write.en.eq(self.table_write), write.addr.eq(self.table_addr), write.data.eq(self.table_data),
                     read.en.eq(self.en), read.addr.eq(exponent.result[:fraction])]
        # the entry is registered before its shift: the memory's output meets no logic
        whole, whole_late = Signal(self._whole_bits), Signal(self._whole_bits)
        entry = Signal.like(read.data)
        with m.If(self.en):
            m.d.sync += [whole.eq(exponent.result[fraction:]), whole_late.eq(whole), entry.eq(read.data),
                         self.e.eq(entry >> whole_late)]
        return m
