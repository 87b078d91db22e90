//! Shared helpers for the integration tests: KVM presence, building the tiny test guest,
//! running `ember` with a timeout and capturing what it prints.
#![allow(dead_code)]

#[path = "../guests/cflags.rs"]
mod cflags;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `ember` binary under test.
pub fn ember_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ember")
}

/// Whether KVM is usable. Without it a test fails under `CI=true` and is skipped (with a
/// printed reason) elsewhere.
pub fn require_kvm() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("/dev/kvm is not usable and CI=true: KVM tests cannot be skipped");
        }
        eprintln!("SKIPPED: /dev/kvm is not usable on this host");
    }
    ok
}

/// Whether the host's KVM is kvm-pvm (guest kernel code runs under its instruction emulator).
pub fn host_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn out_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("guests");
    std::fs::create_dir_all(&d).expect("guest build directory");
    d
}

/// Compiles `tests/guests/<name>.c` (or `.S`) with the system gcc and the linker script
/// `tests/guests/<ld>` into a freestanding ELF.
pub fn build_guest_with(name: &str, ld: &str) -> PathBuf {
    let src = cflags::guest_source(&repo_root().join("tests/guests"), name);
    let ld = repo_root().join("tests/guests").join(ld);
    let out = out_dir().join(format!("{name}.elf"));
    let tmp = out_dir().join(format!("{name}.elf.{}", std::process::id()));
    let status = Command::new("gcc")
        .args(cflags::GUEST_CFLAGS)
        .arg(format!("-Wl,-T,{}", ld.display()))
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .status()
        .expect("gcc must be installed to build the test guests");
    assert!(status.success(), "building {} failed", src.display());
    std::fs::rename(&tmp, &out).expect("install guest");
    out
}

/// Compiles `tests/guests/<name>.c` with `tiny.ld` (64-bit boot protocol entry).
pub fn build_guest(name: &str) -> PathBuf {
    build_guest_with(name, "tiny.ld")
}

/// The tiny test guest (tests/guests/tiny.c): Linux 64-bit boot protocol entry.
pub fn tiny_guest() -> &'static Path {
    static TINY: OnceLock<PathBuf> = OnceLock::new();
    TINY.get_or_init(|| build_guest("tiny"))
}

/// The virtio-blk test guest (tests/guests/blk.c): PVH and 64-bit entries.
pub fn blk_guest() -> &'static Path {
    static BLK: OnceLock<PathBuf> = OnceLock::new();
    BLK.get_or_init(|| build_guest_with("blk", "pvh.ld"))
}

/// The data pattern the blk guest writes (tests/guests/blk_pattern.py): word `w` of the
/// region is a splitmix64-style mix of `seed` and `w`, little-endian.
pub fn blk_pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    for w in 0..len.div_ceil(8) as u64 {
        let mut x = u64::from(seed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(w);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// FNV-1a 64 of `data`.
pub fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// What one run of `ember` did.
#[derive(Debug)]
pub struct Run {
    /// Exit status (None if killed after the timeout).
    pub status: Option<ExitStatus>,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
    /// Wall time until exit.
    pub elapsed: Duration,
    /// Whether the timeout killed it.
    pub timed_out: bool,
}

impl Run {
    /// The exit code, or -1 when killed by a signal or the timeout.
    pub fn code(&self) -> i32 {
        self.status.and_then(|s| s.code()).unwrap_or(-1)
    }
}

/// Runs `ember args...` with `stdin` as input, killing it after `timeout`.
pub fn run_ember(args: &[&str], stdin: &[u8], timeout: Duration) -> Run {
    run_ember_env(args, stdin, timeout, &[])
}

/// Like [`run_ember`] with extra environment variables.
pub fn run_ember_env(args: &[&str], stdin: &[u8], timeout: Duration, env: &[(&str, &str)]) -> Run {
    let start = Instant::now();
    let mut cmd = Command::new(ember_bin());
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn ember");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let elapsed = start.elapsed();
    let _ = writer.join();
    let stdout = String::from_utf8_lossy(&out_t.join().expect("stdout reader")).into_owned();
    let stderr = String::from_utf8_lossy(&err_t.join().expect("stderr reader")).into_owned();
    Run {
        status,
        stdout,
        stderr,
        elapsed,
        timed_out,
    }
}

/// Runs one of the resources/ build scripts (cached after the first run) and returns the
/// last `n` lines of its output: the paths it built.
fn build_artefacts(script: &str, n: usize) -> Vec<PathBuf> {
    let path = repo_root().join(script);
    let out = Command::new("bash")
        .arg(&path)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    assert!(out.status.success(), "{} failed", path.display());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= n, "{} printed {text:?}", path.display());
    lines[lines.len() - n..].iter().map(PathBuf::from).collect()
}

/// The project's guest kernel: `(vmlinux, bzImage)`.
pub fn guest_kernel() -> &'static (PathBuf, PathBuf) {
    static K: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    K.get_or_init(|| {
        let p = build_artefacts("resources/kernel/build.sh", 2);
        (p[0].clone(), p[1].clone())
    })
}

