// Memory-backed stream source for simulation: plays `<name>_count` beats from `<name>_file`
// ($readmemh), `<name>_replays` times over (plusarg names given by the *_ARG parameters), with random valid gaps (`stall` percent, `seed`).
// valid never depends on ready, and payload holds until the transfer.
module stream_source #(
    parameter int WIDTH = 8,
    parameter int DEPTH = 1024,
    parameter FILE_ARG = "src_file=%s",
    parameter COUNT_ARG = "src_count=%d",
    parameter REPLAYS_ARG = "src_replays=%d",
    parameter int SALT = 1,
    parameter bit STALLS = 1
) (
    input  logic             clk,
    input  logic             rst,
    output logic             valid,
    input  logic             ready,
    output logic [WIDTH-1:0] payload,
    output logic             finished
);
    logic [WIDTH-1:0] mem [DEPTH];
    int unsigned count, replays, total, stall, seed;
    int unsigned sent, index;
    logic [31:0] lfsr;
    string file;

    initial begin
        count = 0; replays = 1; stall = 0; seed = 1;
        if ($value$plusargs(FILE_ARG, file)) $readmemh(file, mem);
        if ($value$plusargs(COUNT_ARG, count)) ;
        if ($value$plusargs(REPLAYS_ARG, replays)) ;
        if ($value$plusargs("stall=%d", stall)) ;
        if (!STALLS) stall = 0;
        if ($value$plusargs("tb_seed=%d", seed)) ;
        if (count > DEPTH) $fatal(1, "%0d beats exceed the source depth %0d (%s)", count, DEPTH, file);
        total = count * replays;
    end

    function automatic logic [31:0] xorshift(input logic [31:0] x);
        x ^= x << 13; x ^= x >> 17; x ^= x << 5;
        return x;
    endfunction

    wire fire = valid && ready;
    wire [31:0] sent_next = sent + {31'd0, fire};

    always_ff @(posedge clk) begin
        if (rst) begin
            lfsr <= (seed * 32'd2654435761) ^ SALT | 32'd1;
            sent <= 0;
            index <= 0;
            valid <= 1'b0;
        end else begin
            lfsr <= xorshift(lfsr);
            if (fire) begin
                sent <= sent_next;
                index <= (index + 1 == count) ? 0 : index + 1;
            end
            if (!valid || ready)
                valid <= (sent_next < total) && (lfsr % 100 >= stall);
        end
    end

    assign payload = mem[index];
    assign finished = sent == total;
endmodule
