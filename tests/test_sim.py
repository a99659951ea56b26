"""The flash simulator enforces flash physics and injects the faults real chips have."""
import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mtd import FlashType, FlashViolation, Geometry, MtdError, SimFlash
from mtd.errors import FlashOpenError
from mtd.sim import CORRECTED, UNCORRECTABLE

KIB = 1024
NOR = Geometry(FlashType.NOR, 256 * KIB, 64 * KIB, 1, 0)
NAND = Geometry(FlashType.NAND, 1024 * KIB, 128 * KIB, 2048, 64)


def make(tmp_path, geometry, **faults) -> str:
    image = tmp_path / f"{geometry.type}.img"
    SimFlash.create(image, geometry, **faults)
    return str(image)


def test_image_is_a_raw_erased_file_of_exactly_size_bytes(tmp_path):
    image = make(tmp_path, NAND)
    data = open(image, "rb").read()
    assert len(data) == NAND.size and data == b"\xff" * NAND.size


def test_programmed_bytes_land_at_their_offset_in_the_image(tmp_path):
    image = make(tmp_path, NAND)
    with SimFlash(image, writable=True) as f:
        f.write(4096, b"A" * 2048)
    assert open(image, "rb").read()[4096:6144] == b"A" * 2048


def test_erase_sets_every_byte_of_the_block_to_ff(tmp_path):
    with SimFlash(make(tmp_path, NOR), writable=True) as f:
        f.write(64 * KIB, b"\x00" * 100)
        f.erase(64 * KIB, 64 * KIB)
        assert f.read(64 * KIB, 64 * KIB) == b"\xff" * (64 * KIB)


def test_nor_program_may_clear_bits(tmp_path):
    with SimFlash(make(tmp_path, NOR), writable=True) as f:
        f.write(10, b"\x0f")
        f.write(10, b"\x07")
        assert f.read(10, 1) == b"\x07"


def test_nor_program_that_would_set_a_bit_is_refused(tmp_path):
    with SimFlash(make(tmp_path, NOR), writable=True) as f:
        f.write(10, b"\x0f")
        with pytest.raises(FlashViolation, match="set bits from 0 to 1"):
            f.write(10, b"\xf0")
        assert f.read(10, 1) == b"\x0f"


@pytest.mark.parametrize("offset,length", [(1, 2048), (0, 100), (2048, 2049)])
def test_nand_program_must_be_page_aligned(tmp_path, offset, length):
    with SimFlash(make(tmp_path, NAND), writable=True) as f:
        with pytest.raises(MtdError, match="not aligned to the 2048-byte page") as e:
            f.write(offset, b"\0" * length)
        assert e.value.errno == errno.EINVAL


def test_nand_page_programmed_twice_without_erase_is_refused(tmp_path):
    with SimFlash(make(tmp_path, NAND), writable=True) as f:
        f.write(0, b"\xff" * 2048)
        with pytest.raises(FlashViolation, match="programmed twice"):
            f.write(0, b"\x00" * 2048)


def test_nand_page_may_be_programmed_again_after_its_block_is_erased(tmp_path):
    with SimFlash(make(tmp_path, NAND), writable=True) as f:
        f.write(0, b"\x01" * 2048)
        f.erase(0, 128 * KIB)
        f.write(0, b"\x02" * 2048)
        assert f.read(0, 2048) == b"\x02" * 2048


def test_programmed_pages_are_remembered_by_the_next_process(tmp_path):
    image = make(tmp_path, NAND)
    with SimFlash(image, writable=True) as f:
        f.write(2048, b"\xff" * 2048)
    with SimFlash(image, writable=True) as f:
        with pytest.raises(FlashViolation):
            f.write(2048, b"\x00" * 2048)


