"""AXI4 and AXI4-Lite port sets with the conventional flat names (``m_axi_araddr``, ``s_axil_wdata``, …),
so the generated Verilog drops into a Zynq or Alveo shell and cocotbext-axi finds every signal by prefix."""

from amaranth import Mux
from amaranth.lib.wiring import In, Out

#: AXI burst type INCR, response OKAY, and the longest INCR burst.
BURST_INCR = 0b01
RESP_OKAY = 0b00
MAX_BURST_BEATS = 256
#: A burst must not cross a 4 KiB boundary.
BOUNDARY_BYTES = 4096


def burst_beats(address, remaining, word_bytes: int):
    """Beats of the next INCR burst from ``address`` with ``remaining`` words to go: all of them, but at
    most ``MAX_BURST_BEATS`` and none past the next 4 KiB boundary."""
    to_boundary = (BOUNDARY_BYTES - address[:BOUNDARY_BYTES.bit_length() - 1]) // word_bytes
    limit = Mux(to_boundary < MAX_BURST_BEATS, to_boundary, MAX_BURST_BEATS)
    return Mux(remaining < limit, remaining, limit)


def axi4_read_members(prefix: str, *, address_bits: int, data_bits: int, id_bits: int = 1) -> dict:
    """Members of an AXI4 master's read channels (AR, R), flat: ``{prefix}_{signal}``."""
    m = {
        "arid": Out(id_bits), "araddr": Out(address_bits), "arlen": Out(8), "arsize": Out(3), "arburst": Out(2),
        "arlock": Out(1), "arcache": Out(4), "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
        "rid": In(id_bits), "rdata": In(data_bits), "rresp": In(2), "rlast": In(1), "rvalid": In(1), "rready": Out(1),
    }
    return {f"{prefix}_{name}": member for name, member in m.items()}


def axi4_write_members(prefix: str, *, address_bits: int, data_bits: int, id_bits: int = 1) -> dict:
    """Members of an AXI4 master's write channels (AW, W, B), flat: ``{prefix}_{signal}``."""
    m = {
        "awid": Out(id_bits), "awaddr": Out(address_bits), "awlen": Out(8), "awsize": Out(3), "awburst": Out(2),
        "awlock": Out(1), "awcache": Out(4), "awprot": Out(3), "awvalid": Out(1), "awready": In(1),
        "wdata": Out(data_bits), "wstrb": Out(data_bits // 8), "wlast": Out(1), "wvalid": Out(1), "wready": In(1),
        "bid": In(id_bits), "bresp": In(2), "bvalid": In(1), "bready": Out(1),
    }
    return {f"{prefix}_{name}": member for name, member in m.items()}


def axi4_master_members(prefix: str, **kwargs) -> dict:
    """Members of a whole AXI4 master: :func:`axi4_write_members` and :func:`axi4_read_members`."""
    return {**axi4_write_members(prefix, **kwargs), **axi4_read_members(prefix, **kwargs)}


def axi4_lite_slave_members(prefix: str, *, address_bits: int, data_bits: int = 32) -> dict:
    """Members of an AXI4-Lite slave, flat: ``{prefix}_{signal}``."""
    m = {
        "awaddr": In(address_bits), "awprot": In(3), "awvalid": In(1), "awready": Out(1),
        "wdata": In(data_bits), "wstrb": In(data_bits // 8), "wvalid": In(1), "wready": Out(1),
        "bresp": Out(2), "bvalid": Out(1), "bready": In(1),
        "araddr": In(address_bits), "arprot": In(3), "arvalid": In(1), "arready": Out(1),
        "rdata": Out(data_bits), "rresp": Out(2), "rvalid": Out(1), "rready": In(1),
    }
    return {f"{prefix}_{name}": member for name, member in m.items()}


def forward(m, outer, inner, members: dict) -> None:
    """Wire ``inner``'s ports named in ``members`` to ``outer``'s ports of the same names (outputs out,
    inputs in): a unit's AXI channels brought out to the top's ports."""
    for name, member in members.items():
        if member.flow == Out(1).flow:
            m.d.comb += getattr(outer, name).eq(getattr(inner, name))
        else:
            m.d.comb += getattr(inner, name).eq(getattr(outer, name))
