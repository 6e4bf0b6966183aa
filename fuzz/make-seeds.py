#!/usr/bin/env python3
"""Writes the committed seed corpora under fuzz/seeds/<target>/.

Seeds are small on purpose (< 1 MiB per target): the reference's zTOCs at
span size 4194304 and the plain-tar one at 65536, their zinfo blobs, tiny
synthetic tars (ustar, GNU long names, PAX records) and gzip streams (one
member, several, empty, stored, with a file name), and sochi-built zTOCs of
the tiny tars when a `sochi` binary is given.

Usage: fuzz/make-seeds.py [FIXTURES_DIR] [SOCHI_BINARY]
(defaults: fixtures/, target/debug/sochi; run from the repo root)
"""

import gzip
import io
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "fixtures")
SOCHI = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "target", "debug", "sochi")
SEEDS = os.path.join(ROOT, "fuzz", "seeds")


def write(target, name, data):
    os.makedirs(os.path.join(SEEDS, target), exist_ok=True)
    with open(os.path.join(SEEDS, target, name), "wb") as f:
        f.write(data)


def fixture(name):
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


# --- tiny tars --------------------------------------------------------------

def make_tar(fmt, long_names=False, pax=False):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        def add(name, kind=tarfile.REGTYPE, data=b"", **kw):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            info.mtime = 1700000000
            info.uid, info.gid, info.uname, info.gname = 1000, 1000, "user", "group"
            for key, value in kw.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        add("dir/", tarfile.DIRTYPE, mode=0o755)
        add("dir/hello.txt", data=b"hello, world\n", mode=0o644)
        add("dir/empty", mode=0o600)
        add("dir/block", data=bytes(range(256)) * 3, mode=0o644)
        add("dir/link", tarfile.SYMTYPE, linkname="hello.txt")
        add("dir/hard", tarfile.LNKTYPE, linkname="dir/hello.txt")
        add("dir/fifo", tarfile.FIFOTYPE)
        add("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3)
        if long_names:
            add("d/" + "n" * 120, data=b"long name\n")
            add("s", tarfile.SYMTYPE, linkname="t" * 130)
        if pax:
            add("x", data=b"xattr\n", pax_headers={
                "SCHILY.xattr.user.k": "v",
                "mtime": "1700000000.123456789",
            })
            add("big-uid", data=b"", uid=1 << 22, uname="ü")
    data = buf.getvalue()
    # Drop tarfile's record padding after the two zero blocks.
    end = len(data)
    while end >= 1024 and data[end - 512:end] == bytes(512) and data[end - 1024:end - 512] == bytes(512):
        end -= 512
    return data[:end + 512]


tars = {
    "ustar.tar": make_tar(tarfile.USTAR_FORMAT),
    "gnu.tar": make_tar(tarfile.GNU_FORMAT, long_names=True),
    "pax.tar": make_tar(tarfile.PAX_FORMAT, long_names=True, pax=True),
}

# --- tiny gzip streams ------------------------------------------------------

def gz(data, level=6, name=None):
    buf = io.BytesIO()
    with gzip.GzipFile(filename=name or "", mode="wb", fileobj=buf, compresslevel=level, mtime=0) as f:
        f.write(data)
    return buf.getvalue()


text = b"".join(b"line %d of some text, repeated a bit\n" % i for i in range(300))
noise = bytes((i * 7919 + (i >> 3) * 31) & 0xFF for i in range(20000))
gzips = {
    "hello.gz": gz(b"hello\n"),
    "empty.gz": gz(b""),
    "text-9.gz": gz(text, 9),
    "stored.gz": gz(text[:3000], 0),
    "noise-1.gz": gz(noise + text, 1),
    "members.gz": gz(text[:500]) + gz(b"") + gz(noise[:3000], 1),
    "named.gz": gz(b"a named member\n", 6, name="layer.tar"),
    "pax-tar.gz": gz(tars["pax.tar"]),
    "zlib.z": zlib.compress(text, 6),
}
# The head of the fixture tar as three members, as multimember.tar.gz is
# (the whole fixture, 480 KB, would slow every run down tenfold).
head = fixture("plain.tar")[:96 * 1024]
gzips["plain-head-members.tar.gz"] = gz(head[:32768]) + gz(head[32768:40000], 9) + gz(head[40000:], 1)

# --- write -----------------------------------------------------------------

if os.path.isdir(SEEDS):
    shutil.rmtree(SEEDS)

# ztoc_reader: reference zTOCs, and sochi's of the tiny tars.
for name in ["pax-mixed.tar.gz", "gnu-mixed.tar.gz", "multimember.tar.gz", "plain.tar"]:
    write("ztoc_reader", name + ".4194304.ztoc", fixture(name + ".4194304.ztoc"))
write("ztoc_reader", "plain.tar.65536.ztoc", fixture("plain.tar.65536.ztoc"))
if os.access(SOCHI, os.X_OK):
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in [("pax.tar", tars["pax.tar"]), ("gnu.tar.gz", gz(tars["gnu.tar"]))]:
            for span in [512, 4096]:
                layer = os.path.join(tmp, name)
                with open(layer, "wb") as f:
                    f.write(data)
                out = os.path.join(tmp, "out.ztoc")
                subprocess.run([SOCHI, "--root", tmp, "ztoc", "build", "--span-size", str(span),
                                "-o", out, layer], check=True, stdout=subprocess.DEVNULL)
                with open(out, "rb") as f:
                    write("ztoc_reader", "sochi-%s.%d.ztoc" % (name, span), f.read())


# ztoc_extract: 4-byte zTOC length + zTOC + layer, built by sochi.
def make_spans_tar():
    """A few files large enough to cross checkpoints at a small span size."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i, data in enumerate([noise[:9000], text[:12000], noise[5000:17000], b"end\n"]):
            info = tarfile.TarInfo("f%d" % i)
            info.size, info.mtime = len(data), 1700000000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


spans_tar = make_spans_tar()
if os.access(SOCHI, os.X_OK):
    with tempfile.TemporaryDirectory() as tmp:
        layers = [
            ("pax.tar", tars["pax.tar"], 512),
            ("gnu.tar.gz", gz(tars["gnu.tar"]), 4096),
            ("spans.tar.gz", gz(spans_tar[:20480], 1) + gz(spans_tar[20480:], 6), 8192),
        ]
        for name, data, span in layers:
            layer = os.path.join(tmp, name)
            with open(layer, "wb") as f:
                f.write(data)
            out = os.path.join(tmp, "out.ztoc")
            subprocess.run([SOCHI, "--root", tmp, "ztoc", "build", "--span-size", str(span),
                            "-o", out, layer], check=True, stdout=subprocess.DEVNULL)
            with open(out, "rb") as f:
                ztoc = f.read()
            write("ztoc_extract", name, struct.pack("<I", len(ztoc)) + ztoc + data)


# manifests: selector byte (0 manifest, 1 index, 2 SOCI index, 3 prefetch,
# 4 image config, 5 platform or digest string) + document.
def json_seeds():
    import json as _json
    blobs = []
    for layout in ["image", "index-v1", "converted"]:
        base = os.path.join(FIXTURES, layout)
        for path in [os.path.join(base, "index.json")] + [
                os.path.join(base, "blobs", "sha256", n)
                for n in sorted(os.listdir(os.path.join(base, "blobs", "sha256")))]:
            if os.path.getsize(path) > 20000:
                continue
            with open(path, "rb") as f:
                data = f.read()
            try:
                doc = _json.loads(data)
            except ValueError:
                continue
            if not isinstance(doc, dict):
                continue
            media = doc.get("config", {}).get("mediaType", "") if isinstance(doc.get("config"), dict) else ""
            if "manifests" in doc:
                kind = 1
            elif "soci" in media:
                kind = 2
            elif "layers" in doc:
                kind = 0
            elif "architecture" in doc:
                kind = 4
            else:
                continue
            blobs.append(("%s-%s" % (layout, os.path.basename(path)[:12]), kind, data))
    return blobs


for name, kind, data in json_seeds():
    write("manifests", name, bytes([kind]) + data)
write("manifests", "prefetch", b"\x03" + b'{"version":"1.0","prefetch_spans":[{"start_span":0,"end_span":3,"priority":1}]}')
for i, text in enumerate([b"linux/amd64", b"linux/arm64/v8", b"windows/amd64",
                          b"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"]):
    write("manifests", "string-%d" % i, b"\x05" + text)


# zinfo_reader: selector byte (0 gzip, 1 uncompressed) + blob.
def ztoc_checkpoints(blob):
    """CompressionInfo.checkpoints of a zTOC (slot 5, then slot 3)."""
    def u32(at):
        return struct.unpack_from("<I", blob, at)[0]

    def field(table, slot):
        vtable = table - struct.unpack_from("<i", blob, table)[0]
        vlen = struct.unpack_from("<H", blob, vtable)[0]
        entry = 4 + 2 * slot
        voff = struct.unpack_from("<H", blob, vtable + entry)[0] if entry < vlen else 0
        return table + voff if voff else None

    root = u32(0)
    at = field(root, 5)
    info = at + u32(at)
    at = field(info, 3)
    vec = at + u32(at)
    return blob[vec + 4:vec + 4 + u32(vec)]


def zinfo_v2(span, checkpoints):
    out = struct.pack("<iq", len(checkpoints), span)
    for compressed, uncompressed, bits, fill in checkpoints:
        out += struct.pack("<qqB", compressed, uncompressed, bits) + bytes([fill]) * 32768
    return out


write("zinfo_reader", "plain.tar.65536", b"\x01" + ztoc_checkpoints(fixture("plain.tar.65536.ztoc")))
write("zinfo_reader", "plain.tar.4194304", b"\x01" + ztoc_checkpoints(fixture("plain.tar.4194304.ztoc")))
write("zinfo_reader", "pax-mixed.4194304", b"\x00" + ztoc_checkpoints(fixture("pax-mixed.tar.gz.4194304.ztoc")))
write("zinfo_reader", "v2-two", b"\x00" + zinfo_v2(65536, [(10, 0, 0, 0), (5000, 70000, 3, 7)]))
write("zinfo_reader", "v1-one", b"\x00" + struct.pack("<iq", 1, 65536))
# A legacy v1 blob: two checkpoints, the first (in 10, out 0) implied.
write("zinfo_reader", "v1-two", b"\x00" + struct.pack("<iq", 2, 65536) + zinfo_v2(65536, [(5000, 70000, 3, 7)])[12:])

# tar_reader: the tiny tars, and the head of the fixture tar.
for name, data in tars.items():
    write("tar_reader", name, data)
write("tar_reader", "plain-head.tar", fixture("plain.tar")[:65536])

# checkpoint_builder: 3 bytes (span size: byte0 << byte1 % 20; skip) + gzip.
for name, data in gzips.items():
    write("checkpoint_builder", name + ".0", b"\x00\x00\x55" + data)
    write("checkpoint_builder", name + ".1k", b"\x01\x0a\x80" + data)


# corrupt_checkpoint: 8 bytes of damage (see the target) + gzip.
for i, (name, data) in enumerate(gzips.items()):
    write("corrupt_checkpoint", name, bytes([0, 1, 0x12, 0x34 + i, 1 << (i % 8), i, 0, 0x20]) + data)


# zinfo_reader: sochi's zstd zinfo (selector 2): two spans, compressed
# digests; and one span of a zstd:chunked layer (uncompressed digests).
def frame_zinfo(flags, spans):
    out = b"sochizf1" + struct.pack("<II", flags, len(spans))
    for start, end, uncompressed in spans:
        out += struct.pack("<QQQ", start, end, uncompressed)
    return out


write("zinfo_reader", "zstd-two", b"\x02" + frame_zinfo(0, [(0, 100, 0), (100, 250, 4096)]))
write("zinfo_reader", "zstd-chunked-one", b"\x02" + frame_zinfo(1, [(120, 180, 0)]))


# zstd_layers: byte 0 picks the parser (0 frame map, 1 position, 2 table).
def zstd_frame(data):
    return subprocess.run(["zstd", "-q", "-c", "-3"], input=data, check=True, stdout=subprocess.PIPE).stdout


skippable = struct.pack("<II", 0x184D2A50, 4) + b"toc!"
frames = zstd_frame(b"header" * 100) + zstd_frame(b"data" * 1000) + skippable
write("zstd_layers", "frames", b"\x00" + frames)
footer = struct.pack("<II", 0x184D2A50, 40) + struct.pack("<QQQQ", 10, 20, 30, 1) + b"GnUlInUx"
write("zstd_layers", "footer", b"\x01" + bytes(64) + footer)
write("zstd_layers", "annotation", b"\x01" + b"10:20:30:1" + bytes(40))
digest = "sha256:" + "3d9f2889d6782537624a4e1a10e68a2ddd53e0ee8bac02676f27308f42ec6bf6"
table = (
    '{"version":1,"entries":['
    '{"type":"dir","name":"bin/","mode":493},'
    '{"type":"symlink","name":"bin/sh","linkName":"/bin/busybox","mode":511},'
    '{"type":"reg","name":"bin/busybox","mode":493,"size":5000,"digest":"%s",'
    '"offset":167,"endOffset":900,"chunkSize":1755,"chunkDigest":"%s"},'
    '{"type":"chunk","name":"bin/busybox","offset":674,"chunkSize":2341,"chunkOffset":1755,'
    '"chunkDigest":"%s","chunkType":"zeros"},'
    '{"type":"chunk","name":"bin/busybox","offset":697,"chunkSize":904,"chunkOffset":4096,'
    '"chunkDigest":"%s"},'
    '{"type":"reg","name":"etc/hostname","size":6,"digest":"%s","offset":950,"endOffset":990,'
    '"xattrs":{"user.a":"eA=="}}]}' % ((digest,) * 5)
)
write("zstd_layers", "table", b"\x02" + table.encode() + b" " * (1000 - len(table)))

# zstd_frame_index: byte 0 the span size (1 << (byte0 % 24)), then a tiny
# tar cut into zstd frames, a skippable frame at the end.
for name, data in list(tars.items())[:2]:
    pieces = [data[i:i + 700] for i in range(0, len(data), 700)]
    blob = b"".join(zstd_frame(piece) for piece in pieces) + skippable
    write("zstd_frame_index", name + ".frames", b"\x0a" + blob)
    write("zstd_frame_index", name + ".one", b"\x0a" + zstd_frame(data))
