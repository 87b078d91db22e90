//! Firecracker's two snapshot files over Ember's snapshot directory.
//!
//! Firecracker writes a snapshot as two files: `snapshot_path` (the VM state) and
//! `mem_file_path` (guest memory). An Ember snapshot is a directory (`state`, `memory`,
//! `description.json`; see `vmm::snapshot`). The mapping: `snapshot_path` becomes the Ember
//! snapshot directory, and `mem_file_path` a hard link to its `memory` file (a symbolic link
//! when the two paths are on different filesystems), so both paths exist and the memory is
//! stored once. A load takes the same pair back: `snapshot_path` must be an Ember snapshot
//! directory and `mem_file_path` must be its memory file (the same file, through any link);
//! a memory file copied elsewhere is refused with a message saying so.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Errors mapping the files.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFilesError {
    /// `snapshot_path` names something that is no snapshot and that Ember will not replace.
    #[error(
        "{0} is a non-empty directory that is not an Ember snapshot; choose another snapshot_path"
    )]
    NotASnapshotDir(PathBuf),
    /// `snapshot_path` is no Ember snapshot.
    #[error("{0} is not an Ember snapshot (Ember's snapshot_path is the directory /snapshot/create wrote)")]
    NoSnapshot(PathBuf),
    /// The memory file is not the snapshot's.
    #[error("{mem} is not the memory file of the Ember snapshot {dir}: Ember keeps a snapshot's memory in {dir}/memory and /snapshot/create links mem_file_path to it; give that path")]
    ForeignMemory {
        /// The given memory file.
        mem: PathBuf,
        /// The snapshot directory.
        dir: PathBuf,
    },
    /// A file operation failed.
    #[error("Cannot {what} {path}")]
    Io {
        /// What was done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotFilesError {
    let path = path.to_path_buf();
    move |source| SnapshotFilesError::Io { what, path, source }
}

/// Makes `dir` ready to receive a snapshot: a previous Ember snapshot there is overwritten,
/// a regular file replaced (Firecracker overwrites its state file), an empty or missing
/// directory used; anything else is refused.
pub fn prepare_dir(dir: &Path) -> Result<(), SnapshotFilesError> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("inspect", dir)(e)),
        Ok(m) if m.is_dir() => {
            let is_snapshot = dir.join(vmm::snapshot::STATE_FILE).exists();
            let empty = std::fs::read_dir(dir)
                .map_err(io("read", dir))?
                .next()
                .is_none();
            if is_snapshot || empty {
                Ok(())
            } else {
                Err(SnapshotFilesError::NotASnapshotDir(dir.to_path_buf()))
            }
        }
        Ok(_) => std::fs::remove_file(dir).map_err(io("replace", dir)),
    }
}

/// After the snapshot is written in `dir`: `mem_file_path` becomes a link to its memory.
pub fn link_memory(dir: &Path, mem_file_path: &Path) -> Result<(), SnapshotFilesError> {
    let memory = dir.join(vmm::snapshot::MEMORY_FILE);
    if same_file(&memory, mem_file_path) {
        return Ok(());
    }
    match std::fs::symlink_metadata(mem_file_path) {
        Ok(m) if m.is_dir() => {
            return Err(io("replace the directory", mem_file_path)(
                std::io::Error::from(std::io::ErrorKind::IsADirectory),
            ))
        }
        Ok(_) => std::fs::remove_file(mem_file_path).map_err(io("replace", mem_file_path))?,
        Err(_) => {}
    }
    match std::fs::hard_link(&memory, mem_file_path) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let target = std::fs::canonicalize(&memory).map_err(io("resolve", &memory))?;
            std::os::unix::fs::symlink(target, mem_file_path).map_err(io("link", mem_file_path))
        }
        Err(e) => Err(io("link", mem_file_path)(e)),
    }
}

/// Checks a load's pair: `dir` is an Ember snapshot and `mem` its memory file.
pub fn check_pair(dir: &Path, mem: &Path) -> Result<(), SnapshotFilesError> {
    if !dir.join(vmm::snapshot::STATE_FILE).is_file() {
        return Err(SnapshotFilesError::NoSnapshot(dir.to_path_buf()));
    }
    std::fs::metadata(mem).map_err(io("open the memory file", mem))?;
    if !same_file(&dir.join(vmm::snapshot::MEMORY_FILE), mem) {
        return Err(SnapshotFilesError::ForeignMemory {
            mem: mem.to_path_buf(),
            dir: dir.to_path_buf(),
        });
    }
    Ok(())
}

/// Whether two paths reach the same file (through any link).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ember-api-snap-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch");
        d
    }

    /// Stands in for a snapshot written by the vmm crate.
    fn fake_snapshot(dir: &Path) {
        std::fs::create_dir_all(dir).expect("dir");
        std::fs::write(dir.join(vmm::snapshot::STATE_FILE), b"state").expect("state");
        std::fs::write(dir.join(vmm::snapshot::MEMORY_FILE), b"memory").expect("memory");
    }

    #[test]
    fn create_then_load_round_trip_and_overwrite() {
        let s = scratch("round");
        let (dir, mem) = (s.join("vm.snap"), s.join("vm.mem"));
        prepare_dir(&dir).expect("missing is fine");
        fake_snapshot(&dir);
        link_memory(&dir, &mem).expect("link");
        assert_eq!(std::fs::read(&mem).expect("read"), b"memory");
        check_pair(&dir, &mem).expect("the pair loads");
        // Again over the same paths (Firecracker overwrites).
        prepare_dir(&dir).expect("an Ember snapshot is overwritten");
        link_memory(&dir, &mem).expect("relink");
        check_pair(&dir, &mem).expect("still the pair");
        // A copy of the memory is not the snapshot's memory.
        let copy = s.join("copy.mem");
        std::fs::copy(&mem, &copy).expect("copy");
        let e = check_pair(&dir, &copy).expect_err("foreign");
        assert!(e.to_string().contains("is not the memory file"), "{e}");
        assert!(matches!(
            check_pair(&s, &mem),
            Err(SnapshotFilesError::NoSnapshot(_))
        ));
        let _ = std::fs::remove_dir_all(s);
    }

    #[test]
    fn a_state_file_is_replaced_and_a_foreign_directory_refused() {
        let s = scratch("prep");
        let f = s.join("state-file");
        std::fs::write(&f, b"old firecracker state").expect("file");
        prepare_dir(&f).expect("replaced");
        assert!(!f.exists());
        let d = s.join("busy");
        std::fs::create_dir_all(&d).expect("dir");
        std::fs::write(d.join("precious"), b"x").expect("file");
        assert!(matches!(
            prepare_dir(&d),
            Err(SnapshotFilesError::NotASnapshotDir(_))
        ));
        let _ = std::fs::remove_dir_all(s);
    }
}
