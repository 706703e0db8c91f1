// Stream sink for simulation: stores `<name>_count` beats, then writes them to `<name>_file` ($writememh)
// and raises `done` (plusarg names given by the *_ARG parameters). ready is random (`stall` percent;
// always high when STALLS is 0, as for a tap that has no ready) and never depends on valid.
module stream_sink #(
    parameter int WIDTH = 8,
    parameter int DEPTH = 1024,
    parameter int SALT = 7,
    parameter FILE_ARG = "out_file=%s",
    parameter COUNT_ARG = "out_count=%d",
    parameter bit STALLS = 1
) (
    input  logic             clk,
    input  logic             rst,
    input  logic             valid,
    output logic             ready,
    input  logic [WIDTH-1:0] payload,
    output logic             done
);
    logic [WIDTH-1:0] mem [DEPTH];
    int unsigned expected, stall, seed, received;
    logic [31:0] lfsr;
    string file;

    initial begin
        expected = 0; stall = 0; seed = 1; file = "outputs.hex";
        if ($value$plusargs(FILE_ARG, file)) ;
        if ($value$plusargs(COUNT_ARG, expected)) ;
        if ($value$plusargs("stall=%d", stall)) ;
        if (!STALLS) stall = 0;
        if ($value$plusargs("tb_seed=%d", seed)) ;
        if (expected > DEPTH) $fatal(1, "sink: %0d beats exceed the sink depth %0d", expected, DEPTH);
    end

    function automatic logic [31:0] xorshift(input logic [31:0] x);
        x ^= x << 13; x ^= x >> 17; x ^= x << 5;
        return x;
    endfunction

    always_ff @(posedge clk) begin
        if (rst) begin
            lfsr <= (seed * 32'd2654435761) ^ SALT | 32'd1;
            ready <= 1'b0;
            received <= 0;
            done <= 1'b0;
        end else begin
            lfsr <= xorshift(lfsr);
            ready <= (lfsr % 100 >= stall) && !done;
            if (valid && ready && received < DEPTH) begin
                mem[received] <= payload;
                received <= received + 1;
            end
            if (!done && received == expected) begin
                $writememh(file, mem, 0, expected - 1);
                done <= 1'b1;
            end
        end
    end
endmodule
