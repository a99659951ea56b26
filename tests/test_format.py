"""The on-flash format's pure-bytes helpers against FORMAT.md."""
import pytest
from hypothesis import given, strategies as st

from snapshot.errors import FormatLimit
from snapshot.store.format import (COMPRESSION_GZIP, MAX_MESSAGE, SNAPSHOT, Anchor, Commit,
                                   DirEntry, Extent, RecordHeader, crc32, message_bytes,
                                   unpack_anchor)


def test_crc32_is_the_ieee_crc_format_md_specifies():
    assert crc32(b"") == 0
    assert crc32(b"123456789") == 0xCBF43926
    assert crc32(b"6789", crc32(b"12345")) == 0xCBF43926


# -- every limit is enforced where the bytes are packed ---------------------------------------

HEADER = RecordHeader(SNAPSHOT, COMPRESSION_GZIP, 1, 7, 1_700_000_000, "ok")
ENTRY = DirEntry(SNAPSHOT, COMPRESSION_GZIP, 1, 7, 1_700_000_000, 100, 1, 2,
                 (Extent(4, 5),), "ok")


@pytest.mark.parametrize("message", ["x" * (MAX_MESSAGE + 1), "é" * 128, "x" * 300],
                         ids=["256-bytes", "128-two-byte-chars", "300-bytes"])
def test_a_message_longer_than_255_bytes_is_refused_where_it_is_packed(message):
    for structure in (HEADER._replace(message=message), ENTRY._replace(message=message)):
        with pytest.raises(FormatLimit, match=f"message is {len(message.encode())} bytes"):
            structure.pack()


def test_a_message_of_255_bytes_packs_and_reads_back():
    header = HEADER._replace(message="x" * MAX_MESSAGE)
    assert RecordHeader.unpack(header.pack()) == header


def test_a_message_that_is_not_utf8_is_refused():
    with pytest.raises(FormatLimit, match="not valid UTF-8"):
        message_bytes("bad \udcff byte")


@pytest.mark.parametrize("field,value", [
    ("type", 3), ("compression", 0), ("compression", 7), ("seq", 1 << 32), ("seq", -1),
    ("gen", 1 << 64), ("created", -1), ("created", 1 << 64)])
def test_header_fields_outside_their_width_are_refused(field, value):
    with pytest.raises(FormatLimit):
        HEADER._replace(**{field: value}).pack()


@pytest.mark.parametrize("field,value", [
    ("payload_length", 1 << 64), ("payload_crc", 1 << 32), ("header_crc", -1),
    ("extents", ()), ("extents", (Extent(1 << 32, 4),)), ("extents", (Extent(4, 5),) * 65536),
    ("flags", 3), ("flags", 0x10), ("flags", 0x4)])
def test_directory_entry_fields_outside_their_width_are_refused(field, value):
    with pytest.raises(FormatLimit):
        ENTRY._replace(**{field: value}).pack()


def test_an_anchor_with_more_records_than_its_count_holds_is_refused():
    with pytest.raises(FormatLimit, match="record count"):
        Anchor(1, (ENTRY,) * 65536).pack()


@given(message=st.text(max_size=MAX_MESSAGE), seq=st.integers(0, (1 << 32) - 1),
       gen=st.integers(0, (1 << 64) - 1), created=st.integers(0, (1 << 64) - 1))
def test_whatever_packs_reads_back_the_same(message, seq, gen, created):
    try:
        header = HEADER._replace(message=message, seq=seq, gen=gen, created=created)
        packed = header.pack()
    except FormatLimit:
        assert len(message.encode("utf-8", "surrogatepass")) > MAX_MESSAGE \
            or any("\ud800" <= c <= "\udfff" for c in message)
        return
    assert RecordHeader.unpack(packed) == header
    entry = ENTRY._replace(message=message, seq=seq, gen=gen, created=created)
    assert unpack_anchor(Anchor(gen, (entry,)).pack()).records == (entry,)
    assert Commit.unpack(Commit(gen, 1, 2, 3).pack()) == Commit(gen, 1, 2, 3)
