//! Every malformed input in fixtures/hostile gets exit status 1, a message naming the file and
//! the broken rule with its numbers, no panic, and a small peak memory.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Peak RSS allowed for rejecting a malformed input. The largest claim in the corpus is 2^63
/// bytes, so an allocation sized by any claim would blow far past this.
const MAX_RSS_KIB: i64 = 64 * 1024;

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    kind: String,
    args: Vec<String>,
    expect: Vec<String>,
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hostile")
}

/// Runs the binary and returns exit status, stderr, and peak RSS in KiB from wait4.
// The child is reaped by libc::wait4 below, which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn run(args: &[String], cwd: &Path) -> (std::process::ExitStatus, String, i64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardkit"))
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    let mut stdout = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `child.id()` is our own unreaped child, and `status` and `usage` are valid
    // writable locations for the duration of the call.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t, "wait4 failed");
    // verify reports mismatches on stdout; keep them with the message.
    (
        std::process::ExitStatus::from_raw(status),
        stderr + &stdout,
        usage.ru_maxrss,
    )
}

#[test]
fn malformed_inputs_are_rejected_cleanly() {
    let text = std::fs::read_to_string(corpus().join("cases.json"))
        .expect("run fixtures/hostile/make-corpus.py");
    let cases: Vec<Case> = serde_json::from_str(&text).unwrap();
    let cwd = corpus().join("cases");
    let out = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut largest_rss = 0;
    for case in &cases {
        let target = out.path().join(case.name.replace(' ', "-"));
        let args: Vec<String> = case
            .args
            .iter()
            .map(|a| {
                if a == "OUT" {
                    target.display().to_string()
                } else {
                    a.clone()
                }
            })
            .collect();
        let (status, message, rss) = run(&args, &cwd);
        largest_rss = largest_rss.max(rss);
        let mut problems = Vec::new();
        if status.code() != Some(1) {
            problems.push(format!("exit status {status:?}, expected 1"));
        }
        if message.contains("panicked") {
            problems.push("panicked".into());
        }
        for expected in &case.expect {
            if !message.contains(expected.as_str()) {
                problems.push(format!("message lacks {expected:?}"));
            }
        }
        if rss > MAX_RSS_KIB {
            problems.push(format!("peak RSS {rss} KiB over {MAX_RSS_KIB} KiB"));
        }
        if target.exists() {
            problems.push("wrote an output".into());
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{} ({}): {}\n    message: {}",
                case.name,
                case.kind,
                problems.join("; "),
                message.trim()
            ));
        }
    }
    println!(
        "{} malformed cases, largest peak RSS {largest_rss} KiB",
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
