"""The per-row reciprocal of the softmax normalization, ``core.integer.row_reciprocal``, by long division."""

from amaranth import Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from core.integer import RECIPROCAL_BITS
from hw.config import refuse


def reciprocal_layout(total_bits: int) -> data.StructLayout:
    """``r`` (``RECIPROCAL_BITS + 1`` bits) and ``ell = bit_length(total)``."""
    return data.StructLayout({"r": unsigned(RECIPROCAL_BITS + 1), "ell": unsigned(total_bits.bit_length())})


def reciprocal_cycles(total: int) -> int:
    """Cycles from a ``total`` beat's transfer to its result's ``valid``: the total registered, its
    leading zeros, the normalizing shift, then one per quotient bit (the last two not for a zero total)."""
    return 2 if total == 0 else 4 + RECIPROCAL_BITS


class RowReciprocal(wiring.Component):
    """``r = floor(2^(ℓ−1+RECIPROCAL_BITS) / total)`` and ``ℓ = bit_length(total)``; ``r = 0`` for 0.

    The total is first normalized to ``D = total · 2^(W−ℓ)`` (its top bit at ``W − 1``), which leaves the
    quotient unchanged: ``r = floor(2^(W−1+RECIPROCAL_BITS) / D)``; the leading zeros and the shift take
    a cycle each. Restoring long division then finds one quotient bit per cycle, most significant first,
    from the remainder ``2^(W−1)``. One row's division (:func:`reciprocal_cycles`) overlaps the
    streaming of the row's entries elsewhere.

    Parameters
    ----------
    total_bits : int
        ``W``, the width of a row sum.

    Interface attributes
    --------------------
    total : In(stream.Signature(unsigned(total_bits)))
        A row sum.
    reciprocal : Out(stream.Signature(reciprocal_layout))
        Its reciprocal, :func:`reciprocal_cycles` after the total is taken; the next total is taken once
        the result has been.
    """

    def __init__(self, *, total_bits: int):
        if total_bits < 1:
            refuse(self, f"total_bits must be positive, got {total_bits}")
        self._total_bits = total_bits
        super().__init__({
            "total": In(stream.Signature(unsigned(total_bits))),
            "reciprocal": Out(stream.Signature(reciprocal_layout(total_bits))),
        })

    def elaborate(self, platform):
        m = Module()
        width = self._total_bits
        held = Signal(width)  # the total being divided
        lead = Signal(range(width + 1))  # leading zeros of the held total: width − ell
        found = Signal.like(lead)
        m.d.comb += found.eq(width)
        for b in range(width):  # the highest set bit wins
            with m.If(held[b]):
                m.d.comb += found.eq(width - 1 - b)
        divisor = Signal(width)
        remainder = Signal(width + 1)
        quotient = Signal.like(self.reciprocal.payload.r)
        bit = Signal(range(RECIPROCAL_BITS + 1))
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.total.ready.eq(1)
                with m.If(self.total.valid):
                    m.d.sync += held.eq(self.total.payload)
                    m.next = "LEAD"
            with m.State("LEAD"):
                m.d.sync += [lead.eq(found), self.reciprocal.payload.ell.eq(width - found)]
                with m.If(held == 0):
                    m.d.sync += [self.reciprocal.payload.r.eq(0), self.reciprocal.valid.eq(1)]
                    m.next = "DONE"
                with m.Else():
                    m.next = "SHIFT"
            with m.State("SHIFT"):
                m.d.sync += [divisor.eq(held << lead), remainder.eq(1 << (width - 1)), quotient.eq(0),
                             bit.eq(RECIPROCAL_BITS)]
                m.next = "DIVIDE"
            with m.State("DIVIDE"):
                fits = remainder >= divisor
                rest = Signal.like(remainder)
                m.d.comb += rest.eq(remainder - (divisor & fits.replicate(width)))
                m.d.sync += [remainder.eq(rest << 1), quotient.eq((quotient << 1) | fits), bit.eq(bit - 1)]
                with m.If(bit == 0):
                    m.d.sync += [self.reciprocal.payload.r.eq((quotient << 1) | fits), self.reciprocal.valid.eq(1)]
                    m.next = "DONE"
            with m.State("DONE"):
                with m.If(self.reciprocal.ready):
                    m.d.sync += self.reciprocal.valid.eq(0)
                    m.next = "IDLE"
        return m
