// Free-running harness around the generated engine: every stream is played from memory files and
// the outputs are written to a file, so no Python runs per cycle. `cycles` counts from the first
// RUN command's transfer to the last output beat.
module tb_pattern_matmul #(
    parameter int CMD_W = 1,
    parameter int ACT_W = 1,
    parameter int WGT_W = 1,
    parameter int PRM_W = 1,
    parameter int OUT_W = 1
) (
    input  logic        clk,
    input  logic        rst,
    output logic        done,
    output logic [63:0] cycles,
    output logic        busy,
    output logic        error
);
    localparam logic [1:0] OP_RUN = 2'd2;

    logic cmd_valid, cmd_ready, act_valid, act_ready, wgt_valid, wgt_ready, prm_valid, prm_ready, out_valid, out_ready;
    logic [CMD_W-1:0] cmd_payload;
    logic [ACT_W-1:0] act_payload;
    logic [WGT_W-1:0] wgt_payload;
    logic [PRM_W-1:0] prm_payload;
    logic [OUT_W-1:0] out_payload;

    stream_source #(.WIDTH(CMD_W), .DEPTH(1 << 12), .FILE_ARG("cmd_file=%s"), .COUNT_ARG("cmd_count=%d"), .REPLAYS_ARG("cmd_replays=%d"), .SALT(11)) cmd_src (
        .clk, .rst, .valid(cmd_valid), .ready(cmd_ready), .payload(cmd_payload));
    stream_source #(.WIDTH(ACT_W), .DEPTH(1 << 17), .FILE_ARG("activations_file=%s"), .COUNT_ARG("activations_count=%d"), .REPLAYS_ARG("activations_replays=%d"), .SALT(23)) act_src (
        .clk, .rst, .valid(act_valid), .ready(act_ready), .payload(act_payload));
    stream_source #(.WIDTH(WGT_W), .DEPTH(1 << 19), .FILE_ARG("weights_file=%s"), .COUNT_ARG("weights_count=%d"), .REPLAYS_ARG("weights_replays=%d"), .SALT(37)) wgt_src (
        .clk, .rst, .valid(wgt_valid), .ready(wgt_ready), .payload(wgt_payload));
    stream_source #(.WIDTH(PRM_W), .DEPTH(1 << 12), .FILE_ARG("params_file=%s"), .COUNT_ARG("params_count=%d"), .REPLAYS_ARG("params_replays=%d"), .SALT(41)) prm_src (
        .clk, .rst, .valid(prm_valid), .ready(prm_ready), .payload(prm_payload));
    stream_sink #(.WIDTH(OUT_W), .DEPTH(1 << 17)) out_sink (
        .clk, .rst, .valid(out_valid), .ready(out_ready), .payload(out_payload), .done);

    pattern_matmul dut (
        .clk, .rst,
        .cmd__valid(cmd_valid), .cmd__ready(cmd_ready), .cmd__payload(cmd_payload),
        .activations__valid(act_valid), .activations__ready(act_ready), .activations__payload(act_payload),
        .weights__valid(wgt_valid), .weights__ready(wgt_ready), .weights__payload(wgt_payload),
        .params__valid(prm_valid), .params__ready(prm_ready), .params__payload(prm_payload),
        .outputs__valid(out_valid), .outputs__ready(out_ready), .outputs__payload(out_payload),
        .busy, .error);

    logic started;
    always_ff @(posedge clk) begin
        if (rst) begin
            started <= 1'b0;
            cycles <= 64'd0;
        end else begin
            if (cmd_valid && cmd_ready && cmd_payload[1:0] == OP_RUN) started <= 1'b1;
            if ((started || (cmd_valid && cmd_ready && cmd_payload[1:0] == OP_RUN)) && !done) cycles <= cycles + 64'd1;
        end
    end
endmodule
