"""One softmax entry divided by its row's sum through the row's reciprocal, ``core.integer.scale_by_reciprocal``."""

from amaranth import Const, Module, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from core.integer import RECIPROCAL_BITS
from hw.config import refuse

#: Cycles from ``x``/``r``/``ell`` to ``y`` while ``en`` stays high: two input registers, the multiply,
#: the product's second register, the constant scale, the rounding half, the shift.
SCALE_LATENCY = 7


class ReciprocalScale(wiring.Component):
    """``y = (x · r · scale [+ 2^(s−1)]) >> s`` with ``s = ℓ − 1 + RECIPROCAL_BITS − fraction_bits``.

    ``x · r`` is one ``x_bits × 18`` multiply (an 18×18 DSP); the constant ``scale`` (``255`` for the
    probabilities, 1 for the selection's dense probabilities) is a shift and a subtraction.

    Parameters
    ----------
    x_bits : int
        Width of the unsigned entry ``x`` (an exponential: ``EXP_OUT_BITS + 1``).
    ell_bits : int
        Width of ``ell`` (:func:`hw.row_reciprocal.reciprocal_layout`).
    fraction_bits : int
        Fractional bits of ``y`` (16 for the selection, 0 for the probabilities).
    scale : int
        ``2^a`` or ``2^a − 1`` (255 = ``PROB_ONE``).
    rounded : bool
        Round half up (the probabilities) instead of floor (the selection).

    Interface attributes
    --------------------
    en : In(1)
        Advance the pipeline by one stage.
    x : In(unsigned(x_bits))
    r : In(unsigned(RECIPROCAL_BITS + 1)), ell : In(unsigned(ell_bits))
        The row's reciprocal.
    y : Out(unsigned(fraction_bits + scale.bit_length() + 1))
        ``SCALE_LATENCY`` (7) enabled cycles after ``x``; at most ``scale · 2^fraction_bits`` when
        ``x`` is at most the row's sum.
    """

    def __init__(self, *, x_bits: int, ell_bits: int, fraction_bits: int, scale: int = 1, rounded: bool = False):
        if scale < 1 or (scale & (scale + 1) and scale & (scale - 1)):
            refuse(self, f"scale must be 2^a or 2^a − 1, got {scale}")
        if not 0 <= fraction_bits < RECIPROCAL_BITS:
            refuse(self, f"fraction_bits must be in [0, {RECIPROCAL_BITS - 1}], got {fraction_bits}")
        self._x_bits, self._ell_bits = x_bits, ell_bits
        self._fraction_bits, self._scale, self._rounded = fraction_bits, scale, rounded
        super().__init__({
            "en": In(1),
            "x": In(unsigned(x_bits)),
            "r": In(unsigned(RECIPROCAL_BITS + 1)),
            "ell": In(unsigned(ell_bits)),
            "y": Out(unsigned(fraction_bits + scale.bit_length() + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        scale = self._scale
        product = Signal(self._x_bits + RECIPROCAL_BITS + 1)
        product_out = Signal.like(product)  # the product's second register
        scaled = Signal(len(product) + scale.bit_length())
        rounded = Signal(len(scaled) + 1)
        # s = ℓ − 1 + RECIPROCAL_BITS − fraction_bits ≥ 0 (for a zero row sum r = 0, and the shift of a
        # zero product does not matter).
        bias = RECIPROCAL_BITS - 1 - self._fraction_bits
        shifts = [Signal(range((1 << self._ell_bits) + bias), name=f"shift_{i}") for i in range(5)]
        if scale > 1 and scale & (scale + 1) == 0:  # 2^a − 1
            times_scale = (product_out << scale.bit_length()) - product_out
        else:  # 2^a
            times_scale = product_out << (scale.bit_length() - 1)
        half = (Const(1, len(rounded)) << shifts[3]) >> 1 if self._rounded else 0
        # The inputs are registered twice: they come from memories and row-indexed multiplexers, and
        # the second register and the product's first feed nothing but the multiplier and the product's
        # second, so the placer can put them beside the multiplier block; the routes to and from the
        # logic get cycles of their own.
        # ``keep``: every instance keeps its own copies, although the instances of a softmax register equal
        # inputs (the synthesis flow keeps flip-flops that drive a ``keep`` wire; see ``bench/synth.py``).
        own = dict(reset_less=True, attrs={"keep": 1})
        x_in, r_in, ell_in = (Signal.like(port, name=f"{port.name}_in", **own) for port in (self.x, self.r, self.ell))
        x, r = (Signal.like(port, name=f"{port.name}_held", **own) for port in (self.x, self.r))
        with m.If(self.en):
            m.d.sync += [
                x_in.eq(self.x), r_in.eq(self.r), ell_in.eq(self.ell),
                x.eq(x_in), r.eq(r_in), shifts[0].eq(ell_in + bias),
                product.eq(x * r), shifts[1].eq(shifts[0]),
                product_out.eq(product), shifts[2].eq(shifts[1]),
                scaled.eq(times_scale), shifts[3].eq(shifts[2]),
                rounded.eq(scaled + half), shifts[4].eq(shifts[3]),
                self.y.eq(rounded >> shifts[4]),
            ]
        return m
