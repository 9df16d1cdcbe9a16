//! A short run of every scenario, so that the harness keeps working. It checks that each
//! scenario produces a row and that no call ends with an unexpected status. It checks no
//! performance figure, because a debug build on a shared CI machine measures nothing useful.

use std::process::Command;

#[test]
fn every_scenario_runs_briefly() {
    let output = Command::new(env!("CARGO_BIN_EXE_school-bench"))
        .args(["--secs", "0.2", "--runs", "1", "--cold-tokens", "200"])
        .args(["--concurrency", "4", "--connections", "2"])
        .output()
        .expect("run school-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "school-bench failed: {stderr}\n{stdout}"
    );

    for title in [
        "reused tokens",
        "(cold)",
        "hostile flood",
        "bad-signature flood",
        "ValidateToken, reused token",
        "Login flood",
        "denial path",
    ] {
        assert!(stdout.contains(title), "no row for {title:?} in:\n{stdout}");
    }
    assert!(
        !stdout.contains("UNEXPECTED STATUS"),
        "a call ended with an unexpected status:\n{stdout}"
    );
}