/// The project's busybox initramfs.
pub fn guest_initramfs() -> &'static PathBuf {
    static I: OnceLock<PathBuf> = OnceLock::new();
    I.get_or_init(|| build_artefacts("resources/initramfs/build.sh", 1).remove(0))
}

/// The project's ext4 root filesystem image (shared: copy it before writing).
pub fn guest_rootfs() -> &'static PathBuf {
    static R: OnceLock<PathBuf> = OnceLock::new();
    R.get_or_init(|| build_artefacts("resources/rootfs/build.sh", 1).remove(0))
}

/// A private copy of `src` in the test temporary directory.
pub fn copy_to_temp(src: &Path, name: &str) -> PathBuf {
    let dst =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{name}", std::process::id()));
    std::fs::copy(src, &dst).expect("copy image");
    dst
}

/// A zero-filled file of `size` bytes in the test temporary directory.
pub fn sparse_file(name: &str, size: u64) -> PathBuf {
    let p =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{name}", std::process::id()));
    let f = std::fs::File::create(&p).expect("create");
    f.set_len(size).expect("size");
    p
}

/// `child.wait_with_output()`, but the child is killed (and the test fails) if it has not
/// ended within `timeout`: a hung VM fails its test instead of hanging the suite.
pub fn output_within(child: std::process::Child, timeout: Duration) -> std::process::Output {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let pid = child.id() as libc::pid_t;
    let done = Arc::new(AtomicBool::new(false));
    let fired = Arc::new(AtomicBool::new(false));
    let (d, f) = (done.clone(), fired.clone());
    let watchdog = std::thread::spawn(move || {
        let deadline = Instant::now() + timeout;
        while !d.load(Ordering::SeqCst) {
            if Instant::now() > deadline {
                f.store(true, Ordering::SeqCst);
                // SAFETY: a signal to a child we have not reaped yet.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let out = child.wait_with_output().expect("wait");
    done.store(true, Ordering::SeqCst);
    let _ = watchdog.join();
    assert!(
        !fired.load(Ordering::SeqCst),
        "killed after {timeout:?}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// A pseudo-terminal pair.
pub struct Pty {
    /// The terminal side a program reads and writes.
    pub master: std::os::fd::OwnedFd,
    /// The side given to the program as its terminal.
    pub slave: std::os::fd::OwnedFd,
}

/// A new pseudo-terminal with the default (canonical, echoing) settings.
pub fn pty() -> Pty {
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut m, mut s) = (0, 0);
    // SAFETY: openpty fills the two descriptors; the name, termios and winsize are optional.
    let r = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty");
    // SAFETY: both descriptors were just opened and are owned here only.
    unsafe {
        Pty {
            master: OwnedFd::from_raw_fd(m),
            slave: OwnedFd::from_raw_fd(s),
        }
    }
}

/// The local-mode flags of a terminal.
pub fn lflag(fd: &std::os::fd::OwnedFd) -> libc::tcflag_t {
    use std::os::fd::AsRawFd;
    let mut t = std::mem::MaybeUninit::<libc::termios>::uninit();
    // SAFETY: valid descriptor and out-pointer; read only on success.
    assert_eq!(
        unsafe { libc::tcgetattr(fd.as_raw_fd(), t.as_mut_ptr()) },
        0
    );
    // SAFETY: tcgetattr succeeded.
    unsafe { t.assume_init() }.c_lflag
}
