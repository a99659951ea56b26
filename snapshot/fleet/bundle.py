"""Bundles: a snapshot of a reference router turned into one signed file that other routers
of the same firmware apply as a snapshot on trial (FORMAT.md §7, DESIGN.md §15).

    SnpB header | manifest (canonical JSON) | usign signature of the manifest | payload

The manifest names what the bundle applies to (boards, the firmware by its id: firmware.py,
the base chain: the content hashes of the confirmed snapshots below it) and the payload's
length and SHA-256; the signature covers the manifest, so it covers the payload too. A router
checks the signature, the board, the firmware and the base before it writes anything; then
it streams the payload straight from the file or the HTTP response into free blocks, checks
the payload's hash, and only then commits, once: a power cut or a bad byte before that
commit leaves free blocks and the old chain.
"""
import binascii
import hashlib
import os
import struct

from mtd.fields import fields
from mtd.jsontext import dumps, loads
from snapshot import kept
from snapshot.errors import ChainDamaged, FlashFull, RecordDamaged, SnapshotError
from snapshot.fleet import firmware
from snapshot.store import trial as trials
from snapshot.store.chain import KEEP, Chain, Record, RecordWriter, commit, rewrite
from snapshot.store.format import (COMPRESSIONS, CONFIRMED, MAX_MESSAGE, SNAPSHOT, Layout,
                                   RecordHeader)

MAGIC = b"SnpB"
#: FORMAT.md §9: each bundle format, by the firmware id its manifest's `rootfs` is.
FIRMWARE_IDS = {1: firmware.TREE, 2: firmware.SQUASHFS}
VERSION = 2                              # the newest
HEADER = struct.Struct("<4sHHII")       # magic, version, 0, manifest length, signature length
MAX_MANIFEST = 64 * 1024
MAX_SIGNATURE = 4096
#: A payload's length and a creation time fit a record's 64-bit fields (FORMAT.md §3, §5).
LIMIT_64 = 1 << 64
KEYS = {"format", "boards", "rootfs", "base", "message", "created", "payload"}
PAYLOAD_KEYS = {"compression", "length", "sha256"}
_HEX = frozenset("0123456789abcdef")
CHUNK = 64 * 1024
COMPRESSION_NAMES = {v: k for k, v in COMPRESSIONS.items()}


class BundleRefused(SnapshotError):
    """A bundle this router does not apply; nothing was written."""


# Paths are strings or path-like objects, used through os.path, and the records are
# mtd.fields tuples: `bundle apply` runs on a router's CPU, where pathlib and typing would add
# urllib.parse, ipaddress, fnmatch and typing's own weight to every run.

class Bundle(fields("Bundle", "manifest manifest_bytes signature")):
    # manifest: dict, manifest_bytes: bytes, signature: bytes
    __slots__ = ()

    @property
    def id(self) -> str:
        """The bundle's name: the first 16 hex digits of its manifest's SHA-256."""
        return hashlib.sha256(self.manifest_bytes).hexdigest()[:16]

    @property
    def payload_offset(self) -> int:
        return HEADER.size + len(self.manifest_bytes) + len(self.signature)

    @property
    def size(self) -> int:
        return self.payload_offset + self.manifest["payload"]["length"]


# -- what a router is ---------------------------------------------------------------------------

#: The content hashes this process has computed, by the record's identity on its device: a
#: poll reads the base once to choose the rollout and apply finds it here, not on flash again.
_HASHES: dict[tuple, str] = {}


def content_hash(chain: Chain, record: Record) -> str:
    """SHA-256 of a record's payload as stored: equal on every router that holds the record
    from the same bundle, or from the same reference snapshot."""
    entry = record.entry
    key = (chain.flash.name, entry.seq, entry.gen, entry.payload_length, entry.payload_crc,
           entry.header_crc)
    if key in _HASHES:
        return _HASHES[key]
    digest = hashlib.sha256()
    try:
        source = chain.payload(record)
        while chunk := source.read(CHUNK):
            digest.update(chunk)
    except RecordDamaged as e:
        raise ChainDamaged(f"{e}; run `snapshot check --repair` first; nothing was "
                           f"written") from None
    _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def base(chain: Chain) -> list[str]:
    """The content hashes of the confirmed snapshots, in order."""
    return [content_hash(chain, r) for r in chain.snapshots if r.entry.state == CONFIRMED]


