"""Attention-map pattern selection for one k×k block, ``core.integer.select_patterns``."""

import operator

from amaranth import Array, Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from core.pattern import PatternConfig
from hw.config import refuse
from hw.trees import tree, tree_levels

#: Cycles from a group's issue to its masses' first adder stage: the group's masks, picked from the
#: pool's registers, and the block's values are registered together first.
ISSUE_LATENCY = 1
#: Levels of the masses' adder trees between two registers.
ADD_LEVELS_PER_STAGE = 2
#: Levels of the group's comparison tree between two registers (a comparison and the selection
#: behind it fill a cycle).
COMPARE_LEVELS_PER_STAGE = 1
#: Cycles from a block's choice of id to its ``choice``: the chosen pattern's mask is read from the pool's
#: registers by id (the masks do not travel with the masses and comparisons).
MASK_LATENCY = 1


def mass_stages(positions: int) -> int:
    """Registered stages of a pattern's mass: the masked ``positions``-term adder tree,
    :data:`ADD_LEVELS_PER_STAGE` levels a stage (at least one: the masked terms)."""
    return max(1, -(-tree_levels(positions) // ADD_LEVELS_PER_STAGE))


def compare_stages(patterns_per_cycle: int) -> int:
    """Registered stages of the comparison tree over one group's masses, :data:`COMPARE_LEVELS_PER_STAGE`
    levels a stage."""
    return -(-tree_levels(patterns_per_cycle) // COMPARE_LEVELS_PER_STAGE)


def select_interval(pool_size: int, patterns_per_cycle: int) -> int:
    """Cycles between blocks when they come back to back and choices are taken at once: one per group of
    masses (the next block is taken in the cycle its predecessor's last group is issued)."""
    return -(-pool_size // patterns_per_cycle)


def choice_latency(pattern: PatternConfig, patterns_per_cycle: int) -> int:
    """Cycles from a block's transfer to its choice's ``valid``: its groups issued one a cycle, the last
    group's issue register, mass and comparison stages, the comparison stages over the block's group
    winners, the chosen id's register, then the chosen mask (:data:`MASK_LATENCY`)."""
    groups = select_interval(pattern.pool_size, patterns_per_cycle)
    return (groups + ISSUE_LATENCY + mass_stages(pattern.positions) + compare_stages(patterns_per_cycle)
            + compare_stages(groups) + 1 + MASK_LATENCY)


class PatternSelect(wiring.Component):
    """The pool pattern with the largest kept sum over one block, ties to the lower id (seed 000 §3.4).

    The pool's masks (``k²`` bits each, bit ``row · k + col``) sit in registers, written through
    ``mask_write``. A block's ``k²`` values are taken, then its patterns are issued in groups of
    ``patterns_per_cycle``, one group a cycle, in id order, into a pipeline: the group's masks and the
    block's values registered (:data:`ISSUE_LATENCY`), each pattern's mass (a masked adder tree,
    :func:`mass_stages` registered stages), the group's largest (a comparison tree whose ties go to the
    lower id, :func:`compare_stages` stages); the block's group winners are held until its last group's
    arrives, then compared by a second such tree (no comparison waits on its own result, so nothing
    limits the clock to one comparison and a selection in a loop); then the chosen id's mask, read
    from the registers (:data:`MASK_LATENCY`). Groups come in id order, so every tie goes to the
    lower id. Ids at or beyond ``patterns`` (the loaded pool's size) are skipped. The next block is taken
    in the cycle its predecessor's last group is issued, so blocks pass at one per :func:`select_interval`
    cycles. The pipeline never holds: a choice is valid for one cycle and its consumer takes it then
    (``choice`` is always ready), so no stall signal reaches the pipeline's registers.

    Parameters
    ----------
    pattern : PatternConfig
        ``block_size`` k and ``pool_size`` P (the mask registers).
    value_bits : int
        Width of a block value (17 for the 16-bit dense probabilities, which reach 2^16).
    patterns_per_cycle : int
        Masses issued per cycle, G = 1 … P: a block's choice is valid :func:`choice_latency` cycles after
        its transfer.

    Interface attributes
    --------------------
    blocks : In(stream.Signature(ArrayLayout(unsigned(value_bits), k²)))
        One block of the map, row-major.
    choice : Out(stream.Signature(StructLayout({"id": unsigned(id_bits), "mask": k²}), always_ready=True))
        Its pattern id and that pattern's mask (id 0 and mask 0's bits when ``patterns`` is 0).
    patterns : In(range(P + 1))
        Patterns in the loaded pool (held).
    mask_write : In(1), mask_id : In(id_bits), mask : In(k²)
        Write one pool mask (while no block is in the pipeline); the write is registered, so the mask
        holds from the second cycle after.
    """

    def __init__(self, pattern: PatternConfig, *, value_bits: int, patterns_per_cycle: int):
        if not 1 <= patterns_per_cycle <= pattern.pool_size:
            refuse(self, f"patterns_per_cycle must be in [1, pool_size={pattern.pool_size}], got {patterns_per_cycle}")
        self._pattern, self._value_bits, self._group = pattern, value_bits, patterns_per_cycle
        id_bits = max(1, (pattern.pool_size - 1).bit_length())
        super().__init__({
            "blocks": In(stream.Signature(data.ArrayLayout(unsigned(value_bits), pattern.positions))),
            "choice": Out(stream.Signature(data.StructLayout({"id": unsigned(id_bits), "mask": pattern.positions}),
                                           always_ready=True)),
            "patterns": In(range(pattern.pool_size + 1)),
            "mask_write": In(1),
            "mask_id": In(id_bits),
            "mask": In(pattern.positions),
        })

    def elaborate(self, platform):
        m = Module()
        positions, pool, group = self._pattern.positions, self._pattern.pool_size, self._group
        groups = select_interval(pool, group)
        masks = [Signal(positions, name=f"mask_{i}") for i in range(groups * group)]  # padded to whole groups
        written = Signal(data.StructLayout({"en": 1, "id": len(self.mask_id), "mask": positions}))
        m.d.sync += [written.en.eq(self.mask_write), written.id.eq(self.mask_id), written.mask.eq(self.mask)]
        with m.If(written.en):
            m.d.sync += Array(masks)[written.id].eq(written.mask)

        mass_shape = unsigned(self._value_bits + (positions - 1).bit_length())
        id_bits = len(self.choice.payload.id)
        entry = data.StructLayout({"mass": mass_shape, "id": unsigned(id_bits), "valid": 1})
        carry = data.StructLayout({"id": unsigned(id_bits), "valid": 1})  # a pattern beside its mass
        control = data.StructLayout({"valid": 1, "last": 1})  # a group in flight

        def stage(name, value, shape):
            register = Signal(shape, name=name)
            m.d.sync += register.eq(value)
            return register

        # Issue: the block's groups, one a cycle; the next block is taken with the last group.
        values = Signal.like(self.blocks.payload)
        index = Signal(range(groups))  # group issued this cycle
        busy = Signal()
        last_group = index == groups - 1
        issuing = busy
        m.d.comb += self.blocks.ready.eq(~busy | last_group)
        with m.If(issuing):
            m.d.sync += index.eq(index + 1)
            with m.If(last_group):
                m.d.sync += busy.eq(0)
        with m.If(self.blocks.valid & self.blocks.ready):
            m.d.sync += [values.eq(self.blocks.payload), index.eq(0), busy.eq(1)]

        # The group's masks and the block's values, registered at issue (ISSUE_LATENCY).
        flight = stage("issued", Cat(busy, last_group), control)
        issued_values = stage("issued_values", values, values.shape())
        carried = []
        for g in range(group):
            pattern_id = index * group + g
            mask = Array(masks[i * group + g] for i in range(groups))[index]
            carried.append(stage(f"pattern_{g}_issued", Cat(pattern_id[:id_bits], pattern_id < self.patterns, mask),
                                 data.StructLayout({"id": unsigned(id_bits), "valid": 1, "mask": positions})))
        # Masses: the masked terms, then the adder tree, ADD_LEVELS_PER_STAGE levels a stage.
        flight = stage("mass_flight_0", flight, control)
        partials = []
        for g, c in enumerate(carried):
            terms = [Mux(c.mask[pos], issued_values[pos], 0) for pos in range(positions)]
            partials.append([stage(f"mass_{g}_0_{j}", t, mass_shape)
                             for j, t in enumerate(tree(terms, operator.add, ADD_LEVELS_PER_STAGE))])
        carried = [stage(f"pattern_{g}_0", Cat(c.id, c.valid), carry) for g, c in enumerate(carried)]
        for s in range(1, mass_stages(positions)):
            flight = stage(f"mass_flight_{s}", flight, control)
            partials = [[stage(f"mass_{g}_{s}_{j}", t, mass_shape)
                         for j, t in enumerate(tree(p, operator.add, ADD_LEVELS_PER_STAGE))]
                        for g, p in enumerate(partials)]
            carried = [stage(f"pattern_{g}_{s}", c, c.shape()) for g, c in enumerate(carried)]
        contenders = []
        for g, (p, c) in enumerate(zip(partials, carried)):
            formed = Signal(entry, name=f"formed_{g}")
            m.d.comb += [formed.mass.eq(p[0]), formed.id.eq(c.id), formed.valid.eq(c.valid)]
            contenders.append(formed)

        # The group's largest (ties to the left, the lower id), COMPARE_LEVELS_PER_STAGE comparisons a stage.
        def larger(left, right):
            takes_right = right.valid & (~left.valid | (right.mass > left.mass))
            return entry(Mux(takes_right, right.as_value(), left.as_value()))

        for s in range(compare_stages(group)):
            flight = stage(f"compare_flight_{s}", flight, control)
            contenders = [stage(f"contender_{s}_{j}", c, entry)
                          for j, c in enumerate(tree(contenders, larger, COMPARE_LEVELS_PER_STAGE))]
        winner, = contenders

        # The block's group winners in id order: the earlier ones shift through registers until the last
        # group's winner arrives, then a comparison tree over all of them (ties to the lower id again).
        held = [Signal(entry, name=f"held_{i}") for i in range(groups - 1)]
        if held:
            with m.If(flight.valid):
                m.d.sync += Cat(*held).eq(Cat(*held[1:], winner))
        winners, done = held + [winner], flight.valid & flight.last
        for s in range(compare_stages(groups)):
            done = stage(f"block_flight_{s}", done, 1)
            winners = [stage(f"block_contender_{s}_{j}", c, entry)
                       for j, c in enumerate(tree(winners, larger, COMPARE_LEVELS_PER_STAGE))]
        final, = winners
        chosen = Signal(carry)  # the block's choice, before its mask (id 0 when no pattern is valid)
        m.d.sync += [chosen.valid.eq(done), chosen.id.eq(Mux(final.valid, final.id, 0))]
        m.d.sync += [self.choice.valid.eq(chosen.valid), self.choice.payload.id.eq(chosen.id),
                     self.choice.payload.mask.eq(Array(masks)[chosen.id])]
        return m