def test_an_image_of_the_first_sidecar_format_opens_and_its_first_change_rewrites_it(tmp_path):
    """Format 1 wrote programmed_pages in base64; 2 writes hex (read without a module)."""
    import base64
    import zlib
    image = make(tmp_path, NAND)
    with SimFlash(image, writable=True) as f:
        f.write(2048, b"\0" * 2048)
    state = json.loads(sidecar_of(image).read_text())
    assert state["format"] == "snapshot-flash-sim/2"
    bits = zlib.decompress(bytes.fromhex(state["programmed_pages"]))
    state.update(format="snapshot-flash-sim/1",
                 programmed_pages=base64.b64encode(zlib.compress(bits)).decode())
    sidecar_of(image).write_text(json.dumps(state))
    with SimFlash(image) as f:
        assert f.read(2048, 4) == b"\0" * 4
    with SimFlash(image, writable=True) as f:
        with pytest.raises(FlashViolation):
            f.write(2048, b"\0" * 2048)   # still known to be programmed
        f.write(4096, b"\0" * 2048)
    state = json.loads(sidecar_of(image).read_text())
    assert state["format"] == "snapshot-flash-sim/2"
    with SimFlash(image, writable=True) as f:
        for offset in (2048, 4096):
            with pytest.raises(FlashViolation):
                f.write(offset, b"\0" * 2048)


def test_reading_a_simulated_image_imports_no_mmap_binascii_or_fcntl(tmp_path):
    """What a router's `list` never pays for: the simulator's own modules. The counters go
    into shared memory (mmap) only when the process forks."""
    image = make(tmp_path, NAND)
    with SimFlash(image, writable=True) as f:
        f.write(0, b"\0" * 2048)
    done = subprocess.run([sys.executable, "-S", "-c", "import sys; from mtd.sim import SimFlash\n"
                           f"with SimFlash({image!r}) as f: f.read(0, 4096)\n"
                           "print(' '.join(sys.modules))"],
                          capture_output=True, text=True, check=True,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent)))
    assert not {"mmap", "binascii", "fcntl", "json"} & set(done.stdout.split())


def test_erase_must_cover_whole_blocks(tmp_path):
    with SimFlash(make(tmp_path, NAND), writable=True) as f:
        with pytest.raises(MtdError, match="not whole 131072-byte erase blocks"):
            f.erase(2048, 128 * KIB)


def test_access_beyond_the_device_is_refused(tmp_path):
    with SimFlash(make(tmp_path, NOR), writable=True) as f:
        with pytest.raises(MtdError, match="do not fit"):
            f.read(NOR.size - 1, 2)


def test_factory_bad_blocks_are_reported(tmp_path):
    with SimFlash(make(tmp_path, NAND, bad_blocks=[3])) as f:
        assert [b for b in range(NAND.blocks) if f.is_bad(b)] == [3]


@pytest.mark.parametrize("operation", ["erase", "write"])
def test_erase_or_program_of_a_bad_block_fails_with_eio(tmp_path, operation):
    with SimFlash(make(tmp_path, NAND, bad_blocks=[3]), writable=True) as f:
        start = 3 * 128 * KIB
        with pytest.raises(MtdError, match="block 3 is bad") as e:
            if operation == "erase":
                f.erase(start, 128 * KIB)
            else:
                f.write(start, b"\0" * 2048)
        assert e.value.errno == errno.EIO


def test_a_block_marked_bad_stays_bad_for_the_next_process(tmp_path):
    image = make(tmp_path, NAND)
    with SimFlash(image, writable=True) as f:
        f.mark_bad(6)
    with SimFlash(image) as f:
        assert f.is_bad(6) and f.bad_blocks() == [6]


def test_nor_keeps_no_bad_block_table(tmp_path):
    with SimFlash(make(tmp_path, NOR), writable=True) as f:
        assert not f.is_bad(0)
        with pytest.raises(MtdError) as e:
            f.mark_bad(0)
        assert e.value.errno == errno.EOPNOTSUPP


