//! A QMP (QEMU Machine Protocol) client: JSON commands over QEMU's `-qmp unix:` socket, one
//! per line, and the figures the benchmarks read through it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A QMP connection.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects (retrying until the socket exists) and leaves capabilities negotiation.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, String> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("QMP {}: {e}", path.display()))
                }
                Err(_) => std::thread::sleep(Duration::from_micros(500)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut q = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let mut greeting = String::new();
        q.reader
            .read_line(&mut greeting)
            .map_err(|e| format!("QMP greeting: {e}"))?;
        q.cmd("qmp_capabilities", None)?;
        Ok(q)
    }

    /// Runs `execute`; its `return`, or its error as text. Events are skipped.
    pub fn cmd(&mut self, execute: &str, args: Option<Value>) -> Result<Value, String> {
        let mut c = json!({ "execute": execute });
        if let Some(a) = args {
            c["arguments"] = a;
        }
        writeln!(self.writer, "{c}").map_err(|e| format!("QMP {execute}: {e}"))?;
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return Err(format!("QMP {execute}: connection closed")),
                Err(e) => return Err(format!("QMP {execute}: {e}")),
                Ok(_) => {}
            }
            let v: Value = serde_json::from_str(&line).map_err(|e| format!("QMP: {e}: {line}"))?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(format!("QMP {execute}: {e}"));
            }
        }
    }
}

/// The sum of `name` over `query-stats`' answer for every vCPU (KVM's binary statistics, the
/// ones Ember reads with `KVM_GET_STATS_FD`).
pub fn vcpu_stat(stats: &Value, name: &str) -> Option<u64> {
    let mut sum = None;
    for vcpu in stats.as_array()? {
        for s in vcpu.get("stats")?.as_array()? {
            if s.get("name")?.as_str()? == name {
                *sum.get_or_insert(0) += s.get("value")?.as_u64()?;
            }
        }
    }
    sum
}

impl Qmp {
    /// The vCPUs' exits so far, as KVM counted them.
    pub fn vcpu_exits(&mut self) -> Result<u64, String> {
        let r = self.cmd(
            "query-stats",
            Some(json!({"target": "vcpu", "providers": [{"provider": "kvm", "names": ["exits"]}]})),
        )?;
        vcpu_stat(&r, "exits").ok_or_else(|| format!("QMP query-stats: no exits in {r}"))
    }
}