def _beside(path, name: str) -> str:
    """A file in `path`'s directory: where a temporary file for `path` goes."""
    return os.path.join(os.path.dirname(os.fspath(path)), name)


def board(board_file) -> str:
    """The router's board name, as OpenWrt's board detection wrote it."""
    try:
        with open(board_file, encoding="utf-8", errors="surrogateescape") as f:
            name = f.read().strip()
    except OSError as e:
        raise SnapshotError(f"{board_file}: cannot read the board name: {e.strerror} "
                            f"(option board_file)") from None
    if not name:
        raise SnapshotError(f"{board_file} is empty: the board name is unknown")
    return name


def tagged(bundle_id: str, message: str) -> str:
    return f"bundle {bundle_id}: {message}".encode()[:MAX_MESSAGE].decode(errors="ignore")


# -- making one ---------------------------------------------------------------------------------

def manifest_bytes(manifest: dict) -> bytes:
    """The canonical form: the same manifest gives the same bytes."""
    return dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def create(chain: Chain, first: int, last: int, out, boards: list[str], rom,
           message: str | None = None, key=None) -> Bundle:
    """Write snapshots first..last of `chain` as a bundle to `out`: one payload, the record's
    own bytes for one snapshot, the merge squash makes for several. The snapshots below
    `first` are its base and must be confirmed; so must first..last. The firmware is the one
    at `rom`: format 2 (its squashfs id) for a mounted squashfs or an image, format 1 (its
    tree id) for an unpacked root. Written to a temporary file beside `out` and renamed, so
    `out` is whole or as it was."""
    from snapshot import squash
    kind = firmware.kind(rom)
    version = next(v for v, of in FIRMWARE_IDS.items() if of == kind)
    rootfs = firmware.identity(rom, kind)
    count = len(chain.snapshots)
    if not 1 <= first <= last <= count:
        raise SnapshotError(f"snapshots {first}..{last} are not in the chain (it has "
                            f"{count})")
    for index, record in enumerate(chain.snapshots[:last]):
        if record.entry.state != CONFIRMED:
            raise SnapshotError(f"snapshot {index + 1} is not confirmed: a bundle is built "
                                f"from confirmed snapshots only")
    if not boards:
        raise SnapshotError("name at least one compatible board (--board)")
    records = chain.snapshots[first - 1:last]
    newest = records[-1].entry
    message = newest.message if message is None else message
    below = [content_hash(chain, r) for r in chain.snapshots[:first - 1]]
    tmp = _beside(out, f".{os.path.basename(out)}.new")
    try:
        with open(tmp, "w+b") as f:
            if len(records) == 1:
                compression = newest.compression
                source = chain.payload(records[0])
                while chunk := source.read(CHUNK):
                    f.write(chunk)
            else:
                compression = newest.compression
                merge = squash.plan(chain, records)
                squash.merged(f, chain, records, merge, compression)
            length = f.tell()
            f.seek(0)
            digest = hashlib.sha256()
            while chunk := f.read(CHUNK):
                digest.update(chunk)
            manifest = {"format": version, "boards": sorted(set(boards)), "rootfs": rootfs,
                        "base": below, "message": message,
                        "created": max(r.entry.created for r in records),
                        "payload": {"compression": COMPRESSION_NAMES[compression],
                                    "length": length, "sha256": digest.hexdigest()}}
            data = manifest_bytes(manifest)
            signature = sign_bytes(data, key) if key else b""
            _write(out, version, data, signature, f)
    finally:
        kept.forget(tmp)
    return Bundle(manifest, data, signature)


def _write(out, version: int, data: bytes, signature: bytes, payload) -> None:
    import shutil
    tmp = _beside(out, f".{os.path.basename(out)}.part")
    try:
        with open(tmp, "wb") as f:
            f.write(HEADER.pack(MAGIC, version, 0, len(data), len(signature)))
            f.write(data)
            f.write(signature)
            payload.seek(0)
            shutil.copyfileobj(payload, f, CHUNK)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        kept.forget(tmp)


