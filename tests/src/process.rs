//! Runs the real `auth-service` and `student-service` binaries as child processes on loopback
//! port 0, for tests that kill them with SIGKILL or need a process of their own.
//!
//! `./scripts/test` builds the binaries before the tests run; they are looked up next to the
//! test executable, in the same cargo target directory.

// A failed step of the harness fails the test, which is what `expect` does here.
#![allow(clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

/// How long a started binary may take to log its listening address.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);

/// Returns the path of a binary of this workspace built into the same target directory as the
/// running test.
pub fn binary(name: &str) -> PathBuf {
    let test_exe = std::env::current_exe().expect("path of the test executable");
    // The test runs from `<target>/<profile>/deps/`; binaries sit in `<target>/<profile>/`.
    let profile_dir = test_exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable inside a cargo target directory");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing; build it first with `cargo build --workspace --bins`",
        path.display()
    );
    path
}

/// A service binary running as a child process. Dropping it kills the process.
pub struct ServiceProcess {
    child: Child,
    /// The gRPC address the process logged.
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl ServiceProcess {
    /// Starts `binary` with `args` and `envs`, JSON logs and the given loopback address flags,
    /// and waits until it logs a line with the bound address.
    ///
    /// Panics with the collected log if the process exits or logs no address in time.
    pub fn start(binary: &Path, args: &[&str], envs: &[(&str, &str)]) -> ServiceProcess {
        let mut child = Command::new(binary)
            .args(args)
            .args(["--log-format", "json"])
            .envs(envs.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("failed to start {}: {error}", binary.display()));

        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_found, addr_received) = mpsc::channel();
        let thread_log = Arc::clone(&log);
        // Keep reading to the end, so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = listening_addr(&line) {
                    let _ = addr_found.send(addr);
                }
                thread_log.lock().expect("log lock").push(line);
            }
        });

        let addr = match addr_received.recv_timeout(LISTEN_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not log a listening address within {LISTEN_TIMEOUT:?}; log:\n{}",
                    binary.display(),
                    log.lock().expect("log lock").join("\n")
                );
            }
        };
        ServiceProcess { child, addr, log }
    }

    /// Returns the `http://` URL of the gRPC listener.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Returns the process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL and waits for it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the process to exit, returning its status.
    pub fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        self.child.wait().expect("wait for the service process")
    }

    /// Returns the log lines written so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `binary` with `args` to completion, expecting it to exit on its own within `timeout`,
/// and returns its exit status and standard error.
pub fn run_to_exit(
    binary: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
    timeout: Duration,
) -> (ExitStatus, String) {
    let mut child = Command::new(binary)
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("failed to start {}: {error}", binary.display()));
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} still running after {timeout:?}", binary.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    (status, stderr)
}

/// Returns the address in a JSON log line whose message ends in "listening".
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let event: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = event.get("fields")?.as_object()?;
    let message = fields.get("message")?.as_str()?;
    if !message.ends_with("listening") {
        return None;
    }
    fields
        .values()
        .filter_map(|value| value.as_str())
        .find_map(|value| value.parse().ok())
}
