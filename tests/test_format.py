"""The on-flash format's pure-bytes helpers against FORMAT.md."""
from snapshot.format import crc32


def test_crc32_is_the_ieee_crc_format_md_specifies():
    assert crc32(b"") == 0
    assert crc32(b"123456789") == 0xCBF43926
    assert crc32(b"6789", crc32(b"12345")) == 0xCBF43926