def sign(path, key) -> Bundle:
    """Sign the bundle at `path` with the usign secret key `key`, replacing any signature."""
    with open(path, "rb") as f:
        bundle = read_head(f, str(path))
        f.seek(bundle.payload_offset)
        signature = sign_bytes(bundle.manifest_bytes, key)
        _write(path, bundle.manifest["format"], bundle.manifest_bytes, signature,
               _Offset(f, bundle.payload_offset))
    return bundle._replace(signature=signature)


class _Offset:
    """A file read from `start` on, for copyfileobj."""

    def __init__(self, f, start: int):
        self.f, self.start = f, start

    def seek(self, n: int) -> None:
        self.f.seek(self.start + n)

    def read(self, n: int = -1) -> bytes:
        return self.f.read(n)


# -- usign ----------------------------------------------------------------------------------------

#: A usign signature file is a comment line, then the base64 of "Ed", the signing key's 8-byte
#: fingerprint and the 64-byte ed25519 signature (usign's struct sig).
SIG_LENGTH = 2 + 8 + 64


NOT_INSTALLED = "usign is not installed: it signs and verifies bundles"


def sign_bytes(data: bytes, key) -> bytes:
    import subprocess
    import tempfile
    if not os.path.isfile(key):
        raise SnapshotError(f"{key}: no such secret key")
    # usign maps the message it signs: a file, not a pipe. The signature comes on stdout.
    with tempfile.NamedTemporaryFile(prefix="snapshot-sign-") as message:
        message.write(data)
        message.flush()
        try:
            done = subprocess.run(["usign", "-S", "-m", message.name, "-s", str(key), "-x",
                                   "-"], capture_output=True)
        except FileNotFoundError:
            raise SnapshotError(NOT_INSTALLED) from None
    if done.returncode != 0:
        raise SnapshotError(f"{key}: usign cannot sign with it: "
                            f"{done.stderr.decode(errors='replace').strip() or 'no reason given'}")
    return done.stdout


def _decoded(signature: bytes) -> bytes | None:
    """The signature's binary form (usign's struct sig), or None for what is not one."""
    _, line, encoded = signature.partition(b"\n")
    if not line:
        return None
    try:
        # usign skips whitespace in the base64, and nothing else.
        raw = binascii.a2b_base64(b"".join(encoded.split()), strict_mode=True)
    except binascii.Error:
        return None
    return raw if len(raw) == SIG_LENGTH and raw[:2] == b"Ed" else None


def fingerprint(signature: bytes) -> str:
    """The fingerprint of the key that made `signature` (what `usign -F -x` prints): the name
    of its public key in a keys directory."""
    raw = _decoded(signature)
    if raw is None:
        raise BundleRefused("the bundle's signature is not a usign signature; nothing was "
                            "written")
    return raw[2:10].hex()


def verify_bytes(data: bytes, signature: bytes, public_key) -> bool:
    """Whether usign finds `signature` of `data` good against `public_key`: one usign run,
    the message on its stdin, the signature (as `fingerprint` read it) through a pipe, so
    the key whose role the caller checked is the key usign verifies with."""
    raw = _decoded(signature)
    if raw is None:
        return False
    # usign is started with posix_spawn, not subprocess: `bundle apply` and `fleet poll` run
    # this on a router's CPU, where importing subprocess (with threading, selectors, signal's
    # enums and locale) costs a quarter of an apply. Its output is not wanted (-q; the exit
    # status says it all), so there is nothing to read back while the message is written.
    sig_read, sig_write = os.pipe()
    msg_read, msg_write = os.pipe()
    child = None
    try:
        # One line of base64, far less than a pipe holds: written whole before usign starts.
        os.write(sig_write, b"untrusted comment: \n" + binascii.b2a_base64(raw))
        os.close(sig_write)
        sig_write = -1
        os.set_inheritable(sig_read, True)
        try:
            child = os.posix_spawnp("usign", [
                "usign", "-V", "-q", "-m", "-", "-x", f"/proc/self/fd/{sig_read}", "-p",
                os.fspath(public_key)], os.environ, file_actions=[
                (os.POSIX_SPAWN_DUP2, msg_read, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)])
        except FileNotFoundError:
            raise SnapshotError(NOT_INSTALLED) from None
        os.close(msg_read)
        msg_read = -1
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(msg_write, view):]
        except BrokenPipeError:
            pass    # usign stopped reading: its exit status says why
        os.close(msg_write)
        msg_write = -1
        _, status = os.waitpid(child, 0)
        child = None
    finally:
        for fd in (sig_read, sig_write, msg_read, msg_write):
            if fd >= 0:
                os.close(fd)
        if child is not None:
            os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status) == 0


