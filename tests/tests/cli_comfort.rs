//! The CLI's comforts: completions and a man page generated from its
//! definition, readable sizes, the daemon's status, and progress bars that
//! appear on a terminal and nowhere else.

use memseal_tests::{pattern, Daemon};
use std::process::Command;

fn text(output: std::process::Output) -> String {
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn completions_and_man_page_cover_every_command() {
    let cli = memseal_tests::bin("memseal");
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = text(
            Command::new(&cli)
                .args(["completions", shell])
                .output()
                .unwrap(),
        );
        for command in ["publish", "exec", "watch", "completions"] {
            assert!(
                script.contains(command),
                "{shell} completions lack {command}"
            );
        }
    }
    let man = text(Command::new(&cli).arg("man").output().unwrap());
    assert!(
        man.starts_with(".ie") || man.contains(".TH memseal 1"),
        "{man}"
    );
    for command in ["exec", "watch", "status", "man"] {
        assert!(man.contains(command), "the man page lacks {command}");
    }
    // Neither needs a daemon.
    let unknown_shell = Command::new(&cli)
        .args(["completions", "cmd"])
        .output()
        .unwrap();
    assert_eq!(unknown_shell.status.code(), Some(2));
}

#[test]
fn sizes_read_like_sizes_and_status_has_the_counters() {
    let daemon = Daemon::start();
    daemon
        .client()
        .publish_bytes("sizes/big", &pattern(3 << 20, 1))
        .unwrap();
    let ls = text(daemon.cli().arg("ls").output().unwrap());
    assert!(ls.contains("3.0 MiB"), "{ls}");
    let stat = text(daemon.cli().args(["stat", "sizes/big"]).output().unwrap());
    assert!(stat.contains("3.0 MiB (3145728 bytes)"), "{stat}");
    assert!(stat.contains("huge pages"), "{stat}");

    let status = text(daemon.cli().arg("status").output().unwrap());
    for row in [
        "server       memseald ",
        "uptime",
        "names        1",
        "bytes        3.0 MiB (3145728 bytes)",
        "connections  1",
        "huge pages",
    ] {
        assert!(status.contains(row), "status lacks '{row}':\n{status}");
    }
}

#[test]
fn progress_bars_only_on_a_terminal() {
    let daemon = Daemon::start();
    let data = pattern(64 << 20, 2);
    daemon.client().publish_bytes("big", &data).unwrap();
    let out = daemon.dir().join("big.out");

    // Standard error is a pipe: nothing but errors may appear on it.
    let quiet = daemon
        .cli()
        .args(["get", "big", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(quiet.status.success());
    assert!(
        quiet.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&quiet.stderr)
    );
    assert_eq!(std::fs::read(&out).unwrap(), data);

    // On a terminal (script(1) gives the command a pseudo-terminal), a bar.
    if Command::new("script").arg("--version").output().is_err() {
        memseal_tests::skip(
            "progress_bars_only_on_a_terminal",
            "script(1) is not installed",
        );
        return;
    }
    let command = format!(
        "{} --socket {} get big -o {}",
        memseal_tests::bin("memseal").display(),
        daemon.socket().display(),
        out.display()
    );
    let shown = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .unwrap();
    assert!(shown.status.success(), "{shown:?}");
    let screen = String::from_utf8_lossy(&shown.stdout);
    assert!(
        screen.contains("MiB"),
        "no progress bar on the terminal:\n{screen}"
    );
    assert!(screen.contains("big (64.0 MiB)"), "{screen}");
}
