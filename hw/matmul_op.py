"""MATMUL: a linear layer over every token of the sequence, its weights read from DRAM once."""

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib.memory import Memory

from hw.byte_records import ByteRecords
from hw.commands import ErrorCause, Op, command_layout
from hw.config import COUNT_BITS, AcceleratorConfig, refuse
from hw.dram_formats import CHANNEL
from hw.layouts import Opcode, channel_params_layout, weight_layout
from hw.op_ports import WORD_BYTES, OpUnit
from hw.pattern_matmul import PatternMatmulEngine
from hw.table_activation import TABLE_ENTRIES, TableActivation

#: Bytes of one channel record (bias, multiplier, shift, pad) of a linear region.
CHANNEL_BYTES = CHANNEL.itemsize


class MatmulOp(OpUnit):
    """Runs a MATMUL command on a :class:`~hw.pattern_matmul.PatternMatmulEngine`.

    The linear region (``hw.dram_formats``) streams in once through the reader and is cut into records
    (:class:`~hw.byte_records.ByteRecords`): the pattern table goes to the engine as LOAD_PATTERN
    commands; then, ``chunk_rows`` block rows at a time, each row's channel parameters and weight beats
    fill one of two banks. While the next chunk fills the other bank, the engine RUNs every token of the
    sequence over this one: the activations stream from scratch (one word, one block column of one
    token, per cycle), the bank's beats are replayed for every tile of ``lanes`` tokens. The outputs go
    to scratch (int8) or wide memory (wide and raw modes) as they come, a block of ``k`` channels per
    beat, channels past ``out_features`` masked. With ``activate``, the 256-byte table at ``table`` is read
    first into a :class:`~hw.table_activation.TableActivation`, and the int8 outputs go through it (one
    cycle later) on their way to scratch: the GELU after the FFN's first linear, the pooler's tanh.

    Refused at the start: misaligned operands, a region whose size is not the shape's or a table on
    wide outputs (``BAD_SIZE``, ``hw.commands.matmul_misaligned``, ``matmul_activation_bad``), a shape beyond the engine or an operand past its memory
    (``OUT_OF_RANGE``); while running, a block whose pattern id is beyond the pool (``OUT_OF_RANGE``).

    The ports and parameters of :class:`hw.op_ports.OpUnit`.
    """

    def __init__(self, config: AcceleratorConfig):
        pc = config.engine.pattern
        if pc.block_size != WORD_BYTES or (pc.block_size ** 2) % pc.kept_per_block:
            refuse(self, f"MatmulOp needs {WORD_BYTES}×{WORD_BYTES} blocks whose {WORD_BYTES ** 2} positions are whole "
                         f"weight beats of kept_per_block; got {pc.block_size}×{pc.block_size} keeping {pc.kept_per_block}")
        super().__init__(config)

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        ecfg = cfg.engine
        k, n, pool = ecfg.pattern.block_size, ecfg.pattern.kept_per_block, ecfg.pattern.pool_size
        lanes = ecfg.lanes
        dense_beats = k * k // n
        chunk = cfg.chunk_rows
        bank_depth = 1 << (chunk * ecfg.max_in_blocks * dense_beats - 1).bit_length()
        param_depth = 1 << max(0, (chunk - 1).bit_length())
        m.submodules.engine = engine = PatternMatmulEngine(ecfg)
        m.submodules.activation = activation = TableActivation(elements=k)
        m.submodules.records = records = ByteRecords(word_bytes=WORD_BYTES, max_record=max(1 + n, CHANNEL_BYTES))
        m.submodules.weight_bank = weight_bank = Memory(shape=weight_layout(ecfg), depth=2 * bank_depth, init=[])
        m.submodules.param_bank = param_bank = Memory(shape=channel_params_layout(ecfg), depth=2 * param_depth, init=[])
        weight_w, weight_r = weight_bank.write_port(), weight_bank.read_port()
        param_w, param_r = param_bank.write_port(), param_bank.read_port()
        c = command_layout(Op.MATMUL)(self.command)

        # --- the shape, checked and held -------------------------------------------------------------
        in_blocks = Signal(COUNT_BITS)
        out_blocks = Signal(COUNT_BITS)
        beats_per_block = Signal(range(dense_beats + 1))
        row_beats = Signal(32)  # weight beats per block row
        tiles = Signal(COUNT_BITS)
        last_tile_tokens = Signal(range(lanes + 1))
        m.d.comb += [in_blocks.eq(c.in_features >> 2), out_blocks.eq((c.out_features + k - 1) >> 2),
                     beats_per_block.eq(Mux(c.dense, dense_beats, 1)), row_beats.eq(in_blocks * beats_per_block),
                     tiles.eq((c.tokens + lanes - 1) // lanes), last_tile_tokens.eq(c.tokens - (tiles - 1) * lanes)]
        region_bytes = Signal(32)
        block_bytes = Mux(c.dense, k * k, 1 + n)
        m.d.comb += region_bytes.eq(Mux(c.dense, 0, c.pool_size * n) + out_blocks * (k * CHANNEL_BYTES + in_blocks * block_bytes))
        misaligned = ((c.in_features[:2] != 0) | (c.src[:2] != 0) | (c.dst[:2] != 0)
                      | ((c.tokens > 1) & (c.out_features[:2] != 0)) | (c.activate & (c.wide | c.raw)))
        out_limit = Mux(c.wide | c.raw, cfg.wide_words, cfg.scratch_bytes)
        out_of_range = ((c.tokens == 0) | (c.out_features == 0) | (c.in_features == 0) | (in_blocks > ecfg.max_in_blocks)
                        | (~c.dense & ((c.pool_size == 0) | (c.pool_size > pool)))
                        | (c.src + c.tokens * c.in_features > cfg.scratch_bytes)
                        | (c.dst + c.tokens * c.out_features > out_limit))

        # --- fetch: the activation table (with activate), then the region, cut into records, into the banks
        wired = self.reader.data
        loading_table = Signal()  # the reader's words are the table's, four entries each
        entry = Signal(range(TABLE_ENTRIES))
        m.d.comb += [records.words.payload.eq(wired.payload), records.words.valid.eq(wired.valid & ~loading_table),
                     activation.table.payload.eq(wired.payload.word_select(entry[:2], 8)),
                     activation.table.valid.eq(wired.valid & loading_table),
                     wired.ready.eq(Mux(loading_table, activation.table.ready & (entry[:2] == WORD_BYTES - 1), records.words.ready)),
                     self.reader.request.payload.address.eq(Mux(loading_table, c.table, c.weights)),
                     self.reader.request.payload.words.eq(Mux(loading_table, TABLE_ENTRIES // WORD_BYTES,
                                                              (c.weight_bytes + WORD_BYTES - 1) >> 2))]
        with m.If(activation.table.valid & activation.table.ready):
            m.d.sync += entry.eq(entry + 1)
        record = records.records.payload
        bank_full = Signal(2)
        fill_set, fill_bank = Signal(), Signal()
        drain_clear, drain_bank = Signal(), Signal()
        for b in range(2):
            with m.If(fill_set & (fill_bank == b)):
                m.d.sync += bank_full[b].eq(1)
            with m.Elif(drain_clear & (drain_bank == b)):
                m.d.sync += bank_full[b].eq(0)

        pattern_id = Signal(16)
        fetch_rows_left = Signal(COUNT_BITS)  # block rows not yet fetched, from this chunk on
        fetch_bank = Signal()
        fetch_row = Signal(range(chunk + 1))
        fetch_chunk_rows = Signal(range(chunk + 1))
        channel = Signal(range(k))
        params = Signal(channel_params_layout(ecfg))
        beat_in_row = Signal(32)
        fetch_address = Signal(range(bank_depth))
        owns_cmd = Signal()
        m.d.comb += fetch_chunk_rows.eq(Mux(fetch_rows_left < chunk, fetch_rows_left, chunk))
        table_cmd = engine.cmd.payload
        m.d.comb += [weight_w.addr.eq(Cat(fetch_address, fetch_bank)), param_w.addr.eq(Cat(fetch_row[:len(param_w.addr) - 1], fetch_bank)),
                     param_w.data.eq(params)]
        beat = weight_w.data
        m.d.comb += [beat.pattern.eq(Mux(c.dense, 0, record[0]))]
        for i in range(n):
            m.d.comb += beat.values[i].eq(Mux(c.dense, record[i], record[i + 1]).as_signed())

        # --- compute: one RUN per chunk, three feeders, and the output writer ------------------------
        compute_rows_left = Signal(COUNT_BITS)
        compute_bank = Signal()
        compute_rows = Signal(range(chunk + 1))
        m.d.comb += compute_rows.eq(Mux(compute_rows_left < chunk, compute_rows_left, chunk))
        act_i, act_total, act_valid = Signal(32), Signal(32), Signal()
        wgt_i, wgt_tile, wgt_valid, wgt_done = Signal(32), Signal(COUNT_BITS), Signal(), Signal()
        par_i, par_tile, par_valid, par_done = Signal(range(chunk + 1)), Signal(COUNT_BITS), Signal(), Signal()
        tile_beats = Signal(32)
        m.d.comb += [act_total.eq(c.tokens * in_blocks), tile_beats.eq(compute_rows * row_beats)]
        act_en = ~act_valid | engine.activations.ready
        wgt_en = ~wgt_valid | engine.weights.ready
        par_en = ~par_valid | engine.params.ready
        streaming = Signal()
        m.d.comb += [
            self.scratch.raddr.eq((c.src >> 2) + act_i), engine.activations.payload.eq(self.scratch.rdata),
            engine.activations.valid.eq(act_valid),
            weight_r.addr.eq(Cat(wgt_i[:len(weight_r.addr) - 1], compute_bank)), weight_r.en.eq(wgt_en),
            engine.weights.payload.eq(weight_r.data), engine.weights.valid.eq(wgt_valid),
            param_r.addr.eq(Cat(par_i[:len(param_r.addr) - 1], compute_bank)), param_r.en.eq(par_en),
            engine.params.payload.eq(param_r.data), engine.params.valid.eq(par_valid),
        ]
        with m.If(streaming & act_en):
            m.d.comb += self.scratch.ren.eq(1)
            m.d.sync += act_valid.eq(act_i != act_total)
            with m.If(act_i != act_total):
                m.d.sync += act_i.eq(act_i + 1)
        with m.If(streaming & wgt_en):
            m.d.sync += wgt_valid.eq(~wgt_done)
            with m.If(~wgt_done):
                m.d.sync += wgt_i.eq(wgt_i + 1)
                with m.If(wgt_i == tile_beats - 1):
                    m.d.sync += [wgt_i.eq(0), wgt_tile.eq(wgt_tile + 1)]
                    with m.If(wgt_tile == tiles - 1):
                        m.d.sync += wgt_done.eq(1)
        with m.If(streaming & par_en):
            m.d.sync += par_valid.eq(~par_done)
            with m.If(~par_done):
                m.d.sync += par_i.eq(par_i + 1)
                with m.If(par_i == compute_rows - 1):
                    m.d.sync += [par_i.eq(0), par_tile.eq(par_tile + 1)]
                    with m.If(par_tile == tiles - 1):
                        m.d.sync += par_done.eq(1)

        # outputs: per tile, per block row of the chunk, per token of the tile
        out_rows_left = Signal(COUNT_BITS)
        out_block_base = Signal(COUNT_BITS)  # first block row of the chunk being written
        out_rows = Signal(range(chunk + 1))
        out_tile, out_row, out_lane = Signal(COUNT_BITS), Signal(range(chunk + 1)), Signal(range(lanes + 1))
        out_count, out_total = Signal(32), Signal(32)
        m.d.comb += [out_rows.eq(Mux(out_rows_left < chunk, out_rows_left, chunk)), out_total.eq(c.tokens * out_blocks)]
        token = Signal(COUNT_BITS)
        column = Signal(COUNT_BITS + 2)
        address = Signal(32)
        m.d.comb += [token.eq(out_tile * lanes + out_lane), column.eq((out_block_base + out_row) << 2),
                     address.eq(c.dst + token * c.out_features + column)]
        mask = Cat(column + i < c.out_features for i in range(k))
        values = engine.outputs.payload.values
        # through the table: the address and mask of a beat follow it by the table's one cycle
        mapped_address, mapped_mask = Signal(32), Signal(k)
        m.d.comb += [activation.inputs.payload.eq(Cat(values[i][:8] for i in range(k))),
                     activation.inputs.valid.eq(engine.outputs.valid & c.activate), activation.outputs.ready.eq(1)]
        with m.If(activation.inputs.valid & activation.inputs.ready):
            m.d.sync += [mapped_address.eq(address), mapped_mask.eq(mask)]
        m.d.comb += [
            engine.outputs.ready.eq(~c.activate | activation.inputs.ready),
            self.scratch.waddr.eq(Mux(c.activate, mapped_address, address) >> 2),
            self.scratch.wdata.eq(Mux(c.activate, activation.outputs.payload, Cat(values[i][:8] for i in range(k)))),
            self.wide.waddr.eq(address >> 2), self.wide.wdata.eq(Cat(values[i] for i in range(k))),
        ]
        with m.If(activation.outputs.valid):
            m.d.comb += self.scratch.wen.eq(mapped_mask)
        tile_tokens = Mux(out_tile == tiles - 1, last_tile_tokens, lanes)
        with m.If(engine.outputs.valid & engine.outputs.ready):
            with m.If(~c.activate):
                m.d.comb += [self.scratch.wen.eq(Mux(c.wide | c.raw, 0, mask)), self.wide.wen.eq(Mux(c.wide | c.raw, mask, 0))]
            m.d.sync += [out_count.eq(out_count + 1), out_lane.eq(out_lane + 1)]
            with m.If(out_lane == tile_tokens - 1):
                m.d.sync += [out_lane.eq(0), out_row.eq(out_row + 1)]
                with m.If(out_row == out_rows - 1):
                    m.d.sync += [out_row.eq(0), out_tile.eq(out_tile + 1)]
                    with m.If(out_tile == tiles - 1):
                        m.d.sync += [out_tile.eq(0), out_block_base.eq(out_block_base + chunk),
                                     out_rows_left.eq(out_rows_left - out_rows)]

        failed = Signal()
        with m.FSM(name="fetch"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [self.cause.eq(ErrorCause.NONE), pattern_id.eq(0), fetch_rows_left.eq(out_blocks), fetch_bank.eq(0),
                                 compute_rows_left.eq(out_blocks), compute_bank.eq(0), out_rows_left.eq(out_blocks),
                                 out_block_base.eq(0), out_tile.eq(0), out_row.eq(0), out_lane.eq(0), out_count.eq(0),
                                 failed.eq(0)]
                    with m.If(misaligned | (c.weight_bytes != region_bytes)):
                        m.d.sync += self.cause.eq(ErrorCause.BAD_SIZE)
                    with m.Elif(out_of_range):
                        m.d.sync += self.cause.eq(ErrorCause.OUT_OF_RANGE)
                    with m.Elif(c.activate):
                        m.d.sync += [self.busy.eq(1), entry.eq(0)]
                        m.next = "ACTIVATION"
                    with m.Else():
                        m.d.sync += self.busy.eq(1)
                        m.next = "REQUEST"
            with m.State("ACTIVATION"):  # the table unit loads the table, then maps every output beat
                m.d.comb += [activation.command.valid.eq(1), activation.command.payload.load.eq(1),
                             activation.command.payload.beats.eq(out_total)]
                with m.If(activation.command.ready):
                    m.next = "ACTIVATION_REQUEST"
            with m.State("ACTIVATION_REQUEST"):
                m.d.comb += [loading_table.eq(1), self.reader.request.valid.eq(1)]
                with m.If(self.reader.request.ready):
                    m.next = "ACTIVATION_LOAD"
            with m.State("ACTIVATION_LOAD"):
                m.d.comb += loading_table.eq(1)
                with m.If(activation.table.valid & activation.table.ready & (entry == TABLE_ENTRIES - 1)):
                    m.next = "REQUEST"
            with m.State("REQUEST"):
                m.d.comb += self.reader.request.valid.eq(1)
                with m.If(self.reader.request.ready):
                    m.next = "TABLE"
            with m.State("TABLE"):
                with m.If(c.dense):
                    m.next = "WAIT_BANK"
                with m.Else():
                    m.d.comb += [owns_cmd.eq(1), records.size.eq(n), table_cmd.op.eq(Opcode.LOAD_PATTERN),
                                 table_cmd.pattern_id.eq(pattern_id), engine.cmd.valid.eq(records.records.valid),
                                 records.records.ready.eq(engine.cmd.ready)]
                    for i in range(n):
                        m.d.comb += [table_cmd.positions[i].row.eq(record[i] >> 2), table_cmd.positions[i].col.eq(record[i][:2])]
                    with m.If(records.records.valid & engine.cmd.ready):
                        m.d.sync += pattern_id.eq(pattern_id + 1)
                        with m.If(pattern_id == c.pool_size - 1):
                            m.next = "WAIT_BANK"
            with m.State("WAIT_BANK"):
                with m.If(~bank_full.bit_select(fetch_bank, 1)):
                    m.d.sync += [fetch_row.eq(0), channel.eq(0), beat_in_row.eq(0), fetch_address.eq(0)]
                    m.next = "CHANNELS"
            with m.State("CHANNELS"):
                m.d.comb += [records.size.eq(CHANNEL_BYTES), records.records.ready.eq(1)]
                with m.If(records.records.valid):
                    m.d.sync += [params.bias[channel].eq(Cat(record[0], record[1], record[2], record[3])),
                                 params.multiplier[channel].eq(Cat(record[4], record[5])),
                                 params.shift[channel].eq(record[6]), channel.eq(channel + 1)]
                    with m.If(channel == k - 1):
                        m.next = "PARAMS"
            with m.State("PARAMS"):
                m.d.comb += param_w.en.eq(1)
                m.next = "BLOCKS"
            with m.State("BLOCKS"):
                m.d.comb += [records.size.eq(Mux(c.dense, n, 1 + n)), records.records.ready.eq(1)]
                with m.If(records.records.valid):
                    with m.If(~c.dense & (record[0] >= c.pool_size)):
                        m.d.sync += [self.cause.eq(ErrorCause.OUT_OF_RANGE), failed.eq(1), self.busy.eq(0)]
                        m.next = "IDLE"
                    with m.Else():
                        m.d.comb += weight_w.en.eq(1)
                        m.d.sync += [fetch_address.eq(fetch_address + 1), beat_in_row.eq(beat_in_row + 1)]
                        with m.If(beat_in_row == row_beats - 1):
                            m.d.sync += [beat_in_row.eq(0), fetch_row.eq(fetch_row + 1), channel.eq(0)]
                            m.next = "CHANNELS"
                            with m.If(fetch_row == fetch_chunk_rows - 1):
                                m.d.comb += [fill_set.eq(1), fill_bank.eq(fetch_bank)]
                                m.d.sync += [fetch_bank.eq(~fetch_bank), fetch_rows_left.eq(fetch_rows_left - fetch_chunk_rows)]
                                m.next = "NEXT_CHUNK"
            with m.State("NEXT_CHUNK"):
                m.next = "WAIT_BANK"
                with m.If(fetch_rows_left == 0):
                    m.next = "FETCHED"
            with m.State("FETCHED"):
                m.d.comb += records.clear.eq(1)
                with m.If((out_count == out_total) & ~engine.busy & ~activation.outputs.valid):
                    m.d.sync += self.busy.eq(0)
                    m.next = "IDLE"

        with m.FSM(name="compute"):
            with m.State("IDLE"):
                with m.If(self.busy & ~failed & (compute_rows_left != 0) & bank_full.bit_select(compute_bank, 1)):
                    m.next = "RUN"
            with m.State("RUN"):
                run = engine.cmd.payload
                with m.If(~owns_cmd):
                    m.d.comb += [engine.cmd.valid.eq(1), run.op.eq(Opcode.RUN), run.dense.eq(c.dense), run.raw.eq(c.raw),
                                 run.wide.eq(c.wide & ~c.raw), run.tokens.eq(c.tokens), run.in_blocks.eq(in_blocks),
                                 run.out_blocks.eq(compute_rows)]
                    with m.If(engine.cmd.ready):
                        m.d.sync += [act_i.eq(0), act_valid.eq(0), wgt_i.eq(0), wgt_tile.eq(0), wgt_valid.eq(0), wgt_done.eq(0),
                                     par_i.eq(0), par_tile.eq(0), par_valid.eq(0), par_done.eq(0)]
                        m.next = "STREAM"
            with m.State("STREAM"):
                m.d.comb += streaming.eq(1)
                with m.If((act_i == act_total) & ~act_valid & wgt_done & ~wgt_valid & par_done & ~par_valid):
                    m.d.comb += [drain_clear.eq(1), drain_bank.eq(compute_bank)]
                    m.d.sync += [compute_bank.eq(~compute_bank), compute_rows_left.eq(compute_rows_left - compute_rows)]
                    m.next = "IDLE"
        with m.If(engine.error & self.busy):
            m.d.sync += [self.cause.eq(ErrorCause.OUT_OF_RANGE), self.busy.eq(0), failed.eq(1)]
        return m
