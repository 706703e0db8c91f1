// Memory-backed stream source for simulation: plays `<NAME>_count` beats from `<NAME>_file`
// ($readmemh), `<NAME>_replays` times over, with random valid gaps (`stall` percent, `seed`).
// valid never depends on ready, and payload holds until the transfer.
module stream_source #(
    parameter int WIDTH = 8,
    parameter int DEPTH = 1024,
    parameter string NAME = "src",
    parameter int SALT = 1
) (
    input  logic             clk,
    input  logic             rst,
    output logic             valid,
    input  logic             ready,
    output logic [WIDTH-1:0] payload
);
    logic [WIDTH-1:0] mem [DEPTH];
    int unsigned count, replays, total, stall, seed;
    int unsigned sent, index;
    logic [31:0] lfsr;
    string file;

    initial begin
        count = 0; replays = 1; stall = 0; seed = 1;
        if ($value$plusargs({NAME, "_file=%s"}, file)) $readmemh(file, mem);
        void'($value$plusargs({NAME, "_count=%d"}, count));
        void'($value$plusargs({NAME, "_replays=%d"}, replays));
        void'($value$plusargs("stall=%d", stall));
        void'($value$plusargs("tb_seed=%d", seed));
        if (count > DEPTH) $fatal(1, "%s: %0d beats exceed the source depth %0d", NAME, count, DEPTH);
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
endmodule
