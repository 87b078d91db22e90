//! The guest artefacts `resources/*/build.sh` build (and cache under `~/.cache/ember/`): each
//! script prints the paths it built as its last lines. Each is built once per process.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Runs one of the resources/ build scripts and returns the last `n` lines of its output:
/// the paths it built.
fn build_artefacts(script: &str, n: usize) -> Vec<PathBuf> {
    let path = crate::repo_root().join(script);
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
