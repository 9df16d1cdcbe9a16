//! The `auth-service` binary: the `user` subcommands, exit codes and serving until SIGTERM.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use auth_service::Role;
use common::{FAST_HASH_ARGS, TestServer, config, login_request};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_auth-service");

/// A password distinctive enough that finding it in any output is a real leak.
const SECRET: &str = "stdin-secret-7f3a9c";

/// Builds a command for the binary with an empty environment, so no stray `AUTH_*` variable
/// from the test runner changes its settings.
fn auth_service(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .env_clear()
        .env("RUST_LOG", "info")
        .arg("--data-dir")
        .arg(dir)
        .args(FAST_HASH_ARGS)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs the command with `stdin` as its standard input and waits for it to exit.
async fn run(mut command: Command, stdin: &str) -> Output {
    let mut child = command.spawn().expect("binary starts");
    let mut input = child.stdin.take().expect("stdin is piped");
    // A child that rejects its flags exits before reading its input, which closes the pipe.
    match input.write_all(stdin.as_bytes()).await {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(error) => panic!("writing the child's stdin failed: {error}"),
    }
    drop(input);
    tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("binary exits within 30 s")
        .expect("binary output is readable")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn user_add_reads_password_from_stdin() {
    let dir = tempfile::tempdir().unwrap();

    let added = run(
        auth_service(dir.path(), &["user", "add", "alice", "--role", "teacher"]),
        &format!("{SECRET}\nsecond line is ignored\n"),
    )
    .await;

    let stdout = text(&added.stdout);
    let stderr = text(&added.stderr);
    assert!(added.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains("created user alice with role teacher"),
        "{stdout}"
    );
    assert!(!stdout.contains(SECRET));
    assert!(!stderr.contains(SECRET));

    let server = TestServer::start(config(dir.path(), &[])).await;
    let login = server
        .client()
        .await
        .login(login_request("alice", SECRET))
        .await;
    assert!(login.is_ok(), "{login:?}");
    server.stop().await;
}

#[tokio::test]
async fn user_add_prefers_password_env() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = auth_service(dir.path(), &["user", "add", "bob", "--role", "student"]);
    command.env("AUTH_USER_PASSWORD", SECRET);

    let added = run(command, "ignored stdin password\n").await;

    assert!(added.status.success(), "{}", text(&added.stderr));
    assert!(!text(&added.stderr).contains(SECRET));
    let server = TestServer::start(config(dir.path(), &[])).await;
    assert!(!server.token("bob", SECRET).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn user_disable_then_list() {
    let dir = tempfile::tempdir().unwrap();
    let add = |name: &'static str, role: &'static str| {
        run(
            auth_service(dir.path(), &["user", "add", name, "--role", role]),
            "long enough pw\n",
        )
    };
    assert!(add("alice", "admin").await.status.success());
    assert!(add("bob", "student").await.status.success());

    let disabled = run(auth_service(dir.path(), &["user", "disable", "bob"]), "").await;
    let listed = run(auth_service(dir.path(), &["user", "list"]), "").await;

    assert!(disabled.status.success(), "{}", text(&disabled.stderr));
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    assert_eq!(
        text(&listed.stdout),
        "alice\tadmin\tenabled\nbob\tstudent\tdisabled\n"
    );
}

#[tokio::test]
async fn user_add_existing_name_fails() {
    let dir = tempfile::tempdir().unwrap();
    let first = run(
        auth_service(dir.path(), &["user", "add", "alice", "--role", "admin"]),
        "long enough pw\n",
    )
    .await;

    let second = run(
        auth_service(dir.path(), &["user", "add", "alice", "--role", "student"]),
        "long enough pw\n",
    )
    .await;

    assert!(first.status.success());
    assert_eq!(second.status.code(), Some(1));
    assert!(text(&second.stderr).contains("user \"alice\" already exists"));
}

#[tokio::test]
async fn user_command_fails_while_server_runs() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path(), &[])).await;

    let added = run(
        auth_service(dir.path(), &["user", "add", "alice", "--role", "admin"]),
        &format!("{SECRET}\n"),
    )
    .await;

    let stderr = text(&added.stderr);
    assert_eq!(added.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&dir.path().display().to_string()),
        "{stderr}"
    );
    assert!(
        stderr.contains("is locked by another auth-service"),
        "{stderr}"
    );
    assert!(!stderr.contains(SECRET));
    assert!(!stderr.contains("panicked"));
    server.stop().await;
}

