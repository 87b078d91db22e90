/*
 * blk: freestanding test guest with a minimal polling virtio-blk (virtio 1.x, virtio-mmio
 * version 2) driver, for Ember's integration tests.
 *
 * Build (in tests/guests/, system gcc 12 + binutils 2.40):
 *   gcc -O2 -m64 -ffreestanding -fno-pic -no-pie -nostdlib -static -mgeneral-regs-only -mno-red-zone -fno-stack-protector -fno-asynchronous-unwind-tables -Wall -Werror -Wl,--build-id=none -Wl,--no-warn-rwx-segments -Wl,-T,pvh.ld -o blk.elf blk.c
 *
 * Entry (one 64-bit x86-64 ELF, loaded at 0x100000, see pvh.ld):
 *   - PVH: `.note.Xen` type 18 (XEN_ELFNOTE_PHYS32_ENTRY) = physical address of `pvh_start32`
 *     (8-byte descriptor, upper half 0). Flat 32-bit protected mode, paging off,
 *     %ebx = hvm_start_info (magic 0x336ec578 at +0, cmdline_paddr u64 at +0x18; +0x10 is
 *     modlist_paddr).
 *   - Linux 64-bit boot protocol: e_entry = `_start` = 0x100000, long mode, %rsi = zero page
 *     (cmd_line_ptr u32 at +0x228, ext_cmd_line_ptr u32 at +0x0c8).
 *   Both paths load the guest's own GDT and its own page tables (first 4 GiB identity mapped with
 *   2 MiB pages, the 4th GiB uncached) so virtio-mmio at 0xd0000000+ (Ember) or 0xfeb00000+
 *   (QEMU microvm) is reachable, then call blk_main() on a 64 KiB stack in .bss.
 *
 * Guest memory used: the image at 1 MiB (~40 KiB + bss), virtqueues at 0x400000-0x420000,
 * request header/status/ID buffers at 0x480000, one data buffer of 1 MiB at 0x1000000.
 * So the guest needs at least 32 MiB of RAM.
 *
 * Command line: space-separated key=value words.
 *   virtio_mmio.device=<size>@<addr>[:<irq>[:<id>]]  (Linux syntax; size/addr decimal or 0x hex,
 *       optional K/M/G suffix): each names a virtio-mmio transport. Entries are probed in command
 *       line order; those whose DeviceID is 2 (block) are disk 0, 1, ... (vda, vdb, ...); other
 *       device IDs are skipped. A bad MagicValue or Version != 2 is an error.
 *       With no such entry at all, QEMU microvm's transport window is scanned instead
 *       (0xfeb00000 + 512*i, i < 24, ascending; QEMU only lists the devices on the command line
 *       with `-M microvm,acpi=off`). QEMU's virtio-mmio also needs
 *       `-global virtio-mmio.force-legacy=false` to offer version 2.
 *   action=info | write | read | bench | badreq
 *   disk=<N> (default 0), seed=<u32> (default 1), mib=<M> (default 16; bench 512),
 *   kib=<K> (overrides mib= for write/read: size in KiB), offset=<sector> (default 0),
 *   iops=<count> (bench random reads, default 20000).
 *
 * Write pattern (also in blk_pattern.py): the region written starts at sector `offset`; for
 * each 8-byte word index w = o/8, where o is the byte offset within the written region
 * (w = 0 for the first 8 bytes at sector `offset`), with all arithmetic mod 2^64:
 *     x = seed * 0x9E3779B97F4A7C15 + w
 *     x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
 *     x = (x ^ (x >> 27)) * 0x94D049BB133111EB
 *     x =  x ^ (x >> 31)
 * and the word is stored little-endian at bytes o..o+8. (seed is the u32 from seed=.)
 * Read checksum: FNV-1a 64 over every byte read, in order:
 *     h = 0xcbf29ce484222325; for each byte b: h = (h ^ b) * 0x100000001b3 (mod 2^64).
 *
 * Output (COM1, port 0x3f8), first line always:
 *     blk: boot=<pvh|linux64> cmdline=<command line>
 *   info:   per disk   disk<N>: capacity=<sectors> ro=<0|1> serial=<GET_ID string>
 *                      disk<N>: mmio=0x<addr> features=0x<offered> accepted=0x<accepted> queue=<size> req_bytes=<bytes>
 *           (serial=(status=<n>) if GET_ID fails); exit 0
 *   write:  write: ok status=<last status>  (exit 0)  |  write: status=<first bad status> (exit 1)
 *           the last request is a FLUSH when VIRTIO_BLK_F_FLUSH was offered (and accepted);
 *           otherwise the last write.
 *   read:   read: fnv1a64=<16 lowercase hex digits>  (exit 0)  |  read: status=<n> (exit 1)
 *   bench:  bench: disk=<N> mib=<M> req_bytes=<b> iops_count=<n> tsc_khz=<k> tsc_source=<cpuid40000010|cpuid15|pit|none>
 *           bench: cycles seq_write=<c> flush=<c> seq_read=<c> rand_read=<c>
 *           bench: seq_write_mib_s=<x> seq_read_mib_s=<x> rand_read_iops=<x>   (only if tsc_khz != 0)
 *           exit 0 (bench: status=<n> and exit 1 on a failed request)
 *   badreq: badreq: <name> status=<n>  or  badreq: <name> timeout  (no completion within 2 s,
 *           or 6e9 TSC cycles when the TSC frequency is unknown), for, in this order:
 *             short_header     IN, header descriptor only 8 bytes, 4 KiB data, status
 *             unknown_type     type 0x77, 16-byte header, 512 B device-writable data, status
 *             bad_address      IN sector 0, data descriptor at 0x7fff00000000 (4 KiB), status
 *             beyond_capacity  IN at sector = capacity, 4 KiB
 *           After a case that timed out or left DEVICE_NEEDS_RESET (0x40) set, the device is
 *           reset and re-initialised, printing
 *             badreq: <name> reset device_status=0x<hex status before the reset>
 *           then a good 4 KiB read of sector 0: badreq: good status=<n>; exit 0
 *   Status 255 means the device completed a request without writing its status byte.
 * Exit codes (port 0xf4; QEMU's isa-debug-exit turns s into (s<<1)|1): 0 ok, 1 request failed,
 * 2 internal error (printed as "blk: error <what>"), 99 unknown action ("blk: unknown action").
 * action=irq: interrupts through Ember's I/O APIC (or QEMU's) to the local APIC and an IDT:
 *     irq: ioapic version=0x<8 hex digits>        (register 1 of the I/O APIC at 0xfec00000)
 *     irq: com1 masked count=<n>                  (pin 4 masked, THR-empty raised: expect 0)
 *     irq: com1 vector=0x40 count=<n>             (pin 4 unmasked: expect 1)
 *     irq: com1 level count=<n>                   (pin 4 level-triggered, raised twice: expect 2)
 *     irq: disk0 vector=0x41 count=<n> status=<s> (a 4 KiB read of disk 0 with interrupts on,
 *                                                 its pin from virtio_mmio.device=...:<irq>)
 *     irq: other=<n>                              (interrupts on any other vector: expect 0)
 *   exit 0 if the counts are 1, 2, 1, 0 and the read succeeded, else 1.
 * action=timer count=N: local APIC timer interrupts counted, "tick <n>" every 10, exit 0.
 * action=hostile scribbles over every I/O port, the MMIO gap, the registers of every other
 * virtio-mmio device (a network card) and every disk's virtio-mmio window and queues (see
 * scribble_device), then per disk resets it, reads sector 0 and prints
 * "hostile: disk<N> good status=<n> fnv1a64=<hex>" (FNV-1a of those 4096 bytes).
 * Requests: one in flight at a time, polled (avail flags VRING_AVAIL_F_NO_INTERRUPT); a chain is
 * header (16 B) + data in 64 KiB segments (fewer if the device offers SIZE_MAX/SEG_MAX or the
 * queue is small) + status byte, so up to 1 MiB per request. Features accepted: VERSION_1 and,
 * if offered, FLUSH. Bench: sequential 1 MiB writes of zeros from sector 0, FLUSH, sequential
 * reads, then 4 KiB reads at 4 KiB block (x % (mib*256)), x = xorshift64 (13, 7, 17) from
 * 0x2545F4914F6CDD1D. TSC frequency: CPUID 0x40000010 EAX (QEMU needs -cpu ...,+invtsc),
 * CPUID 0x15, then (bench only) 50 ms of PIT channel 2 via port 0x61, else raw cycles only.
 * Cost where KVM emulates guest kernel code (kvm-pvm): about 1.5 s per MiB written (pattern)
 * and 2.6 s per MiB read (checksum), so use mib=1 or kib= there.
 * Built with -ffreestanding -mgeneral-regs-only -mno-red-zone: no SSE, no int3.
 */
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

