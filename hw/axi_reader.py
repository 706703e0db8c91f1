"""Reads of whole regions through an AXI4 master's read channels, as a stream of data words."""

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.axi import BURST_INCR, MAX_BURST_BEATS, RESP_OKAY, burst_beats, axi4_read_members

PREFIX = "m_axi"


def read_request_layout(address_bits: int) -> data.StructLayout:
    """``words`` data words from ``address`` (a multiple of the word size)."""
    return data.StructLayout({"address": unsigned(address_bits), "words": unsigned(address_bits)})


class AxiReader(wiring.Component):
    """Splits each request into INCR bursts (at most ``MAX_BURST_BEATS`` beats, none across a 4 KiB
    boundary), one burst in flight at a time, and passes the read data on in order; ``rready`` follows
    the consumer. A response other than OKAY sets ``error`` (the data still flows, so the run can stop
    at a command boundary). ``abort`` drops the rest of the current request: the burst in flight is
    read to its end and discarded, so the bus is left idle, never mid-burst.

    Parameters
    ----------
    address_bits, data_bits : int
        Widths of the AXI address and data buses; addresses are byte addresses, requests whole words.

    Interface attributes
    --------------------
    request : In(stream.Signature(read_request_layout))
    data : Out(stream.Signature(data_bits))
        The words of every request, in order.
    busy : Out(1)
        A request is in progress (taken and not yet read to its end).
    error : Out(1)
        Sticky: a read came back with SLVERR or DECERR; cleared by ``clear``.
    clear : In(1)
    abort : In(1)
    m_axi_ar*, m_axi_r* :
        The AXI4 read channels (``hw.axi.axi4_read_members``).
    """

    def __init__(self, *, address_bits: int = 32, data_bits: int = 32):
        self._address_bits, self._data_bits = address_bits, data_bits
        super().__init__({
            "request": In(stream.Signature(read_request_layout(address_bits))),
            "data": Out(stream.Signature(data_bits)),
            "busy": Out(1), "error": Out(1), "clear": In(1), "abort": In(1),
            **axi4_read_members(PREFIX, address_bits=address_bits, data_bits=data_bits),
        })

    def elaborate(self, platform):
        m = Module()
        word_bytes = self._data_bits // 8
        bus = {name[len(PREFIX) + 1:]: getattr(self, name) for name in dir(self) if name.startswith(PREFIX + "_")}
        address = Signal(self._address_bits)
        remaining = Signal(self._address_bits)
        beats = Signal(range(MAX_BURST_BEATS + 1))
        dropping = Signal()
        m.d.comb += [
            bus["arid"].eq(0), bus["arsize"].eq((word_bytes - 1).bit_length()), bus["arburst"].eq(BURST_INCR),
            bus["araddr"].eq(address), bus["arlen"].eq(beats - 1),
        ]
        with m.If(self.clear):
            m.d.sync += self.error.eq(0)
        with m.If(bus["rvalid"] & bus["rready"] & (bus["rresp"] != RESP_OKAY)):
            m.d.sync += self.error.eq(1)

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.request.ready.eq(1)
                with m.If(self.request.valid & (self.request.payload.words != 0)):
                    m.d.sync += [address.eq(self.request.payload.address), remaining.eq(self.request.payload.words),
                                 dropping.eq(0), self.busy.eq(1)]
                    m.next = "SIZE"
            with m.State("SIZE"):
                m.d.sync += beats.eq(burst_beats(address, remaining, word_bytes))
                with m.If(self.abort):
                    m.d.sync += self.busy.eq(0)
                    m.next = "IDLE"
                with m.Else():
                    m.next = "ADDRESS"
            with m.State("ADDRESS"):
                m.d.comb += bus["arvalid"].eq(1)
                with m.If(bus["arready"]):
                    m.next = "DATA"
            with m.State("DATA"):
                keep = ~dropping & ~self.abort
                m.d.comb += [self.data.payload.eq(bus["rdata"]), self.data.valid.eq(bus["rvalid"] & keep),
                             bus["rready"].eq(Mux(keep, self.data.ready, 1))]
                with m.If(self.abort):
                    m.d.sync += dropping.eq(1)
                with m.If(bus["rvalid"] & bus["rready"] & bus["rlast"]):
                    m.d.sync += [address.eq(address + beats * word_bytes), remaining.eq(remaining - beats)]
                    with m.If((remaining == beats) | dropping | self.abort):
                        m.d.sync += self.busy.eq(0)
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "SIZE"
        return m