#[tokio::test]
async fn invalid_settings_exit_with_64() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [&[&str]; 10] = [
        &["--token-ttl-secs", "0", "user", "list"],
        &["--max-sessions-per-user", "0", "user", "list"],
        &["--max-sessions-per-user", "10001", "user", "list"],
        &["--hash-nice", "20", "user", "list"],
        &["--hash-nice=-1", "user", "list"],
        &["--hash-nice", "-1", "user", "list"],
        &["--hash-concurrency", "0", "user", "list"],
        &["--hash-concurrency", "257", "user", "list"],
        &["--listen", "not-an-address", "user", "list"],
        &["user", "add", "alice", "--role", "root"],
    ];

    for args in cases {
        let output = run(auth_service(dir.path(), args), "pw\n").await;
        assert_eq!(
            output.status.code(),
            Some(64),
            "{args:?}: {}",
            text(&output.stderr)
        );
    }
    let output = run(
        auth_service(dir.path(), &["--token-ttl-secs", "0", "user", "list"]),
        "",
    )
    .await;
    assert!(text(&output.stderr).contains("--token-ttl-secs (AUTH_TOKEN_TTL_SECS)"));
}

#[tokio::test]
async fn serve_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = auth_service(
        dir.path(),
        &["--listen", "127.0.0.1:0", "--log-format", "json"],
    );
    command
        .env("AUTH_BOOTSTRAP_ADMIN_USERNAME", "root")
        .env("AUTH_BOOTSTRAP_ADMIN_PASSWORD", SECRET);
    let mut child = command.spawn().expect("binary starts");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();

    // Read JSON log lines until the server logs its address.
    let mut log = String::new();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            log.push_str(&line);
            log.push('\n');
            let event: serde_json::Value = serde_json::from_str(&line).unwrap();
            if let Some(addr) = event["fields"]["listen.addr"].as_str() {
                return addr.parse::<std::net::SocketAddr>().unwrap();
            }
        }
        panic!("server exited before listening:\n{log}");
    })
    .await
    .expect("server listens within 30 s");

    let mut client = school_proto::auth::v1::auth_service_client::AuthServiceClient::connect(
        format!("http://{addr}"),
    )
    .await
    .unwrap();
    let login = client.login(login_request("root", SECRET)).await;
    assert!(login.is_ok(), "{login:?}");
    drop(client);

    let pid = child.id().expect("child is running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("server stops within 30 s")
        .unwrap();
    while let Some(line) = stderr.next_line().await.unwrap() {
        log.push_str(&line);
        log.push('\n');
    }

    assert!(status.success(), "{status:?}\n{log}");
    assert!(log.contains("bootstrap admin created"), "{log}");
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(log.contains("auth-service stopped"), "{log}");
    assert!(!log.contains(SECRET), "{log}");

    // The stopped server released its lock, so an in-process server can open the directory.
    let server = TestServer::start(config(dir.path(), &[])).await;
    let users = server.users.list().await.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].username, "root");
    assert_eq!(users[0].role, Role::Admin);
    server.stop().await;
}

/// One step of the `user` command sequence: its arguments and standard input.
const USER_STEPS: [(&[&str], &str); 11] = [
    (
        &["add", "bob", "--role", "student"],
        "bob's first password\n",
    ),
    (&["list"], ""),
    (&["disable", "bob"], ""),
    (&["enable", "bob"], ""),
    (&["set-role", "bob", "--role", "teacher"], ""),
    (&["reset-password", "bob"], "bob's second password\n"),
    (&["list"], ""),
    (&["delete", "bob"], ""),
    (&["delete", "root"], ""),
    (&["add", "carol", "--role", "student"], "password\n"),
    (&["list"], ""),
];