#define COM1 0x3f8
#define EXIT_PORT 0xf4

/* Guest-physical work areas (identity mapped). */
#define QUEUE_BASE 0x400000UL /* per disk: desc +0, avail +0x1000, used +0x2000 */
#define QUEUE_STRIDE 0x4000UL
#define REQ_HDR 0x480000UL
#define REQ_STATUS 0x480100UL
#define REQ_ID 0x480200UL
#define DATA_BUF 0x1000000UL
#define DATA_BUF_SIZE 0x100000UL

#define MAX_DISKS 8
#define MAX_QUEUE 64
#define MAX_SEGS 16
#define SEG_BYTES 0x10000U

/* virtio-mmio registers */
#define VM_MAGIC 0x000
#define VM_VERSION 0x004
#define VM_DEVICE_ID 0x008
#define VM_DEVICE_FEATURES 0x010
#define VM_DEVICE_FEATURES_SEL 0x014
#define VM_DRIVER_FEATURES 0x020
#define VM_DRIVER_FEATURES_SEL 0x024
#define VM_QUEUE_SEL 0x030
#define VM_QUEUE_NUM_MAX 0x034
#define VM_QUEUE_NUM 0x038
#define VM_QUEUE_READY 0x044
#define VM_QUEUE_NOTIFY 0x050
#define VM_INTERRUPT_STATUS 0x060
#define VM_INTERRUPT_ACK 0x064
#define VM_STATUS 0x070
#define VM_QUEUE_DESC_LOW 0x080
#define VM_QUEUE_DESC_HIGH 0x084
#define VM_QUEUE_DRIVER_LOW 0x090
#define VM_QUEUE_DRIVER_HIGH 0x094
#define VM_QUEUE_DEVICE_LOW 0x0a0
#define VM_QUEUE_DEVICE_HIGH 0x0a4
#define VM_CONFIG_GENERATION 0x0fc
#define VM_CONFIG 0x100

#define ST_ACKNOWLEDGE 1
#define ST_DRIVER 2
#define ST_DRIVER_OK 4
#define ST_FEATURES_OK 8
#define ST_NEEDS_RESET 0x40
#define ST_FAILED 0x80

#define F_BLK_SIZE_MAX (1UL << 1)
#define F_BLK_SEG_MAX (1UL << 2)
#define F_BLK_RO (1UL << 5)
#define F_BLK_FLUSH (1UL << 9)
#define F_VERSION_1 (1UL << 32)

#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define T_GET_ID 8

#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_AVAIL_F_NO_INTERRUPT 1

struct vq_desc { u64 addr; u32 len; u16 flags; u16 next; };
struct vq_avail { u16 flags; u16 idx; u16 ring[]; };
struct vq_used_elem { u32 id; u32 len; };
struct vq_used { u16 flags; u16 idx; struct vq_used_elem ring[]; };
struct blk_hdr { u32 type; u32 reserved; u64 sector; };

struct seg { u64 addr; u32 len; u16 flags; };

struct disk {
    u64 base;
    u32 irq;        /* from virtio_mmio.device=...:<irq>, 0 if not given */
    u64 features;   /* offered */
    u64 accepted;
    u32 qsize;
    u16 avail_idx, used_idx;
    volatile struct vq_desc *desc;
    volatile struct vq_avail *avail;
    volatile struct vq_used *used;
    u64 capacity;
    u32 seg_bytes, max_segs;
    u64 req_bytes;
};

