// Free-running harness around the generated attention unit: every input stream is played from memory
// files, the context and the two verification taps (scores, probability blocks) are written to files,
// so no Python runs per cycle. The pool and the exponential table are loaded before the first head's
// command (the command source waits for them). `cycles` counts from the first command's transfer to the
// last context beat; `scores_cycles` and `context_cycles` count those of them in the unit's scores-and-
// softmax stage and in its context stage. The same counts per head (its stage-0 cycles, which come before
// its scores stage and between its two stages, then its scores and its context cycles; a head's count ends
// when the stage leaves the context) are written at the end of the simulation to `+stages_file`, one line
// per head.
module tb_attention #(
    parameter int CMD_W = 1,
    parameter int POOL_W = 1,
    parameter int EXP_W = 1,
    parameter int ACT_W = 1,
    parameter int OUT_W = 1,
    parameter int SCORE_W = 1,
    parameter int BLOCK_W = 1,
    parameter int CMD_DEPTH = 1,
    parameter int ACT_DEPTH = 1,
    parameter int CONTEXT_DEPTH = 1,
    parameter int SCORE_DEPTH = 1,
    parameter int BLOCK_DEPTH = 1
) (
    input  logic        clk,
    input  logic        rst,
    output logic        done,
    output logic [63:0] cycles,
    output logic [63:0] scores_cycles,
    output logic [63:0] context_cycles,
    output logic        busy,
    output logic        error
);
    logic cmd_valid, cmd_ready, pool_valid, pool_ready, exp_valid, exp_ready;
    logic q_valid, q_ready, k_valid, k_ready, v_valid, v_ready, out_valid, out_ready;
    logic pool_finished, exp_finished, out_done, score_done, block_done, score_ready, block_ready;
    logic [CMD_W-1:0] cmd_payload;
    logic [POOL_W-1:0] pool_payload;
    logic [EXP_W-1:0] exp_payload;
    logic [ACT_W-1:0] q_payload, k_payload, v_payload;
    logic [OUT_W-1:0] out_payload;
    logic [SCORE_W:0] score_tap;
    logic [BLOCK_W:0] block_tap;
    logic [1:0] stage;
    wire configured = pool_finished && exp_finished;

    stream_source #(.WIDTH(POOL_W), .DEPTH(1 << 8), .FILE_ARG("pool_file=%s"), .COUNT_ARG("pool_count=%d"), .REPLAYS_ARG("pool_replays=%d"), .SALT(3), .STALLS(0)) pool_src (
        .clk, .rst, .valid(pool_valid), .ready(pool_ready), .payload(pool_payload), .finished(pool_finished));
    stream_source #(.WIDTH(EXP_W), .DEPTH(1 << 9), .FILE_ARG("exp_table_file=%s"), .COUNT_ARG("exp_table_count=%d"), .REPLAYS_ARG("exp_table_replays=%d"), .SALT(5), .STALLS(0)) exp_src (
        .clk, .rst, .valid(exp_valid), .ready(exp_ready), .payload(exp_payload), .finished(exp_finished));
    logic cmd_src_valid;
    stream_source #(.WIDTH(CMD_W), .DEPTH(CMD_DEPTH), .FILE_ARG("cmd_file=%s"), .COUNT_ARG("cmd_count=%d"), .REPLAYS_ARG("cmd_replays=%d"), .SALT(11)) cmd_src (
        .clk, .rst, .valid(cmd_src_valid), .ready(cmd_ready && configured), .payload(cmd_payload), .finished());
    assign cmd_valid = cmd_src_valid && configured;
    stream_source #(.WIDTH(ACT_W), .DEPTH(ACT_DEPTH), .FILE_ARG("queries_file=%s"), .COUNT_ARG("queries_count=%d"), .REPLAYS_ARG("queries_replays=%d"), .SALT(23)) q_src (
        .clk, .rst, .valid(q_valid), .ready(q_ready), .payload(q_payload), .finished());
    stream_source #(.WIDTH(ACT_W), .DEPTH(ACT_DEPTH), .FILE_ARG("keys_file=%s"), .COUNT_ARG("keys_count=%d"), .REPLAYS_ARG("keys_replays=%d"), .SALT(37)) k_src (
        .clk, .rst, .valid(k_valid), .ready(k_ready), .payload(k_payload), .finished());
    stream_source #(.WIDTH(ACT_W), .DEPTH(ACT_DEPTH), .FILE_ARG("values_file=%s"), .COUNT_ARG("values_count=%d"), .REPLAYS_ARG("values_replays=%d"), .SALT(41)) v_src (
        .clk, .rst, .valid(v_valid), .ready(v_ready), .payload(v_payload), .finished());
    stream_sink #(.WIDTH(OUT_W), .DEPTH(CONTEXT_DEPTH), .FILE_ARG("context_file=%s"), .COUNT_ARG("context_count=%d")) out_sink (
        .clk, .rst, .valid(out_valid), .ready(out_ready), .payload(out_payload), .done(out_done));
    // The taps have no ready: their sinks never stall.
    stream_sink #(.WIDTH(SCORE_W), .DEPTH(SCORE_DEPTH), .FILE_ARG("scores_file=%s"), .COUNT_ARG("scores_count=%d"), .STALLS(0)) score_sink (
        .clk, .rst, .valid(score_tap[0]), .ready(score_ready), .payload(score_tap[SCORE_W:1]), .done(score_done));
    stream_sink #(.WIDTH(BLOCK_W), .DEPTH(BLOCK_DEPTH), .FILE_ARG("blocks_file=%s"), .COUNT_ARG("blocks_count=%d"), .STALLS(0)) block_sink (
        .clk, .rst, .valid(block_tap[0]), .ready(block_ready), .payload(block_tap[BLOCK_W:1]), .done(block_done));
    assign done = out_done && score_done && block_done;

    attention_unit dut (
        .clk, .rst,
        .cmd__valid(cmd_valid), .cmd__ready(cmd_ready), .cmd__payload(cmd_payload),
        .pool__valid(pool_valid), .pool__ready(pool_ready), .pool__payload(pool_payload),
        .exp_table__valid(exp_valid), .exp_table__ready(exp_ready), .exp_table__payload(exp_payload),
        .queries__valid(q_valid), .queries__ready(q_ready), .queries__payload(q_payload),
        .keys__valid(k_valid), .keys__ready(k_ready), .keys__payload(k_payload),
        .values__valid(v_valid), .values__ready(v_ready), .values__payload(v_payload),
        .context__valid(out_valid), .context__ready(out_ready), .context__payload(out_payload),
        .score_tap, .block_tap, .stage, .busy, .error);

    logic started;
    wire counting = (started || (cmd_valid && cmd_ready)) && !out_done;
    logic [63:0] head_other [CMD_DEPTH], head_scores [CMD_DEPTH], head_context [CMD_DEPTH];
    logic [31:0] head;
    logic [1:0] last_stage;
    wire [31:0] this_head = (last_stage == 2'd2 && stage != 2'd2) ? head + 1 : head;
    initial for (int h = 0; h < CMD_DEPTH; h++) begin
        head_other[h] = 64'd0; head_scores[h] = 64'd0; head_context[h] = 64'd0;
    end
    always_ff @(posedge clk) begin
        if (rst) begin
            started <= 1'b0;
            cycles <= 64'd0;
            scores_cycles <= 64'd0;
            context_cycles <= 64'd0;
            head <= 0;
            last_stage <= 2'd0;
        end else begin
            if (cmd_valid && cmd_ready) started <= 1'b1;
            if (counting) begin
                cycles <= cycles + 64'd1;
                if (stage == 2'd1) scores_cycles <= scores_cycles + 64'd1;
                if (stage == 2'd2) context_cycles <= context_cycles + 64'd1;
                if (this_head < CMD_DEPTH) begin
                    if (stage == 2'd1) head_scores[this_head] <= head_scores[this_head] + 64'd1;
                    else if (stage == 2'd2) head_context[this_head] <= head_context[this_head] + 64'd1;
                    else head_other[this_head] <= head_other[this_head] + 64'd1;
                end
                head <= this_head;
                last_stage <= stage;
            end
        end
    end

    string stages_file;
    int fd;
    final if ($value$plusargs("stages_file=%s", stages_file)) begin
        fd = $fopen(stages_file, "w");
        for (int h = 0; h <= head && h < CMD_DEPTH; h++)
            $fdisplay(fd, "%0d %0d %0d", head_other[h], head_scores[h], head_context[h]);
        $fclose(fd);
    end
endmodule
