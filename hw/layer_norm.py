"""The residual add and the LayerNorm that follows it, ``core.integer.residual_add`` + ``layer_norm``."""

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from core import golden
from core.encoder import NORM_Z_BITS, RESIDUAL_SHIFT, WIDE_BITS
from hw.config import COUNT_BITS, refuse
from hw.integer_sqrt import IntegerSqrt, sqrt_cycles
from hw.rounding_divider import RoundingDivider, divider_latency

#: Width of a residual sum ``r = wide + x · 2^RESIDUAL_SHIFT``: ``|r| < 2^WIDE_BITS``.
SUM_BITS = WIDE_BITS + 1
#: Quotient bits of the shared divider: the mean, ``|μ| < 2^WIDE_BITS``, needs the most (``|z| ≤ 2^z_bits``).
QUOTIENT_BITS = WIDE_BITS
#: Width of a LayerNorm weight γ (the contract allows ``|γ| ≤ MULTIPLIER_MAX``) and bias β (int32).
GAMMA_BITS = golden.MULTIPLIER_BITS + 1
#: Enabled cycles from an entry's row read to its output: the read, the divider, the γ/β read, then
#: multiply, add, shift and saturate.
NORMALIZE_LATENCY = 1 + divider_latency(QUOTIENT_BITS) + 1 + 4


#: Row buffers: a row is ingested while the row before waits for its μ and σ and the one before that is
#: read back.
ROW_BUFFERS = 3
#: Cycles a row's ingest adds to its ``width`` entries: the cycle that starts it, then three while its
#: last square is accumulated and its sums go to the statistics.
INGEST_EXTRA_CYCLES = 1 + 3


def norm_command_layout(max_width: int) -> data.StructLayout:
    """One LayerNorm command: ``rows`` rows of ``width`` entries, γ/β loaded first, output ``shift``."""
    return data.StructLayout({
        "width": unsigned(max_width.bit_length()),
        "rows": unsigned(COUNT_BITS),
        "shift": unsigned(golden.SHIFT_MAX.bit_length()),
    })


def norm_params_layout() -> data.StructLayout:
    """γ and β of one channel."""
    return data.StructLayout({"gamma": signed(GAMMA_BITS), "beta": signed(golden.ACC_BITS)})


def norm_input_layout() -> data.StructLayout:
    """One entry of a row: the branch's wide output and the residual's int8 input of the same channel."""
    return data.StructLayout({"wide": signed(WIDE_BITS), "residual": signed(8)})


def statistics_cycles(max_width: int) -> int:
    """Cycles from a row's sums to its μ and σ at the read-back: the statistics' start, the mean's issue
    and its trip through the divider (and one to take it), two for the variance, the square root's
    hand-over and its bits, one to hand μ and σ over."""
    return 1 + 1 + divider_latency(QUOTIENT_BITS) + 1 + 2 + 1 + sqrt_cycles(_variance_bits(max_width)) + 1


def row_cycles(width: int, max_width: int) -> int:
    """Cycles per row of ``width`` entries when no stream stalls, in the steady state: the ingest's
    ``width + INGEST_EXTRA_CYCLES``, which the statistics of the row before (:func:`statistics_cycles`)
    and the read-back of the row before that (one entry per cycle) overlap, as long as they are not
    longer."""
    ingest = width + INGEST_EXTRA_CYCLES
    if statistics_cycles(max_width) + 2 > ingest:
        raise ValueError(f"rows of {width} entries are shorter than the statistics of a row "
                         f"({statistics_cycles(max_width)} cycles): they set the period, which is not modelled")
    return ingest


def _variance_bits(max_width: int) -> int:
    """``V = Σ (r − μ)² < width · 2^(2·WIDE_BITS)``."""
    return 2 * WIDE_BITS + max_width.bit_length()


