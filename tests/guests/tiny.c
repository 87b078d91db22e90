/*
 * Tiny freestanding test guest for Ember's integration tests.
 *
 * Entered through the Linux 64-bit boot protocol (long mode, identity paging, %rsi = zero
 * page). It reads its command line from the zero page (cmd_line_ptr at offset 0x228) and acts
 * on `action=`:
 *   (none)           print "tiny: hello" and the command line, then reset (i8042 0xFE)
 *   print            print every `say=` word given, then exit with `status=` if given,
 *                    else reset
 *   reset            reset through the i8042 at once
 *   triplefault      load an empty IDT and raise #UD: the CPU triple-faults
 *   exit:N           write N to the exit port 0xf4
 *   loop             spin forever
 *   halt             cli; hlt forever (no exit reaches the VMM)
 *   unhandled        touch unclaimed ports and MMIO, then print "survived" and exit 0
 *   echo:N           read N bytes from the serial port, echo each, then exit 0
 *   pattern:N        print N lines of a known pattern, then exit 0
 *   ioloop:N         N port writes to the unclaimed port 0x510, then exit 0
 *   mmioloop:N       N writes to unclaimed MMIO at 0x3fe00000, then exit 0
 *   kbd              enable the i8042 keyboard, wait for Ctrl+Alt+Del on it (polling port
 *                    0x64), then exit 77
 *   cx16             one `lock cmpxchg16b` (which kvm-pvm's instruction emulator lacks: the
 *                    VM ends with KVM_EXIT_INTERNAL_ERROR there); where it runs, print
 *                    "tiny: cmpxchg16b ok" (or "failed") and exit 0
 * Built with -ffreestanding -mgeneral-regs-only -mno-red-zone: no SSE, no int3, so it runs on
 * any KVM, including hosts whose KVM emulates guest kernel code.
 */
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

#define COM1 0x3f8
#define EXIT_PORT 0xf4

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }

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

static void __attribute__((noreturn)) reset(void) {
    outb(0x64, 0xfe);
    for (;;) __asm__ volatile("hlt");
}
static void __attribute__((noreturn)) exit_status(u8 s) {
    outb(EXIT_PORT, s);
    for (;;) __asm__ volatile("hlt");
}

static int starts_with(const char *s, const char *p) {
    while (*p) if (*s++ != *p++) return 0;
    return 1;
}
static u64 parse_dec(const char *s) {
    u64 v = 0;
    while (*s >= '0' && *s <= '9') v = v * 10 + (u64)(*s++ - '0');
    return v;
}

/* Finds `key` (e.g. "action=") at the start of a word; returns the value or 0. */
static const char *param(const char *cmdline, const char *key) {
    const char *p = cmdline;
    while (*p) {
        while (*p == ' ') p++;
        if (starts_with(p, key)) {
            const char *k = key; while (*k) { k++; p++; }
            return p;
        }
        while (*p && *p != ' ') p++;
    }
    return 0;
}

static void put_word(const char *s) { while (*s && *s != ' ') putc(*s++); }

struct idt_ptr { u16 limit; u64 base; } __attribute__((packed));

