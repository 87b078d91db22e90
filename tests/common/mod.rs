//! The integration tests' helpers: the shared ones from the `testkit` crate (KVM presence,
//! the test guests and guest artefacts, spawning with a timeout) bound to this package's
//! `ember` binary and temporary directory, and the ones only tests use.
// Each test binary uses some of these; the rest would warn.
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use testkit::{guest_initramfs, guest_kernel, guest_rootfs, host_is_pvm, require_kvm, Run};

/// The `ember` binary under test.
pub fn ember_bin() -> &'static str {
    testkit::ember_bin!()
}

/// Where the test guests are built.
fn out_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("guests")
}

/// Compiles `tests/guests/<name>.c` (or `.S`) with the system gcc and the linker script
/// `tests/guests/<ld>` into a freestanding ELF.
pub fn build_guest_with(name: &str, ld: &str) -> PathBuf {
    testkit::build_guest(name, ld, &out_dir())
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

/// Runs `ember args...` with `stdin` as input, killing it after `timeout`.
pub fn run_ember(args: &[&str], stdin: &[u8], timeout: Duration) -> Run {
    run_ember_env(args, stdin, timeout, &[])
}

/// Like [`run_ember`] with extra environment variables.
pub fn run_ember_env(args: &[&str], stdin: &[u8], timeout: Duration, env: &[(&str, &str)]) -> Run {
    env.iter()
        .fold(testkit::Spawn::new(ember_bin()), |s, (k, v)| s.env(k, v))
        .args(args)
        .stdin(stdin)
        .run(timeout)
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

/// How long one wait in a test may take before the test fails (a hang, not a slow run).
pub const WAIT_LIMIT: Duration = Duration::from_secs(300);

/// `child.wait()`, but the child is killed and the test fails if it has not ended within
/// `timeout`.
pub fn wait_within(child: &mut std::process::Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child did not end within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `vm.wait()`, but the test fails if the VM has not ended within `timeout`.
pub fn vm_wait(vm: &mut vmm::VmHandle, timeout: Duration) -> vmm::VmExit {
    vm.wait_timeout(timeout)
        .unwrap_or_else(|| panic!("the VM did not end within {timeout:?}"))
}

/// `wait_with_output` with [`WAIT_LIMIT`].
pub trait ChildExt {
    /// Waits for the child and collects its output, failing the test after [`WAIT_LIMIT`].
    fn wait_with_output_within(self) -> std::process::Output;
}

impl ChildExt for std::process::Child {
    fn wait_with_output_within(self) -> std::process::Output {
        output_within(self, WAIT_LIMIT)
    }
}

/// A running `ember` (or any child) whose stdout, the guest's console, is collected as it
/// comes; killed when dropped.
pub struct ConsoleChild {
    /// The child.
    pub child: std::process::Child,
    console: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ConsoleChild {
    /// Spawns `cmd` with stdout piped (stdin null, stderr piped).
    pub fn spawn(cmd: &mut std::process::Command) -> Self {
        use std::io::Read;
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut out = child.stdout.take().expect("stdout");
        let console = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let c = console.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                c.lock()
                    .expect("console")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            child,
            console,
            reader: Some(reader),
        }
    }

    /// The console so far.
    pub fn text(&self) -> String {
        self.console.lock().expect("console").clone()
    }

    /// Waits until the console shows `needle`; fails the test (with the console) if the
    /// child ends first or `timeout` passes.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text();
            if text.contains(needle) {
                return text;
            }
            let ended = self.child.try_wait().expect("wait").is_some();
            assert!(
                !ended && Instant::now() < deadline,
                "no {needle:?} on the console ({}):\n{text}",
                if ended { "the VM ended" } else { "timed out" }
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the child's end within `timeout` (killing it after), and returns its status
    /// with the whole console and stderr.
    pub fn finish(mut self, timeout: Duration) -> (std::process::ExitStatus, String, String) {
        use std::io::Read;
        let status = wait_within(&mut self.child, timeout);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status, self.text(), err)
    }
}

impl Drop for ConsoleChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory under the system's temporary directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh directory named after `tag` and this process.
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("ember-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temporary directory");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Byte `i` of the test pattern the guest program `xfer` sends (resources/initramfs/xfer.c).
pub fn xfer_pattern(i: u64) -> u8 {
    (i.wrapping_mul(131) ^ (i >> 8) ^ (i >> 16)) as u8
}

/// Echoes everything read from `s` back to it until its end; returns what was read.
pub fn echo_stream<S: std::io::Read + std::io::Write>(s: &mut S) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = s.read(&mut buf).expect("read");
        if n == 0 {
            return got;
        }
        s.write_all(&buf[..n]).expect("echo");
        got.extend_from_slice(&buf[..n]);
    }
}
pub mod api_client;
