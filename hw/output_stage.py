"""The engine's output stage: a finished block row, one token per beat, with bias and requantization."""

from amaranth import Array, Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from core import golden
from core.encoder import WIDE_BITS
from hw.config import EngineConfig
from hw.layouts import channel_params_layout, output_layout
from hw.mac_array import row_layout
from hw.requantizer import REQUANTIZER_LATENCY, Requantizer

#: Cycles from a lane's issue to its beat at ``outputs``: the lane's selection, the bias add, the
#: requantizer, the write into the output queue.
OUTPUT_LATENCY = 2 + REQUANTIZER_LATENCY + 1
#: Beats issued and not yet taken at ``outputs`` (in the pipeline or in its output queue), at most: one
#: more than the pipeline holds, so that an unstalled stage issues a lane every cycle.
OUTPUT_CREDITS = OUTPUT_LATENCY + 1


class OutputStage(wiring.Component):
    """Emits a finished row lane by lane: ``requantize(sums + bias)``, or ``sums + bias`` in raw mode.

    One lane is issued per cycle while a row and its channel parameters are offered and fewer than
    :data:`OUTPUT_CREDITS` beats are issued and not yet taken. The pipeline never stalls: every beat
    runs through it into an output queue of :data:`OUTPUT_CREDITS` entries, which ``outputs`` reads.
    A slow consumer therefore stops the issue of new lanes, never the pipeline's registers, so its
    ``ready`` drives no enable across the stage (a stall enable fanned out to every register of the
    stage was its longest path). The issued lane's sums are registered with the row's channel
    parameters and the bias is added in the next stage, so the lane multiplexer does not share a cycle
    with an adder. In the cycle after its last lane is issued, the row and its parameters are taken
    (``rows.ready``, ``params.ready``).

    Parameters
    ----------
    config : EngineConfig

    Interface attributes
    --------------------
    rows : In(stream.Signature(row_layout))
        Finished block rows from the MAC array.
    params : In(stream.Signature(channel_params_layout))
        Bias, multiplier and shift of the row's ``k`` channels, one beat per row.
    outputs : Out(stream.Signature(output_layout))
        One beat per token of the row, offered ``OUTPUT_LATENCY`` (8) cycles after the lane is issued,
        or once the beats before it are taken.
    busy : Out(1)
        A beat is in the pipeline or offered.
    """

    def __init__(self, config: EngineConfig):
        self._config = config
        super().__init__({
            "rows": In(stream.Signature(row_layout(config))),
            "params": In(stream.Signature(channel_params_layout(config))),
            "outputs": Out(stream.Signature(output_layout(config))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        k, lanes = cfg.pattern.block_size, cfg.lanes
        row, params = self.rows.payload, self.params.payload

        lane = Signal.like(row.lanes)
        outstanding = Signal(range(OUTPUT_CREDITS + 1))  # beats issued and not yet taken at ``outputs``
        issue = self.rows.valid & self.params.valid & (outstanding < OUTPUT_CREDITS) & (lane < row.lanes)
        taken = self.outputs.valid & self.outputs.ready
        m.d.sync += outstanding.eq(outstanding + issue - taken)
        with m.If(issue):
            m.d.sync += lane.eq(lane + 1)
        # Every lane of the row is in the pipeline: take the row and its parameters.
        with m.If(self.rows.valid & self.params.valid & (lane == row.lanes)):
            m.d.comb += [self.rows.ready.eq(1), self.params.ready.eq(1)]
            m.d.sync += lane.eq(0)

        # The selection stage, the with-bias stage, then the requantizer's stages.
        depth = 2 + REQUANTIZER_LATENCY
        valid_line = [Signal(name=f"valid_{i}") for i in range(depth)]
        raw_line = [Signal(name=f"raw_{i}") for i in range(depth)]
        wide_line = [Signal(name=f"wide_{i}") for i in range(depth)]
        selected = Signal(data.ArrayLayout(signed(golden.ACC_BITS), k))
        bias = Signal.like(params.bias)
        with_bias = Signal(data.ArrayLayout(signed(golden.ACC_BITS), k))
        value_line = [selected, with_bias] + [Signal.like(with_bias, name=f"value_{i}") for i in range(2, depth)]
        # The row's multipliers and shifts travel with the lane's sums into the requantizers.
        selected_multiplier, multiplier = Signal.like(params.multiplier), Signal.like(params.multiplier)
        selected_shift, shift = Signal.like(params.shift), Signal.like(params.shift)
        m.d.sync += [valid_line[0].eq(issue), raw_line[0].eq(row.raw), wide_line[0].eq(row.wide),
                     selected.eq(Array(row.sums[i] for i in range(lanes))[lane]), bias.eq(params.bias),
                     selected_multiplier.eq(params.multiplier), selected_shift.eq(params.shift),
                     multiplier.eq(selected_multiplier), shift.eq(selected_shift)]
        for r in range(k):
            m.d.sync += with_bias[r].eq(selected[r] + bias[r])  # 32-bit wrap, as the contract says
        for i in range(1, depth):
            m.d.sync += [valid_line[i].eq(valid_line[i - 1]), raw_line[i].eq(raw_line[i - 1]), wide_line[i].eq(wide_line[i - 1])]
        for i in range(2, depth):
            m.d.sync += value_line[i].eq(value_line[i - 1])

        m.submodules.queue = queue = SyncFIFO(width=self.outputs.payload.shape().size, depth=OUTPUT_CREDITS)
        beat = Signal(self.outputs.payload.shape())
        for r in range(k):
            # Saturating to WIDE_BITS and then to int8 is saturating to int8: one requantizer serves both.
            m.submodules[f"requantizer_{r}"] = requantizer = Requantizer(result_shape=signed(WIDE_BITS))
            m.d.comb += [
                requantizer.en.eq(1),
                requantizer.value.eq(with_bias[r]),
                requantizer.multiplier.eq(multiplier[r]),
                requantizer.shift.eq(shift[r]),
            ]
            result = requantizer.result
            narrow = Mux(result > golden.INT8_MAX, golden.INT8_MAX, Mux(result < golden.INT8_MIN, golden.INT8_MIN, result))
            m.d.comb += beat.values[r].eq(Mux(raw_line[-1], value_line[-1][r], Mux(wide_line[-1], result, narrow)))
        # The credits keep the queue from filling: a beat leaving the pipeline always has a place.
        m.d.comb += [
            queue.w_en.eq(valid_line[-1]), queue.w_data.eq(beat),
            self.outputs.valid.eq(queue.r_rdy), self.outputs.payload.eq(queue.r_data), queue.r_en.eq(self.outputs.ready),
        ]

        m.d.comb += self.busy.eq(Cat(*valid_line).any() | self.outputs.valid)
        return m
