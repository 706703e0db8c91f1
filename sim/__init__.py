"""RTL verification harnesses: cocotb + Verilator runs of the generated Verilog against the golden model."""
