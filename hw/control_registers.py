"""The register file of ``hw/registers.py`` behind an AXI4-Lite slave."""

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.axi import RESP_OKAY, axi4_lite_slave_members
from hw.registers import ID_MAGIC, REGISTER_MAP, VERSION

PREFIX = "s_axil"
#: Registers whose value does not come from a port: the identification, and the cycle counter, whose
#: high word is latched when the low word is read (a 64-bit count read as two consistent halves).
_SPECIAL = {"ID": ID_MAGIC, "VERSION": VERSION}


def _port_name(register: str, field: str) -> str:
    return f"{register}_{field}".lower()


class ControlRegisters(wiring.Component):
    """Every field of :data:`hw.registers.REGISTER_MAP` as a port: ``r`` fields are inputs, ``rw`` fields
    outputs holding the last value written, ``w1`` fields one-cycle output pulses. A write takes the
    address and data together and answers OKAY (writes to read-only fields are ignored); a read answers
    the register's fields (0 at unmapped offsets).

    Parameters
    ----------
    address_bits : int
        Width of the AXI4-Lite address (byte addresses; the map uses the low 6 bits).

    Interface attributes
    --------------------
    s_axil_* :
        The AXI4-Lite slave (``hw.axi.axi4_lite_slave_members``).
    cycles : In(64)
        The cycle counter behind CYCLES_LO / CYCLES_HI.
    <register>_<field> :
        One port per field of the map (``control_start``, ``status_busy``, ``error_cause``,
        ``command_addr_address``, ``layer_layer``, …).
    """

    def __init__(self, *, address_bits: int = 8):
        members = {"cycles": In(64)}
        for name, _, register in REGISTER_MAP:
            if name in _SPECIAL or name.startswith("CYCLES"):
                continue
            for f in register.fields:
                members[_port_name(name, f.name)] = In(f.width) if f.access == "r" else Out(f.width)
        self._address_bits = address_bits
        super().__init__({**members, **axi4_lite_slave_members(PREFIX, address_bits=address_bits)})

    def elaborate(self, platform):
        m = Module()
        bus = {name[len(PREFIX) + 1:]: getattr(self, name) for name in dir(self) if name.startswith(PREFIX + "_")}
        high = Signal(32)

        def value(name, register):
            if name in _SPECIAL:
                return _SPECIAL[name]
            if name == "CYCLES_LO":
                return self.cycles[:32]
            if name == "CYCLES_HI":
                return high
            word = 0
            for f in register.fields:
                word = word | (getattr(self, _port_name(name, f.name)).as_unsigned() << f.offset) if f.access != "w1" else word
            return word

        # writes: address and data together, then the response
        for name, _, register in REGISTER_MAP:
            for f in register.fields:
                if f.access == "w1":
                    m.d.sync += getattr(self, _port_name(name, f.name)).eq(0)
        with m.If(bus["bvalid"] & bus["bready"]):
            m.d.sync += bus["bvalid"].eq(0)
        take_write = bus["awvalid"] & bus["wvalid"] & ~bus["bvalid"]
        m.d.comb += [bus["awready"].eq(take_write), bus["wready"].eq(take_write), bus["bresp"].eq(RESP_OKAY)]
        with m.If(take_write):
            m.d.sync += bus["bvalid"].eq(1)
            offset = bus["awaddr"][2:6]
            for name, off, register in REGISTER_MAP:
                with m.If(offset == off >> 2):
                    for f in register.fields:
                        if f.access in ("rw", "w1") and name not in _SPECIAL:
                            m.d.sync += getattr(self, _port_name(name, f.name)).eq(bus["wdata"][f.offset:f.offset + f.width])

        # reads: the address, then the data until taken
        with m.If(bus["rvalid"] & bus["rready"]):
            m.d.sync += bus["rvalid"].eq(0)
        take_read = bus["arvalid"] & ~bus["rvalid"]
        m.d.comb += [bus["arready"].eq(take_read), bus["rresp"].eq(RESP_OKAY)]
        with m.If(take_read):
            m.d.sync += [bus["rvalid"].eq(1), bus["rdata"].eq(0)]
            offset = bus["araddr"][2:6]
            for name, off, register in REGISTER_MAP:
                with m.If(offset == off >> 2):
                    m.d.sync += bus["rdata"].eq(value(name, register))
                    if name == "CYCLES_LO":
                        m.d.sync += high.eq(self.cycles[32:])
        return m