def test_block_fails_with_eio_once_worn_out(tmp_path):
    with SimFlash(make(tmp_path, NAND, wear_limits={2: 2}), writable=True) as f:
        start = 2 * 128 * KIB
        f.erase(start, 128 * KIB)
        f.erase(start, 128 * KIB)
        with pytest.raises(MtdError, match="worn out") as e:
            f.erase(start, 128 * KIB)
        assert e.value.errno == errno.EIO
        with pytest.raises(MtdError, match="worn out"):
            f.write(start, b"\0" * 2048)


def test_corrected_bitflip_is_reported_and_data_is_intact(tmp_path):
    with SimFlash(make(tmp_path, NAND, bitflips={100: CORRECTED})) as f:
        data, flips = f.read_ecc(0, 2048)
        assert data == b"\xff" * 2048
        assert (flips.corrected, flips.uncorrectable) == (1, 0)
        assert f.stats().ecc_corrected == 1


def test_uncorrectable_bitflip_is_reported_and_data_is_wrong(tmp_path):
    with SimFlash(make(tmp_path, NAND, bitflips={100: UNCORRECTABLE})) as f:
        data, flips = f.read_ecc(0, 2048)
        assert data[100] != 0xFF and data[:100] == b"\xff" * 100
        assert (flips.corrected, flips.uncorrectable) == (0, 1)
        assert f.stats().ecc_failed == 1


def test_read_outside_a_bitflip_reports_nothing(tmp_path):
    with SimFlash(make(tmp_path, NAND, bitflips={100: UNCORRECTABLE})) as f:
        assert not f.read_ecc(2048, 2048)[1]


def test_erasing_a_block_clears_its_bitflips(tmp_path):
    with SimFlash(make(tmp_path, NAND, bitflips={100: UNCORRECTABLE}), writable=True) as f:
        f.erase(0, 128 * KIB)
        assert not f.read_ecc(0, 2048)[1]


def test_statistics_count_programs_erases_and_bytes(tmp_path):
    with SimFlash(make(tmp_path, NAND), writable=True) as f:
        f.erase(128 * KIB, 256 * KIB)
        f.write(128 * KIB, b"\0" * 4096)
        f.read(0, 1000)
        s = f.stats()
    assert (s.programs, s.erases, s.bytes_programmed, s.bytes_read) == (1, 2, 4096, 1000)
    assert s.erase_counts == [0, 1, 1, 0, 0, 0, 0, 0]


def test_reads_of_a_forked_child_count_in_the_parents_statistics(tmp_path):
    """The counts move into memory shared with the child when the process forks: those
    before the fork are kept, and the child's and the parent's after it add up."""
    with SimFlash(make(tmp_path, NAND)) as f:
        f.read(0, 100)
        pid = os.fork()
        if pid == 0:
            try:
                f.read(0, 1000)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        f.read(0, 10)
        assert f.stats().bytes_read == 1110


def test_a_closed_handle_is_not_kept_for_the_next_fork(tmp_path):
    """Only open handles' counters move into shared memory at a fork: a process that opens
    many handles in turn (a test run, a long-lived command) keeps none of the closed ones."""
    from mtd.sim import _Counters
    flash = SimFlash(make(tmp_path, NAND))
    counters = flash._delta
    assert counters in _Counters.private
    flash.close()
    assert counters not in _Counters.private


def test_statistics_accumulate_across_processes(tmp_path):
    image = make(tmp_path, NAND)
    for _ in range(2):
        with SimFlash(image, writable=True) as f:
            f.erase(0, 128 * KIB)
    with SimFlash(image) as f:
        assert f.stats().erases == 2 and f.stats().erase_counts[0] == 2


def test_read_only_open_refuses_to_write(tmp_path):
    with SimFlash(make(tmp_path, NAND)) as f:
        with pytest.raises(MtdError, match="opened read-only"):
            f.erase(0, 128 * KIB)


