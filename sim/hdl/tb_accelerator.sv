// Free-running harness around the generated accelerator top for long runs: the memory is axi_ram
// (loaded from +image_file), and a small AXI4-Lite host writes COMMAND_ADDR (+command_addr) and
// CONTROL.start, polls STATUS every POLL cycles until the core is idle, reads ERROR, LAYER and the cycle
// counter, then dumps the memory and raises `done`. The register offsets and field positions come from
// hw/registers.py as parameters. `read_bytes` and `written_bytes` count the bytes of every AXI read beat
// and every strobed write byte; the cycles each op code's unit runs (the top's `running`) are written to
// +ops_file at the end, one line per code: "<code> <cycles>".
module tb_accelerator #(
    parameter int WORDS = 1 << 20,
    parameter int REG_CONTROL = 0, parameter int REG_STATUS = 4, parameter int REG_ERROR = 8,
    parameter int REG_COMMAND_ADDR = 12, parameter int REG_CYCLES_LO = 16, parameter int REG_CYCLES_HI = 20,
    parameter int REG_LAYER = 24, parameter int START_BIT = 0, parameter int BUSY_BIT = 0, parameter int POLL = 256
) (
    input  logic        clk,
    input  logic        rst,
    output logic        done,
    output logic [31:0] status,
    output logic [31:0] error,
    output logic [31:0] layer,
    output logic [63:0] cycles,
    output logic [63:0] read_bytes,
    output logic [63:0] written_bytes
);
    logic [31:0] m_awaddr, m_wdata, m_araddr, m_rdata;
    logic [7:0] m_awlen, m_arlen;
    logic [3:0] m_wstrb;
    logic [1:0] m_bresp, m_rresp;
    logic m_awvalid, m_awready, m_wlast, m_wvalid, m_wready, m_bvalid, m_bready;
    logic m_arvalid, m_arready, m_rlast, m_rvalid, m_rready;
    logic [7:0] s_awaddr, s_araddr;
    logic [31:0] s_wdata, s_rdata;
    logic [1:0] s_bresp, s_rresp;
    logic s_awvalid, s_awready, s_wvalid, s_wready, s_bvalid, s_bready, s_arvalid, s_arready, s_rvalid, s_rready;
    logic irq;
    logic [7:0] running;
    logic [63:0] op_cycles [256];
    initial for (int i = 0; i < 256; i++) op_cycles[i] = 64'd0;
    always_ff @(posedge clk) if (!rst) op_cycles[running] <= op_cycles[running] + 64'd1;
    string ops_file;
    int ops_fd;
    final if ($value$plusargs("ops_file=%s", ops_file)) begin
        ops_fd = $fopen(ops_file, "w");
        for (int i = 1; i < 256; i++) if (op_cycles[i] != 0) $fdisplay(ops_fd, "%0d %0d", i, op_cycles[i]);
        $fclose(ops_fd);
    end

    accelerator dut (
        .clk, .rst, .irq, .running,
        .s_axil_awaddr(s_awaddr), .s_axil_awprot(3'd0), .s_axil_awvalid(s_awvalid), .s_axil_awready(s_awready),
        .s_axil_wdata(s_wdata), .s_axil_wstrb(4'hf), .s_axil_wvalid(s_wvalid), .s_axil_wready(s_wready),
        .s_axil_bresp(s_bresp), .s_axil_bvalid(s_bvalid), .s_axil_bready(s_bready),
        .s_axil_araddr(s_araddr), .s_axil_arprot(3'd0), .s_axil_arvalid(s_arvalid), .s_axil_arready(s_arready),
        .s_axil_rdata(s_rdata), .s_axil_rresp(s_rresp), .s_axil_rvalid(s_rvalid), .s_axil_rready(s_rready),
        .m_axi_awid(), .m_axi_awaddr(m_awaddr), .m_axi_awlen(m_awlen), .m_axi_awsize(), .m_axi_awburst(), .m_axi_awlock(),
        .m_axi_awcache(), .m_axi_awprot(), .m_axi_awvalid(m_awvalid), .m_axi_awready(m_awready),
        .m_axi_wdata(m_wdata), .m_axi_wstrb(m_wstrb), .m_axi_wlast(m_wlast), .m_axi_wvalid(m_wvalid), .m_axi_wready(m_wready),
        .m_axi_bid(1'b0), .m_axi_bresp(m_bresp), .m_axi_bvalid(m_bvalid), .m_axi_bready(m_bready),
        .m_axi_arid(), .m_axi_araddr(m_araddr), .m_axi_arlen(m_arlen), .m_axi_arsize(), .m_axi_arburst(), .m_axi_arlock(),
        .m_axi_arcache(), .m_axi_arprot(), .m_axi_arvalid(m_arvalid), .m_axi_arready(m_arready),
        .m_axi_rid(1'b0), .m_axi_rdata(m_rdata), .m_axi_rresp(m_rresp), .m_axi_rlast(m_rlast), .m_axi_rvalid(m_rvalid),
        .m_axi_rready(m_rready));

    axi_ram #(.WORDS(WORDS)) ram (
        .clk, .rst, .dump(done),
        .awaddr(m_awaddr), .awlen(m_awlen), .awvalid(m_awvalid), .awready(m_awready),
        .wdata(m_wdata), .wstrb(m_wstrb), .wlast(m_wlast), .wvalid(m_wvalid), .wready(m_wready),
        .bresp(m_bresp), .bvalid(m_bvalid), .bready(m_bready),
        .araddr(m_araddr), .arlen(m_arlen), .arvalid(m_arvalid), .arready(m_arready),
        .rdata(m_rdata), .rresp(m_rresp), .rlast(m_rlast), .rvalid(m_rvalid), .rready(m_rready));

    always_ff @(posedge clk) begin
        if (rst) begin
            read_bytes <= 64'd0; written_bytes <= 64'd0;
        end else begin
            if (m_rvalid && m_rready) read_bytes <= read_bytes + 64'd4;
            if (m_wvalid && m_wready) written_bytes <= written_bytes + 64'($countones(m_wstrb));
        end
    end

    // The host: a fixed sequence of register accesses.
    typedef enum logic [3:0] {SET_ADDRESS, START, WAIT, POLL_STATUS, READ_ERROR, READ_LAYER, READ_LOW, READ_HIGH, FINISHED} step_t;
    step_t step;
    logic writing, reading, aw_done, w_done;
    logic [31:0] wait_cycles, command_addr;
    initial if (!$value$plusargs("command_addr=%d", command_addr)) command_addr = 0;
    wire [7:0] write_address = step == SET_ADDRESS ? 8'(REG_COMMAND_ADDR) : 8'(REG_CONTROL);
    wire [7:0] read_address = step == POLL_STATUS ? 8'(REG_STATUS) : step == READ_ERROR ? 8'(REG_ERROR)
                            : step == READ_LAYER ? 8'(REG_LAYER) : step == READ_LOW ? 8'(REG_CYCLES_LO) : 8'(REG_CYCLES_HI);
    assign s_awaddr = write_address;
    assign s_wdata = step == SET_ADDRESS ? command_addr : 32'(1) << START_BIT;
    assign s_awvalid = writing && !aw_done;
    assign s_wvalid = writing && !w_done;
    assign s_bready = 1'b1;
    assign s_araddr = read_address;
    assign s_arvalid = reading;
    assign s_rready = 1'b1;
    assign done = step == FINISHED;
    always_ff @(posedge clk) begin
        if (rst) begin
            step <= SET_ADDRESS; writing <= 1'b1; reading <= 1'b0; aw_done <= 1'b0; w_done <= 1'b0; wait_cycles <= 0;
        end else begin
            if (s_awvalid && s_awready) aw_done <= 1'b1;
            if (s_wvalid && s_wready) w_done <= 1'b1;
            if (s_bvalid) begin
                writing <= step == SET_ADDRESS; aw_done <= 1'b0; w_done <= 1'b0;
                step <= step == SET_ADDRESS ? START : WAIT;
            end
            if (s_arvalid && s_arready) reading <= 1'b0;
            case (step)
                WAIT: begin
                    wait_cycles <= wait_cycles + 1;
                    if (wait_cycles == POLL) begin
                        wait_cycles <= 0; step <= POLL_STATUS; reading <= 1'b1;
                    end
                end
                default: ;
            endcase
            if (s_rvalid) begin
                case (step)
                    POLL_STATUS: begin
                        status <= s_rdata;
                        if (s_rdata[BUSY_BIT]) step <= WAIT;
                        else begin step <= READ_ERROR; reading <= 1'b1; end
                    end
                    READ_ERROR: begin error <= s_rdata; step <= READ_LAYER; reading <= 1'b1; end
                    READ_LAYER: begin layer <= s_rdata; step <= READ_LOW; reading <= 1'b1; end
                    READ_LOW: begin cycles[31:0] <= s_rdata; step <= READ_HIGH; reading <= 1'b1; end
                    READ_HIGH: begin cycles[63:32] <= s_rdata; step <= FINISHED; end
                    default: ;
                endcase
            end
        end
    end
endmodule
