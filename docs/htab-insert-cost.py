#!/usr/bin/env python3
"""What a BPF_MAP_UPDATE_BATCH costs per entry for the map kinds a kproxy start writes, as
root, by hand: `python3 docs/htab-insert-cost.py [ENTRIES]`. Creates each map, writes
ENTRIES entries in one batch (the first insert of each key), writes them again (a
replacement), prints ns per entry and the map's creation time, and closes it.

Why service values hold a few backend ids themselves (`lb::INLINE_SLOTS`): every KP_SLOTS
entry was a first insert into a hash map without preallocation."""
import ctypes
import os
import random
import struct
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)
SYS_BPF = 321  # x86_64
BPF_MAP_CREATE, BPF_MAP_UPDATE_BATCH = 0, 26
HASH, ARRAY = 1, 2
NO_PREALLOC = 1


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    fd = libc.syscall(SYS_BPF, cmd, buf, 128)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def create(map_type, key_size, value_size, max_entries, flags):
    return bpf(BPF_MAP_CREATE, struct.pack("IIIII", map_type, key_size, value_size, max_entries, flags))


def update_batch(fd, keys, values, count):
    # in_batch, out_batch, keys, values, count, map_fd, elem_flags, flags
    bpf(BPF_MAP_UPDATE_BATCH, struct.pack("QQQQIIQQ", 0, 0, ctypes.addressof(keys), ctypes.addressof(values), count, fd, 0, 0))


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300_000
    ids = list(range(1000, 1000 + n))
    random.shuffle(ids)
    slot_keys = (ctypes.c_uint32 * (2 * n))()
    for i, svc_id in enumerate(ids):
        slot_keys[2 * i], slot_keys[2 * i + 1] = svc_id, i % 3
    backend_keys = (ctypes.c_uint32 * n)(*ids)
    array_keys = (ctypes.c_uint32 * n)(*range(n))
    values12 = (ctypes.c_uint8 * (12 * n))()
    values4 = (ctypes.c_uint32 * n)()
    cases = [
        ("hash, key 8, value 4, no prealloc (KP_SLOTS)", HASH, 8, slot_keys, 4, values4, NO_PREALLOC),
        ("hash, key 8, value 4, preallocated", HASH, 8, slot_keys, 4, values4, 0),
        ("hash, key 4, value 12, no prealloc (KP_BACKENDS)", HASH, 4, backend_keys, 12, values12, NO_PREALLOC),
        ("hash, key 4, value 12, preallocated", HASH, 4, backend_keys, 12, values12, 0),
        ("array, value 12", ARRAY, 4, array_keys, 12, values12, 0),
    ]
    for name, map_type, key_size, keys, value_size, values, flags in cases:
        t0 = time.perf_counter()
        fd = create(map_type, key_size, value_size, 524_288, flags)
        t1 = time.perf_counter()
        update_batch(fd, keys, values, n)
        t2 = time.perf_counter()
        update_batch(fd, keys, values, n)
        t3 = time.perf_counter()
        os.close(fd)
        print(f"{name:50s} created in {1e3 * (t1 - t0):6.1f} ms; "
              f"first insert {1e9 * (t2 - t1) / n:5.0f} ns/entry, replacement {1e9 * (t3 - t2) / n:5.0f} ns/entry")


main()
