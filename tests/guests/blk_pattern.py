#!/usr/bin/env python3
"""The data pattern and checksum of the blk test guest (tests/guests/blk.c), for checking disk
images on the host.

Pattern (`action=write seed=S offset=SECTOR mib=M`): the written region starts at byte
SECTOR*512 of the disk. For each 8-byte word index w = o // 8, where o is the byte offset within
the written region (not the disk), with all arithmetic mod 2**64:
    x = S * 0x9E3779B97F4A7C15 + w
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB
    x =  x ^ (x >> 31)
and x is stored little-endian at bytes o..o+8. S is a u32.

Checksum (`action=read`): FNV-1a 64 over every byte read, printed as 16 lowercase hex digits:
    h = 0xcbf29ce484222325; for each byte b: h = ((h ^ b) * 0x100000001b3) mod 2**64

Usage:
    blk_pattern.py check IMAGE SEED OFFSET_SECTORS NBYTES   exit 0 if IMAGE holds the pattern
    blk_pattern.py fnv IMAGE OFFSET_SECTORS NBYTES          print the FNV-1a 64 of that range
    blk_pattern.py pattern-fnv SEED NBYTES                  FNV-1a 64 of the pattern itself
"""
import struct
import sys

MASK = (1 << 64) - 1
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3


def pattern_word(seed, w):
    x = (seed * 0x9E3779B97F4A7C15 + w) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def pattern_bytes(seed, nbytes, first_word=0):
    """The pattern bytes for words first_word .. first_word + nbytes/8 (nbytes % 8 == 0)."""
    assert nbytes % 8 == 0
    n = nbytes // 8
    return struct.pack("<%dQ" % n, *(pattern_word(seed, first_word + i) for i in range(n)))


def fnv1a64(data, h=FNV_OFFSET):
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & MASK
    return h


def _chunks(path, offset_bytes, nbytes, chunk=1 << 20):
    with open(path, "rb") as f:
        f.seek(offset_bytes)
        left = nbytes
        while left:
            data = f.read(min(chunk, left))
            if not data:
                raise ValueError("image too short")
            left -= len(data)
            yield data


def check_image(path, seed, offset_sectors, nbytes):
    word = 0
    for data in _chunks(path, offset_sectors * 512, nbytes):
        if data != pattern_bytes(seed, len(data), word):
            return False
        word += len(data) // 8
    return True


def image_fnv(path, offset_sectors, nbytes):
    h = FNV_OFFSET
    for data in _chunks(path, offset_sectors * 512, nbytes):
        h = fnv1a64(data, h)
    return h


def main(argv):
    if len(argv) == 6 and argv[1] == "check":
        ok = check_image(argv[2], int(argv[3], 0), int(argv[4], 0), int(argv[5], 0))
        print("pattern ok" if ok else "pattern MISMATCH")
        return 0 if ok else 1
    if len(argv) == 5 and argv[1] == "fnv":
        print("%016x" % image_fnv(argv[2], int(argv[3], 0), int(argv[4], 0)))
        return 0
    if len(argv) == 4 and argv[1] == "pattern-fnv":
        print("%016x" % fnv1a64(pattern_bytes(int(argv[2], 0), int(argv[3], 0))))
        return 0
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