/// Returns the exit code, standard output and standard error of each step.
async fn run_steps(
    mut command: impl FnMut(&[&str]) -> Command,
) -> Vec<(Option<i32>, String, String)> {
    let mut results = Vec::new();
    for (args, stdin) in USER_STEPS {
        let output = run(command(args), stdin).await;
        results.push((
            output.status.code(),
            text(&output.stdout),
            text(&output.stderr),
        ));
    }
    results
}

#[tokio::test]
async fn user_commands_online_match_offline() {
    let offline_dir = tempfile::tempdir().unwrap();
    let added = run(
        auth_service(
            offline_dir.path(),
            &["user", "add", "root", "--role", "admin"],
        ),
        "root password long\n",
    )
    .await;
    assert!(added.status.success(), "{}", text(&added.stderr));
    let offline = run_steps(|args| {
        let mut full = vec!["user"];
        full.extend_from_slice(args);
        auth_service(offline_dir.path(), &full)
    })
    .await;

    let online_dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(online_dir.path(), &[])).await;
    server
        .users
        .create("root", "root password long", Role::Admin)
        .await
        .unwrap();
    let token = server.token("root", "root password long").await;
    let url = format!("http://{}", server.addr);
    let unused_dir = tempfile::tempdir().unwrap();
    let online = run_steps(|args| {
        let mut full = vec!["user", "--server", url.as_str()];
        full.extend_from_slice(args);
        let mut command = auth_service(unused_dir.path(), &full);
        command.env("AUTH_ADMIN_TOKEN", &token);
        command
    })
    .await;

    for (index, ((args, _), (offline, online))) in USER_STEPS
        .iter()
        .zip(offline.iter().zip(&online))
        .enumerate()
    {
        let stderr_line = |stderr: &str| {
            stderr
                .lines()
                .find(|line| line.starts_with("auth-service:"))
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(
            offline.0, online.0,
            "exit code of step {index} {args:?}: {online:?}"
        );
        assert_eq!(offline.1, online.1, "output of step {index} {args:?}");
        assert_eq!(
            stderr_line(&offline.2),
            stderr_line(&online.2),
            "error of step {index} {args:?}"
        );
    }
    assert_eq!(online[1].1, "bob\tstudent\tenabled\nroot\tadmin\tenabled\n");
    assert_eq!(online[6].1, "bob\tteacher\tenabled\nroot\tadmin\tenabled\n");
    assert_eq!(online[8].0, Some(1), "the last admin must stay");
    assert!(
        online[8].2.contains("last enabled admin"),
        "{}",
        online[8].2
    );
    assert_eq!(online[9].0, Some(64), "a common password is a usage error");
    assert_eq!(online[10].1, "root\tadmin\tenabled\n");
    assert!(!online.iter().any(|(_, _, stderr)| stderr.contains(&token)));
    server.stop().await;
}

#[tokio::test]
async fn user_command_online_needs_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path(), &[])).await;
    server
        .users
        .create("tina", "teacher password", Role::Teacher)
        .await
        .unwrap();
    let url = format!("http://{}", server.addr);

    let missing = run(
        auth_service(dir.path(), &["user", "--server", &url, "list"]),
        "",
    )
    .await;
    let mut as_teacher = auth_service(dir.path(), &["user", "--server", &url, "list"]);
    as_teacher.env(
        "AUTH_ADMIN_TOKEN",
        server.token("tina", "teacher password").await,
    );
    let denied = run(as_teacher, "").await;

    assert_eq!(missing.status.code(), Some(64));
    assert!(text(&missing.stderr).contains("AUTH_ADMIN_TOKEN"));
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        text(&denied.stderr).contains("permission denied"),
        "{}",
        text(&denied.stderr)
    );
    server.stop().await;
}
