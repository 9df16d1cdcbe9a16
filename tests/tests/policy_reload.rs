//! Policies checked against the served methods at start, reloaded on SIGHUP, and evaluated in
//! shadow mode.

#![allow(clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use clap::Parser as _;
use integration_tests::{RunningStudent, Stack, TEACHER, with_token};
use school_proto::student::v1::ListStudentsRequest;
use tonic::Code;

/// How long a test waits for a SIGHUP to be handled.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Returns the built-in student-service policy, with or without teachers allowed to list.
fn student_policy(teachers_list: bool) -> String {
    let policy = student_service::config::DEFAULT_POLICY;
    if teachers_list {
        policy.to_owned()
    } else {
        policy.replace(
            "teacher = [\"students.list\", \"students.read\"]",
            "teacher = [\"students.read\"]",
        )
    }
}

async fn teacher_list_code(stack: &Stack, student: &RunningStudent) -> Code {
    let token = stack.token(TEACHER).await;
    let listed = student
        .client()
        .await
        .list_students(with_token(ListStudentsRequest::default(), &token))
        .await;
    match listed {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

fn send_sighup() {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -HUP failed: {status}");
}

/// Sends SIGHUP and waits until `student` has finished one more reload, successful or not.
async fn reload(student: &RunningStudent) {
    let before = student.guard().reload_counts();
    send_sighup();
    let deadline = tokio::time::Instant::now() + RELOAD_TIMEOUT;
    while student.guard().reload_counts() == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP was not handled within {RELOAD_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write policy file");
}

#[tokio::test]
async fn sighup_swaps_policy_or_keeps_old_one() {
    let stack = Stack::start().await;
    let policy = stack.dir.path().join("policy.toml");
    write(&policy, &student_policy(true));
    let policy_arg = policy.display().to_string();
    let student = RunningStudent::start(
        &stack.dir.path().join("student-reload"),
        &stack.auth.url(),
        &["--policy", &policy_arg],
    )
    .await;
    assert_eq!(teacher_list_code(&stack, &student).await, Code::Ok);

    write(&policy, &student_policy(false));
    reload(&student).await;
    assert_eq!(
        teacher_list_code(&stack, &student).await,
        Code::PermissionDenied
    );

    // An invalid file leaves the last good policy in force.
    write(
        &policy,
        &format!(
            "{}\n[methods.\"school.student.v1.StudentService/Nope\"]\npermission = \"students.list\"\n",
            student_policy(true)
        ),
    );
    let failed_before = student.guard().reload_counts().failed;
    reload(&student).await;
    assert_eq!(student.guard().reload_counts().failed, failed_before + 1);
    assert_eq!(
        teacher_list_code(&stack, &student).await,
        Code::PermissionDenied
    );

    write(&policy, &student_policy(true));
    reload(&student).await;
    assert_eq!(teacher_list_code(&stack, &student).await, Code::Ok);
    student.stop().await;
}

#[tokio::test]
async fn unknown_method_fails_start_naming_line() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let policy = dir.path().join("policy.toml");
    write(
        &policy,
        "[roles]\nadmin = [\"students.list\"]\n\n[methods.\"school.student.v1.StudentService/ListStudent\"]\npermission = \"students.list\"\n",
    );
    let policy_arg = policy.display().to_string();
    let data_dir = dir.path().join("student").display().to_string();

    let config = student_service::Config::try_parse_from([
        "student-service",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data_dir,
        "--policy",
        &policy_arg,
    ])
    .expect("flags");
    let error = student_service::bind(config)
        .await
        .err()
        .map(|error| {
            format!(
                "{error}: {}",
                std::error::Error::source(&error)
                    .map(ToString::to_string)
                    .unwrap_or_default()
            )
        })
        .expect("an unknown method fails the start");

    assert!(
        error.contains("line 4: method school.student.v1.StudentService/ListStudent is not served"),
        "{error}"
    );

    let auth_config = auth_service::Config::try_parse_from([
        "auth-service",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &dir.path().join("auth").display().to_string(),
        "--policy",
        &policy_arg,
    ])
    .expect("flags");
    let auth_error = auth_service::bind(auth_config)
        .await
        .err()
        .map(|error| error.report())
        .expect("a policy for another service fails the start");
    assert!(auth_error.contains("line 4"), "{auth_error}");
}

#[tokio::test]
async fn shadow_policy_is_logged_not_enforced() {
    let stack = Stack::start().await;
    let shadow = stack.dir.path().join("shadow.toml");
    write(&shadow, &student_policy(false));
    let shadow_arg = shadow.display().to_string();
    let student = RunningStudent::start(
        &stack.dir.path().join("student-shadow"),
        &stack.auth.url(),
        &["--shadow-policy", &shadow_arg],
    )
    .await;

    let before = student.guard().shadow_counts();
    let code = teacher_list_code(&stack, &student).await;
    let after = student.guard().shadow_counts();

    assert_eq!(code, Code::Ok, "the shadow policy must not be enforced");
    assert_eq!(after.disagreed, before.disagreed + 1);
    assert_eq!(after.agreed, before.agreed);
    student.stop().await;
}
