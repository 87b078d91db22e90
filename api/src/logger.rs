//! The process's logger in API mode, reconfigurable by `PUT /logger` (Firecracker's
//! `Logger`: `log_path`, `level`, `show_level`, `show_log_origin`, `module`). Lines go to
//! stderr (`ember: ...`, as the CLI writes them) until a `log_path` is set; that file or
//! named pipe is opened as Firecracker opens it (created if missing, read-write and
//! non-blocking, so a pipe without a reader neither fails nor blocks: a line that does not
//! fit is dropped).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;

use crate::models;

/// Errors configuring the logger.
#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    /// The log file cannot be opened.
    #[error("Failed to open target file {path}")]
    Open {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another logger was installed first.
    #[error("A logger is already installed")]
    AlreadyInstalled,
}

struct Target {
    file: Option<File>,
    show_level: bool,
    show_origin: bool,
    module: Option<String>,
}

struct ApiLogger {
    target: Mutex<Target>,
}

static LOGGER: ApiLogger = ApiLogger {
    target: Mutex::new(Target {
        file: None,
        show_level: false,
        show_origin: false,
        module: None,
    }),
};

impl log::Log for ApiLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let t = self.target.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = &t.module {
            if !record
                .module_path()
                .is_some_and(|p| p.starts_with(m.as_str()))
            {
                return;
            }
        }
        let level = if t.show_level || record.level() != log::Level::Info {
            format!("{}: ", record.level().as_str().to_lowercase())
        } else {
            String::new()
        };
        let origin = match (t.show_origin, record.file(), record.line()) {
            (true, Some(f), Some(l)) => format!("{f}:{l}: "),
            _ => String::new(),
        };
        let line = format!("ember: {level}{origin}{}\n", record.args());
        match &t.file {
            // One write: a pipe gets whole lines or nothing.
            Some(f) => {
                let _ = (&*f).write(line.as_bytes());
            }
            None => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {}
}

/// Installs the logger with `level`, writing to stderr.
pub fn install(level: log::LevelFilter) -> Result<(), LoggerError> {
    log::set_logger(&LOGGER).map_err(|_| LoggerError::AlreadyInstalled)?;
    log::set_max_level(level);
    Ok(())
}

/// The level named by `EMBER_LOG` (`error`, `warn`, `info`, `debug`, `trace`, `off`), else
/// `info`.
pub fn level_from_env() -> log::LevelFilter {
    std::env::var("EMBER_LOG")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(log::LevelFilter::Info)
}

/// Applies a `PUT /logger` body: only the fields given change.
pub fn configure(cfg: &models::Logger) -> Result<(), LoggerError> {
    let file = match &cfg.log_path {
        Some(path) => Some(open_nonblocking(path).map_err(|source| LoggerError::Open {
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    let mut t = LOGGER.target.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(f) = file {
        t.file = Some(f);
    }
    if let Some(l) = cfg.level {
        log::set_max_level(l.into());
    }
    if let Some(s) = cfg.show_level {
        t.show_level = s;
    }
    if let Some(s) = cfg.show_log_origin {
        t.show_origin = s;
    }
    if let Some(m) = &cfg.module {
        t.module = Some(m.clone());
    }
    Ok(())
}

/// Opens a log or metrics destination as Firecracker does: created if missing, read-write
/// (a named pipe opens without a reader), non-blocking, appending, close-on-exec.
pub fn open_nonblocking(path: &str) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_pipe_without_reader_opens_and_never_blocks() {
        let path = std::env::temp_dir().join(format!("ember-api-log-{}", std::process::id()));
        let c = std::ffi::CString::new(path.to_str().expect("utf-8")).expect("path");
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let mut f = open_nonblocking(path.to_str().expect("utf-8")).expect("opens");
        let chunk = vec![b'x'; 1 << 16];
        let mut full = false;
        for _ in 0..64 {
            if let Err(e) = f.write(&chunk) {
                assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
                full = true;
                break;
            }
        }
        assert!(full, "a full pipe says WouldBlock instead of blocking");
        let _ = std::fs::remove_file(&path);
    }
}
