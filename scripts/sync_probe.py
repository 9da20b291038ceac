#!/usr/bin/env python3
"""What one durable sync costs on this disk, without the broker: each process appends 128-byte
records at consecutive offsets of its own file and syncs after every one; the table gives the
per-sync latency (write + sync) for each way of writing and syncing, each way of preparing the
file, and 1, 2 and 4 such processes at once (the broker runs one committer per shard, with up
to `COMMITS_IN_FLIGHT` syncs each). BENCHMARKS.md, "The durable floor on a quiet box, and the disk's own".

    scripts/sync_probe.py [--dir data/probe] [--records 2000] [--procs 1,2,4]

Files are prepared like a segment (`posix_fallocate`, as the log does) or zero-filled, then
synced, before the timed part; `mmap + msync` is the log's write path before the ring sync,
`mmap + fdatasync` today's (an fdatasync on the shard's io_uring), `pwrite + fdatasync` the
O_DSYNC-style alternative. The files are deleted afterwards.
"""

import argparse
import mmap
import multiprocessing
import os
import time

RECORD = b"x" * 128
FILE_SIZE = 32 << 20
WAYS = ("pwrite + fdatasync", "mmap + fdatasync", "mmap + msync")
PREPARED = ("fallocated", "zero-filled")


def prepare(path, prepared):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    if prepared == "fallocated":
        os.posix_fallocate(fd, 0, FILE_SIZE)
    else:
        zeros = b"\0" * (1 << 20)
        for off in range(0, FILE_SIZE, len(zeros)):
            os.pwrite(fd, zeros, off)
    os.fsync(fd)
    return fd


def one_writer(path, prepared, way, records, out):
    fd = prepare(path, prepared)
    mapped = mmap.mmap(fd, FILE_SIZE) if way.startswith("mmap") else None
    times = []
    try:
        for i in range(records):
            off = i * len(RECORD)
            start = time.perf_counter()
            if mapped is not None:
                mapped[off:off + len(RECORD)] = RECORD
            else:
                os.pwrite(fd, RECORD, off)
            if way == "mmap + msync":
                page = off // mmap.PAGESIZE * mmap.PAGESIZE
                mapped.flush(page, mmap.PAGESIZE)
            else:
                os.fdatasync(fd)
            times.append(time.perf_counter() - start)
    finally:
        if mapped is not None:
            mapped.close()
        os.close(fd)
        os.unlink(path)
    out.put(times)


def quantile(sorted_times, q):
    return sorted_times[min(len(sorted_times) - 1, int(len(sorted_times) * q))] * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="data/probe",
                    help="where the files go: on the file system the broker's log uses")
    ap.add_argument("--records", type=int, default=2000, help="syncs per process")
    ap.add_argument("--procs", default="1,2,4", help="processes at once, comma-separated")
    args = ap.parse_args()
    if args.records <= 0 or args.records * len(RECORD) > FILE_SIZE:
        ap.error(f"--records must be 1..={FILE_SIZE // len(RECORD)}")
    procs = [int(p) for p in args.procs.split(",")]
    os.makedirs(args.dir, exist_ok=True)
    print(f"{'processes':>9}  {'file':<11}  {'write + sync':<18}  {'p50 µs':>7}  {'p99 µs':>7}")
    for n in procs:
        for prepared in PREPARED:
            for way in WAYS:
                out = multiprocessing.Queue()
                workers = [multiprocessing.Process(
                    target=one_writer,
                    args=(os.path.join(args.dir, f"probe-{j}"), prepared, way, args.records, out))
                    for j in range(n)]
                for w in workers:
                    w.start()
                times = sorted(t for _ in workers for t in out.get())
                for w in workers:
                    w.join()
                print(f"{n:>9}  {prepared:<11}  {way:<18}  {quantile(times, 0.5):>7.0f}  "
                      f"{quantile(times, 0.99):>7.0f}", flush=True)


if __name__ == "__main__":
    main()
