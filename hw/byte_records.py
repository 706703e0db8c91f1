"""Records of a few bytes each out of a stream of bus words: the byte-packed regions of ``hw.dram_formats``."""

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.config import refuse


class ByteRecords(wiring.Component):
    """Cuts a little-endian byte stream, arriving ``word_bytes`` at a time, into records of ``size``
    bytes (``size`` is the consumer's: it says how long the next record is, and holds it while the record
    is offered). The first byte of a record is ``records.payload[0]``; bytes beyond ``size`` are
    don't-care. ``clear`` drops every byte held (the tail of a region's last word).

    Parameters
    ----------
    word_bytes : int
        Bytes per input word.
    max_record : int
        The longest record.

    Interface attributes
    --------------------
    words : In(stream.Signature(8 · word_bytes))
    size : In(range(max_record + 1))
    records : Out(stream.Signature(ArrayLayout(unsigned(8), max_record)))
        Valid while at least ``size`` (> 0) bytes are held.
    clear : In(1)
    """

    def __init__(self, *, word_bytes: int = 4, max_record: int = 16):
        if word_bytes < 1 or max_record < 1:
            refuse(self, f"word_bytes and max_record must be positive, got {word_bytes}, {max_record}")
        self._word_bytes, self._max_record = word_bytes, max_record
        super().__init__({
            "words": In(stream.Signature(8 * word_bytes)),
            "size": In(range(max_record + 1)),
            "records": Out(stream.Signature(data.ArrayLayout(unsigned(8), max_record))),
            "clear": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        capacity = self._max_record + self._word_bytes
        held = Signal(8 * capacity)
        count = Signal(range(capacity + 1))
        m.d.comb += [
            self.records.payload.eq(held[:8 * self._max_record]),
            self.records.valid.eq((self.size != 0) & (count >= self.size)),
            self.words.ready.eq(count + self._word_bytes <= capacity),
        ]
        taken = Signal(range(self._max_record + 1))
        m.d.comb += taken.eq(Mux(self.records.valid & self.records.ready, self.size, 0))
        left = Signal(range(capacity + 1))
        m.d.comb += left.eq(count - taken)
        rest = Signal(8 * capacity)
        m.d.comb += rest.eq(held >> (taken * 8))
        with m.If(self.words.valid & self.words.ready):
            m.d.sync += [held.eq(rest | (self.words.payload << (left * 8))), count.eq(left + self._word_bytes)]
        with m.Else():
            m.d.sync += [held.eq(rest), count.eq(left)]
        with m.If(self.clear):
            m.d.sync += count.eq(0)
        return m
