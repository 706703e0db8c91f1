"""Pipelined rounded division, ``core.integer.div_round``: one quotient per enabled cycle."""

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.config import refuse


def divider_latency(quotient_bits: int) -> int:
    """Enabled cycles from ``numerator``/``denominator`` to ``quotient``: one to fold the rounding and
    the sign in, one per quotient bit, one to restore the sign."""
    return quotient_bits + 2


class RoundingDivider(wiring.Component):
    """``div_round(num, den) = floor((2·num + den) / (2·den))`` for ``den > 0``, 0 for ``den = 0``.

    With ``a = 2·num + den`` and ``b = 2·den``: ``floor(a / b)`` is ``floor(a / b)`` for ``a ≥ 0`` and
    ``−floor((−a + b − 1) / b)`` for ``a < 0``, so the stages in between divide unsigned numbers.
    Restoring division finds one quotient bit per stage, most significant first: stage ``i`` subtracts
    ``b · 2^(Q−1−i)`` where it fits. Every stage advances when ``en`` is high and holds otherwise. A
    ``tag`` travels alongside each division (the caller's index, or what the result is for).

    The quotient's magnitude must stay below ``2^quotient_bits`` (the caller's bound, from its ranges);
    larger quotients are outside this component's contract.

    Parameters
    ----------
    numerator_width : int
        Width of the signed ``numerator``.
    denominator_width : int
        Width of the unsigned ``denominator``.
    quotient_bits : int
        ``Q``: quotient bits computed, one pipeline stage each.
    tag_width : int
        Width of ``tag``.

    Interface attributes
    --------------------
    en : In(1)
        Advance the pipeline by one stage.
    numerator : In(signed(numerator_width))
    denominator : In(unsigned(denominator_width))
    tag : In(tag_width)
    quotient : Out(signed(quotient_bits + 1))
        Rounded half up; :func:`divider_latency` enabled cycles after its operands.
    quotient_tag : Out(tag_width)
        The tag that went in with it.

    Latency: :func:`divider_latency` (``quotient_bits + 2``) enabled cycles.
    """

    def __init__(self, *, numerator_width: int, denominator_width: int, quotient_bits: int, tag_width: int = 1):
        for name, value in (("numerator_width", numerator_width), ("denominator_width", denominator_width),
                            ("quotient_bits", quotient_bits), ("tag_width", tag_width)):
            if not isinstance(value, int) or value < 1:
                refuse(self, f"{name} must be a positive integer, got {value!r}")
        self._num_width, self._den_width, self._q = numerator_width, denominator_width, quotient_bits
        super().__init__({
            "en": In(1),
            "numerator": In(signed(numerator_width)),
            "denominator": In(unsigned(denominator_width)),
            "tag": In(tag_width),
            "quotient": Out(signed(quotient_bits + 1)),
            "quotient_tag": Out(tag_width),
        })

    def elaborate(self, platform):
        m = Module()
        q_bits = self._q
        # |a| ≤ 2·|num| + den, and the negative branch adds b − 1 more.
        width = max(self._num_width, self._den_width) + 3
        tag_width = len(self.tag)

        def stage(name):
            return {
                "rest": Signal(unsigned(width), name=f"{name}_rest"),
                "divisor": Signal(unsigned(self._den_width + 1), name=f"{name}_divisor"),
                "quotient": Signal(unsigned(q_bits), name=f"{name}_quotient"),
                "negative": Signal(name=f"{name}_negative"),
                "zero": Signal(name=f"{name}_zero"),
                "tag": Signal(tag_width, name=f"{name}_tag"),
            }

        a = Signal(signed(width))
        b = Signal(unsigned(self._den_width + 1))
        m.d.comb += [a.eq(2 * self.numerator + self.denominator), b.eq(self.denominator << 1)]
        first = stage("fold")
        with m.If(self.en):
            m.d.sync += [
                first["rest"].eq(Mux(a < 0, -a + b - 1, a)),
                first["divisor"].eq(b),
                first["quotient"].eq(0),
                first["negative"].eq(a < 0),
                first["zero"].eq(self.denominator == 0),
                first["tag"].eq(self.tag),
            ]
        previous = first
        for i in range(q_bits):
            bit = q_bits - 1 - i
            nxt = stage(f"bit{bit}")
            step = Signal(unsigned(self._den_width + 1 + bit), name=f"bit{bit}_step")
            m.d.comb += step.eq(previous["divisor"] << bit)
            fits = previous["rest"] >= step
            with m.If(self.en):
                m.d.sync += [
                    nxt["rest"].eq(Mux(fits, previous["rest"] - step, previous["rest"])),
                    nxt["divisor"].eq(previous["divisor"]),
                    nxt["quotient"].eq(previous["quotient"] | (fits << bit)),
                    nxt["negative"].eq(previous["negative"]),
                    nxt["zero"].eq(previous["zero"]),
                    nxt["tag"].eq(previous["tag"]),
                ]
            previous = nxt
        with m.If(self.en):
            magnitude = previous["quotient"]
            m.d.sync += [
                self.quotient.eq(Mux(previous["zero"], 0, Mux(previous["negative"], -magnitude, magnitude))),
                self.quotient_tag.eq(previous["tag"]),
            ]
        return m
