/*
 * Ember's guest init: /init in the project's initramfs and /sbin/init in its ext4 root.
 *
 * Why C and not a busybox script: every guest system call costs about 120 us on kvm-pvm hosts
 * (the guest kernel runs under KVM's instruction emulator), and a script of a few dozen
 * commands took about 15 s after "Run /init". This program makes a few dozen system calls.
 * Built static with musl (resources/initramfs/build.sh); busybox stays for the shell and tools.
 *
 * What it does, as PID 1:
 *   1. mounts devtmpfs on /dev (unless there), gives itself /dev/console as stdio, pokes
 *      Ember's boot-timer device (byte 123 at guest-physical 0xC0000000, as Firecracker's),
 *      then mounts proc, sysfs and two tmpfs (/tmp, /run); a mount that fails is named on the
 *      console and the boot goes on;
 *   2. prints "ember-init: ready"; with `ember.wait` on the kernel command line (a VM booted
 *      to be snapshotted here) it then waits for its command on the console: one line of
 *      words, `ember.cmd=<base64>` as below (none: the shell), `ember.seed=<hex>` (bytes
 *      mixed into the kernel's random pool, so clones of one snapshot do not share their
 *      randomness), `ember.time=<seconds>.<nanoseconds>` (the host's wall clock: a clone
 *      wakes at the snapshot's time otherwise) and `ember.clone=<id>` (exported to the
 *      command as EMBER_CLONE_ID), which
 *      Ember types into a restored guest's console, not echoed;
 *   3. with `ember.cmd=<base64>` on the kernel command line (each argument followed by a NUL,
 *      standard alphabet, padded: see vmm/src/command.rs) runs that argv exactly (no shell
 *      parsing) on the console; a program not found in PATH that is a busybox applet runs as
 *      one; without ember.cmd it runs an interactive busybox shell on the console;
 *   4. when the command ends: kills what is left, syncs, unmounts (or remounts read-only) the
 *      block-device filesystems, writes the status (exit code, 128+N for signal N, 127 for a
 *      command not found, 126 for one that cannot run) as one byte to I/O port 0xf4 (Ember's
 *      exit device) and powers off. After the shell it powers off.
 * Graceful shutdown: Ctrl+Alt+Del on the keyboard (read from /dev/input/event*, which is how
 * Ember's `stop()` and SIGTERM ask), SIGUSR2/SIGUSR1 (busybox `poweroff`/`halt`) and SIGINT
 * power off, SIGTERM (busybox `reboot`) reboots: each after SIGTERM to every process, a grace
 * of one second, SIGKILL, sync and the same unmounting.
 *
 * Host test mode (not PID 1, EMBER_INIT_DRY_RUN=1): decodes the command from the file named
 * by EMBER_CMDLINE_FILE, runs it, prints "ember-init: exit status N" and exits with N.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define PATH_VALUE "/sbin:/bin:/usr/sbin:/usr/bin"
#define BUSYBOX "/bin/busybox"
#define APPLETS "/etc/busybox-applets"
#define BOOT_TIMER_ADDR 0xc0000000UL
#define BOOT_TIMER_MAGIC 123
#define EXIT_PORT 0xf4
#define CMDLINE_MAX 4096
#define MAX_INPUTS 4
#define GRACE_MS 1000
#define RNDRESEEDCRNG 0x5207 /* _IO('R', 0x07), linux/random.h */

/* linux/input-event-codes.h (musl ships no kernel headers) */
#define EV_KEY 1
#define KEY_LEFTCTRL 29
#define KEY_LEFTALT 56
#define KEY_RIGHTCTRL 97
#define KEY_RIGHTALT 100
#define KEY_DELETE 111
struct input_event_64 {
	struct timeval time;
	uint16_t type;
	uint16_t code;
	int32_t value;
};

static void say(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int n = snprintf(buf, sizeof buf, "ember-init: ");
	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof buf - n, fmt, ap);
	va_end(ap);
	if (n >= (int)sizeof buf - 1)
		n = sizeof buf - 2;
	buf[n++] = '\n';
	(void)!write(2, buf, n);
}

/* Reads a whole small file into buf (NUL-terminated); returns its length or -1. */
static ssize_t read_file(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n, len = 0;
	if (fd < 0)
		return -1;
	while (len < (ssize_t)size - 1 && (n = read(fd, buf + len, size - 1 - len)) > 0)
		len += n;
	close(fd);
	buf[len] = 0;
	return len;
}