def verify(bundle: Bundle, keys_dir) -> str:
    """The fingerprint of the trusted key that signed the manifest, or BundleRefused."""
    if not bundle.signature:
        raise BundleRefused(f"bundle {bundle.id} is not signed (snapshot bundle sign); "
                            f"nothing was written")
    key = fingerprint(bundle.signature)
    public_key = os.path.join(keys_dir, key)
    if not os.path.isfile(public_key):
        raise BundleRefused(f"bundle {bundle.id} is signed by key {key}, which {keys_dir} "
                            f"does not trust; nothing was written")
    if not verify_bytes(bundle.manifest_bytes, bundle.signature, public_key):
        raise BundleRefused(f"bundle {bundle.id}: bad signature (key {key}): the bundle was "
                            f"changed after it was signed; nothing was written")
    return key


# -- reading one ----------------------------------------------------------------------------------

def _exactly(stream, n: int, what: str, name: str) -> bytes:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            raise BundleRefused(f"{name}: truncated: it ends inside the {what}; nothing was "
                                f"written")
        data += chunk
    return data


def read_head(stream, name: str) -> Bundle:
    """The header, manifest and signature, read from the start of `stream`; BundleRefused for
    anything that is not a whole, well-formed bundle head."""
    magic, version, zero, mlen, slen = HEADER.unpack(_exactly(stream, HEADER.size, "header",
                                                              name))
    if magic != MAGIC:
        raise BundleRefused(f"{name} is not a snapshot bundle; nothing was written")
    if version not in FIRMWARE_IDS or zero:
        raise BundleRefused(f"{name}: bundle format {version} is not one this snapshot reads "
                            f"({', '.join(map(str, FIRMWARE_IDS))}); nothing was written")
    if mlen > MAX_MANIFEST or slen > MAX_SIGNATURE:
        raise BundleRefused(f"{name}: corrupted: the header gives impossible lengths; "
                            f"nothing was written")
    data = _exactly(stream, mlen, "manifest", name)
    signature = _exactly(stream, slen, "signature", name)
    try:
        manifest = loads(data.decode("utf-8"))
    except (ValueError, RecursionError):    # RecursionError: nested too deeply
        manifest = None
    if not _well_formed(manifest, version) or manifest_bytes(manifest) != data:
        raise BundleRefused(f"{name}: corrupted: the manifest does not parse; nothing was "
                            f"written")
    return Bundle(manifest, data, signature)


def _well_formed(manifest, version: int) -> bool:
    """Whether a parsed manifest has exactly the keys of FORMAT.md §9, each of its type and
    within its field's limits, so that nothing downstream meets a value it cannot hold; its
    format is the header's."""
    if not (isinstance(manifest, dict) and manifest.keys() == KEYS):
        return False
    payload = manifest["payload"]
    return (_number(manifest["format"]) and manifest["format"] == version
            and isinstance(manifest["boards"], list) and all(map(_text, manifest["boards"]))
            and isinstance(manifest["base"], list) and all(map(_hash, manifest["base"]))
            and _hash(manifest["rootfs"]) and _text(manifest["message"])
            and _number(manifest["created"])
            and isinstance(payload, dict) and payload.keys() == PAYLOAD_KEYS
            and isinstance(payload["compression"], str)
            and payload["compression"] in COMPRESSIONS
            and _number(payload["length"]) and _hash(payload["sha256"]))