@pytest.mark.parametrize("geometry,message", [
    (Geometry(FlashType.NOR, 100 * KIB, 64 * KIB, 1, 0), "not a multiple of the erase size"),
    (Geometry(FlashType.NAND, 1024 * KIB, 64 * KIB, 128 * KIB, 64), "not a multiple of the page"),
    (Geometry(FlashType.RAM, 1024 * KIB, 128 * KIB, 1, 0), "models NOR and NAND"),
])
def test_create_refuses_impossible_geometry(tmp_path, geometry, message):
    with pytest.raises(ValueError, match=message):
        SimFlash.create(tmp_path / "x.img", geometry)


def test_image_without_sidecar_is_not_a_simulated_device(tmp_path):
    (tmp_path / "plain.img").write_bytes(b"\xff" * 1024)
    with pytest.raises(FlashOpenError, match="not a simulated flash image"):
        SimFlash(tmp_path / "plain.img")


def test_image_of_the_wrong_length_is_refused(tmp_path):
    image = make(tmp_path, NOR)
    with open(image, "ab") as f:
        f.write(b"x")
    with pytest.raises(FlashOpenError, match="is not 262144 bytes long"):
        SimFlash(image)


# -- the sidecar: replaced whole, never out of step with the image in a way that blocks writes --

def sidecar_of(image) -> Path:
    return Path(f"{image}.sim.json")


def test_a_kill_after_changing_the_image_leaves_the_next_writer_able_to_write(tmp_path):
    """The killed process erased block 0 (whose pages the sidecar recorded as programmed)
    and programmed its first page, then died without closing."""
    image = make(tmp_path, NAND)
    with SimFlash(image, writable=True) as f:
        f.write(0, b"A" * 4096)
    child = ("import os, signal, sys\nfrom mtd import SimFlash\n"
             "f = SimFlash(sys.argv[1], writable=True)\n"
             "f.erase(0, 128 * 1024)\nf.write(0, b'B' * 2048)\n"
             "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", child, image])
    assert proc.returncode == -signal.SIGKILL
    with SimFlash(image, writable=True) as f:
        f.write(2048, b"C" * 2048)      # erased by the killed process: programmable
        with pytest.raises(FlashViolation, match="programmed twice"):
            f.write(0, b"D" * 2048)     # programmed by it: still refused
        assert f.read(0, 4096) == b"B" * 2048 + b"C" * 2048


def test_the_sidecar_is_replaced_whole_never_written_in_place(tmp_path):
    image = make(tmp_path, NAND)
    sidecar = sidecar_of(image)
    with open(sidecar) as old:
        before = old.read()
        with SimFlash(image, writable=True) as f:
            f.erase(0, 128 * KIB)
        old.seek(0)
        assert old.read() == before     # the file a reader had open never changed
    assert json.loads(sidecar.read_text())["stats"]["erases"] == 1
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_a_writer_marks_the_sidecar_dirty_until_it_closes(tmp_path):
    image = make(tmp_path, NAND)
    f = SimFlash(image, writable=True)
    assert json.loads(sidecar_of(image).read_text())["dirty"] is False
    f.erase(0, 128 * KIB)
    assert json.loads(sidecar_of(image).read_text())["dirty"] is True
    f.close()
    assert json.loads(sidecar_of(image).read_text())["dirty"] is False


def test_read_only_handles_never_write_the_sidecar(tmp_path):
    image = make(tmp_path, NAND)
    before = sidecar_of(image).stat()
    with SimFlash(image) as f:
        f.read(0, 4096)
        assert f.stats().bytes_read == 4096
    after = sidecar_of(image).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def damage(image, edit):
    state = json.loads(sidecar_of(image).read_text())
    edit(state)
    sidecar_of(image).write_text(json.dumps(state))


