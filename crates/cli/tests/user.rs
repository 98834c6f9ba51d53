//! `gantry user add/list/remove` on a users file.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn gantry(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn user_add_list_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth/users");
    let f = file.to_str().unwrap();
    let out = gantry(
        &["user", "add", "alice", "--file", f, "--password-stdin"],
        "s3cret\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("alice:$argon2id$"), "{text}");
    let users = gantry_registry::Users::load(&file).unwrap();
    assert!(users.verify("alice", "s3cret"));
    assert!(!users.verify("alice", "s3cret\n"));

    let out = gantry(
        &["user", "add", "bob", "--file", f, "--password-stdin"],
        "pw",
    );
    assert!(out.status.success());
    let out = gantry(&["user", "list", "--file", f], "");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alice\nbob\n");

    // No terminal and no --password-stdin: refused, file unchanged.
    let out = gantry(&["user", "add", "carol", "--file", f], "pw\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--password-stdin"));
    // Bad names and empty passwords are refused.
    let out = gantry(
        &["user", "add", "a:b", "--file", f, "--password-stdin"],
        "pw\n",
    );
    assert!(!out.status.success());
    let out = gantry(
        &["user", "add", "dave", "--file", f, "--password-stdin"],
        "\n",
    );
    assert!(!out.status.success());

    let out = gantry(&["user", "remove", "alice", "--file", f], "");
    assert!(out.status.success());
    let out = gantry(&["user", "remove", "alice", "--file", f], "");
    assert!(!out.status.success());
    let out = gantry(&["user", "list", "--file", f], "");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "bob\n");
}
