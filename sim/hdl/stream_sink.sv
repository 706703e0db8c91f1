// Stream sink for simulation: stores `out_count` beats, then writes them to `out_file` ($writememh)
// and raises `done`. ready is random (`stall` percent) and never depends on valid.
module stream_sink #(
    parameter int WIDTH = 8,
    parameter int DEPTH = 1024,
    parameter int SALT = 7
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
        if ($value$plusargs("out_file=%s", file)) ;
        if ($value$plusargs("out_count=%d", expected)) ;
        if ($value$plusargs("stall=%d", stall)) ;
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
