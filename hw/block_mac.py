"""One lane's multiply-accumulate of a pattern block against one token's activations."""

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hw.config import EngineConfig
from hw.layouts import pattern_layout


#: Cycles from a block at the inputs to its row sums at ``sums``.
MAC_LATENCY = 4


def row_sum_shape(cfg: EngineConfig):
    """Signed width of a block's row sum: an int8 × weight product summed over n terms."""
    return signed(8 + cfg.weight_bits + (cfg.pattern.kept_per_block - 1).bit_length())


class PatternBlockMAC(wiring.Component):
    """Multiplies the ``n`` kept weights of a block by the activations they select, and sums per row.

    Every multiplier works on a kept weight: multiplier ``j`` takes ``values[j]`` and
    ``x[positions[j].col]`` and its product adds into row ``positions[j].row``.

    Parameters
    ----------
    config : EngineConfig

    Interface attributes
    --------------------
    x : In(ArrayLayout(signed(8), k))
        Activations of one token for the block's ``k`` input columns.
    values : In(ArrayLayout(signed(weight_bits), n))
        Kept weights in pattern order.
    positions : In(pattern_layout)
        Row and column (inside the block) of each kept weight.
    sums : Out(ArrayLayout(row_sum_shape, k))
        ``sums[r] = Σ_{j: row_j = r} values[j] · x[col_j]``.
    take : In(1, init=1)
        The block at the inputs is this lane's: its weights are registered (otherwise they are held and
        the sums are of no use). The MAC array drives it per lane (a valid block, a lane with a token),
        so that each lane keeps weight registers of its own: identical registers would be merged by
        synthesis into one that drives every lane's multipliers across the array.

    Latency: ``MAC_LATENCY`` (4) cycles: the selected activations, the products, the masked first
    levels of each row's adder tree, then its remaining levels are registered, so no stage has more
    than one multiplexer, one multiplier or half an adder tree. No stall input: a new block can enter
    every cycle.
    """

    def __init__(self, config: EngineConfig):
        self._config = config
        k, n = config.pattern.block_size, config.pattern.kept_per_block
        super().__init__({
            "x": In(data.ArrayLayout(signed(8), k)),
            "values": In(data.ArrayLayout(signed(config.weight_bits), n)),
            "positions": In(pattern_layout(config)),
            "sums": Out(data.ArrayLayout(row_sum_shape(config), k)),
            "take": In(1, init=1),
        })

    def elaborate(self, platform):
        m = Module()
        k, n = self._config.pattern.block_size, self._config.pattern.kept_per_block
        selected = [Signal(signed(8), name=f"selected_{j}") for j in range(n)]
        weights = [Signal(signed(self._config.weight_bits), name=f"weight_{j}") for j in range(n)]
        products = [Signal(signed(8 + self._config.weight_bits), name=f"product_{j}") for j in range(n)]
        selected_rows = [Signal.like(self.positions[j].row, name=f"selected_row_{j}") for j in range(n)]
        rows = [Signal.like(self.positions[j].row, name=f"row_{j}") for j in range(n)]
        with m.If(self.take):
            m.d.sync += [weights[j].eq(self.values[j]) for j in range(n)]
        for j in range(n):
            m.d.sync += [
                selected[j].eq(self.x[self.positions[j].col]),
                selected_rows[j].eq(self.positions[j].row),
                products[j].eq(weights[j] * selected[j]),
                rows[j].eq(selected_rows[j]),
            ]
        # Each row's adder tree over the n masked products, in two registered parts: the mask and the
        # first half of the levels, then the rest.
        levels = max(1, (n - 1).bit_length())
        for r in range(k):
            terms = _adder_levels([Mux(rows[j] == r, products[j], 0) for j in range(n)], levels // 2)
            partial = [Signal(self.sums[r].shape(), name=f"partial_{r}_{i}") for i in range(len(terms))]
            m.d.sync += [p.eq(t) for p, t in zip(partial, terms)]
            m.d.sync += self.sums[r].eq(_adder_levels(partial, levels)[0])
        return m


def _adder_levels(terms, levels):
    """``levels`` levels of a pairwise adder tree over ``terms`` (fewer if one term is left)."""
    for _ in range(levels):
        if len(terms) == 1:
            break
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
    return terms
