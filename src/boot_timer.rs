//! The `--boot-timer` report: every boot phase the VM observed, in time order, with its time
//! since process start and since the previous phase.

use std::time::Instant;

use vmm::Timestamps;

/// The phases of `t` that happened, as `(name, time)`, sorted by time.
pub fn phases(
    process_start: Instant,
    t: &Timestamps,
) -> (Vec<(&'static str, Instant)>, Vec<&'static str>) {
    let all: [(&'static str, Option<Instant>); 11] = [
        ("process start", Some(process_start)),
        ("configuration validated", Some(t.config_validated)),
        ("guest memory ready", Some(t.memory_ready)),
        ("kernel and initramfs loaded", Some(t.kernel_loaded)),
        ("first KVM_RUN", t.first_run),
        ("first console output", t.first_output),
        ("console marker", t.console_marker),
        ("boot-timer signal", t.boot_timer),
        ("stop requested", t.stop_requested),
        ("VM exit", Some(t.exit)),
        ("", None),
    ];
    let mut seen: Vec<(&'static str, Instant)> =
        all.iter().filter_map(|(n, i)| i.map(|i| (*n, i))).collect();
    seen.sort_by_key(|(_, i)| *i);
    let missing = all
        .iter()
        .filter(|(n, i)| i.is_none() && !n.is_empty())
        .map(|(n, _)| *n)
        .collect();
    (seen, missing)
}

/// The table printed on stderr.
pub fn phase_table(process_start: Instant, t: &Timestamps) -> String {
    let (seen, missing) = phases(process_start, t);
    let mut out =
        String::from("ember: boot timer           since start (ms)   since previous (ms)\n");
    let mut prev = process_start;
    for (name, at) in seen {
        let since_start = at.saturating_duration_since(process_start).as_secs_f64() * 1e3;
        let delta = at.saturating_duration_since(prev).as_secs_f64() * 1e3;
        out.push_str(&format!(
            "ember:   {name:<28}{since_start:>12.3}{delta:>22.3}\n"
        ));
        prev = at;
    }
    if !missing.is_empty() {
        out.push_str(&format!("ember:   not observed: {}\n", missing.join(", ")));
    }
    out
}

/// The line after the table: the VM's exits over its life, from KVM's statistics.
pub fn exits_line(c: &vmm::ExitCounts) -> String {
    format!(
        "ember:   vCPU exits: {} (I/O {}, MMIO {}, host interrupt {}, hlt {}, signal {})\n",
        c.exits, c.io_exits, c.mmio_exits, c.irq_exits, c.halt_exits, c.signal_exits
    )
}
