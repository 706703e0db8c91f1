"""Attention-map pattern selection for one k×k block, ``core.integer.select_patterns``."""

from amaranth import Array, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from core.pattern import PatternConfig
from hw.config import refuse


def select_interval(pool_size: int, patterns_per_cycle: int) -> int:
    """Cycles between blocks when they come back to back and choices are taken at once: the next block is
    taken in the cycle of the previous block's last comparison."""
    return -(-pool_size // patterns_per_cycle) + 1


def choice_latency(pool_size: int, patterns_per_cycle: int) -> int:
    """Cycles from a block's transfer to its choice's ``valid``: one cycle per group of masses, the last
    group's comparison, then the registered choice."""
    return -(-pool_size // patterns_per_cycle) + 2


class PatternSelect(wiring.Component):
    """The pool pattern with the largest kept sum over one block, ties to the lower id (seed 000 §3.4).

    The pool's masks (``k²`` bits each, bit ``row · k + col``) sit in registers, written through
    ``mask_write``. A block's ``k²`` values are taken, then ``patterns_per_cycle`` masses are formed per
    cycle (a masked adder tree each, registered) and compared in the next cycle: the group's largest by
    a tree whose ties go to the lower id, then against the best so far, which only a strictly larger
    mass replaces. Groups come in id order, so every tie goes to the lower id. Ids at or beyond
    ``patterns`` (the loaded pool's size) are skipped. The next block is taken in the cycle of the last
    comparison, so blocks pass at one per :func:`select_interval` cycles; that comparison waits while the
    previous choice is still offered.

    Parameters
    ----------
    pattern : PatternConfig
        ``block_size`` k and ``pool_size`` P (the mask registers).
    value_bits : int
        Width of a block value (17 for the 16-bit dense probabilities, which reach 2^16).
    patterns_per_cycle : int
        Masses formed per cycle, 1 … P: a block's choice is valid ⌈P/G⌉ + 2 cycles after its transfer.

    Interface attributes
    --------------------
    blocks : In(stream.Signature(ArrayLayout(unsigned(value_bits), k²)))
        One block of the map, row-major.
    choice : Out(stream.Signature(StructLayout({"id": unsigned(id_bits), "mask": k²})))
        Its pattern id (0 when ``patterns`` is 0) and that pattern's mask; the next block is taken once
        the choice has been.
    patterns : In(range(P + 1))
        Patterns in the loaded pool (held).
    mask_write : In(1), mask_id : In(id_bits), mask : In(k²)
        Write one pool mask (between blocks).
    """

    def __init__(self, pattern: PatternConfig, *, value_bits: int, patterns_per_cycle: int):
        if not 1 <= patterns_per_cycle <= pattern.pool_size:
            refuse(self, f"patterns_per_cycle must be in [1, pool_size={pattern.pool_size}], got {patterns_per_cycle}")
        self._pattern, self._value_bits, self._group = pattern, value_bits, patterns_per_cycle
        id_bits = max(1, (pattern.pool_size - 1).bit_length())
        super().__init__({
            "blocks": In(stream.Signature(data.ArrayLayout(unsigned(value_bits), pattern.positions))),
            "choice": Out(stream.Signature(data.StructLayout({"id": unsigned(id_bits), "mask": pattern.positions}))),
            "patterns": In(range(pattern.pool_size + 1)),
            "mask_write": In(1),
            "mask_id": In(id_bits),
            "mask": In(pattern.positions),
        })

    def elaborate(self, platform):
        m = Module()
        positions, pool, group = self._pattern.positions, self._pattern.pool_size, self._group
        groups = -(-pool // group)
        masks = Array(Signal(positions, name=f"mask_{i}") for i in range(groups * group))  # padded to whole groups
        with m.If(self.mask_write):
            m.d.sync += masks[self.mask_id].eq(self.mask)

        mass_shape = unsigned(self._value_bits + (positions - 1).bit_length())
        entry = data.StructLayout({"mass": mass_shape, "id": unsigned(len(self.choice.payload.id)), "valid": 1})
        values = Signal.like(self.blocks.payload)
        index = Signal(range(groups + 1))  # group whose masses form this cycle
        formed = Signal(data.ArrayLayout(entry, group))  # the previous cycle's group
        best = Signal(entry)
        busy = Signal()
        comparing = Signal()  # formed holds a group to compare

        # The last group's comparison makes the choice; it waits while the previous choice is still offered.
        # The next block is taken in that same cycle (its masses form from the next cycle on).
        finishing = comparing & (index == groups)
        can_finish = ~self.choice.valid | self.choice.ready
        stalled = finishing & ~can_finish
        m.d.comb += self.blocks.ready.eq(~busy | (finishing & can_finish))

        forming = busy & (index < groups)
        with m.If(~stalled):
            m.d.sync += comparing.eq(forming)
        with m.If(forming):
            m.d.sync += index.eq(index + 1)
            for g in range(group):
                pattern_id = index * group + g
                terms = [Mux(masks[pattern_id][pos], values[pos], 0) for pos in range(positions)]
                m.d.sync += [formed[g].mass.eq(_sum(terms)), formed[g].id.eq(pattern_id),
                             formed[g].valid.eq(pattern_id < self.patterns)]

        # The group's largest (ties to the left, the lower id), then against the best so far.
        contenders = [formed[g] for g in range(group)]
        while len(contenders) > 1:
            pairs = []
            for i in range(0, len(contenders), 2):
                if i + 1 == len(contenders):
                    pairs.append(contenders[i])
                    continue
                left, right = contenders[i], contenders[i + 1]
                takes_right = right.valid & (~left.valid | (right.mass > left.mass))
                pairs.append(Mux(takes_right, right.as_value(), left.as_value()))
            contenders = [entry(c) if not isinstance(c, data.View) else c for c in pairs]
        winner = contenders[0]
        better = winner.valid & (~best.valid | (winner.mass > best.mass))
        final = entry(Mux(better, winner.as_value(), best.as_value()))
        with m.If(self.choice.valid & self.choice.ready):
            m.d.sync += self.choice.valid.eq(0)
        with m.If(comparing & ~stalled):
            m.d.sync += best.eq(final)
            with m.If(finishing):  # the last group: the block's choice
                m.d.sync += [busy.eq(0), self.choice.payload.id.eq(final.id), self.choice.payload.mask.eq(masks[final.id]),
                             self.choice.valid.eq(1)]
        with m.If(self.blocks.valid & self.blocks.ready):  # after the choice: a new block starts afresh
            m.d.sync += [values.eq(self.blocks.payload), index.eq(0), busy.eq(1), best.valid.eq(0)]
        return m


def _sum(terms):
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
    return terms[0]
