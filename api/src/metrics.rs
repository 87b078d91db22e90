//! `PUT /metrics`: one JSON line per flush to a file or named pipe, as Firecracker writes its
//! metrics (on `FlushMetrics`, every 60 s once the VM runs, and at the end), with its
//! `utc_timestamp_ms`, optional `id` and `properties`. The counters are Ember's own (API
//! requests and failures, the VM's state, and under `kvm_exits` the VM's exits as KVM
//! counts them; not under Firecracker's `vcpu`, whose fields differ), not Firecracker's long list of device counters.

use std::fs::File;
use std::io::Write;

use serde_json::json;

use crate::models;

/// Errors opening the metrics destination.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The file cannot be opened.
    #[error("Cannot initialize the metrics system due to bad user input: {path}")]
    Open {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Where metrics lines go.
#[derive(Debug)]
pub struct MetricsSink {
    file: File,
    id: Option<String>,
    properties: Option<std::collections::BTreeMap<String, String>>,
    /// Lines a full pipe did not take.
    pub dropped: u64,
}

impl MetricsSink {
    /// Opens the destination (created if missing, non-blocking).
    pub fn open(cfg: &models::Metrics, instance_id: &str) -> Result<Self, MetricsError> {
        let file = crate::logger::open_nonblocking(&cfg.metrics_path).map_err(|source| {
            MetricsError::Open {
                path: cfg.metrics_path.clone(),
                source,
            }
        })?;
        Ok(Self {
            file,
            id: cfg.emit_id.then(|| instance_id.to_string()),
            properties: cfg.properties.clone(),
            dropped: 0,
        })
    }

    /// Writes one line; a line that does not fit (a full pipe) is dropped and counted.
    pub fn write(
        &mut self,
        requests: u64,
        request_fails: u64,
        vm_state: &str,
        exits: Option<&vmm::ExitCounts>,
    ) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut line = json!({
            "utc_timestamp_ms": now.as_millis() as u64,
            "api_server": {"requests": requests, "request_fails": request_fails},
            "vmm": {"state": vm_state, "metrics_lines_dropped": self.dropped},
        });
        if let Some(id) = &self.id {
            line["id"] = json!(id);
        }
        if let Some(e) = exits {
            line["kvm_exits"] = json!(e);
        }
        if let Some(p) = &self.properties {
            line["properties"] = json!(p);
        }
        let mut text = line.to_string();
        text.push('\n');
        if self.file.write(text.as_bytes()).ok() != Some(text.len()) {
            self.dropped += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_json_line_per_flush() {
        let path = std::env::temp_dir().join(format!("ember-api-metrics-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let cfg = models::Metrics {
            metrics_path: path.display().to_string(),
            emit_id: true,
            properties: Some([("team".to_string(), "a".to_string())].into()),
        };
        let mut m = MetricsSink::open(&cfg, "vm1").expect("open");
        m.write(3, 1, "Running", None);
        let exits = vmm::ExitCounts {
            exits: 7,
            mmio_exits: 2,
            ..Default::default()
        };
        m.write(4, 1, "Paused", Some(&exits));
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["id"], "vm1");
        assert_eq!(lines[0]["properties"]["team"], "a");
        assert_eq!(lines[1]["api_server"]["requests"], 4);
        assert_eq!(lines[1]["vmm"]["state"], "Paused");
        assert!(lines[0].get("kvm_exits").is_none());
        assert_eq!(lines[1]["kvm_exits"]["exits"], 7);
        assert_eq!(lines[1]["kvm_exits"]["mmio_exits"], 2);
        let _ = std::fs::remove_file(&path);
    }
}