@pytest.mark.parametrize("edit,reason", [
    (lambda s: s["geometry"].update(erasesize=0), "erasesize"),
    (lambda s: s["geometry"].update(erasesize="64K"), "'64K' is not an integer"),
    (lambda s: s["geometry"].update(erasesize=3000), "erase size 3000 is not a power of two"),
    (lambda s: s["geometry"].update(writesize=7), "page size 7 is not a power of two"),
    (lambda s: s["geometry"].update(oobsize=-1), "-1 is not an integer"),
    (lambda s: s["geometry"].update(writesize=True), "True is not an integer"),
    (lambda s: s["geometry"].update(type="ram"), "'ram' is not nor, nand or ubi"),
    (lambda s: s["geometry"].pop("size"), "'size'"),
    (lambda s: s.update(erase_counts=[0]), "erase_counts does not list 8 blocks"),
    (lambda s: s.update(bad_blocks=[99]), "99 is not an integer in 0..7"),
    (lambda s: s.update(wear_limits=[]), "wear_limits is not a dict"),
    (lambda s: s.update(bitflips={"9999999999": "corrected"}), "is not an integer in"),
    (lambda s: s.update(programmed_pages="not base64!"), ""),
    (lambda s: s.update(dirty="yes"), "dirty is not true or false"),
])
def test_a_damaged_sidecar_is_refused_on_open_with_the_reason(tmp_path, edit, reason):
    image = make(tmp_path, NAND)
    damage(image, edit)
    with pytest.raises(FlashOpenError, match="damaged simulator sidecar") as e:
        SimFlash(image)
    assert reason in str(e.value) and "flash create --force" in str(e.value)


@pytest.mark.parametrize("content", ["", "[]", "{", "null"], ids=["empty", "list", "torn", "null"])
def test_a_sidecar_that_is_not_a_json_object_is_refused(tmp_path, content):
    image = make(tmp_path, NAND)
    sidecar_of(image).write_text(content)
    with pytest.raises(FlashOpenError, match="damaged simulator sidecar"):
        SimFlash(image)


@pytest.mark.parametrize("geometry,message", [
    (Geometry(FlashType.NOR, 1024 * KIB, 3000, 1, 0), "erase size 3000 is not a power of two"),
    (Geometry(FlashType.NAND, 1024 * KIB, 128 * KIB, 7, 64), "page size 7 is not a power of two"),
    (Geometry(FlashType.NAND, 1024 * KIB, 128 * KIB, 256, 64), "at least 512 bytes"),
    (Geometry(FlashType.NAND, 1024 * KIB, 128 * KIB, 2048, -1), "oob size -1"),
    (Geometry(FlashType.NOR, 8 << 30, 64 * KIB, 1, 0), "more than an MTD device can have"),
])
def test_create_refuses_absurd_geometry(tmp_path, geometry, message):
    with pytest.raises(ValueError, match=message):
        SimFlash.create(tmp_path / "x.img", geometry)
    assert list(tmp_path.iterdir()) == []


def test_create_that_fails_midway_leaves_no_image(tmp_path, monkeypatch):
    writes = []

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            writes.append(len(data))
            if len(writes) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, mode="r", *a, **k:
                        Full(real_open(path, mode, *a, **k)) if mode == "wb"
                        else real_open(path, mode, *a, **k))
    with pytest.raises(OSError, match="No space left"):
        SimFlash.create(tmp_path / "x.img", NAND)
    assert list(tmp_path.iterdir()) == []


# -- the sidecar's JSON, without the json module (mtd/jsontext.py) --------------------------