static int b64_value(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/* Decodes padded standard base64 of length len into out; returns the byte count or -1. */
static ssize_t b64_decode(const char *in, size_t len, char *out)
{
	size_t i, o = 0;
	if (len % 4)
		return -1;
	for (i = 0; i < len; i += 4) {
		int v[4], k, pad = 0;
		for (k = 0; k < 4; k++) {
			if (in[i + k] == '=' && i + 4 == len && k >= 2) {
				v[k] = 0;
				pad++;
			} else if (pad || (v[k] = b64_value(in[i + k])) < 0) {
				return -1;
			}
		}
		out[o++] = (char)(v[0] << 2 | v[1] >> 4);
		if (pad < 2)
			out[o++] = (char)(v[1] << 4 | v[2] >> 2);
		if (pad < 1)
			out[o++] = (char)(v[2] << 6 | v[3]);
	}
	return o;
}

/* The value of the last `key` word on a command line (NUL-terminated in place), or NULL. */
static char *cmdline_value(char *cmdline, const char *key)
{
	char *found = NULL, *p = cmdline;
	size_t klen = strlen(key);
	while (*p) {
		char *w;
		while (*p == ' ' || *p == '\t' || *p == '\n')
			p++;
		if (!*p)
			break;
		w = p;
		while (*p && *p != ' ' && *p != '\t' && *p != '\n')
			p++;
		if (*p)
			*p++ = 0;
		if (!strncmp(w, "--", 3))
			break; /* the rest belongs to init as arguments */
		if (!strncmp(w, key, klen))
			found = w + klen;
	}
	return found;
}

/*
 * The command's argv from `ember.cmd=` (argv storage in buf), NULL if there is none;
 * *bad is set to the status to report when the parameter is there but unusable.
 */
static char **command_argv(char *cmdline, char *buf, int *bad)
{
	static char *argv[1024];
	char *b64 = cmdline_value(cmdline, "ember.cmd=");
	ssize_t n;
	int argc = 0;
	char *p;

	*bad = 0;
	if (!b64)
		return NULL;
	n = b64_decode(b64, strlen(b64), buf);
	if (n <= 0 || buf[n - 1] != 0) {
		say("ember.cmd is not valid base64 of NUL-terminated arguments");
		*bad = 126;
		return NULL;
	}
	for (p = buf; p < buf + n && argc < 1023; p += strlen(p) + 1)
		argv[argc++] = p;
	argv[argc] = NULL;
	return argv;
}

/* Whether `name` is one of busybox's applets (listed one per line at build time). */
static int is_applet(const char *name)
{
	static char list[16384];
	size_t len = strlen(name);
	char *p;
	if (read_file(APPLETS, list, sizeof list) <= 0)
		return 0;
	for (p = list; *p;) {
		char *e = strchrnul(p, '\n');
		if ((size_t)(e - p) == len && !strncmp(p, name, len))
			return 1;
		p = *e ? e + 1 : e;
	}
	return 0;
}

/* In the child: runs argv as execvp would, then as a busybox applet; never returns. */
static void exec_command(char **argv)
{
	int err;
	execvp(argv[0], argv);
	err = errno;
	if (err == ENOENT && !strchr(argv[0], '/') && is_applet(argv[0])) {
		execv(BUSYBOX, argv);
		err = errno;
	}
	if (err == ENOENT) {
		say("%s: command not found", argv[0]);
		_exit(127);
	}
	say("%s: %s", argv[0], strerror(err));
	_exit(126);
}

static int status_code(int st)
{
	if (WIFEXITED(st))
		return WEXITSTATUS(st);
	if (WIFSIGNALED(st))
		return 128 + WTERMSIG(st);
	return 255;
}

/*
 * Reads the command line Ember types after a restore (echo off, no line-length limit of the
 * terminal's canonical mode) into `line`; returns its length without the newline, or -1.
 */
static struct termios typed_saved;
static int typed_have_tty;

/* Before "ready": the console stops echoing, so the line Ember types is never shown. */
static void prepare_typed_line(void)
{
	struct termios raw;
	typed_have_tty = tcgetattr(0, &typed_saved) == 0;
	if (typed_have_tty) {
		raw = typed_saved;
		raw.c_lflag &= ~(ECHO | ICANON);
		raw.c_cc[VMIN] = 1;
		raw.c_cc[VTIME] = 0;
		tcsetattr(0, TCSANOW, &raw);
	}
}

static ssize_t read_typed_line(char *line, size_t size)
{
	size_t len = 0;
	for (;;) {
		ssize_t n = read(0, line + len, size - 1 - len);
		if (n <= 0) {
			if (n < 0 && errno == EINTR)
				continue;
			len = (size_t)-1;
			break;
		}
		char *nl = memchr(line + len, '\n', n);
		len += n;
		if (nl) {
			len = nl - line;
			break;
		}
		if (len >= size - 1) {
			len = (size_t)-1;
			break;
		}
	}
	if (typed_have_tty)
		tcsetattr(0, TCSANOW, &typed_saved);
	if (len == (size_t)-1)
		return -1;
	line[len] = 0;
	if (len && line[len - 1] == '\r')
		line[--len] = 0;
	return len;
}

/* Mixes the hex bytes of `hex` into the kernel's random pool (a write to /dev/urandom mixes
 * without crediting entropy). */
static void mix_seed(const char *hex)
{
	unsigned char bytes[256];
	size_t n = 0;
	int fd;
	while (n < sizeof bytes && hex[0] && hex[1]) {
		unsigned v;
		if (sscanf(hex, "%2x", &v) != 1)
			break;
		bytes[n++] = (unsigned char)v;
		hex += 2;
	}
	fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
	/* A write only feeds the input pool; RNDRESEEDCRNG makes the generator use it now, so
	 * clones never share their random numbers, not even for the seconds until the next
	 * scheduled reseed. */
	/* ENODATA: the generator is not initialized yet; it will start from the pool the seed
	 * went into. */
	if (fd < 0 || write(fd, bytes, n) != (ssize_t)n ||
	    (ioctl(fd, RNDRESEEDCRNG) != 0 && errno != ENODATA))
		say("cannot mix the clone's seed into the random pool");
	if (fd >= 0)
		close(fd);
}

/* Host test mode: decode, run, report on stdout. */
static int dry_run(void)
{
	static char cmdline[CMDLINE_MAX], buf[CMDLINE_MAX];
	const char *file = getenv("EMBER_CMDLINE_FILE");
	char **argv;
	int bad, st;
	pid_t pid;

	if (!file || read_file(file, cmdline, sizeof cmdline) < 0) {
		say("EMBER_CMDLINE_FILE is not a readable file");
		return 2;
	}
	argv = command_argv(cmdline, buf, &bad);
	if (!argv) {
		if (!bad) {
			printf("ember-init: no ember.cmd on the command line\n");
			return 0;
		}
		st = bad;
	} else {
		fflush(stdout);
		pid = fork();
		if (pid == 0)
			exec_command(argv);
		if (pid < 0 || waitpid(pid, &st, 0) < 0)
			return 2;
		st = status_code(st);
	}
	printf("ember-init: exit status %d\n", st);
	return st;
}

/* ---- PID 1 ------------------------------------------------------------------------------ */

static void mount_one(const char *src, const char *dir, const char *type, unsigned long flags,
		      const char *data)
{
	mkdir(dir, 0755);
	if (mount(src, dir, type, flags, data) < 0 && errno != EBUSY)
		say("cannot mount %s on %s: %s", type, dir, strerror(errno));
}

static void poke_boot_timer(void)
{
	int fd = open("/dev/mem", O_RDWR | O_SYNC | O_CLOEXEC);
	volatile uint8_t *p;
	if (fd < 0)
		return;
	p = mmap(NULL, 4096, PROT_WRITE, MAP_SHARED, fd, BOOT_TIMER_ADDR);
	close(fd);
	if (p == MAP_FAILED)
		return;
	*p = BOOT_TIMER_MAGIC;
	munmap((void *)p, 4096);
}

/* The console's real tty (the last console= on the command line), for a controlling tty. */
static void console_tty(const char *cmdline, char *out, size_t size)
{
	static char copy[CMDLINE_MAX];
	char *v, *comma;
	snprintf(copy, sizeof copy, "%s", cmdline);
	v = cmdline_value(copy, "console=");
	if (!v || !*v)
		v = "ttyS0";
	comma = strchr(v, ',');
	if (comma)
		*comma = 0;
	snprintf(out, size, "/dev/%s", v);
}

/* In a child: a new session with the console as its controlling terminal and stdio. */
static void take_console(const char *tty)
{
	int fd;
	setsid();
	fd = open(tty, O_RDWR);
	if (fd < 0)
		return; /* keep /dev/console, without job control */
	ioctl(fd, TIOCSCTTY, 0);
	dup2(fd, 0);
	dup2(fd, 1);
	dup2(fd, 2);
	if (fd > 2)
		close(fd);
}

static int open_keyboards(struct pollfd *fds, int max)
{
	char path[32];
	int i, n = 0;
	for (i = 0; i < 8 && n < max; i++) {
		snprintf(path, sizeof path, "/dev/input/event%d", i);
		fds[n].fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
		if (fds[n].fd < 0)
			break;
		fds[n++].events = POLLIN;
	}
	return n;
}

/* Reads key events; returns 1 once Ctrl+Alt+Del has been pressed. */
static int ctrl_alt_del(int fd)
{
	static int ctrl, alt;
	struct input_event_64 ev[16];
	ssize_t n = read(fd, ev, sizeof ev);
	int i;
	for (i = 0; n > 0 && i < n / (ssize_t)sizeof ev[0]; i++) {
		if (ev[i].type != EV_KEY)
			continue;
		if (ev[i].code == KEY_LEFTCTRL || ev[i].code == KEY_RIGHTCTRL)
			ctrl = ev[i].value != 0;
		else if (ev[i].code == KEY_LEFTALT || ev[i].code == KEY_RIGHTALT)
			alt = ev[i].value != 0;
		else if (ev[i].code == KEY_DELETE && ev[i].value == 1 && ctrl && alt)
			return 1;
	}
	return 0;
}

/* Unmounts every block-device filesystem, innermost first, or makes it read-only. */
static void unmount_disks(void)
{
	static char mounts[16384];
	char *lines[256], *p;
	int n = 0;
	if (read_file("/proc/mounts", mounts, sizeof mounts) <= 0)
		return;
	for (p = mounts; *p && n < 256;) {
		char *e = strchrnul(p, '\n');
		if (!strncmp(p, "/dev/", 5))
			lines[n++] = p;
		p = *e ? (*e = 0, e + 1) : e;
	}
	while (n-- > 0) {
		char *dir = strchr(lines[n], ' ');
		char *end = dir ? strchr(dir + 1, ' ') : NULL;
		if (!end)
			continue;
		*end = 0;
		dir++;
		if (umount2(dir, 0) < 0 &&
		    mount(NULL, dir, NULL, MS_REMOUNT | MS_RDONLY, NULL) < 0)
			say("cannot unmount %s: %s", dir, strerror(errno));
	}
}

/* Reaps every child that has ended; returns 1 once no child (no user process) is left. */
static int reap(pid_t main_pid, int *main_status)
{
	int st;
	pid_t pid;
	while ((pid = waitpid(-1, &st, WNOHANG)) > 0)
		if (pid == main_pid)
			*main_status = status_code(st);
	return pid < 0 && errno == ECHILD;
}

/* Ends every other process: SIGTERM, up to GRACE_MS for them to go, then SIGKILL. */
static void end_processes(int sfd, int grace_ms)
{
	struct pollfd p = { .fd = sfd, .events = POLLIN };
	struct signalfd_siginfo si;
	int dummy = -1;
	if (grace_ms > 0 && kill(-1, SIGTERM) == 0) {
		struct timespec t0, t;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		/* Every user process descends from init (orphans are re-parented here), so no child
		 * left means none is left at all. (kill(-1, 0) cannot tell: it counts kernel
		 * threads.) */
		for (;;) {
			int left, ready;
			if (reap(0, &dummy))
				break;
			clock_gettime(CLOCK_MONOTONIC, &t);
			left = grace_ms - (int)((t.tv_sec - t0.tv_sec) * 1000 +
						(t.tv_nsec - t0.tv_nsec) / 1000000);
			if (left <= 0 || (ready = poll(&p, 1, left)) < 0)
				break;
			if (ready > 0)
				(void)!read(sfd, &si, sizeof si);
		}
	}
	kill(-1, SIGKILL);
	while (waitpid(-1, NULL, 0) > 0)
		;
}

static void report_status(int status)
{
	unsigned char b = (unsigned char)status;
	int fd = open("/dev/port", O_WRONLY | O_CLOEXEC);
	if (fd < 0 || pwrite(fd, &b, 1, EXIT_PORT) != 1)
		say("cannot write the exit status %d to port 0x%x: %s", status, EXIT_PORT,
		    strerror(errno));
	if (fd >= 0)
		close(fd);
}

static void finish(int sfd, int grace_ms, int status, int how)
{
	end_processes(sfd, grace_ms);
	sync();
	unmount_disks();
	sync();
	if (status >= 0)
		report_status(status); /* under Ember the VM ends here */
	reboot(how);
	say("reboot: %s", strerror(errno));
	for (;;)
		pause();
}

int main(void)
{
	static char cmdline[CMDLINE_MAX], cmdline_copy[CMDLINE_MAX], argbuf[CMDLINE_MAX];
	struct pollfd fds[1 + MAX_INPUTS];
	char tty[64];
	char **argv;
	sigset_t mask;
	int nfds, sfd, bad, main_status = -1, fd;
	pid_t child;

	if (getpid() != 1) {
		const char *dry = getenv("EMBER_INIT_DRY_RUN");
		if (dry && !strcmp(dry, "1"))
			return dry_run();
		say("must run as PID 1 (or with EMBER_INIT_DRY_RUN=1 for a host test)");
		return 2;
	}

	mount_one("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	if (fcntl(0, F_GETFD) < 0 && (fd = open("/dev/console", O_RDWR)) >= 0) {
		dup2(fd, 0);
		dup2(fd, 1);
		dup2(fd, 2);
		if (fd > 2)
			close(fd);
	}
	poke_boot_timer();
	mount_one("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount_one("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount_one("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	mount_one("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
	setenv("PATH", PATH_VALUE, 1);
	setenv("HOME", "/root", 0);
	setenv("TERM", "linux", 0);

	/* Signals arrive through a signalfd; children get the default set back. */
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGUSR1);
	sigaddset(&mask, SIGUSR2);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0)
		say("signalfd: %s", strerror(errno));
	fds[0].fd = sfd;
	fds[0].events = POLLIN;
	nfds = 1 + open_keyboards(fds + 1, MAX_INPUTS);

	if (read_file("/proc/cmdline", cmdline, sizeof cmdline) < 0)
		say("cannot read /proc/cmdline: no command, no console tty");
	memcpy(cmdline_copy, cmdline, sizeof cmdline);
	console_tty(cmdline, tty, sizeof tty);
	argv = command_argv(cmdline_copy, argbuf, &bad);

	static char waitcopy[CMDLINE_MAX];
	snprintf(waitcopy, sizeof waitcopy, "%s", cmdline);
	int wait = !argv && !bad && cmdline_value(waitcopy, "ember.wait");
	if (wait)
		prepare_typed_line();
	say("ready");
	if (wait) {
		static char typed[16384], typedbuf[16384], word[16384];
		ssize_t n = read_typed_line(typed, sizeof typed);
		if (n < 0)
			say("no command arrived on the console; running the shell");
		else if (n > 0) {
			char *v;
			memcpy(word, typed, sizeof word);
			if ((v = cmdline_value(word, "ember.seed=")))
				mix_seed(v);
			memcpy(word, typed, sizeof word);
			if ((v = cmdline_value(word, "ember.time="))) {
				struct timespec ts = { 0, 0 };
				ts.tv_sec = strtoll(v, &v, 10);
				if (*v == '.')
					ts.tv_nsec = strtol(v + 1, NULL, 10);
				if (clock_settime(CLOCK_REALTIME, &ts) != 0)
					say("cannot set the clock: %s", strerror(errno));
			}
			memcpy(word, typed, sizeof word);
			if ((v = cmdline_value(word, "ember.clone=")))
				setenv("EMBER_CLONE_ID", v, 1);
			argv = command_argv(typed, typedbuf, &bad);
		}
	}
	if (!argv && bad)
		finish(sfd, 0, bad, RB_POWER_OFF);

	child = fork();
	if (child == 0) {
		sigprocmask(SIG_UNBLOCK, &mask, NULL);
		take_console(tty);
		if (argv)
			exec_command(argv);
		execl("/bin/sh", "-sh", (char *)NULL);
		say("/bin/sh: %s", strerror(errno));
		_exit(127);
	}
	if (child < 0) {
		say("fork: %s", strerror(errno));
		finish(sfd, 0, 126, RB_POWER_OFF);
	}

	for (;;) {
		int i;
		if (poll(fds, nfds, -1) < 0) {
			if (errno == EINTR)
				continue;
			say("poll: %s", strerror(errno));
			finish(sfd, GRACE_MS, argv ? 255 : -1, RB_POWER_OFF);
		}
		if (fds[0].revents & POLLIN) {
			struct signalfd_siginfo si;
			if (read(sfd, &si, sizeof si) == sizeof si) {
				switch (si.ssi_signo) {
				case SIGTERM:
					finish(sfd, GRACE_MS, -1, RB_AUTOBOOT);
					break;
				case SIGINT:
				case SIGUSR1:
				case SIGUSR2:
					finish(sfd, GRACE_MS, -1, RB_POWER_OFF);
					break;
				}
			}
			reap(child, &main_status);
			if (main_status >= 0)
				finish(sfd, 0, argv ? main_status : -1, RB_POWER_OFF);
		}
		for (i = 1; i < nfds; i++) {
			if (fds[i].revents & (POLLERR | POLLHUP | POLLNVAL)) {
				fds[i].fd = -1;
			} else if ((fds[i].revents & POLLIN) && ctrl_alt_del(fds[i].fd)) {
				say("Ctrl+Alt+Del: shutting down");
				finish(sfd, GRACE_MS, -1, RB_POWER_OFF);
			}
		}
	}
}
