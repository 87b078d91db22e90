/*
 * xfer: the guest side of Ember's network and vsock tests (static, musl).
 *
 *   xfer echo vsock PORT          listen on vsock PORT; echo each connection (one process
 *                                 each) until its peer half-closes, then close
 *   xfer check tcp HOST PORT N    connect, send N bytes of the test pattern while reading
 *   xfer check vsock CID PORT N   the echo back; exit 0 if it came back byte-exact
 *   xfer say vsock CID PORT MSG   connect, send MSG, half-close, print the reply
 *
 * The pattern's byte i is (i * 131) ^ (i >> 8) ^ (i >> 16), truncated to 8 bits; the host
 * side of the tests computes the same. Output lines start with "xfer: ".
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <fcntl.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
/* <linux/vm_sockets.h>, which musl's headers lack. */
struct sockaddr_vm {
    sa_family_t svm_family;
    unsigned short svm_reserved1;
    unsigned int svm_port;
    unsigned int svm_cid;
    unsigned char svm_flags;
    unsigned char svm_zero[3];
};
#define VMADDR_CID_ANY (-1U)

#define BUF (256 * 1024)
static unsigned char buf[BUF];

static unsigned char pattern(uint64_t i) { return (unsigned char)((i * 131) ^ (i >> 8) ^ (i >> 16)); }

static int die(const char *what) {
    printf("xfer: %s: %s\n", what, strerror(errno));
    fflush(stdout);
    return 1;
}

static int vsock_socket(void) { return socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0); }

static int connect_to(int argc, char **argv) {
    /* argv: kind host/cid port */
    int fd;
    if (argc < 3) return -1;
    if (!strcmp(argv[0], "tcp")) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
        if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1) return -1;
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) return -1;
    } else if (!strcmp(argv[0], "vsock")) {
        struct sockaddr_vm a = {.svm_family = AF_VSOCK,
                                .svm_cid = (unsigned)strtoul(argv[1], 0, 10),
                                .svm_port = (unsigned)strtoul(argv[2], 0, 10)};
        fd = vsock_socket();
        if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) return -1;
    } else {
        errno = EINVAL;
        return -1;
    }
    return fd;
}

static int echo_one(int c) {
    for (;;) {
        ssize_t n = read(c, buf, BUF);
        if (n == 0) break;
        if (n < 0) {
            if (errno == EINTR) continue;
            return 1;
        }
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(c, buf + off, n - off);
            if (w < 0) {
                if (errno == EINTR) continue;
                return 1;
            }
            off += w;
        }
    }
    shutdown(c, SHUT_WR);
    close(c);
    return 0;
}

static int echo(const char *port) {
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
                            .svm_port = (unsigned)strtoul(port, 0, 10)};
    int s = vsock_socket();
    if (s < 0) return die("socket");
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) return die("bind");
    if (listen(s, 128) < 0) return die("listen");
    signal(SIGCHLD, SIG_IGN); /* children reaped by the kernel */
    printf("xfer: listening on vsock port %s\n", port);
    fflush(stdout);
    for (;;) {
        int c = accept4(s, 0, 0, SOCK_CLOEXEC);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            return die("accept");
        }
        pid_t p = fork();
        if (p == 0) _exit(echo_one(c));
        close(c);
    }
}

static int check(int argc, char **argv) {
    if (argc < 4) return 2;
    uint64_t total = strtoull(argv[3], 0, 10), sent = 0, got = 0;
    int fd = connect_to(argc, argv);
    if (fd < 0) return die("connect");
    fcntl(fd, F_SETFL, O_NONBLOCK);
    static unsigned char out[BUF];
    while (got < total) {
        struct pollfd p = {.fd = fd, .events = POLLIN | (sent < total ? POLLOUT : 0)};
        if (poll(&p, 1, 30000) <= 0) return die("poll (stalled)");
        if (sent < total && (p.revents & POLLOUT)) {
            size_t n = total - sent < BUF ? total - sent : BUF;
            for (size_t i = 0; i < n; i++) out[i] = pattern(sent + i);
            ssize_t w = write(fd, out, n);
            if (w < 0 && errno != EAGAIN) return die("write");
            if (w > 0) sent += w;
            if (sent == total) shutdown(fd, SHUT_WR);
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = read(fd, buf, BUF);
            if (n < 0 && errno != EAGAIN) return die("read");
            if (n == 0) break;
            for (ssize_t i = 0; i < n; i++)
                if (buf[i] != pattern(got + i)) {
                    printf("xfer: MISMATCH at byte %llu\n", (unsigned long long)(got + i));
                    return 1;
                }
            if (n > 0) got += n;
        }
    }
    close(fd);
    printf("xfer: %s ok %llu bytes\n", got == total ? "check" : "short", (unsigned long long)got);
    return got == total ? 0 : 1;
}

static int say(int argc, char **argv) {
    if (argc < 4) return 2;
    int fd = connect_to(argc, argv);
    if (fd < 0) return die("connect");
    size_t len = strlen(argv[3]);
    if (write(fd, argv[3], len) != (ssize_t)len) return die("write");
    shutdown(fd, SHUT_WR);
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, BUF - 1 - n);
        if (r <= 0) break;
        n += r;
    }
    buf[n] = 0;
    printf("xfer: reply %s\n", buf);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, 0, _IOLBF, 0);
    if (argc >= 4 && !strcmp(argv[1], "echo") && !strcmp(argv[2], "vsock")) return echo(argv[3]);
    if (argc >= 3 && !strcmp(argv[1], "check")) return check(argc - 2, argv + 2);
    if (argc >= 3 && !strcmp(argv[1], "say")) return say(argc - 2, argv + 2);
    fprintf(stderr, "usage: xfer echo vsock PORT | check tcp|vsock HOST PORT N | say vsock CID PORT MSG\n");
    return 2;
}
