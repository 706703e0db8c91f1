"""Floor square root, ``core.integer.isqrt``, one result bit per cycle."""

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.config import refuse


def sqrt_cycles(width: int) -> int:
    """Cycles from a value's transfer to its root's ``valid``: one per result bit, one to present it."""
    return (width + 1) // 2 + 1


class IntegerSqrt(wiring.Component):
    """``floor(√x)`` by the binary digit-by-digit method.

    With ``bit`` running over the powers of four from the highest below ``2^width`` down to 1, each cycle
    compares the remainder with ``root + bit``: where it fits, it is subtracted and the bit enters the
    root. Only shifts, one subtraction and one comparison per cycle; LayerNorm needs one root per row,
    so a sequential unit suffices.

    Parameters
    ----------
    width : int
        Width of the unsigned input.

    Interface attributes
    --------------------
    value : In(stream.Signature(unsigned(width)))
    root : Out(stream.Signature(unsigned(⌈width/2⌉)))
        ``floor(√value)``, :func:`sqrt_cycles` after the value is taken; the next value is taken once
        the root has been.
    """

    def __init__(self, *, width: int):
        if not isinstance(width, int) or width < 1:
            refuse(self, f"width must be a positive integer, got {width!r}")
        self._width = width
        self._half = (width + 1) // 2
        super().__init__({
            "value": In(stream.Signature(unsigned(width))),
            "root": Out(stream.Signature(unsigned(self._half))),
        })

    def elaborate(self, platform):
        m = Module()
        even = 2 * self._half
        remainder = Signal(unsigned(even))
        root = Signal(unsigned(even))  # during the loop: root · 2^(bits left), as the method keeps it
        bit = Signal(unsigned(even))
        trial = Signal(unsigned(even + 1))
        m.d.comb += trial.eq(root + bit)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.value.ready.eq(1)
                with m.If(self.value.valid):
                    m.d.sync += [remainder.eq(self.value.payload), root.eq(0), bit.eq(1 << (even - 2))]
                    m.next = "ROOT"
            with m.State("ROOT"):
                fits = remainder >= trial
                m.d.sync += [
                    remainder.eq(Mux(fits, remainder - trial, remainder)),
                    root.eq(Mux(fits, (root >> 1) + bit, root >> 1)),
                    bit.eq(bit >> 2),
                ]
                with m.If(bit == 1):
                    m.d.sync += [self.root.payload.eq(Mux(fits, (root >> 1) + bit, root >> 1)), self.root.valid.eq(1)]
                    m.next = "DONE"
            with m.State("DONE"):
                with m.If(self.root.ready):
                    m.d.sync += self.root.valid.eq(0)
                    m.next = "IDLE"
        return m
