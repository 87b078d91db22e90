/*
 * hello: the smallest guest that proves a VMM started it - it prints "hello\n" on COM1 and
 * exits at once through port 0xf4 (Ember's exit port; QEMU's isa-debug-exit). The boot
 * benchmark's VMM-overhead figure (spawn to exit) runs it under Ember and QEMU microvm, so the
 * time measured is the VMMs' own: about 20 guest instructions and 7 port exits.
 *
 * Build (in tests/guests/, with the flags of cflags.rs):
 *   gcc <GUEST_CFLAGS> -Wl,-T,pvh.ld -o hello.elf hello.S
 *
 * Entry: PVH (`.note.Xen` type 18 = XEN_ELFNOTE_PHYS32_ENTRY, 8-byte descriptor) at
 * `pvh_start32`, flat 32-bit protected mode, paging off. The code uses only instructions that
 * encode the same in 64-bit mode, so `_start` (e_entry, the Linux 64-bit boot protocol) is the
 * same code. It touches no memory but its own image: no stack, no page tables.
 */
#define COM1 0x3f8
#define EXIT_PORT 0xf4

    .section .text.start, "ax"
    .code32
    .globl _start
    .globl pvh_start32
_start:
pvh_start32:
    cli
    mov $message, %esi
    mov $(message_end - message), %ecx
    mov $COM1, %edx
1:  lodsb
    outb %al, %dx
    loop 1b
    mov $EXIT_PORT, %edx
    xor %eax, %eax
    outb %al, %dx
2:  hlt
    jmp 2b

    .section .rodata
message:
    .ascii "hello\n"
message_end:

    .section .note.Xen, "a"
    .balign 4
    .long 4                 /* name size */
    .long 8                 /* descriptor size */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
