/*
 * blkbench: in-guest block figures for `cargo bench --bench disk` (benches/disk.rs).
 *
 *   blkbench DEVICE SEQ_MIB RAND_OPS [RAND_SECONDS]
 *
 * With O_DIRECT on DEVICE (the guest page cache is bypassed; the host side is whatever the
 * VMM does):
 *   1. sequential write: SEQ_MIB MiB in 1 MiB pwrite()s from offset 0, then fdatasync();
 *   2. sequential read: the same range in 1 MiB pread()s;
 *   3. random read: RAND_OPS 4 KiB pread()s at 4 KiB-aligned offsets in that range, drawn
 *      from a fixed-seed xorshift (the same offsets on every run and every VMM), stopping
 *      early after RAND_SECONDS (default 20) of CLOCK_MONOTONIC.
 * Then prints one line on stdout, which the bench parses:
 *   blkbench: seq_write_mib_s=W seq_read_mib_s=R rand_read_iops=I seq_mib=N rand_ops=M
 * and exits 0 (1 with a message on stderr on any failure). The buffer holds a non-zero
 * pattern so nothing downstream can skip zero blocks. Built static with
 * `musl-gcc -static -Os` at bench time.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024L * 1024L)
#define BLOCK 4096L

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	fprintf(stderr, "blkbench: %s: %s\n", what, strerror(errno));
	exit(1);
}

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: blkbench DEVICE SEQ_MIB RAND_OPS [RAND_SECONDS]\n");
		return 2;
	}
	long seq_mib = atol(argv[2]);
	long rand_ops = atol(argv[3]);
	double rand_seconds = argc > 4 ? atof(argv[4]) : 20.0;
	if (seq_mib <= 0 || rand_ops <= 0) {
		fprintf(stderr, "blkbench: SEQ_MIB and RAND_OPS must be positive\n");
		return 2;
	}
	int fd = open(argv[1], O_RDWR | O_DIRECT | O_CLOEXEC);
	if (fd < 0)
		die(argv[1]);
	char *buf;
	if (posix_memalign((void **)&buf, BLOCK, MIB))
		die("posix_memalign");
	for (long i = 0; i < MIB; i++)
		buf[i] = (char)(i * 7 + 1);

	double t0 = now();
	for (long i = 0; i < seq_mib; i++)
		if (pwrite(fd, buf, MIB, i * MIB) != MIB)
			die("pwrite");
	if (fdatasync(fd))
		die("fdatasync");
	double write_s = now() - t0;

	t0 = now();
	for (long i = 0; i < seq_mib; i++)
		if (pread(fd, buf, MIB, i * MIB) != MIB)
			die("pread");
	double read_s = now() - t0;

	uint64_t seed = 0x9e3779b97f4a7c15ULL;
	long blocks = seq_mib * (MIB / BLOCK), done = 0;
	t0 = now();
	double rand_s = 0;
	while (done < rand_ops) {
		off_t off = (off_t)(xorshift(&seed) % (uint64_t)blocks) * BLOCK;
		if (pread(fd, buf, BLOCK, off) != BLOCK)
			die("pread 4k");
		done++;
		rand_s = now() - t0;
		if (rand_s > rand_seconds)
			break;
	}
	printf("blkbench: seq_write_mib_s=%.2f seq_read_mib_s=%.2f rand_read_iops=%.1f seq_mib=%ld rand_ops=%ld\n",
	       seq_mib / write_s, seq_mib / read_s, done / rand_s, seq_mib, done);
	fflush(stdout);
	close(fd);
	return 0;
}
