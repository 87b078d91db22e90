//! The guest command path on the host: Ember's encoding of an argv (`vmm::command`) decoded
//! and run by the project's init (resources/initramfs/init.c, compiled here with the system
//! compiler and run in its dry-run mode, which is what it does as PID 1 minus the mounts, the
//! exit port and the power-off), arguments and exit status intact. The same init runs in the
//! guests of tests/boot_linux.rs.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

fn init_binary() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("resources/initramfs/init.c");
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("ember-init-{}", std::process::id()));
        let st = Command::new("cc")
            .args(["-O2", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("run cc");
        assert!(st.success(), "cannot compile {}", src.display());
        out
    })
}

fn run_with_cmdline(cmdline: &str) -> (i32, String, String) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("init-cmdline-{}-{n}", std::process::id()));
    std::fs::write(&file, cmdline).expect("cmdline");
    let out = Command::new(init_binary())
        .env("EMBER_INIT_DRY_RUN", "1")
        .env("EMBER_CMDLINE_FILE", &file)
        .output()
        .expect("run init");
    let _ = std::fs::remove_file(file);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run_init(argv: &[&str]) -> (i32, String) {
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    let param = vmm::command::encode(&argv).expect("encodes");
    let (st, out, _) = run_with_cmdline(&format!("console=ttyS0 panic=1 {param} quiet\n"));
    (st, out)
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
        "é 日本 \u{1F600}",
        "ember.cmd=Zm9v -- x",
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
}

#[test]
fn a_missing_command_is_127_with_one_line_and_a_signal_is_128_plus_n() {
    let param = vmm::command::encode(&["no-such-program-here".to_string()]).expect("encodes");
    let (st, out, err) = run_with_cmdline(&format!("{param}\n"));
    assert_eq!(st, 127, "{out}{err}");
    assert_eq!(err, "ember-init: no-such-program-here: command not found\n");
    let (status, _) = run_init(&["/nonexistent/program"]);
    assert_eq!(status, 127);
    let (status, _) = run_init(&["sh", "-c", "kill -9 $$"]);
    assert_eq!(status, 137);
    let (status, _) = run_init(&["sh", "-c", "kill -TERM $$"]);
    assert_eq!(status, 143);
    // Found but not executable: 126.
    let (status, _) = run_init(&["/etc/passwd"]);
    assert_eq!(status, 126);
}

#[test]
fn the_last_ember_cmd_before_a_double_dash_counts_and_bad_base64_is_refused() {
    let first = vmm::command::encode(&["sh".into(), "-c".into(), "exit 3".into()]).unwrap();
    let second = vmm::command::encode(&["sh".into(), "-c".into(), "exit 4".into()]).unwrap();
    let (st, _, _) = run_with_cmdline(&format!("{first} {second} -- {first}\n"));
    assert_eq!(st, 4);
    let (st, _, err) = run_with_cmdline("ember.cmd=!!notbase64 quiet\n");
    assert_eq!(st, 126);
    assert!(err.contains("ember.cmd is not valid base64"), "{err}");
    // Valid base64 whose last argument has no NUL terminator.
    let (st, _, _) = run_with_cmdline("ember.cmd=Zm9v\n");
    assert_eq!(st, 126);
    let (st, out, _) = run_with_cmdline("console=ttyS0\n");
    assert_eq!(
        (st, out.as_str()),
        (0, "ember-init: no ember.cmd on the command line\n")
    );
}

#[test]
fn outside_pid_1_without_the_dry_run_switch_it_refuses() {
    let out = Command::new(init_binary()).output().expect("run init");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must run as PID 1"));
}
