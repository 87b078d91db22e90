//! The guest command path on the host: Ember's encoding of an argv (`vmm::command`) decoded
//! and run by the project's init script (resources/initramfs/init in its dry-run mode, under
//! busybox sh as in the guest), arguments and exit status intact. The same logic runs in a
//! guest where the host lets guest user space run.

use std::path::PathBuf;
use std::process::Command;

fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn run_init(argv: &[&str]) -> (i32, String) {
    let bb = busybox().expect("busybox (Debian busybox-static) is needed for this test");
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("init-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    let param = vmm::command::encode(&argv).expect("encodes");
    let cmdline = dir.join("cmdline");
    std::fs::write(&cmdline, format!("console=ttyS0 panic=1 {param} quiet\n")).expect("cmdline");
    let init = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("resources/initramfs/init");
    let out = Command::new(&bb)
        .arg("sh")
        .arg(&init)
        .env("EMBER_INIT_DRY_RUN", "1")
        .env("EMBER_CMDLINE_FILE", &cmdline)
        .env("EMBER_BUSYBOX", &bb)
        .env("TMPDIR", &dir)
        .output()
        .expect("run init");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn arguments_survive_exactly() {
    let args = [
        "a b",
        "it's",
        "say \"hi\"",
        "two\nlines",
        "*",
        "",
        "$HOME `x` ;|&",
        "tab\there",
    ];
    let mut argv = vec!["sh", "-c", "printf '<%s>\\n' \"$@\"; exit 42", "sh"];
    argv.extend_from_slice(&args);
    let (status, out) = run_init(&argv);
    let expected: String = args.iter().map(|a| format!("<{a}>\n")).collect::<String>()
        + "ember-init: exit status 42\n";
    assert_eq!(out, expected);
    assert_eq!(status, 42);
}

#[test]
fn exit_statuses_pass_through() {
    for st in [0, 1, 7, 125, 255] {
        let script = format!("exit {st}");
        let (status, out) = run_init(&["sh", "-c", &script]);
        assert_eq!(status, st);
        assert!(
            out.ends_with(&format!("ember-init: exit status {st}\n")),
            "{out}"
        );
    }
    let (status, _) = run_init(&["/nonexistent/program"]);
    assert_eq!(status, 127);
}

#[test]
fn the_shell_test_of_the_init_script_passes() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("resources/initramfs/test-init.sh");
    let out = Command::new("bash")
        .arg(script)
        .output()
        .expect("run test-init.sh");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