def _number(value) -> bool:
    return type(value) is int and 0 <= value < LIMIT_64


def _text(value) -> bool:
    """A string that UTF-8 can hold (JSON's \\ud800 escapes give lone surrogates)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _hash(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and _HEX.issuperset(value)


def describe(bundle: Bundle) -> dict:
    m = bundle.manifest
    return {"id": bundle.id, "signed": bool(bundle.signature), "boards": m["boards"],
            "rootfs": m["rootfs"], "base": m["base"], "message": m["message"],
            "created": m["created"], "payload": m["payload"], "size": bundle.size}


# -- applying one ---------------------------------------------------------------------------------

class Router(fields("Router", "keys_dir board rom")):
    """What a bundle is checked against: the trusted keys (a directory), this board, this
    firmware root (option rom, whose id is computed of the kind the bundle names)."""
    __slots__ = ()


def check(bundle: Bundle, router: Router) -> None:
    """Signature, board and firmware; BundleRefused with the reason."""
    verify(bundle, router.keys_dir)
    m = bundle.manifest
    if router.board not in m["boards"]:
        raise BundleRefused(f"bundle {bundle.id} is for {', '.join(m['boards'])}, and this "
                            f"router is {router.board}; nothing was written")
    of = FIRMWARE_IDS[m["format"]]
    try:
        mine = firmware.identity(router.rom, of)
    except SnapshotError as e:
        raise BundleRefused(f"bundle {bundle.id} names its firmware by its {of} id, which "
                            f"this router cannot compute ({e}); nothing was written") from None
    if m["rootfs"] != mine:
        raise BundleRefused(f"bundle {bundle.id} is for another firmware ({of} "
                            f"{m['rootfs'][:16]}, this router runs {mine[:16]}); "
                            f"nothing was written")


def check_file(stream, bundle: Bundle, name: str) -> None:
    """For a bundle read from a file: its length and payload hash, checked before the chain is
    opened, so that a truncated or corrupted file writes nothing at all. A download is
    checked as it streams (apply)."""
    try:
        size = os.fstat(stream.fileno()).st_size
    except (AttributeError, OSError):
        return
    if size < bundle.size:
        raise BundleRefused(f"{name}: truncated: {size} bytes of {bundle.size}; nothing was "
                            f"written")
    if size > bundle.size:
        raise BundleRefused(f"{name}: corrupted: {size - bundle.size} bytes follow the "
                            f"payload; nothing was written")
    digest = hashlib.sha256()
    stream.seek(bundle.payload_offset)
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
    stream.seek(bundle.payload_offset)
    if digest.hexdigest() != bundle.manifest["payload"]["sha256"]:
        raise BundleRefused(f"{name}: corrupted: the payload's SHA-256 is not the one the "
                            f"signed manifest gives; nothing was written")


def already(chain: Chain, bundle: Bundle) -> str | None:
    """How the chain already holds the bundle (pending or confirmed), or None."""
    found = trials.bundle_applied(chain)
    if found and found["id"] == bundle.id and found["state"] != "failed":
        return f"bundle {bundle.id} is snapshot {found['snapshot']} ({found['state']})"
    return None


def copy_counted(stream, write, length: int) -> tuple[str, int, bool]:
    """Copy at most `length` bytes of `stream` to `write`, in CHUNK pieces: the SHA-256 of
    what was copied, how many bytes that was (fewer: the stream ended early), and whether
    more bytes followed them. Never reads more than one byte past `length`."""
    digest, left = hashlib.sha256(), length
    while left:
        chunk = stream.read(min(CHUNK, left))
        if not chunk:
            break
        digest.update(chunk)
        write(chunk)
        left -= len(chunk)
    return digest.hexdigest(), length - left, not left and bool(stream.read(1))


def apply(chain: Chain, stream, bundle: Bundle, max_attempts: int, name: str,
          progress=None, fleet=KEEP) -> dict:
    """Stream the bundle's payload (read from `stream`, just after its head) into free blocks
    and commit it as a snapshot on trial on top of the base it names; the volatile record
    stays on top of it (a copy, in the same commit) and the one there was is kept for a
    failure, as a save during a trial leaves them. Everything that can refuse it does so
    before the first write; a payload whose length or hash is wrong refuses it before the
    commit. `fleet`: the fleet entry that commit lists (a poll's newly accepted channel)."""
    trials.refuse_while_pending(chain, "applying a bundle")
    if chain.problems:
        raise ChainDamaged(f"{chain.problems[0]}; run `snapshot check --repair` first")
    m = bundle.manifest
    snapshots = chain.view()[0]
    have = base(chain)
    if have != m["base"] or len(snapshots) != len(have):
        need = len(m["base"])
        raise BundleRefused(
            f"bundle {bundle.id} applies on top of {need} snapshot{'s' * (need != 1)} "
            f"{_short(m['base'])}, and this router has {len(have)} confirmed: "
            f"{_short(have)}; nothing was written")
    payload = m["payload"]
    _room(chain, payload["length"], m["message"])
    writer = RecordWriter(chain, SNAPSHOT, len(snapshots) + 1, tagged(bundle.id, m["message"]),
                          COMPRESSIONS[payload["compression"]], progress, m["created"])
    digest, copied, more = copy_counted(stream, writer.write, payload["length"])
    if copied < payload["length"]:
        raise BundleRefused(f"{name}: truncated: the payload ends "
                            f"{payload['length'] - copied} bytes short; nothing was committed")
    if more:
        raise BundleRefused(f"{name}: corrupted: bytes follow the payload; nothing was "
                            f"committed")
    if digest != payload["sha256"]:
        raise BundleRefused(f"{name}: corrupted: the payload's SHA-256 is not the one the "
                            f"signed manifest gives; nothing was committed")
    entry = writer.finish()
    volatile = chain.volatile
    entries = trials.start([r.entry for r in snapshots] +
                           ([volatile.entry] if volatile else []), entry, max_attempts)
    if volatile is not None:
        entries.append(rewrite(chain, volatile, progress))
    commit(chain, entries, fleet=fleet)
    return {"applied": bundle.id, "snapshot": len(snapshots) + 1, "message": m["message"],
            "max_attempts": max_attempts, "volatile_kept": volatile is not None}


def apply_from(source: str, chain: Chain, settings: dict, max_attempts: int, log,
               progress=None) -> dict:
    """`snapshot bundle apply SOURCE`: read the head, check it against this router (the
    trusted keys, board and firmware root of `settings`), and apply it, logging the outcome
    (`log`: text.SysLog). `{"applied": None, "already": ...}` for a bundle the chain holds."""
    from snapshot.fleet import fetch
    with fetch.open_source(source) as stream:
        try:
            made = read_head(stream, source)
            check(made, Router(settings["keys_dir"], board(settings["board_file"]),
                               settings["rom"]))
            check_file(stream, made, source)
            done = already(chain, made)
            if done:
                return {"applied": None, "already": done}
            result = apply(chain, stream, made, max_attempts, source, progress)
        except BundleRefused as e:
            log(f"bundle refused: {e}", loud=True)
            raise
    log(f"bundle {made.id} applied as snapshot {result['snapshot']} on trial: "
        f"{made.manifest['message']}")
    return result


def _short(hashes: list[str]) -> str:
    return "[" + ", ".join(h[:12] for h in hashes) + "]"


def _room(chain: Chain, length: int, message: str) -> None:
    """FlashFull before anything is written unless the free blocks hold the record and a
    copy of the volatile record."""
    g = chain.flash.geometry

    def blocks(header_size: int, payload_length: int) -> int:
        return -(-Layout(header_size, payload_length, g.writesize).end // g.erasesize)

    header = RecordHeader(SNAPSHOT, 0, 1, 0, 0, tagged("0" * 16, message)).size
    needed = blocks(header, length)
    volatile = chain.volatile
    if volatile is not None:
        needed += blocks(volatile.layout.header_size, volatile.entry.payload_length)
    free = len(chain.free_blocks())
    if needed > free:
        raise FlashFull(f"{chain.flash.name}: the bundle needs {needed} free blocks "
                        f"({needed * g.erasesize // 1024} KiB) and {free} are free; nothing "
                        f"was written")
