"""Writes of whole regions through an AXI4 master's write channels, from a stream of data words."""

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.axi import BURST_INCR, MAX_BURST_BEATS, RESP_OKAY, burst_beats, axi4_write_members

PREFIX = "m_axi"


def write_request_layout(address_bits: int) -> data.StructLayout:
    """``bytes`` bytes to ``address`` (a multiple of the word size); the last word may be partial."""
    return data.StructLayout({"address": unsigned(address_bits), "bytes": unsigned(address_bits)})


class AxiWriter(wiring.Component):
    """Splits each request into INCR bursts (at most ``MAX_BURST_BEATS`` beats, none across a 4 KiB
    boundary), one at a time: the address, the burst's words from ``data`` (the last word of the request
    strobed to its bytes), then its write response. ``done`` pulses when the last response of a request
    is in. A response other than OKAY sets ``error``. ``abort`` ends the request early, at the end of
    the burst in flight, whose remaining beats go out with no byte strobed (the bus is never left
    mid-burst).

    Parameters
    ----------
    address_bits, data_bits : int

    Interface attributes
    --------------------
    request : In(stream.Signature(write_request_layout))
    data : In(stream.Signature(data_bits))
        ``⌈bytes / word⌉`` words per request.
    busy : Out(1)
    done : Out(1)
        One cycle, when a request's last write response arrives.
    error : Out(1)
        Sticky: SLVERR or DECERR on a write response; cleared by ``clear``.
    clear : In(1)
    abort : In(1)
    m_axi_aw*, m_axi_w*, m_axi_b* :
        The AXI4 write channels (``hw.axi.axi4_write_members``).
    """

    def __init__(self, *, address_bits: int = 32, data_bits: int = 32):
        self._address_bits, self._data_bits = address_bits, data_bits
        super().__init__({
            "request": In(stream.Signature(write_request_layout(address_bits))),
            "data": In(stream.Signature(data_bits)),
            "busy": Out(1), "done": Out(1), "error": Out(1), "clear": In(1), "abort": In(1),
            **axi4_write_members(PREFIX, address_bits=address_bits, data_bits=data_bits),
        })

    def elaborate(self, platform):
        m = Module()
        word_bytes = self._data_bits // 8
        word_shift = (word_bytes - 1).bit_length()
        bus = {name[len(PREFIX) + 1:]: getattr(self, name) for name in dir(self) if name.startswith(PREFIX + "_")}
        address = Signal(self._address_bits)
        remaining = Signal(self._address_bits)  # words
        tail = Signal(range(word_bytes))  # bytes of the request's last word, 0 = whole
        beats = Signal(range(MAX_BURST_BEATS + 1))
        beat = Signal(range(MAX_BURST_BEATS + 1))
        dropping = Signal()
        full = (1 << word_bytes) - 1
        last_of_request = (beat == beats - 1) & (remaining == beats)
        m.d.comb += [
            bus["awid"].eq(0), bus["awsize"].eq(word_shift), bus["awburst"].eq(BURST_INCR),
            bus["awaddr"].eq(address), bus["awlen"].eq(beats - 1),
            bus["wdata"].eq(self.data.payload), bus["wlast"].eq(beat == beats - 1),
        ]
        with m.If(self.clear):
            m.d.sync += self.error.eq(0)
        with m.If(bus["bvalid"] & bus["bready"] & (bus["bresp"] != RESP_OKAY)):
            m.d.sync += self.error.eq(1)

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.request.ready.eq(1)
                size = self.request.payload.bytes
                with m.If(self.request.valid & (size != 0)):
                    m.d.sync += [address.eq(self.request.payload.address), remaining.eq((size + word_bytes - 1) >> word_shift),
                                 tail.eq(size[:word_shift]), dropping.eq(0), self.busy.eq(1)]
                    m.next = "SIZE"
            with m.State("SIZE"):
                m.d.sync += [beats.eq(burst_beats(address, remaining, word_bytes)), beat.eq(0)]
                with m.If(self.abort):
                    m.d.sync += self.busy.eq(0)
                    m.next = "IDLE"
                with m.Else():
                    m.next = "ADDRESS"
            with m.State("ADDRESS"):
                m.d.comb += bus["awvalid"].eq(1)
                with m.If(bus["awready"]):
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(self.abort):
                    m.d.sync += dropping.eq(1)
                drop = dropping | self.abort
                strobe = Mux(last_of_request & (tail != 0), (1 << tail) - 1, full)
                m.d.comb += [bus["wvalid"].eq(drop | self.data.valid), self.data.ready.eq(~drop & bus["wready"]),
                             bus["wstrb"].eq(Mux(drop, 0, strobe))]
                with m.If(bus["wvalid"] & bus["wready"]):
                    m.d.sync += beat.eq(beat + 1)
                    with m.If(beat == beats - 1):
                        m.next = "RESPONSE"
            with m.State("RESPONSE"):
                m.d.comb += bus["bready"].eq(1)
                with m.If(bus["bvalid"]):
                    m.d.sync += [address.eq(address + (beats << word_shift)), remaining.eq(remaining - beats)]
                    with m.If((remaining == beats) | dropping):
                        m.d.comb += self.done.eq(~dropping)
                        m.d.sync += self.busy.eq(0)
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "SIZE"
        return m