class ResidualLayerNorm(wiring.Component):
    """``y = saturate_int8(rounding_shift(z · γ + β, shift))``, ``z = div_round((r − μ) · 2^z_bits, σ)``,
    over rows of ``r = wide + residual · 2^RESIDUAL_SHIFT``; one entry per cycle in and out.

    A command loads the ``width`` channels' γ/β (one ``params`` beat each), then normalizes ``rows`` rows
    of ``width`` entries. Per row: the ingest stores ``r`` in one of three row buffers while summing
    ``S = Σ r`` and ``Q = Σ r²``; the mean ``μ = div_round(S, width)`` goes through the divider; the
    variance follows without a second pass, exactly, as ``V = Q − 2μS + width·μ²`` (μ is an integer);
    ``σ = isqrt(V)`` comes from :class:`~hw.integer_sqrt.IntegerSqrt`; μ and σ are handed to the
    read-back, which reads every entry back, divides ``r − μ`` by ``σ`` (the same
    :class:`~hw.rounding_divider.RoundingDivider`, one entry per cycle, the ingest's means slipped in
    between), scales by γ, offsets by β and requantizes, while the next rows fill the other buffers
    (the statistics of one beside the ingest of the next). σ = 0 (a constant row) gives ``z = 0``, as
    the contract says. Every stage after the row read advances when the output is free
    (``~valid | ready``), so a stalled consumer holds the pipeline and loses nothing.

    Parameters
    ----------
    max_width : int
        Largest row (hidden size); the depth of the row memory and of γ/β.

    Interface attributes
    --------------------
    command : In(stream.Signature(norm_command_layout))
        Taken when idle and the previous command's outputs have all left.
    params : In(stream.Signature(norm_params_layout))
        ``width`` beats after each command, channel 0 first.
    inputs : In(stream.Signature(norm_input_layout))
        ``rows × width`` beats, row by row.
    outputs : Out(stream.Signature(signed(8)))
        The normalized rows in input order.

    A command with ``width`` or ``rows`` 0 is taken and does nothing.

    Throughput: one row per :func:`row_cycles` cycles (``width`` and a constant): :data:`ROW_BUFFERS`
    row buffers, so a row's ingest, the statistics of the row before and the read-back of the one
    before that overlap; a row's mean takes the divider in a cycle the read-back leaves free. Latency
    from a row read to its output: ``NORMALIZE_LATENCY`` enabled cycles.
    """

    def __init__(self, *, max_width: int):
        if not isinstance(max_width, int) or max_width < 1:
            refuse(self, f"max_width must be a positive integer, got {max_width!r}")
        self._max_width = max_width
        super().__init__({
            "command": In(stream.Signature(norm_command_layout(max_width))),
            "params": In(stream.Signature(norm_params_layout())),
            "inputs": In(stream.Signature(norm_input_layout())),
            "outputs": Out(stream.Signature(signed(8))),
        })

    def elaborate(self, platform):
        m = Module()
        n_max = self._max_width
        index_bits = max(1, (n_max - 1).bit_length())
        sum_width = SUM_BITS + n_max.bit_length()
        variance_bits = _variance_bits(n_max)
        z_num_width = SUM_BITS + 1 + NORM_Z_BITS

        # ROW_BUFFERS row buffers: one fills while the one before waits for its μ and σ and the one before
        # that is read back.
        m.submodules.row = row = Memory(shape=signed(SUM_BITS), depth=ROW_BUFFERS << index_bits, init=[])
        m.submodules.channel = channel = Memory(shape=norm_params_layout(), depth=n_max, init=[])
        row_write, row_read = row.write_port(), row.read_port()
        channel_write, channel_read = channel.write_port(), channel.read_port()
        tag = data.StructLayout({"valid": 1, "mean": 1, "index": unsigned(index_bits)})
        m.submodules.divider = divider = RoundingDivider(
            numerator_width=max(sum_width, z_num_width), denominator_width=max(n_max.bit_length(), (variance_bits + 1) // 2),
            quotient_bits=QUOTIENT_BITS, tag_width=tag.size)
        m.submodules.sqrt = sqrt = IntegerSqrt(width=variance_bits)

        width = Signal.like(self.command.payload.width)
        shift = Signal.like(self.command.payload.shift)
        in_rows, out_rows = Signal(COUNT_BITS), Signal(COUNT_BITS)  # rows left to ingest, to read back
        in_count, out_count = Signal(range(n_max + 1)), Signal(range(n_max + 1))
        in_bank, out_bank = Signal(range(ROW_BUFFERS)), Signal(range(ROW_BUFFERS))
        in_flight = Signal(range(n_max + NORMALIZE_LATENCY + 2))
        used = Signal(range(ROW_BUFFERS + 1))  # buffers holding a row: from its ingest to its read-back's end

        def following(bank):
            return Mux(bank == ROW_BUFFERS - 1, 0, bank + 1)

        # The sums of the row being ingested …
        total = Signal(signed(sum_width))  # S
        squares = Signal(unsigned(2 * SUM_BITS + n_max.bit_length()))  # Q
        # … handed to the statistics (μ, then V, then σ) of the row before, while the next row is ingested …
        stats_busy = Signal()
        stats_total, stats_squares = Signal.like(total), Signal.like(squares)
        mean = Signal(signed(QUOTIENT_BITS + 1))
        variance = Signal(signed(variance_bits + 2))
        mean_total, mean_square = Signal(signed(sum_width + QUOTIENT_BITS + 1)), Signal(unsigned(2 * QUOTIENT_BITS))
        width_mean_square = Signal(unsigned(2 * QUOTIENT_BITS + n_max.bit_length()))
        mean_ready = Signal()
        # … handed over (one row's μ and σ wait here) to the read-back, which keeps its own.
        handed, handed_mean, handed_sigma = Signal(), Signal.like(mean), Signal(unsigned((variance_bits + 1) // 2))
        out_active, out_mean, out_sigma = Signal(), Signal.like(mean), Signal.like(handed_sigma)

        # The output pipeline advances when its last stage is empty or being taken.
        en = Signal()
        m.d.comb += en.eq(~self.outputs.valid | self.outputs.ready)

        # Squares of the ingested entries, one stage behind the ingest, accumulated one more behind.
        ingested, ingested_valid = Signal(signed(SUM_BITS)), Signal()
        square, square_valid = Signal(unsigned(2 * SUM_BITS)), Signal()
        m.d.sync += [ingested_valid.eq(0), square_valid.eq(ingested_valid), square.eq(ingested * ingested)]
        with m.If(square_valid):
            m.d.sync += squares.eq(squares + square)

        # Row read → divider input (one stage, enabled with the pipeline). The ingest's mean takes the
        # divider in a cycle with no entry at its input; the read-back holds its reads while it waits.
        want_mean, issue_mean = Signal(), Signal()
        issue_read = Signal()
        read_valid, read_index = Signal(), Signal(index_bits)
        m.d.comb += [issue_read.eq(out_active & ~want_mean), issue_mean.eq(want_mean & ~read_valid),
                     row_read.addr.eq(Cat(out_count[:index_bits], out_bank)), row_read.en.eq(en)]
        with m.If(en):
            m.d.sync += [read_valid.eq(issue_read), read_index.eq(out_count)]
        divider_tag = tag(divider.tag)
        m.d.comb += [
            divider.en.eq(en),
            divider.numerator.eq(Mux(issue_mean, stats_total, (row_read.data - out_mean) << NORM_Z_BITS)),
            divider.denominator.eq(Mux(issue_mean, width, out_sigma)),
            divider_tag.valid.eq(issue_mean | read_valid),
            divider_tag.mean.eq(issue_mean),
            divider_tag.index.eq(read_index),
        ]

        # Divider output: the mean goes to the ingest; an entry reads its channel's γ/β and goes on.
        result_tag = tag(divider.quotient_tag)
        with m.If(en & result_tag.valid & result_tag.mean):
            m.d.sync += [mean.eq(divider.quotient), mean_ready.eq(1)]
        m.d.comb += [channel_read.addr.eq(result_tag.index), channel_read.en.eq(en)]
        z, z_valid = Signal(signed(NORM_Z_BITS + 2)), Signal()
        product, beta, product_valid = Signal(signed(GAMMA_BITS + NORM_Z_BITS + 2)), Signal(signed(golden.ACC_BITS)), Signal()
        rounded, rounded_valid = Signal(signed(golden.SHIFT_MAX + 20)), Signal()
        shifted, shifted_valid = Signal.like(rounded), Signal()
        params = channel_read.data
        with m.If(en):
            half = (Const(1, len(rounded)) << shift) >> 1
            m.d.sync += [
                z.eq(divider.quotient), z_valid.eq(result_tag.valid & ~result_tag.mean),
                product.eq(z * params.gamma), beta.eq(params.beta), product_valid.eq(z_valid),
                rounded.eq(product + beta + half), rounded_valid.eq(product_valid),
                shifted.eq(rounded >> shift), shifted_valid.eq(rounded_valid),
                self.outputs.payload.eq(Mux(shifted > golden.INT8_MAX, golden.INT8_MAX,
                                            Mux(shifted < golden.INT8_MIN, golden.INT8_MIN, shifted))),
                self.outputs.valid.eq(shifted_valid),
            ]
        m.d.sync += in_flight.eq(in_flight + (issue_read & en) - (self.outputs.valid & self.outputs.ready))

        # Read-back: a row whose μ and σ were handed over, one entry per enabled cycle. It takes them on an
        # enabled cycle, when the previous row's last entry (if still at the divider's input) leaves with
        # the old μ and σ.
        take_handed = ~out_active & handed & en
        with m.If(take_handed):
            m.d.sync += [out_active.eq(1), out_mean.eq(handed_mean), out_sigma.eq(handed_sigma), out_count.eq(0),
                         out_bank.eq(following(out_bank))]
        read_back_done = issue_read & en & (out_count == width - 1)  # the row's buffer is free after this read
        with m.If(issue_read & en):
            m.d.sync += out_count.eq(out_count + 1)
            with m.If(out_count == width - 1):
                m.d.sync += [out_active.eq(0), out_rows.eq(out_rows - 1)]
        ingest_starts = Signal()
        m.d.sync += used.eq(used + ingest_starts - read_back_done)

        # Command, parameters and ingest.
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.command.ready.eq(in_flight == 0)
                empty = (self.command.payload.width == 0) | (self.command.payload.rows == 0)
                with m.If(self.command.valid & (in_flight == 0) & ~empty):
                    m.d.sync += [width.eq(self.command.payload.width), in_rows.eq(self.command.payload.rows),
                                 out_rows.eq(self.command.payload.rows), shift.eq(self.command.payload.shift), in_count.eq(0),
                                 in_bank.eq(0), out_bank.eq(ROW_BUFFERS - 1)]
                    m.next = "PARAMS"
            with m.State("PARAMS"):
                m.d.comb += [self.params.ready.eq(1), channel_write.addr.eq(in_count), channel_write.data.eq(self.params.payload)]
                with m.If(self.params.valid):
                    m.d.comb += channel_write.en.eq(1)
                    m.d.sync += in_count.eq(in_count + 1)
                    with m.If(in_count == width - 1):
                        m.next = "ROW"
            with m.State("ROW"):  # a row may fill a buffer once the read-back has left it
                with m.If(in_rows == 0):
                    with m.If((out_rows == 0) & (in_flight == 0)):
                        m.next = "IDLE"
                with m.Elif(used < ROW_BUFFERS):
                    m.d.comb += ingest_starts.eq(1)
                    m.d.sync += [in_count.eq(0), total.eq(0), squares.eq(0)]
                    m.next = "INGEST"
            with m.State("INGEST"):
                r = Signal(signed(SUM_BITS))
                m.d.comb += [self.inputs.ready.eq(1), r.eq(self.inputs.payload.wide + (self.inputs.payload.residual << RESIDUAL_SHIFT)),
                             row_write.addr.eq(Cat(in_count[:index_bits], in_bank)), row_write.data.eq(r)]
                with m.If(self.inputs.valid):
                    m.d.comb += row_write.en.eq(1)
                    m.d.sync += [total.eq(total + r), ingested.eq(r), ingested_valid.eq(1), in_count.eq(in_count + 1)]
                    with m.If(in_count == width - 1):
                        m.next = "SQUARES"
            with m.State("SQUARES"):  # the last square is still being accumulated; then S and Q go to the statistics
                with m.If(~ingested_valid & ~square_valid & ~stats_busy):
                    m.d.sync += [stats_busy.eq(1), stats_total.eq(total), stats_squares.eq(squares),
                                 in_rows.eq(in_rows - 1), in_bank.eq(following(in_bank))]
                    m.next = "ROW"

        # The statistics of one row: μ through the divider, V without a second pass, σ = isqrt(V), handed
        # over to the read-back once it has taken the previous row's.
        with m.FSM():
            with m.State("IDLE"):
                with m.If(stats_busy):
                    m.next = "MEAN"
            with m.State("MEAN"):
                m.d.comb += want_mean.eq(1)
                with m.If(en & issue_mean):
                    m.d.sync += mean_ready.eq(0)
                    m.next = "MEAN_WAIT"
            with m.State("MEAN_WAIT"):
                with m.If(mean_ready):
                    m.d.sync += [mean_total.eq(mean * stats_total), mean_square.eq(mean * mean)]
                    m.next = "VARIANCE_1"
            with m.State("VARIANCE_1"):
                m.d.sync += width_mean_square.eq(width * mean_square)
                m.next = "VARIANCE_2"
            with m.State("VARIANCE_2"):
                m.d.sync += variance.eq(stats_squares - 2 * mean_total + width_mean_square)
                m.next = "ROOT"
            with m.State("ROOT"):
                m.d.comb += [sqrt.value.payload.eq(variance), sqrt.value.valid.eq(1)]
                with m.If(sqrt.value.ready):
                    m.next = "ROOT_WAIT"
            with m.State("ROOT_WAIT"):
                m.d.comb += sqrt.root.ready.eq(~handed)
                with m.If(sqrt.root.valid & ~handed):
                    m.d.sync += [handed.eq(1), handed_mean.eq(mean), handed_sigma.eq(sqrt.root.payload), stats_busy.eq(0)]
                    m.next = "IDLE"
        with m.If(take_handed):
            m.d.sync += handed.eq(0)
        return m
