// A plain AXI4 slave memory for long simulations of the accelerator: 32-bit data, INCR bursts, one
// burst at a time per direction, no wait states beyond the handshakes. Its contents come from a
// $readmemh file (+image_file) and go back to one (+memory_file, the first +memory_words words) when
// `dump` rises. cocotbext-axi's AxiRam checks the protocol in the short tests; this memory runs at the
// full speed of the compiled simulation, with no Python per cycle.
module axi_ram #(
    parameter int WORDS = 1 << 20
) (
    input  logic        clk,
    input  logic        rst,
    input  logic        dump,
    input  logic [31:0] awaddr,  input  logic [7:0] awlen, input  logic awvalid, output logic awready,
    input  logic [31:0] wdata,   input  logic [3:0] wstrb, input  logic wlast,   input  logic wvalid, output logic wready,
    output logic [1:0]  bresp,   output logic       bvalid, input  logic bready,
    input  logic [31:0] araddr,  input  logic [7:0] arlen, input  logic arvalid, output logic arready,
    output logic [31:0] rdata,   output logic [1:0] rresp,  output logic rlast,  output logic rvalid, input logic rready
);
    logic [31:0] mem [WORDS];
    string image_file, memory_file;
    int memory_words;
    initial begin
        for (int i = 0; i < WORDS; i++) mem[i] = 32'd0;
        if ($value$plusargs("image_file=%s", image_file)) $readmemh(image_file, mem);
    end
    always_ff @(posedge clk) begin
        if (dump && $value$plusargs("memory_file=%s", memory_file) && $value$plusargs("memory_words=%d", memory_words))
            $writememh(memory_file, mem, 0, memory_words - 1);
    end

    // reads
    logic [31:0] r_addr;
    logic [7:0] r_left;
    logic r_busy;
    assign arready = !r_busy;
    assign rvalid = r_busy;
    assign rdata = mem[r_addr[31:2] % WORDS];
    assign rlast = r_left == 8'd0;
    assign rresp = 2'b00;
    always_ff @(posedge clk) begin
        if (rst) r_busy <= 1'b0;
        else if (!r_busy && arvalid) begin
            r_busy <= 1'b1; r_addr <= araddr; r_left <= arlen;
        end else if (r_busy && rready) begin
            r_addr <= r_addr + 32'd4;
            r_left <= r_left - 8'd1;
            if (r_left == 8'd0) r_busy <= 1'b0;
        end
    end

    // writes
    logic [31:0] w_addr;
    logic w_busy, w_respond;
    assign awready = !w_busy && !w_respond;
    assign wready = w_busy;
    assign bvalid = w_respond;
    assign bresp = 2'b00;
    always_ff @(posedge clk) begin
        if (rst) begin
            w_busy <= 1'b0; w_respond <= 1'b0;
        end else if (!w_busy && !w_respond && awvalid) begin
            w_busy <= 1'b1; w_addr <= awaddr;
        end else if (w_busy && wvalid) begin
            for (int b = 0; b < 4; b++)
                if (wstrb[b]) mem[w_addr[31:2] % WORDS][8 * b +: 8] <= wdata[8 * b +: 8];
            w_addr <= w_addr + 32'd4;
            if (wlast) begin
                w_busy <= 1'b0; w_respond <= 1'b1;
            end
        end else if (w_respond && bready) w_respond <= 1'b0;
    end
endmodule