/* ---------------------------------------------------------------- low level */

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void mb(void) { __asm__ volatile("mfence" ::: "memory"); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline u64 rdtsc(void) {
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}
static inline void cpuid(u32 leaf, u32 *a, u32 *b, u32 *c, u32 *d) {
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}
static inline u32 mmio_read(u64 base, u32 off) { return *(volatile u32 *)(base + off); }
static inline void mmio_write(u64 base, u32 off, u32 v) { *(volatile u32 *)(base + off) = v; }

/* gcc may emit calls to these even when freestanding. */
void *memset(void *d, int c, unsigned long n) {
    void *r = d;
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
    return r;
}
void *memcpy(void *d, const void *s, unsigned long n) {
    void *r = d;
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
    return r;
}

/* As a driver does: wait for the transmitter (a host that does not read holds it busy). */
static void putc(char c) {
    while (!(inb(COM1 + 5) & 0x20)) { }
    outb(COM1, (u8)c);
}
static void puts(const char *s) { while (*s) putc(*s++); }
static void put_dec(u64 v) {
    char buf[21]; int i = 20; buf[i] = 0;
    do { buf[--i] = (char)('0' + v % 10); v /= 10; } while (v);
    puts(&buf[i]);
}
static void put_hex(u64 v, int digits) { /* digits = 0: no padding */
    static const char hex[] = "0123456789abcdef";
    char buf[17]; int i = 16; buf[i] = 0;
    do { buf[--i] = hex[v & 15]; v >>= 4; } while ((v || (digits && 16 - i < digits)) && i > 0);
    puts(&buf[i]);
}

static void __attribute__((noreturn)) exit_status(u8 s) {
    outb(EXIT_PORT, s);
    for (;;) __asm__ volatile("cli; hlt");
}
static void __attribute__((noreturn)) fail(const char *what) {
    puts("blk: error ");
    puts(what);
    putc('\n');
    exit_status(2);
}

/* ---------------------------------------------------------------- command line */

static char cmdline[4096];

static int starts_with(const char *s, const char *p) {
    while (*p) if (*s++ != *p++) return 0;
    return 1;
}
static int word_is(const char *s, const char *w) {
    while (*w) if (*s++ != *w++) return 0;
    return *s == 0 || *s == ' ';
}
/* Finds `key` (e.g. "action=") at the start of a word after `from`; returns the value or 0. */
static const char *param(const char *from, const char *key) {
    const char *p = from;
    while (*p) {
        while (*p == ' ') p++;
        if (starts_with(p, key)) {
            const char *k = key;
            while (*k) { k++; p++; }
            return p;
        }
        while (*p && *p != ' ') p++;
    }
    return 0;
}
/* Decimal or 0x hex, optional K/M/G suffix; advances *pp. */
static u64 parse_num(const char **pp) {
    const char *p = *pp;
    u64 v = 0;
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        p += 2;
        for (;;) {
            char c = *p;
            if (c >= '0' && c <= '9') v = v * 16 + (u64)(c - '0');
            else if (c >= 'a' && c <= 'f') v = v * 16 + (u64)(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') v = v * 16 + (u64)(c - 'A' + 10);
            else break;
            p++;
        }
    } else {
        while (*p >= '0' && *p <= '9') v = v * 10 + (u64)(*p++ - '0');
    }
    switch (*p) {
    case 'k': case 'K': v <<= 10; p++; break;
    case 'm': case 'M': v <<= 20; p++; break;
    case 'g': case 'G': v <<= 30; p++; break;
    default: break;
    }
    *pp = p;
    return v;
}
static u64 param_num(const char *key, u64 dflt) {
    const char *v = param(cmdline, key);
    if (!v) return dflt;
    return parse_num(&v);
}

/* ---------------------------------------------------------------- time */

static u64 tsc_khz;
static const char *tsc_source = "none";

static void tsc_from_cpuid(void) {
    u32 a, b, c, d, max;
    cpuid(1, &a, &b, &c, &d);
    if (c & (1U << 31)) { /* hypervisor present: KVM/VMware timing leaf */
        cpuid(0x40000000, &max, &b, &c, &d);
        if (max >= 0x40000010 && max < 0x40010000) {
            cpuid(0x40000010, &a, &b, &c, &d);
            if (a) { tsc_khz = a; tsc_source = "cpuid40000010"; return; }
        }
    }
    cpuid(0, &max, &b, &c, &d);
    if (max >= 0x15) {
        cpuid(0x15, &a, &b, &c, &d);
        if (a && b && c) {
            tsc_khz = (u64)c * b / a / 1000;
            tsc_source = "cpuid15";
            return;
        }
    }
}

/* Fallback: time 50 ms of PIT channel 2 (mode 0, gate via port 0x61). Bounded: gives up if the
   PIT output is already high at the start or does not rise within 200000 polls. */
static void tsc_from_pit(void) {
    const u32 latch = 1193182 / 20; /* 50 ms */
    u8 v = inb(0x61);
    outb(0x61, (u8)((v & ~0x02) | 0x01));
    outb(0x43, 0xb0);
    outb(0x42, (u8)(latch & 0xff));
    outb(0x42, (u8)(latch >> 8));
    u64 t0 = rdtsc();
    u64 polls = 0;
    if (inb(0x61) & 0x20) return;
    while (!(inb(0x61) & 0x20)) {
        if (++polls > 200000) return;
    }
    u64 t1 = rdtsc();
    if (polls < 10) return;
    tsc_khz = (t1 - t0) / 50;
    tsc_source = "pit";
}

static u64 seconds_to_cycles(u64 s, u64 unknown_cycles) {
    return tsc_khz ? tsc_khz * 1000 * s : unknown_cycles;
}

/* ---------------------------------------------------------------- virtio */

static struct disk disks[MAX_DISKS];
static int ndisks;
/* Other virtio-mmio devices (not block), for action=hostile. */
#define MAX_OTHERS 8
static u64 others[MAX_OTHERS];
static int nothers;
static u64 req_timeout;

static u64 config_read64(u64 base, u32 off) {
    u32 gen, lo, hi;
    do {
        gen = mmio_read(base, VM_CONFIG_GENERATION);
        lo = mmio_read(base, VM_CONFIG + off);
        hi = mmio_read(base, VM_CONFIG + off + 4);
    } while (gen != mmio_read(base, VM_CONFIG_GENERATION));
    return ((u64)hi << 32) | lo;
}

static void device_reset(u64 base) {
    mmio_write(base, VM_STATUS, 0);
    for (u32 i = 0; i < 1000000; i++)
        if (mmio_read(base, VM_STATUS) == 0) return;
    fail("reset did not complete");
}

/* Virtio 1.x initialisation (spec 3.1.1) of queue 0. */
static void disk_init(struct disk *d, int index) {
    u64 base = d->base;
    device_reset(base);
    mmio_write(base, VM_STATUS, ST_ACKNOWLEDGE);
    mmio_write(base, VM_STATUS, ST_ACKNOWLEDGE | ST_DRIVER);

    mmio_write(base, VM_DEVICE_FEATURES_SEL, 0);
    u64 f = mmio_read(base, VM_DEVICE_FEATURES);
    mmio_write(base, VM_DEVICE_FEATURES_SEL, 1);
    f |= (u64)mmio_read(base, VM_DEVICE_FEATURES) << 32;
    d->features = f;
    if (!(f & F_VERSION_1)) fail("device does not offer VIRTIO_F_VERSION_1");
    d->accepted = F_VERSION_1 | (f & F_BLK_FLUSH);
    mmio_write(base, VM_DRIVER_FEATURES_SEL, 0);
    mmio_write(base, VM_DRIVER_FEATURES, (u32)d->accepted);
    mmio_write(base, VM_DRIVER_FEATURES_SEL, 1);
    mmio_write(base, VM_DRIVER_FEATURES, (u32)(d->accepted >> 32));
    mmio_write(base, VM_STATUS, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK);
    if (!(mmio_read(base, VM_STATUS) & ST_FEATURES_OK)) {
        mmio_write(base, VM_STATUS, ST_ACKNOWLEDGE | ST_DRIVER | ST_FAILED);
        fail("FEATURES_OK rejected");
    }

    d->capacity = config_read64(base, 0);
    d->seg_bytes = SEG_BYTES;
    if (f & F_BLK_SIZE_MAX) {
        u32 size_max = mmio_read(base, VM_CONFIG + 8) & ~511U;
        if (size_max >= 4096 && size_max < d->seg_bytes) d->seg_bytes = size_max;
    }

    mmio_write(base, VM_QUEUE_SEL, 0);
    if (mmio_read(base, VM_QUEUE_READY)) fail("queue 0 already ready after reset");
    u32 max = mmio_read(base, VM_QUEUE_NUM_MAX);
    if (max == 0) fail("queue 0 not available");
    u32 q = 1;
    while (q * 2 <= max && q * 2 <= MAX_QUEUE) q *= 2;
    if (q < 4) fail("queue too small");
    d->qsize = q;
    d->max_segs = MAX_SEGS;
    if (d->max_segs > q - 2) d->max_segs = q - 2;
    if (f & F_BLK_SEG_MAX) {
        u32 seg_max = mmio_read(base, VM_CONFIG + 12);
        if (seg_max >= 1 && seg_max < d->max_segs) d->max_segs = seg_max;
    }
    d->req_bytes = (u64)d->max_segs * d->seg_bytes;
    if (d->req_bytes > DATA_BUF_SIZE) d->req_bytes = DATA_BUF_SIZE;

    u64 mem = QUEUE_BASE + (u64)index * QUEUE_STRIDE;
    memset((void *)mem, 0, QUEUE_STRIDE);
    d->desc = (volatile struct vq_desc *)mem;
    d->avail = (volatile struct vq_avail *)(mem + 0x1000);
    d->used = (volatile struct vq_used *)(mem + 0x2000);
    d->avail->flags = VRING_AVAIL_F_NO_INTERRUPT; /* we poll */
    d->avail_idx = 0;
    d->used_idx = 0;
    mb();
    mmio_write(base, VM_QUEUE_NUM, q);
    mmio_write(base, VM_QUEUE_DESC_LOW, (u32)(u64)d->desc);
    mmio_write(base, VM_QUEUE_DESC_HIGH, (u32)((u64)d->desc >> 32));
    mmio_write(base, VM_QUEUE_DRIVER_LOW, (u32)(u64)d->avail);
    mmio_write(base, VM_QUEUE_DRIVER_HIGH, (u32)((u64)d->avail >> 32));
    mmio_write(base, VM_QUEUE_DEVICE_LOW, (u32)(u64)d->used);
    mmio_write(base, VM_QUEUE_DEVICE_HIGH, (u32)((u64)d->used >> 32));
    mmio_write(base, VM_QUEUE_READY, 1);
    mmio_write(base, VM_STATUS, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK);
    if (mmio_read(base, VM_STATUS) & (ST_NEEDS_RESET | ST_FAILED)) fail("device failed after DRIVER_OK");
}

/* Finds the virtio-mmio transports on the command line; DeviceID 2 ones become disks. */
static void probe(void) {
    const char *p = cmdline;
    while ((p = param(p, "virtio_mmio.device="))) {
        (void)parse_num(&p); /* size */
        if (*p != '@') fail("bad virtio_mmio.device= entry");
        p++;
        u64 base = parse_num(&p);
        u32 irq = 0;
        if (*p == ':') {
            p++;
            irq = (u32)parse_num(&p);
        }
        if (mmio_read(base, VM_MAGIC) != 0x74726976) fail("bad magic");
        if (mmio_read(base, VM_VERSION) != 2) fail("virtio-mmio version is not 2");
        if (mmio_read(base, VM_DEVICE_ID) != 2) {
            if (nothers < MAX_OTHERS) others[nothers++] = base;
            continue;
        }
        if (ndisks == MAX_DISKS) break;
        disks[ndisks].irq = irq;
        disks[ndisks++].base = base;
    }
    if (!param(cmdline, "virtio_mmio.device=")) {
        /* Nothing on the command line (QEMU microvm with ACPI on describes its transports only
           in the DSDT): look at microvm's 24 transports, 512 bytes apart from 0xfeb00000.
           Slots without the magic or without a device are skipped. */
        for (u64 base = 0xfeb00000UL; base < 0xfeb00000UL + 24 * 512 && ndisks < MAX_DISKS; base += 512) {
            if (mmio_read(base, VM_MAGIC) != 0x74726976) continue;
            if (mmio_read(base, VM_DEVICE_ID) != 2) continue;
            if (mmio_read(base, VM_VERSION) != 2) fail("virtio-mmio version is not 2");
            disks[ndisks++].base = base;
        }
    }
    if (ndisks == 0) fail("no virtio-blk device found");
}

static struct disk *get_disk(u64 n) {
    if (n >= (u64)ndisks) fail("no such disk");
    struct disk *d = &disks[n];
    disk_init(d, (int)n);
    return d;
}

/* Puts one descriptor chain (head 0) on the ring, notifies and polls the used ring.
   Returns 0 when the device used the chain, -1 on timeout. */
static int submit(struct disk *d, const struct seg *segs, int n, u64 timeout) {
    for (int i = 0; i < n; i++) {
        d->desc[i].addr = segs[i].addr;
        d->desc[i].len = segs[i].len;
        d->desc[i].flags = (u16)(segs[i].flags | (i + 1 < n ? VRING_DESC_F_NEXT : 0));
        d->desc[i].next = (u16)(i + 1 < n ? i + 1 : 0);
    }
    d->avail->ring[d->avail_idx % d->qsize] = 0;
    mb(); /* descriptors and ring entry before the index */
    d->avail_idx++;
    d->avail->idx = d->avail_idx;
    mb(); /* index before the notification */
    mmio_write(d->base, VM_QUEUE_NOTIFY, 0);
    u64 t0 = rdtsc();
    while (d->used->idx == d->used_idx) {
        if (rdtsc() - t0 > timeout) return -1;
        cpu_relax();
    }
    mb(); /* used index before the element and the data it covers */
    u32 id = d->used->ring[d->used_idx % d->qsize].id;
    d->used_idx++;
    if (id != 0) fail("device used an unknown descriptor id");
    return 0;
}

/* One request: header, data split into segments, status. Returns the status byte. */
static u8 blk_req(struct disk *d, u32 type, u64 sector, u64 buf, u64 len) {
    struct seg segs[MAX_SEGS + 2];
    volatile struct blk_hdr *h = (volatile struct blk_hdr *)REQ_HDR;
    volatile u8 *status = (volatile u8 *)REQ_STATUS;
    h->type = type;
    h->reserved = 0;
    h->sector = sector;
    *status = 0xff;
    int n = 0;
    segs[n++] = (struct seg){ REQ_HDR, 16, 0 };
    u16 dir = (type == T_OUT) ? 0 : VRING_DESC_F_WRITE;
    for (u64 off = 0; off < len; off += d->seg_bytes) {
        u64 l = len - off;
        if (l > d->seg_bytes) l = d->seg_bytes;
        if (n == (int)d->max_segs + 1) fail("request too large");
        segs[n++] = (struct seg){ buf + off, (u32)l, dir };
    }
    segs[n++] = (struct seg){ REQ_STATUS, 1, VRING_DESC_F_WRITE };
    if (submit(d, segs, n, req_timeout)) fail("request timed out");
    return *status;
}

/* ---------------------------------------------------------------- pattern / checksum */

static inline u64 pattern_word(u64 seed, u64 w) {
    u64 x = seed * 0x9E3779B97F4A7C15UL + w;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9UL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBUL;
    return x ^ (x >> 31);
}

/* FNV-1a 64 over n bytes (n % 8 == 0). Hand-written so that each byte costs three instructions
   and each 8 bytes one load: this code runs under an instruction emulator on some hosts.
   h ^ b only changes h's low byte, hence the 8-bit xor. */
static u64 fnv1a(u64 h, const u8 *p, u64 n) {
    u64 end = (u64)p + n, w;
    __asm__ volatile(
        "1:  cmpq %[end], %[p]\n"
        "    jae 2f\n"
        "    movq (%[p]), %[w]\n"
        "    addq $8, %[p]\n"
        "    .rept 8\n"
        "    xorb %b[w], %b[h]\n"
        "    imulq %[prime], %[h]\n"
        "    shrq $8, %[w]\n"
        "    .endr\n"
        "    jmp 1b\n"
        "2:\n"
        : [h] "+a"(h), [p] "+r"(p), [w] "=&c"(w)
        : [end] "r"(end), [prime] "r"(0x100000001b3UL)
        : "cc", "memory");
    return h;
}

/* ---------------------------------------------------------------- actions */

static void action_info(void) {
    for (int i = 0; i < ndisks; i++) {
        struct disk *d = get_disk((u64)i);
        memset((void *)REQ_ID, 0, 32);
        u8 st = blk_req(d, T_GET_ID, 0, REQ_ID, 20);
        puts("disk");
        put_dec((u64)i);
        puts(": capacity=");
        put_dec(d->capacity);
        puts(" ro=");
        put_dec((d->features & F_BLK_RO) ? 1 : 0);
        puts(" serial=");
        if (st == 0) {
            const volatile char *s = (const volatile char *)REQ_ID;
            for (int k = 0; k < 20 && s[k]; k++) putc((s[k] > ' ' && s[k] < 127) ? s[k] : '?');
        } else {
            puts("(status=");
            put_dec(st);
            puts(")");
        }
        puts("\ndisk");
        put_dec((u64)i);
        puts(": mmio=0x");
        put_hex(d->base, 0);
        puts(" features=0x");
        put_hex(d->features, 0);
        puts(" accepted=0x");
        put_hex(d->accepted, 0);
        puts(" queue=");
        put_dec(d->qsize);
        puts(" req_bytes=");
        put_dec(d->req_bytes);
        putc('\n');
    }
    exit_status(0);
}

static u64 size_param(void) {
    const char *k = param(cmdline, "kib=");
    if (k) return parse_num(&k) << 10;
    return param_num("mib=", 16) << 20;
}

static void __attribute__((noreturn)) bad_status(const char *what, u8 st) {
    puts(what);
    puts(": status=");
    put_dec(st);
    putc('\n');
    exit_status(1);
}

static void action_write(void) {
    struct disk *d = get_disk(param_num("disk=", 0));
    u64 seed = param_num("seed=", 1) & 0xffffffffUL;
    u64 total = size_param();
    u64 sector = param_num("offset=", 0);
    if (total % 512) fail("size is not a multiple of 512");
    u64 w = 0;
    u8 st = 0;
    for (u64 done = 0; done < total;) {
        u64 len = total - done;
        if (len > d->req_bytes) len = d->req_bytes;
        u64 *buf = (u64 *)DATA_BUF;
        for (u64 i = 0; i < len / 8; i++) buf[i] = pattern_word(seed, w++);
        st = blk_req(d, T_OUT, sector, DATA_BUF, len);
        if (st) bad_status("write", st);
        sector += len / 512;
        done += len;
    }
    if (d->accepted & F_BLK_FLUSH) {
        st = blk_req(d, T_FLUSH, 0, 0, 0);
        if (st) bad_status("write", st);
    }
    puts("write: ok status=");
    put_dec(st);
    putc('\n');
    exit_status(0);
}

/* Writes 4 KiB at sector 8*i (pattern seed i+1) and flushes, for i = 0..count-1, printing
   "flushed <i>" after each flush completes: the host may kill the VMM at any point and must
   then find every announced block on disk. */
static void action_flushloop(void) {
    struct disk *d = get_disk(param_num("disk=", 0));
    u64 count = param_num("count=", 1000);
    for (u64 i = 0; i < count; i++) {
        u64 *buf = (u64 *)DATA_BUF;
        for (u64 j = 0; j < 512; j++) buf[j] = pattern_word(i + 1, j);
        u8 st = blk_req(d, T_OUT, i * 8, DATA_BUF, 4096);
        if (st) bad_status("flushloop", st);
        st = blk_req(d, T_FLUSH, 0, 0, 0);
        if (st) bad_status("flushloop", st);
        puts("flushed ");
        put_dec(i);
        putc('\n');
    }
    exit_status(0);
}

/* Reads sector 0 again and again, printing "readloop <i> status=<n>"; stops with exit 0 at
   the first status that is not OK (the host shrank the image), or after count reads. */
static void action_readloop(void) {
    struct disk *d = get_disk(param_num("disk=", 0));
    u64 count = param_num("count=", 1000000);
    for (u64 i = 0; i < count; i++) {
        u8 st = blk_req(d, T_IN, 0, DATA_BUF, 4096);
        puts("readloop ");
        put_dec(i);
        puts(" status=");
        put_dec(st);
        putc('\n');
        if (st) exit_status(0);
    }
    exit_status(3);
}

static void action_read(void) {
    struct disk *d = get_disk(param_num("disk=", 0));
    u64 total = size_param();
    u64 sector = param_num("offset=", 0);
    if (total % 512) fail("size is not a multiple of 512");
    u64 h = 0xcbf29ce484222325UL;
    for (u64 done = 0; done < total;) {
        u64 len = total - done;
        if (len > d->req_bytes) len = d->req_bytes;
        u8 st = blk_req(d, T_IN, sector, DATA_BUF, len);
        if (st) bad_status("read", st);
        h = fnv1a(h, (const u8 *)DATA_BUF, len);
        sector += len / 512;
        done += len;
    }
    puts("read: fnv1a64=");
    put_hex(h, 16);
    putc('\n');
    exit_status(0);
}

static u64 rate(u64 amount, u64 cycles) {
    if (!cycles) return 0;
    return amount * tsc_khz * 1000 / cycles;
}

static void action_bench(void) {
    u64 n = param_num("disk=", 0);
    struct disk *d = get_disk(n);
    u64 mib = param_num("mib=", 512);
    u64 iops = param_num("iops=", 20000);
    if (!tsc_khz) tsc_from_pit();
    if (mib > (d->capacity >> 11)) mib = d->capacity >> 11;
    if (mib == 0) fail("disk smaller than 1 MiB");
    u64 total = mib << 20;

    memset((void *)DATA_BUF, 0, DATA_BUF_SIZE);
    u8 st;
    u64 t0 = rdtsc();
    for (u64 off = 0; off < total; off += d->req_bytes) {
        u64 len = total - off < d->req_bytes ? total - off : d->req_bytes;
        st = blk_req(d, T_OUT, off / 512, DATA_BUF, len);
        if (st) bad_status("bench", st);
    }
    u64 t1 = rdtsc();
    if (d->accepted & F_BLK_FLUSH) {
        st = blk_req(d, T_FLUSH, 0, 0, 0);
        if (st) bad_status("bench", st);
    }
    u64 t2 = rdtsc();
    for (u64 off = 0; off < total; off += d->req_bytes) {
        u64 len = total - off < d->req_bytes ? total - off : d->req_bytes;
        st = blk_req(d, T_IN, off / 512, DATA_BUF, len);
        if (st) bad_status("bench", st);
    }
    u64 t3 = rdtsc();
    u64 blocks = total / 4096, x = 0x2545F4914F6CDD1DUL;
    for (u64 i = 0; i < iops; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        st = blk_req(d, T_IN, (x % blocks) * 8, DATA_BUF, 4096);
        if (st) bad_status("bench", st);
    }
    u64 t4 = rdtsc();

    puts("bench: disk="); put_dec(n);
    puts(" mib="); put_dec(mib);
    puts(" req_bytes="); put_dec(d->req_bytes);
    puts(" iops_count="); put_dec(iops);
    puts(" tsc_khz="); put_dec(tsc_khz);
    puts(" tsc_source="); puts(tsc_source);
    puts("\nbench: cycles seq_write="); put_dec(t1 - t0);
    puts(" flush="); put_dec(t2 - t1);
    puts(" seq_read="); put_dec(t3 - t2);
    puts(" rand_read="); put_dec(t4 - t3);
    putc('\n');
    if (tsc_khz) {
        puts("bench: seq_write_mib_s="); put_dec(rate(mib, t1 - t0));
        puts(" seq_read_mib_s="); put_dec(rate(mib, t3 - t2));
        puts(" rand_read_iops="); put_dec(rate(iops, t4 - t3));
        putc('\n');
    }
    exit_status(0);
}

/* One malformed request; resets and re-initialises the device if it broke. */
static void badreq_case(struct disk *d, const char *name, u32 type, u64 sector, u32 hdr_len,
                        u64 data_addr, u32 data_len) {
    volatile struct blk_hdr *h = (volatile struct blk_hdr *)REQ_HDR;
    volatile u8 *status = (volatile u8 *)REQ_STATUS;
    h->type = type;
    h->reserved = 0;
    h->sector = sector;
    *status = 0xff;
    struct seg segs[3] = {
        { REQ_HDR, hdr_len, 0 },
        { data_addr, data_len, VRING_DESC_F_WRITE },
        { REQ_STATUS, 1, VRING_DESC_F_WRITE },
    };
    int timed_out = submit(d, segs, 3, seconds_to_cycles(2, 6000000000UL)) != 0;
    puts("badreq: ");
    puts(name);
    if (timed_out) {
        puts(" timeout\n");
    } else {
        puts(" status=");
        put_dec(*status);
        putc('\n');
    }
    u32 ds = mmio_read(d->base, VM_STATUS);
    if (timed_out || (ds & ST_NEEDS_RESET)) {
        puts("badreq: ");
        puts(name);
        puts(" reset device_status=0x");
        put_hex(ds, 0);
        putc('\n');
        disk_init(d, (int)(d - disks));
    }
}

static void action_badreq(void) {
    struct disk *d = get_disk(param_num("disk=", 0));
    badreq_case(d, "short_header", T_IN, 0, 8, DATA_BUF, 4096);
    badreq_case(d, "unknown_type", 0x77, 0, 16, DATA_BUF, 512);
    badreq_case(d, "bad_address", T_IN, 0, 16, 0x7fff00000000UL, 4096);
    badreq_case(d, "beyond_capacity", T_IN, d->capacity, 16, DATA_BUF, 4096);
    u8 st = blk_req(d, T_IN, 0, DATA_BUF, 4096);
    puts("badreq: good status=");
    put_dec(st);
    putc('\n');
    exit_status(0);
}


/* ---------------------------------------------------------------- hostile driver */

static u64 rng = 0x243F6A8885A308D3UL;
static u64 rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Everything a hostile guest might do to a virtio-mmio device: random values of every width
   at every offset of its 4 KiB window (registers, config space and past both), bogus ring
   addresses and queue sizes, notifications of queues that do not exist, status writes out of
   order, descriptor cycles, absurd lengths and an avail index far ahead of the queue. */
static void scribble_registers(u64 base) {
    for (int round = 0; round < 2; round++) {
        for (u32 off = 0; off < 0x1000; off += 4) {
            mmio_write(base, off, (u32)rnd());
            (void)mmio_read(base, off);
        }
        for (u32 off = 0; off < 0x200; off++) {
            *(volatile u8 *)(base + off) = (u8)rnd();
            *(volatile u16 *)(base + (off & ~1U)) = (u16)rnd();
            (void)*(volatile u8 *)(base + off);
        }
    }
    /* Queue set-up with nonsense, then DRIVER_OK. */
    mmio_write(base, VM_STATUS, 0);
    mmio_write(base, VM_STATUS, ST_DRIVER_OK);               /* out of order */
    mmio_write(base, VM_STATUS, ST_ACKNOWLEDGE);
    mmio_write(base, VM_STATUS, ST_ACKNOWLEDGE | ST_DRIVER);
    mmio_write(base, VM_DRIVER_FEATURES_SEL, 0);
    mmio_write(base, VM_DRIVER_FEATURES, 0xffffffff);        /* features never offered */
    mmio_write(base, VM_STATUS, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK);
    mmio_write(base, VM_STATUS, ST_ACKNOWLEDGE);             /* clearing bits */
    for (u32 q = 0; q < 4; q++) {
        mmio_write(base, VM_QUEUE_SEL, q);
        mmio_write(base, VM_QUEUE_NUM, 3);                    /* not a power of two */
        mmio_write(base, VM_QUEUE_NUM, 65535);
        mmio_write(base, VM_QUEUE_DESC_LOW, 0xfffff000);
        mmio_write(base, VM_QUEUE_DESC_HIGH, 0xffffffff);     /* far outside RAM */
        mmio_write(base, VM_QUEUE_DRIVER_LOW, 0x1);           /* misaligned */
        mmio_write(base, VM_QUEUE_DEVICE_LOW, 0xc0000000);    /* the MMIO gap */
        mmio_write(base, VM_QUEUE_READY, 1);
    }
    mmio_write(base, VM_STATUS, 0xff);
    for (u32 q = 0; q < 8; q++) mmio_write(base, VM_QUEUE_NOTIFY, q); /* queues that do not exist */
    mmio_write(base, VM_QUEUE_NOTIFY, 0xffffffff);
    /* Config space writes and reads past the end. */
    for (u32 off = 0x100; off < 0x1000; off += 4) {
        mmio_write(base, off, 0xdeadbeef);
        (void)mmio_read(base, off);
    }
    mmio_write(base, VM_STATUS, 0); /* reset */
}

static void scribble_device(struct disk *d) {
    u64 base = d->base;
    scribble_registers(base);

    /* A valid queue, then hostile chains. */
    disk_init(d, (int)(d - disks));
    volatile struct blk_hdr *h = (volatile struct blk_hdr *)REQ_HDR;
    h->type = T_IN;
    h->sector = 0;
    d->desc[0] = (struct vq_desc){ REQ_HDR, 16, VRING_DESC_F_NEXT, 1 };      /* cycle 0 -> 1 -> 0 */
    d->desc[1] = (struct vq_desc){ DATA_BUF, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 0 };
    d->desc[2] = (struct vq_desc){ DATA_BUF, 0xffffffff, VRING_DESC_F_WRITE, 0 }; /* absurd length */
    d->desc[3] = (struct vq_desc){ 0xfffffffffffff000UL, 0x1000, VRING_DESC_F_WRITE, 0 };
    d->desc[4] = (struct vq_desc){ REQ_HDR, 16, VRING_DESC_F_NEXT, 999 };    /* next out of range */
    u16 heads[] = { 0, 2, 3, 4, 999 };
    for (u32 i = 0; i < sizeof(heads) / sizeof(heads[0]); i++) {
        d->avail->ring[d->avail_idx % d->qsize] = heads[i];
        mb();
        d->avail_idx++;
        d->avail->idx = d->avail_idx;
        mb();
        mmio_write(base, VM_QUEUE_NOTIFY, 0);
    }
    /* An avail index far ahead of the queue size. */
    d->avail->idx = (u16)(d->avail_idx + 5000);
    mb();
    mmio_write(base, VM_QUEUE_NOTIFY, 0);
    for (u32 i = 0; i < 100000; i++) cpu_relax();
    /* Config space writes and a read past the end. */
    for (u32 off = 0x100; off < 0x1000; off += 4) mmio_write(base, off, 0xdeadbeef);
}

/* Random writes and reads on every I/O port but those that end the VM (i8042 reset at 0x64,
   the exit device's status and power-off ports 0xf4-0xf5) and COM1 (its output is the test's
   evidence). */
static void scribble_ports(void) {
    for (u32 port = 0; port < 0x10000; port++) {
        if (port == 0x64 || port == 0xf4 || port == 0xf5 || (port >= COM1 && port < COM1 + 8))
            continue;
        outb((u16)port, (u8)rnd());
        (void)inb((u16)port);
    }
    /* MMIO in the 32-bit gap outside any device, and the boot timer with the wrong value. */
    for (u64 a = 0xc0000000UL; a < 0xd0000000UL; a += 0x100000) {
        *(volatile u32 *)a = (u32)rnd();
        (void)*(volatile u32 *)a;
    }
}

static void action_hostile(void) {
    scribble_ports();
    for (int i = 0; i < nothers; i++) scribble_registers(others[i]);
    puts("hostile: other devices=");
    put_dec((u64)nothers);
    putc('\n');
    for (int i = 0; i < ndisks; i++) scribble_device(&disks[i]);
    for (int i = 0; i < ndisks; i++) {
        struct disk *d = get_disk((u64)i);
        u8 st = blk_req(d, T_IN, 0, DATA_BUF, 4096);
        puts("hostile: disk");
        put_dec((u64)i);
        puts(" good status=");
        put_dec(st);
        puts(" fnv1a64=");
        put_hex(fnv1a(0xcbf29ce484222325UL, (const u8 *)DATA_BUF, 4096), 16);
        putc('\n');
    }
    exit_status(0);
}

/* ---------------------------------------------------------------- interrupts (action=irq) */

#define LAPIC_BASE 0xfee00000UL
#define IOAPIC_BASE 0xfec00000UL
#define VEC_COM1 0x40
#define VEC_DISK 0x41

struct idt_gate { u16 off0; u16 sel; u8 ist; u8 type; u16 off1; u32 off2; u32 zero; } __attribute__((packed));
static struct idt_gate idt[256] __attribute__((aligned(16)));
static volatile u32 com1_irqs, disk_irqs, other_irqs;
static u64 irq_disk_base;

struct iframe;
static void lapic_eoi(void) { mmio_write(LAPIC_BASE, 0xb0, 0); }
__attribute__((interrupt)) static void isr_com1(struct iframe *f) {
    (void)f;
    (void)inb(COM1 + 2); /* IIR: reading it clears the THR-empty interrupt */
    outb(COM1 + 1, 0);   /* IER: no further interrupts */
    com1_irqs++;
    lapic_eoi();
}
__attribute__((interrupt)) static void isr_disk(struct iframe *f) {
    (void)f;
    u32 st = mmio_read(irq_disk_base, VM_INTERRUPT_STATUS);
    mmio_write(irq_disk_base, VM_INTERRUPT_ACK, st);
    disk_irqs++;
    lapic_eoi();
}
__attribute__((interrupt)) static void isr_other(struct iframe *f) {
    (void)f;
    other_irqs++;
    lapic_eoi();
}

static void set_gate(int v, void (*h)(struct iframe *)) {
    u64 a = (u64)h;
    idt[v].off0 = (u16)a;
    idt[v].sel = 0x08;
    idt[v].ist = 0;
    idt[v].type = 0x8e; /* present, DPL 0, 64-bit interrupt gate */
    idt[v].off1 = (u16)(a >> 16);
    idt[v].off2 = (u32)(a >> 32);
    idt[v].zero = 0;
}

static void ioapic_write(u32 reg, u32 v) { mmio_write(IOAPIC_BASE, 0x00, reg); mmio_write(IOAPIC_BASE, 0x10, v); }
static u32 ioapic_read(u32 reg) { mmio_write(IOAPIC_BASE, 0x00, reg); return mmio_read(IOAPIC_BASE, 0x10); }

/* Redirection entry of `pin`: fixed delivery of `vector` to APIC `dest`, edge, masked or not. */
static void route_pin(u32 pin, u32 vector, u32 dest, int masked) {
    ioapic_write(0x11 + 2 * pin, dest << 24);
    ioapic_write(0x10 + 2 * pin, vector | (masked ? 1u << 16 : 0));
}

/* Waits up to `cycles` with interrupts enabled for *count to move past `before`. */
static u32 wait_irq(volatile u32 *count, u32 before, u64 cycles) {
    u64 t0 = rdtsc();
    __asm__ volatile("sti" ::: "memory");
    while (*count == before && rdtsc() - t0 < cycles) cpu_relax();
    __asm__ volatile("cli" ::: "memory");
    return *count;
}

/* action=timer count=N: the local APIC timer, periodic (about every millisecond), counted by
   its interrupt handler; "tick <n>" is printed every 10 interrupts up to N, then exit 0. A
   snapshot taken meanwhile and restored goes on counting where it was. */
#define VEC_TIMER 0x42
static volatile u32 timer_irqs;
__attribute__((interrupt)) static void isr_timer(struct iframe *f) {
    (void)f;
    timer_irqs++;
    lapic_eoi();
}

static void action_timer(void) {
    u32 count = (u32)param_num("count=", 300);
    for (int v = 32; v < 256; v++) set_gate(v, isr_other);
    set_gate(VEC_TIMER, isr_timer);
    struct { u16 limit; u64 base; } __attribute__((packed)) idtr = { sizeof(idt) - 1, (u64)idt };
    __asm__ volatile("lidt %0" : : "m"(idtr));
    mmio_write(LAPIC_BASE, 0x80, 0);           /* TPR */
    mmio_write(LAPIC_BASE, 0xf0, 0x1ff);       /* SVR: enabled */
    mmio_write(LAPIC_BASE, 0x3e0, 0xb);        /* divide by 1 */
    mmio_write(LAPIC_BASE, 0x320, VEC_TIMER | (1u << 17)); /* LVT timer: periodic */
    mmio_write(LAPIC_BASE, 0x380, 1000000);    /* initial count */
    u32 printed = 0;
    __asm__ volatile("sti" ::: "memory");
    while (printed < count) {
        u32 t = timer_irqs;
        if (t >= printed + 10) {
            printed += 10;
            __asm__ volatile("cli" ::: "memory");
            puts("tick ");
            put_dec(printed);
            putc('\n');
            __asm__ volatile("sti" ::: "memory");
        }
        cpu_relax();
    }
    __asm__ volatile("cli" ::: "memory");
    puts("timer: other=");
    put_dec(other_irqs);
    putc('\n');
    exit_status(0);
}

/* Interrupt delivery end to end: I/O APIC registers, a masked pin that stays quiet, COM1's
   THR-empty interrupt through pin 4, and a virtio-blk completion through its pin (irqfd). */
static void action_irq(void) {
    puts("irq: ioapic version=0x");
    put_hex(ioapic_read(0x01), 8);
    putc('\n');
    for (int v = 32; v < 256; v++) set_gate(v, isr_other);
    set_gate(VEC_COM1, isr_com1);
    set_gate(VEC_DISK, isr_disk);
    struct { u16 limit; u64 base; } __attribute__((packed)) idtr = { sizeof(idt) - 1, (u64)idt };
    __asm__ volatile("lidt %0" : : "m"(idtr));
    u32 apic_id = mmio_read(LAPIC_BASE, 0x20) >> 24;
    mmio_write(LAPIC_BASE, 0x80, 0);     /* TPR: accept every priority */
    mmio_write(LAPIC_BASE, 0xf0, 0x1ff); /* SVR: enabled, spurious vector 0xff */
    u64 quiet = seconds_to_cycles(1, 3000000000UL) / 10;
    u64 patient = seconds_to_cycles(5, 15000000000UL);

    route_pin(4, VEC_COM1, apic_id, 1);
    outb(COM1 + 1, 0x02); /* THR empty: the UART raises its line at once */
    u32 n = wait_irq(&com1_irqs, 0, quiet);
    outb(COM1 + 1, 0);
    (void)inb(COM1 + 2);
    puts("irq: com1 masked count=");
    put_dec(n);
    putc('\n');

    route_pin(4, VEC_COM1, apic_id, 0);
    outb(COM1 + 1, 0x02);
    n = wait_irq(&com1_irqs, 0, patient);
    puts("irq: com1 vector=0x40 count=");
    put_dec(n);
    putc('\n');

    /* Level-triggered: the local APIC's EOI goes back to the VMM (KVM_EXIT_IOAPIC_EOI), and
       the pin keeps delivering. */
    route_pin(4, VEC_COM1 | (1u << 15), apic_id, 0);
    for (int i = 0; i < 2; i++) {
        u32 before = com1_irqs;
        outb(COM1 + 1, 0x02);
        (void)wait_irq(&com1_irqs, before, patient);
    }
    puts("irq: com1 level count=");
    put_dec(com1_irqs - n);
    putc('\n');
    route_pin(4, VEC_COM1, apic_id, 1);
    u32 com1_expected = n + 2;

    struct disk *d = get_disk(0);
    irq_disk_base = d->base;
    route_pin(d->irq, VEC_DISK, apic_id, 0);
    d->avail->flags = 0; /* interrupts wanted */
    mb();
    u8 st = blk_req(d, T_IN, 0, DATA_BUF, 4096);
    n = wait_irq(&disk_irqs, 0, patient);
    puts("irq: disk0 vector=0x41 count=");
    put_dec(n);
    puts(" status=");
    put_dec(st);
    putc('\n');
    puts("irq: other=");
    put_dec(other_irqs);
    putc('\n');
    exit_status(n >= 1 && st == 0 && com1_irqs == com1_expected && com1_expected == 3 && other_irqs == 0 ? 0 : 1);
}

/* boot: 1 = Linux 64-bit protocol (info = zero page), 2 = PVH (info = hvm_start_info). */
void blk_main(u32 boot, u64 info) {
    const char *src;
    if (boot == 2) {
        if (*(const volatile u32 *)info != 0x336ec578) fail("bad hvm_start_info magic");
        src = (const char *)*(const volatile u64 *)(info + 0x18); /* cmdline_paddr */
    } else {
        const volatile u8 *zp = (const volatile u8 *)info;
        src = (const char *)((u64)*(const volatile u32 *)(zp + 0x228) |
                             ((u64)*(const volatile u32 *)(zp + 0xc8) << 32));
    }
    u64 n = 0;
    if (src)
        while (n < sizeof(cmdline) - 1 && src[n]) { cmdline[n] = src[n]; n++; }
    cmdline[n] = 0;
    puts(boot == 2 ? "blk: boot=pvh cmdline=" : "blk: boot=linux64 cmdline=");
    puts(cmdline);
    putc('\n');

    tsc_from_cpuid();
    req_timeout = seconds_to_cycles(30, 100000000000UL);

    const char *action = param(cmdline, "action=");
    if (!action) action = "";
    int known = word_is(action, "info") || word_is(action, "write") || word_is(action, "read") ||
                word_is(action, "bench") || word_is(action, "badreq") || word_is(action, "hostile") ||
                word_is(action, "flushloop") || word_is(action, "readloop") || word_is(action, "irq") ||
                word_is(action, "timer");
    if (!known) {
        puts("blk: unknown action\n");
        exit_status(99);
    }
    probe();
    if (word_is(action, "info")) action_info();
    if (word_is(action, "write")) action_write();
    if (word_is(action, "read")) action_read();
    if (word_is(action, "bench")) action_bench();
    if (word_is(action, "hostile")) action_hostile();
    if (word_is(action, "flushloop")) action_flushloop();
    if (word_is(action, "readloop")) action_readloop();
    if (word_is(action, "irq")) action_irq();
    if (word_is(action, "timer")) action_timer();
    action_badreq();
}

/* ---------------------------------------------------------------- entry, GDT, page tables */

__asm__(
    /* Linux 64-bit boot protocol entry: first byte of the image (e_entry = 0x100000).
       Long mode with the loader's GDT and page tables; %rsi = zero page. */
    ".pushsection .text.start, \"ax\"\n"
    ".code64\n"
    ".global _start\n"
    "_start:\n"
    "    cli\n"
    "    cld\n"
    "    movq %rsi, %r12\n"
    "    movl $1, %ebp\n"
    "    jmp common64\n"

    /* PVH entry: flat 32-bit protected mode, paging off, %ebx = hvm_start_info. */
    ".code32\n"
    ".global pvh_start32\n"
    "pvh_start32:\n"
    "    cli\n"
    "    cld\n"
    "    lgdt gdt_ptr\n"
    "    movl $0x10, %eax\n"
    "    movl %eax, %ds\n"
    "    movl %eax, %es\n"
    "    movl %eax, %ss\n"
    "    movl %eax, %fs\n"
    "    movl %eax, %gs\n"
    "    movl $stack_top, %esp\n"
    "    movl %cr4, %eax\n"
    "    orl $0x20, %eax\n"            /* PAE */
    "    movl %eax, %cr4\n"
    "    movl $pml4, %eax\n"
    "    movl %eax, %cr3\n"
    "    movl $0xc0000080, %ecx\n"     /* EFER.LME */
    "    rdmsr\n"
    "    orl $0x100, %eax\n"
    "    wrmsr\n"
    "    movl %cr0, %eax\n"
    "    orl $0x80000001, %eax\n"      /* PG | PE */
    "    movl %eax, %cr0\n"
    "    ljmp $0x08, $pvh_start64\n"
    ".code64\n"
    "pvh_start64:\n"
    "    movl %ebx, %r12d\n"
    "    movl $2, %ebp\n"

    /* Both: own page tables (4 GiB identity), own GDT, stack, clear .bss, blk_main(boot, info). */
    "common64:\n"
    "    movl $pml4, %eax\n"
    "    movq %rax, %cr3\n"
    "    lgdt gdt_ptr(%rip)\n"
    "    movl $0x10, %eax\n"
    "    movl %eax, %ds\n"
    "    movl %eax, %es\n"
    "    movl %eax, %ss\n"
    "    movl %eax, %fs\n"
    "    movl %eax, %gs\n"
    "    leaq stack_top(%rip), %rsp\n"
    "    pushq $0x08\n"
    "    leaq 1f(%rip), %rax\n"
    "    pushq %rax\n"
    "    lretq\n"
    "1:  leaq __bss_start(%rip), %rdi\n"
    "    leaq __bss_end(%rip), %rcx\n"
    "    subq %rdi, %rcx\n"
    "    xorl %eax, %eax\n"
    "    rep stosb\n"
    "    leaq stack_top(%rip), %rsp\n"
    "    movl %ebp, %edi\n"
    "    movq %r12, %rsi\n"
    "    call blk_main\n"
    "2:  cli\n"
    "    hlt\n"
    "    jmp 2b\n"
    ".popsection\n"

    /* GDT: 0x08 64-bit code, 0x10 flat data, 0x18 flat 32-bit code. The descriptor's 8-byte
       base serves lgdt in both modes (32-bit lgdt reads the low 4 bytes). */
    ".pushsection .rodata\n"
    ".balign 16\n"
    "gdt:\n"
    "    .quad 0\n"
    "    .quad 0x00af9a000000ffff\n"
    "    .quad 0x00cf92000000ffff\n"
    "    .quad 0x00cf9a000000ffff\n"
    "gdt_end:\n"
    ".balign 16\n"
    "gdt_ptr:\n"
    "    .word gdt_end - gdt - 1\n"
    "    .quad gdt\n"
    ".popsection\n"

    /* Identity map of the first 4 GiB with 2 MiB pages; the 4th GiB (MMIO) uncached. */
    ".pushsection .data.pagetables, \"aw\"\n"
    ".balign 4096\n"
    "pml4:\n"
    "    .quad pdpt + 0x3\n"
    "    .fill 511, 8, 0\n"
    "pdpt:\n"
    "    .quad pd + 0x3, pd + 0x1003, pd + 0x2003, pd + 0x3003\n"
    "    .fill 508, 8, 0\n"
    "pd:\n"
    "    .set i, 0\n"
    "    .rept 2048\n"
    "    .if i >= 1536\n"
    "    .quad (i << 21) | 0x9b\n"
    "    .else\n"
    "    .quad (i << 21) | 0x83\n"
    "    .endif\n"
    "    .set i, i + 1\n"
    "    .endr\n"
    ".popsection\n"

    /* PVH entry note: name "Xen", type 18 (XEN_ELFNOTE_PHYS32_ENTRY), 8-byte descriptor. */
    ".pushsection .note.Xen, \"a\", @note\n"
    ".balign 4\n"
    "    .long 4\n"
    "    .long 8\n"
    "    .long 18\n"
    "    .asciz \"Xen\"\n"
    "    .quad pvh_start32\n"
    ".popsection\n"

    ".pushsection .bss\n"
    ".balign 16\n"
    "stack: .skip 65536\n"
    "stack_top:\n"
    ".popsection\n"
);