def _document(rng, depth: int = 0):
    """A JSON-able value with what can go wrong in a reader: escapes, controls, surrogates,
    non-ASCII, big and negative numbers, floats, nesting, flat integer arrays."""
    roll = rng.random()
    if depth > 4 or roll < 0.3:
        kind = rng.randrange(6)
        if kind == 0:
            return rng.randint(-10 ** 20, 10 ** 20)
        if kind == 1:
            return rng.uniform(-1e6, 1e6) * 10 ** rng.randint(-30, 30)
        if kind == 2:
            return rng.choice([True, False, None])
        return "".join(rng.choice('ab"\\/\b\f\n\r\t\x00\x1f\x7f é€\U0001F600\ud800\udfff')
                       for _ in range(rng.randint(0, 8)))
    if roll < 0.6:
        return [_document(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    if roll < 0.7:
        return [rng.randint(-5, 10 ** 6) for _ in range(rng.randint(1, 30))]
    return {"".join(rng.choice('ab"é\n') for _ in range(rng.randint(0, 4))):
            _document(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def _read_both(text: str):
    from mtd.jsontext import loads
    found = []
    for read in (json.loads, loads):
        try:
            value = read(text)
        except (ValueError, RecursionError):     # json's scanner: RecursionError when deep
            found.append("refused")
        else:
            found.append(repr(value))
    # json.loads takes NaN and Infinity, which are not JSON: the sidecar never holds them.
    if found[0] != found[1] and found[1] == "refused" and any(
            w in text for w in ("NaN", "Infinity")):
        return found[1], found[1]
    return found


def test_the_sidecar_reader_reads_what_json_reads_and_refuses_what_it_refuses():
    import random
    rng = random.Random(25)
    for round_ in range(400):
        value = _document(rng)
        for options in ({}, {"ensure_ascii": False}, {"indent": 2}, {"separators": (",", ":")}):
            text = json.dumps(value, **options)
            json_reads, ours = _read_both(text)
            assert ours == json_reads != "refused", text
            if round_ % 20 == 0:
                for cut in range(len(text)):    # every truncation: a torn or damaged file
                    json_reads, ours = _read_both(text[:cut])
                    assert ours == json_reads, text[:cut]
    for text in ("01", "-", "1.", ".5", "1e", "1e+", "+1", "[1,]", "{,}", '{"a":1,}', "[01]",
                 "[1 2]", "[-0]", "tru", '"\\x"', '"\\u12g4"', "[" * 100000, "1 2", '"a\tb"',
                 '{"a" 1}', '"\\ud83d\\ude00"', "NaN", "-Infinity", ""):
        json_reads, ours = _read_both(text)
        assert ours == json_reads, text


def test_the_writer_writes_what_json_writes_character_for_character():
    import random
    from mtd.fields import fields
    from mtd.jsontext import dumps
    pair = fields("Pair", "a b")
    rng = random.Random(26)
    for _ in range(2000):
        value = _document(rng)
        # What the commands hand it besides: tuples (mtd.fields records), str subclasses
        # (FlashType), keys that are not strings, floats json writes its own way.
        value = [value, pair(FlashType.NAND, (1, -0.0)), {1: float("nan"), None: 1e16,
                                                           True: float("-inf")}]
        for options in ({}, {"indent": 2}, {"indent": 0},
                        {"separators": (",", ":"), "sort_keys": True}):
            if options.get("sort_keys"):
                value = value[0]
                if isinstance(value, dict):
                    value = dict(sorted(value.items()))
            assert dumps(value, **options) == json.dumps(value, **options), options
    for refused in (object(), {(1, 2): 3}, b"bytes", {1, 2}):
        with pytest.raises(TypeError):
            dumps(refused)


def test_opening_an_image_to_read_imports_no_json(tmp_path):
    image = tmp_path / "flash.img"
    SimFlash.create(image, NAND, bad_blocks=[3])
    with SimFlash(image, writable=True) as flash:
        flash.write(0, b"\0" * NAND.writesize)
    code = ("import sys; from mtd.sim import SimFlash; f = SimFlash(sys.argv[1]); "
            "print(f.read(0, 4).hex(), f.stats().programs, sorted(f.bad_blocks()), "
            "'json' in sys.modules, 're' in sys.modules)")
    done = subprocess.run([sys.executable, "-S", "-c", code, str(image)], capture_output=True,
                          text=True, check=True,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent)))
    assert done.stdout.split() == ["00000000", "1", "[3]", "False", "False"]
