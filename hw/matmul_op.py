"""MATMUL: a linear layer over every token of the sequence, its weights read from DRAM once."""

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib.memory import Memory

from hw.byte_records import ByteRecords
from hw.commands import ErrorCause, Op, command_layout, matmul_tokens_beyond_engine
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
    fill one of two banks. While the next chunk fills the other bank, the engine runs every token of the
    sequence over this one (a *pass*): the activations stream from scratch (one word, one block column
    of one token, per cycle), the bank's beats are replayed for every tile of ``lanes`` tokens. A pass
    covers the tokens rounded up to whole tiles (the padding tokens stream as zeros; their outputs are
    dropped), so the full passes chain into one engine RUN and the engine loads each pass's first tile
    while the previous pass's last tile computes; a shorter last pass is a RUN of its own. The outputs go
    to scratch (int8) or wide memory (wide and raw modes) as they come, a block of ``k`` channels per
    beat, channels past ``out_features`` masked. With ``activate``, the 256-byte table at ``table`` is read
    first into a :class:`~hw.table_activation.TableActivation`, and the int8 outputs go through it (one
    cycle later) on their way to scratch: the GELU after the FFN's first linear, the pooler's tanh.

    Refused at the start: misaligned operands, a region whose size is not the shape's or a table on
    wide outputs (``BAD_SIZE``, ``hw.commands.matmul_misaligned``, ``matmul_activation_bad``); a shape
    beyond the engine, tokens whose whole tiles exceed a RUN (``matmul_tokens_beyond_engine``) or an
    operand past its memory (``OUT_OF_RANGE``); while running, a block whose pattern id is beyond the
    pool (``OUT_OF_RANGE``).

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
        chunk_bits = chunk.bit_length() - 1  # chunk_rows is a power of two
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
        m.d.comb += [in_blocks.eq(c.in_features >> 2), out_blocks.eq((c.out_features + k - 1) >> 2),
                     beats_per_block.eq(Mux(c.dense, dense_beats, 1)), row_beats.eq(in_blocks * beats_per_block),
                     tiles.eq((c.tokens + lanes - 1) // lanes)]
        region_bytes = Signal(32)
        block_bytes = Mux(c.dense, k * k, 1 + n)
        m.d.comb += region_bytes.eq(Mux(c.dense, 0, c.pool_size * n) + out_blocks * (k * CHANNEL_BYTES + in_blocks * block_bytes))
        misaligned = ((c.in_features[:2] != 0) | (c.src[:2] != 0) | (c.dst[:2] != 0)
                      | ((c.tokens > 1) & (c.out_features[:2] != 0)) | (c.activate & (c.wide | c.raw)))
        out_limit = Mux(c.wide | c.raw, cfg.wide_words, cfg.scratch_bytes)
        out_of_range = ((c.tokens == 0) | matmul_tokens_beyond_engine(c.tokens, lanes) | (c.out_features == 0) | (c.in_features == 0) | (in_blocks > ecfg.max_in_blocks)
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
        fill_set = Signal()  # a bank is filled with the next pass
        fetched, released = Signal(COUNT_BITS), Signal(COUNT_BITS)  # passes put in a bank, passes written out

        pattern_id = Signal(16)
        fetch_rows_left = Signal(COUNT_BITS)  # block rows not yet fetched, from this chunk on
        fetch_row = Signal(range(chunk + 1))
        fetch_chunk_rows = Signal(range(chunk + 1))
        channel = Signal(range(k))
        params = Signal(channel_params_layout(ecfg))
        beat_in_row = Signal(32)
        fetch_address = Signal(range(bank_depth))
        owns_cmd = Signal()
        m.d.comb += fetch_chunk_rows.eq(Mux(fetch_rows_left < chunk, fetch_rows_left, chunk))
        table_cmd = engine.cmd.payload
        m.d.comb += [weight_w.addr.eq(Cat(fetch_address, fetched[0])), param_w.addr.eq(Cat(fetch_row[:len(param_w.addr) - 1], fetched[0])),
                     param_w.data.eq(params)]
        beat = weight_w.data
        m.d.comb += [beat.pattern.eq(Mux(c.dense, 0, record[0]))]
        for i in range(n):
            m.d.comb += beat.values[i].eq(Mux(c.dense, record[i], record[i + 1]).as_signed())

        # --- compute: the chunks are *passes* over the sequence, run back to back ---------------------------
        # A pass runs every token over one chunk (``chunk`` block rows, the last one fewer). Its tokens are
        # rounded up to whole tiles (the padding tokens read as zeros, their outputs dropped), so that the
        # full passes chain into one RUN of ``passes × tiles × lanes`` tokens: the engine then loads the
        # next pass's first tile while the last tile of this one computes. Passes are counted, not banks:
        # pass ``p`` lives in bank ``p mod 2``, is read once ``fetched > p`` and is refilled (pass ``p + 2``)
        # once the writer has released it.
        pass_tokens = Signal(COUNT_BITS + 1)
        m.d.comb += pass_tokens.eq(tiles * lanes)
        with m.If(fill_set):
            m.d.sync += fetched.eq(fetched + 1)
        release = Signal()
        with m.If(release):
            m.d.sync += released.eq(released + 1)

        def pass_rows(rows_left):
            """Block rows of the pass that starts with ``rows_left`` block rows left."""
            return Mux(rows_left < chunk, rows_left, chunk)

        # activations: every pass streams the tile-rounded tokens, the padding ones as zeros
        act_i, act_valid, act_pad = Signal(32), Signal(), Signal()
        act_rows_left = Signal(COUNT_BITS)
        pass_beats, real_beats = Signal(32), Signal(32)
        m.d.comb += [pass_beats.eq(pass_tokens * in_blocks), real_beats.eq(c.tokens * in_blocks)]
        act_en = ~act_valid | engine.activations.ready
        m.d.comb += [self.scratch.raddr.eq((c.src >> 2) + act_i),
                     engine.activations.payload.eq(Mux(act_pad, 0, self.scratch.rdata)),
                     engine.activations.valid.eq(act_valid)]
        # weights: per pass, per tile, the pass's block rows from its bank; params: one beat per block row
        wgt_i, wgt_tile, wgt_pass, wgt_valid = Signal(32), Signal(COUNT_BITS), Signal(COUNT_BITS), Signal()
        wgt_rows_left = Signal(COUNT_BITS)
        par_i, par_tile, par_pass, par_valid = Signal(range(chunk + 1)), Signal(COUNT_BITS), Signal(COUNT_BITS), Signal()
        par_rows_left = Signal(COUNT_BITS)
        tile_beats = Signal(32)
        m.d.comb += tile_beats.eq(pass_rows(wgt_rows_left) * row_beats)
        wgt_en = ~wgt_valid | engine.weights.ready
        par_en = ~par_valid | engine.params.ready
        wgt_issue = (wgt_rows_left != 0) & (fetched > wgt_pass)
        par_issue = (par_rows_left != 0) & (fetched > par_pass)
        m.d.comb += [
            weight_r.addr.eq(Cat(wgt_i[:len(weight_r.addr) - 1], wgt_pass[0])), weight_r.en.eq(wgt_en),
            engine.weights.payload.eq(weight_r.data), engine.weights.valid.eq(wgt_valid),
            param_r.addr.eq(Cat(par_i[:len(param_r.addr) - 1], par_pass[0])), param_r.en.eq(par_en),
            engine.params.payload.eq(param_r.data), engine.params.valid.eq(par_valid),
        ]
        streaming = Signal()  # the command runs and has not failed
        with m.If(streaming & act_en):
            m.d.comb += self.scratch.ren.eq(1)
            m.d.sync += [act_valid.eq(act_rows_left != 0), act_pad.eq(act_i >= real_beats)]
            with m.If(act_rows_left != 0):
                m.d.sync += act_i.eq(act_i + 1)
                with m.If(act_i == pass_beats - 1):
                    m.d.sync += [act_i.eq(0), act_rows_left.eq(act_rows_left - pass_rows(act_rows_left))]
        with m.If(streaming & wgt_en):
            m.d.sync += wgt_valid.eq(wgt_issue)
            with m.If(wgt_issue):
                m.d.sync += wgt_i.eq(wgt_i + 1)
                with m.If(wgt_i == tile_beats - 1):
                    m.d.sync += [wgt_i.eq(0), wgt_tile.eq(wgt_tile + 1)]
                    with m.If(wgt_tile == tiles - 1):
                        m.d.sync += [wgt_tile.eq(0), wgt_pass.eq(wgt_pass + 1),
                                     wgt_rows_left.eq(wgt_rows_left - pass_rows(wgt_rows_left))]
        with m.If(streaming & par_en):
            m.d.sync += par_valid.eq(par_issue)
            with m.If(par_issue):
                m.d.sync += par_i.eq(par_i + 1)
                with m.If(par_i == pass_rows(par_rows_left) - 1):
                    m.d.sync += [par_i.eq(0), par_tile.eq(par_tile + 1)]
                    with m.If(par_tile == tiles - 1):
                        m.d.sync += [par_tile.eq(0), par_pass.eq(par_pass + 1),
                                     par_rows_left.eq(par_rows_left - pass_rows(par_rows_left))]

        # outputs: per pass, per tile, per block row of the pass, per lane of the tile; padding lanes dropped
        out_rows_left = Signal(COUNT_BITS)
        out_block_base = Signal(COUNT_BITS)  # first block row of the pass being written
        out_rows = Signal(range(chunk + 1))
        out_tile, out_row, out_lane = Signal(COUNT_BITS), Signal(range(chunk + 1)), Signal(range(lanes))
        out_count, out_total = Signal(32), Signal(32)
        m.d.comb += [out_rows.eq(pass_rows(out_rows_left)), out_total.eq(pass_tokens * out_blocks)]
        token = Signal(COUNT_BITS + 1)
        column = Signal(COUNT_BITS + 2)
        address = Signal(32)
        m.d.comb += [token.eq(out_tile * lanes + out_lane), column.eq((out_block_base + out_row) << 2),
                     address.eq(c.dst + token * c.out_features + column)]
        mask = Cat((token < c.tokens) & (column + i < c.out_features) for i in range(k))
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
        with m.If(engine.outputs.valid & engine.outputs.ready):
            with m.If(~c.activate):
                m.d.comb += [self.scratch.wen.eq(Mux(c.wide | c.raw, 0, mask)), self.wide.wen.eq(Mux(c.wide | c.raw, mask, 0))]
            m.d.sync += [out_count.eq(out_count + 1), out_lane.eq(out_lane + 1)]
            with m.If(out_lane == lanes - 1):
                m.d.sync += [out_lane.eq(0), out_row.eq(out_row + 1)]
                with m.If(out_row == out_rows - 1):
                    m.d.sync += [out_row.eq(0), out_tile.eq(out_tile + 1)]
                    with m.If(out_tile == tiles - 1):
                        m.d.comb += release.eq(1)
                        m.d.sync += [out_tile.eq(0), out_block_base.eq(out_block_base + chunk),
                                     out_rows_left.eq(out_rows_left - out_rows)]

        # RUN commands: the full passes in one (as many as the engine's token count holds), then the last
        # pass if it is shorter; each is issued once its first pass is fetched, and the engine takes it when
        # the previous RUN's weights are all in
        run_rows_left = Signal(COUNT_BITS)
        run_first_pass = Signal(COUNT_BITS)
        full_passes = Signal(COUNT_BITS)
        m.d.comb += full_passes.eq(run_rows_left >> chunk_bits)
        # a RUN counts at most 2^COUNT_BITS − 1 tokens: at most 2^j passes, the largest j that fits
        fit_log = Signal(range(COUNT_BITS))
        for j in range(1, COUNT_BITS):
            with m.If((pass_tokens << j) < (1 << COUNT_BITS)):
                m.d.comb += fit_log.eq(j)
        group = Signal(COUNT_BITS)
        m.d.comb += group.eq(Mux(full_passes < (1 << fit_log), full_passes, 1 << fit_log))
        run_tokens, run_passes, run_rows = Signal(COUNT_BITS), Signal(COUNT_BITS), Signal(range(chunk + 1))
        failed = Signal()
        with m.FSM(name="fetch"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [self.cause.eq(ErrorCause.NONE), pattern_id.eq(0), fetch_rows_left.eq(out_blocks),
                                 fetched.eq(0), released.eq(0), failed.eq(0),
                                 act_i.eq(0), act_valid.eq(0), act_rows_left.eq(out_blocks),
                                 wgt_i.eq(0), wgt_tile.eq(0), wgt_pass.eq(0), wgt_valid.eq(0), wgt_rows_left.eq(out_blocks),
                                 par_i.eq(0), par_tile.eq(0), par_pass.eq(0), par_valid.eq(0), par_rows_left.eq(out_blocks),
                                 out_rows_left.eq(out_blocks), out_block_base.eq(0), out_tile.eq(0), out_row.eq(0),
                                 out_lane.eq(0), out_count.eq(0), run_rows_left.eq(out_blocks), run_first_pass.eq(0)]
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
                with m.If(fetched - released < 2):  # a bank is free: pass fetched − 2 is written out
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
                                m.d.comb += fill_set.eq(1)
                                m.d.sync += fetch_rows_left.eq(fetch_rows_left - fetch_chunk_rows)
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

        m.d.comb += streaming.eq(self.busy & ~failed)
        with m.FSM(name="compute"):
            with m.State("IDLE"):
                with m.If(streaming & (run_rows_left != 0) & (fetched > run_first_pass)):
                    with m.If(full_passes == 0):  # the short last pass
                        m.d.sync += [run_passes.eq(1), run_rows.eq(run_rows_left), run_tokens.eq(pass_tokens)]
                    with m.Else():
                        m.d.sync += [run_passes.eq(group), run_rows.eq(chunk), run_tokens.eq(group * pass_tokens)]
                    m.next = "RUN"
            with m.State("RUN"):
                run = engine.cmd.payload
                with m.If(~owns_cmd):
                    m.d.comb += [engine.cmd.valid.eq(1), run.op.eq(Opcode.RUN), run.dense.eq(c.dense), run.raw.eq(c.raw),
                                 run.wide.eq(c.wide & ~c.raw), run.tokens.eq(run_tokens), run.in_blocks.eq(in_blocks),
                                 run.out_blocks.eq(run_rows)]
                    with m.If(engine.cmd.ready):
                        m.d.sync += [run_first_pass.eq(run_first_pass + run_passes),
                                     run_rows_left.eq(run_rows_left - Mux(run_passes == 1, run_rows, run_passes << chunk_bits))]
                        m.next = "IDLE"
        with m.If(engine.error & self.busy):
            m.d.sync += [self.cause.eq(ErrorCause.OUT_OF_RANGE), self.busy.eq(0), failed.eq(1)]
        return m
