#!/usr/bin/env python3
"""Writes the seed corpus of the NBD fuzz targets (fuzz/corpus/): the client's
bytes of whole sessions, valid and slightly broken, so the fuzzer starts in
transmission as well as in option haggling. Re-run after a protocol change:
    python3 fuzz/make_corpus.py
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
IHAVEOPT = 0x49484156454F5054
REQ = 0x25609513
(EXPORT_NAME, ABORT, LIST, STARTTLS, INFO, GO, STRUCTURED, LIST_META, SET_META) = (1, 2, 3, 5, 6, 7, 8, 9, 10)
(READ, WRITE, DISC, FLUSH, TRIM, CACHE, WZ, BS) = range(8)
FUA, NO_HOLE, DF, REQ_ONE = 1, 2, 4, 8


def opt(o, data=b""):
    return struct.pack(">QII", IHAVEOPT, o, len(data)) + data


def go_data(name=b"disk", infos=(1, 3)):
    return struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos)) + b"".join(
        struct.pack(">H", i) for i in infos)


def meta(name=b"disk", queries=(b"base:allocation",)):
    d = struct.pack(">I", len(name)) + name + struct.pack(">I", len(queries))
    for q in queries:
        d += struct.pack(">I", len(q)) + q
    return d


def req(cmd, offset=0, length=0, flags=0, cookie=1, payload=b""):
    return struct.pack(">IHHQQI", REQ, flags, cmd, cookie, offset, length) + payload


FLAGS = struct.pack(">I", 3)  # FIXED_NEWSTYLE | NO_ZEROES
TRANSMISSION = b"".join([
    req(WRITE, 0, 4096, FUA, 1, b"\xab" * 4096),
    req(READ, 0, 4096, DF, 2),
    req(WRITE, 65536, 512, 0, 3, b"\x11" * 512),
    req(BS, 0, 1 << 20, 0, 4),
    req(BS, 4096, 8192, REQ_ONE, 5),
    req(CACHE, 0, 65536, 0, 6),
    req(TRIM, 8192, 4096, 0, 7),
    req(WZ, 16384, 4096, NO_HOLE, 8),
    req(WZ, 16384, 4096, FUA, 9),
    req(FLUSH, 0, 0, 0, 10),
    req(READ, 0, 0, 0, 11),
    req(READ, (1 << 20) - 512, 1024, 0, 12),
    req(WRITE, (1 << 20) - 512, 1024, 0, 13, b"\x22" * 1024),
    req(99, 0, 0, 0, 14),
    req(DISC),
])

SEEDS = {
    "structured_go": FLAGS + opt(STRUCTURED) + opt(SET_META, meta()) + opt(GO, go_data()) + TRANSMISSION,
    "simple_go": FLAGS + opt(GO, go_data(b"", ())) + TRANSMISSION,
    "export_name": struct.pack(">I", 1) + opt(EXPORT_NAME, b"disk") + TRANSMISSION,
    "haggling": FLAGS + opt(LIST) + opt(LIST, b"x") + opt(INFO, go_data()) + opt(INFO, go_data(b"nope"))
    + opt(STARTTLS) + opt(STRUCTURED, b"x") + opt(LIST_META, meta(b"", ())) + opt(STRUCTURED)
    + opt(LIST_META, meta(b"disk", (b"base:", b"qemu:x"))) + opt(SET_META, meta(b"disk", (b"base:",)))
    + opt(SET_META, meta(b"other")) + opt(4242, b"junk") + opt(ABORT),
    "bad_request_magic": FLAGS + opt(GO, go_data()) + b"\xff" * 28,
    "huge_option": FLAGS + struct.pack(">QII", IHAVEOPT, GO, 0xFFFFFFFF),
    "huge_write": FLAGS + opt(GO, go_data()) + req(WRITE, 0, 0xFFFFFFFF),
    "truncated_write": FLAGS + opt(STRUCTURED) + opt(GO, go_data()) + req(WRITE, 0, 65536)[:28] + b"\x99" * 100,
}

# The parsers target: option payloads and request headers alone.
PARSERS = {
    "info": go_data(),
    "meta": meta(b"disk", (b"base:allocation", b"qemu:dirty-bitmap:x")),
    "request": req(BS, 4096, 8192, REQ_ONE) + struct.pack(">Q", 1 << 20),
}

for target, seeds in (("session", SEEDS), ("parsers", PARSERS)):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    print(f"{target}: {len(seeds)} seeds in {d}")
