"""The engine's output stage: a finished block row, one token per beat, with bias and requantization."""

from amaranth import Array, Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from core import golden
from core.encoder import WIDE_BITS
from hw.config import EngineConfig
from hw.layouts import channel_params_layout, output_layout
from hw.mac_array import row_layout
from hw.requantizer import REQUANTIZER_LATENCY, Requantizer

#: Cycles from a lane's issue to its beat at ``outputs``: the bias stage, the requantizer, the output
#: register.
OUTPUT_LATENCY = 1 + REQUANTIZER_LATENCY + 1


class OutputStage(wiring.Component):
    """Emits a finished row lane by lane: ``requantize(sums + bias)``, or ``sums + bias`` in raw mode.

    One lane is issued per cycle while a row and its channel parameters are offered. Every stage
    advances together whenever the output register is free or being taken, so the pipeline stalls as
    one block and ``outputs.valid`` never depends on ``outputs.ready``. In the cycle after its last lane
    is issued, the row and its parameters are taken (``rows.ready``, ``params.ready``).

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
        One beat per token of the row, ``OUTPUT_LATENCY`` (6) cycles after the lane is issued.
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
        advance = ~self.outputs.valid | self.outputs.ready
        issue = self.rows.valid & self.params.valid & advance & (lane < row.lanes)
        selected = Array(row.sums[i] for i in range(lanes))[lane]
        with_bias = Signal(data.ArrayLayout(signed(golden.ACC_BITS), k))
        multiplier = Signal.like(params.multiplier)
        shift = Signal.like(params.shift)
        depth = REQUANTIZER_LATENCY + 1  # the with-bias stage, then the requantizer's stages
        valid_line = [Signal(name=f"valid_{i}") for i in range(depth)]
        raw_line = [Signal(name=f"raw_{i}") for i in range(depth)]
        wide_line = [Signal(name=f"wide_{i}") for i in range(depth)]
        value_line = [with_bias] + [Signal.like(with_bias, name=f"value_{i}") for i in range(1, depth)]
        with m.If(advance):
            m.d.sync += [valid_line[0].eq(issue), raw_line[0].eq(row.raw), wide_line[0].eq(row.wide),
                         multiplier.eq(params.multiplier), shift.eq(params.shift)]
            for r in range(k):
                m.d.sync += with_bias[r].eq(selected[r] + params.bias[r])  # 32-bit wrap, as the contract says
            for i in range(1, depth):
                m.d.sync += [valid_line[i].eq(valid_line[i - 1]), raw_line[i].eq(raw_line[i - 1]), wide_line[i].eq(wide_line[i - 1]),
                             value_line[i].eq(value_line[i - 1])]
            m.d.sync += self.outputs.valid.eq(valid_line[-1])
        with m.If(issue):
            m.d.sync += lane.eq(lane + 1)
        for r in range(k):
            # Saturating to WIDE_BITS and then to int8 is saturating to int8: one requantizer serves both.
            m.submodules[f"requantizer_{r}"] = requantizer = Requantizer(result_shape=signed(WIDE_BITS))
            m.d.comb += [
                requantizer.en.eq(advance),
                requantizer.value.eq(with_bias[r]),
                requantizer.multiplier.eq(multiplier[r]),
                requantizer.shift.eq(shift[r]),
            ]
            with m.If(advance):
                result = requantizer.result
                narrow = Mux(result > golden.INT8_MAX, golden.INT8_MAX, Mux(result < golden.INT8_MIN, golden.INT8_MIN, result))
                m.d.sync += self.outputs.payload.values[r].eq(Mux(raw_line[-1], value_line[-1][r], Mux(wide_line[-1], result, narrow)))
        # Every lane of the row is in the pipeline: take the row and its parameters.
        with m.If(self.rows.valid & self.params.valid & (lane == row.lanes)):
            m.d.comb += [self.rows.ready.eq(1), self.params.ready.eq(1)]
            m.d.sync += lane.eq(0)

        m.d.comb += self.busy.eq(Cat(*valid_line).any() | self.outputs.valid)
        return m