void tiny_main(const u8 *zero_page) {
    const char *cmdline = (const char *)(u64)(*(const u32 *)(zero_page + 0x228));
    const char *action = param(cmdline, "action=");

    if (!action) {
        puts("tiny: hello\n");
        puts("cmdline: ");
        puts(cmdline);
        puts("\n");
        reset();
    }
    if (starts_with(action, "print")) {
        const char *p = cmdline;
        while ((p = param(p, "say="))) { put_word(p); putc('\n'); }
        const char *st = param(cmdline, "status=");
        if (st) exit_status((u8)parse_dec(st));
        reset();
    }
    if (starts_with(action, "reset")) reset();
    if (starts_with(action, "exit:")) exit_status((u8)parse_dec(action + 5));
    if (starts_with(action, "triplefault")) {
        struct idt_ptr empty = { 0, 0 };
        puts("tiny: triple fault\n");
        __asm__ volatile("lidt %0; ud2" : : "m"(empty));
    }
    if (starts_with(action, "cx16")) {
        static volatile u64 slot[2] __attribute__((aligned(16)));
        u64 lo = 0, hi = 0;
        u8 ok;
        puts("tiny: cmpxchg16b\n");
        __asm__ volatile("lock cmpxchg16b %1; sete %0"
                         : "=q"(ok), "+m"(slot[0]), "+a"(lo), "+d"(hi)
                         : "b"(1UL), "c"(2UL)
                         : "memory", "cc");
        puts(ok && slot[0] == 1 && slot[1] == 2 ? "tiny: cmpxchg16b ok\n" : "tiny: cmpxchg16b failed\n");
        exit_status(0);
    }
    if (starts_with(action, "loop")) {
        puts("tiny: looping\n");
        for (;;) __asm__ volatile("pause");
    }
    if (starts_with(action, "halt")) {
        puts("tiny: halting\n");
        for (;;) __asm__ volatile("cli; hlt");
    }
    if (starts_with(action, "unhandled")) {
        outb(0x510, 0x12);
        u8 v = inb(0x511);
        /* Identity-mapped (first GiB) but not RAM when the guest has less than 1 GiB, and
           claimed by no device: an MMIO exit nobody answers. */
        volatile u32 *hole = (volatile u32 *)0x3fe00000UL;
        *hole = 0xdeadbeef;
        u32 r = *hole;
        puts("tiny: port read ");
        put_dec(v);
        puts(" mmio read ");
        put_dec(r);
        puts("\nsurvived\n");
        exit_status(0);
    }
    if (starts_with(action, "echo:")) {
        u64 n = parse_dec(action + 5);
        puts("tiny: ready\n");
        for (u64 i = 0; i < n; i++) {
            while (!(inb(COM1 + 5) & 1)) { }
            putc((char)inb(COM1));
        }
        puts("\ntiny: echoed\n");
        exit_status(0);
    }
    if (starts_with(action, "pattern:")) {
        u64 n = parse_dec(action + 8);
        for (u64 i = 0; i < n; i++) {
            puts("line ");
            put_dec(i);
            puts(": the quick brown fox jumps over the lazy dog\n");
        }
        exit_status(0);
    }
    if (starts_with(action, "ioloop:")) {
        u64 n = parse_dec(action + 7);
        for (u64 i = 0; i < n; i++) outb(0x510, (u8)i);
        exit_status(0);
    }
    if (starts_with(action, "mmioloop:")) {
        u64 n = parse_dec(action + 9);
        volatile u32 *hole = (volatile u32 *)0x3fe00000UL;
        for (u64 i = 0; i < n; i++) *hole = (u32)i;
        exit_status(0);
    }
    if (starts_with(action, "kbd")) {
        /* Scan code set 2: Ctrl 0x14, Alt 0x11, Delete 0xe0 0x71. */
        u8 prev = 0;
        int ctrl = 0, alt = 0;
        outb(0x64, 0xae); /* enable the keyboard, as a driver does (Ember types no keys before) */
        puts("tiny: waiting for ctrl-alt-del\n");
        for (;;) {
            if (!(inb(0x64) & 1)) { __asm__ volatile("pause"); continue; }
            u8 b = inb(0x60);
            if (b == 0x14 && prev != 0xf0) ctrl = 1;
            if (b == 0x11 && prev != 0xf0) alt = 1;
            if (b == 0x71 && prev == 0xe0 && ctrl && alt) {
                puts("tiny: ctrl-alt-del\n");
                exit_status(77);
            }
            prev = b;
        }
    }
    puts("tiny: unknown action\n");
    exit_status(99);
}

__asm__(
    ".pushsection .text.start, \"ax\"\n"
    ".global _start\n"
    "_start:\n"
    "    lea stack_top(%rip), %rsp\n"
    "    mov %rsi, %rdi\n"
    "    call tiny_main\n"
    "1:  hlt\n"
    "    jmp 1b\n"
    ".popsection\n"
    ".pushsection .bss\n"
    ".align 16\n"
    "stack: .skip 16384\n"
    "stack_top:\n"
    ".popsection\n"
);
