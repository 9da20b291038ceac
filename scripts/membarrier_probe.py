#!/usr/bin/env python3
"""What one `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` costs the caller on this machine,
alone and while a second thread of the same process runs on another CPU (what a shard meets
when the other shard is busy). Upstream glommio issues one each time an executor goes to sleep;
the vendored copy does not (vendor/README.md; BENCHMARKS.md, "Shards go to sleep without an
IPI").

    scripts/membarrier_probe.py [--calls 200000]

Compiles a small C program with the machine's cc (gcc) into a temporary directory and runs it:
N calls timed with CLOCK_MONOTONIC, first with no other thread, then with one spinning thread.
"""

import argparse
import os
import shutil
import subprocess
import tempfile

SOURCE = r"""
#include <linux/membarrier.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static atomic_int stop;
static void *spin(void *arg) { (void)arg; while (!atomic_load(&stop)) {} return NULL; }
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}
static double per_call_us(long n) {
    double t = now();
    for (long i = 0; i < n; i++) {
        if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) != 0) {
            perror("membarrier");
            exit(1);
        }
    }
    return (now() - t) / n * 1e6;
}
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 200000;
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) != 0) {
        perror("membarrier register");
        return 1;
    }
    double alone = per_call_us(n);
    pthread_t th;
    pthread_create(&th, NULL, spin, NULL);
    usleep(10000);
    double busy = per_call_us(n);
    atomic_store(&stop, 1);
    pthread_join(th, NULL);
    printf("{\"calls\": %ld, \"alone_us\": %.2f, \"with_a_running_thread_us\": %.2f}\n",
           n, alone, busy);
    return 0;
}
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200000)
    args = ap.parse_args()
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("needs a C compiler (cc or gcc)")
    d = tempfile.mkdtemp(prefix="membarrier-probe-")
    try:
        src, exe = os.path.join(d, "probe.c"), os.path.join(d, "probe")
        with open(src, "w") as f:
            f.write(SOURCE)
        subprocess.run([cc, "-O2", "-o", exe, src, "-lpthread"], check=True)
        subprocess.run([exe, str(args.calls)], check=True)
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
