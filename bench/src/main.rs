//! `school-bench`: starts the services in a child process and drives every scenario against
//! them. `scripts/bench` runs it in release mode with the server and the load on separate cores.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use clap::{Parser, Subcommand};
use school_bench::BenchError;
use school_bench::scenarios::{Bench, Settings};
use school_bench::serve::{self, Setup, TokenCounts};

/// Load benchmark of the guard layer and auth-service over loopback.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Option<Mode>,

    /// Length of one run, in seconds.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,

    /// Runs of each side of a scenario; the report shows medians.
    #[arg(long, default_value_t = 5)]
    runs: usize,

    /// HTTP/2 connections per server.
    #[arg(long, default_value_t = 4)]
    connections: usize,

    /// Calls in flight at once, spread over the connections.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,

    /// Distinct valid tokens for the cold scenario, used in turn.
    #[arg(long, default_value_t = 50_000)]
    cold_tokens: usize,

    /// CPU to pin the server process to with `taskset`; unpinned when absent.
    #[arg(long)]
    server_cpu: Option<usize>,

    /// Comma-separated scenarios to run; all when absent.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

#[derive(Subcommand)]
enum Mode {
    /// Runs the server process (started by the driver, not by hand).
    #[command(hide = true)]
    Serve {
        /// Path of the setup JSON to write.
        #[arg(long)]
        out: PathBuf,
        /// Distinct valid tokens to sign.
        #[arg(long)]
        cold_tokens: usize,
        /// Admin tokens to obtain through Login.
        #[arg(long)]
        admin_tokens: usize,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Mode::Serve {
            out,
            cold_tokens,
            admin_tokens,
        }) => {
            let counts = TokenCounts {
                cold: *cold_tokens,
                admin: *admin_tokens,
            };
            serve::serve(out, counts).await
        }
        None => drive(&cli).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("school-bench: {}", report_chain(&error));
            ExitCode::FAILURE
        }
    }
}

async fn drive(cli: &Cli) -> Result<(), BenchError> {
    let dir = tempfile::tempdir().map_err(BenchError::io("create setup directory"))?;
    let out = dir.path().join("setup.json");
    let exe = std::env::current_exe().map_err(BenchError::io("find own executable"))?;

    let mut command = match cli.server_cpu {
        Some(cpu) => {
            let mut taskset = Command::new("taskset");
            taskset.arg("-c").arg(cpu.to_string()).arg(&exe);
            taskset
        }
        None => Command::new(&exe),
    };
    command
        .arg("serve")
        .arg("--out")
        .arg(&out)
        .arg("--cold-tokens")
        .arg(cli.cold_tokens.to_string())
        .arg("--admin-tokens")
        .arg(cli.concurrency.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(BenchError::io("start server process"))?;

    let result = drive_server(cli, &mut child, &out).await;
    // Closing stdin tells the server process to stop, and it is killed if it has not within 10 s.
    drop(child.stdin.take());
    if tokio::time::timeout(Duration::from_secs(10), wait(&mut child))
        .await
        .is_err()
    {
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

async fn wait(child: &mut std::process::Child) {
    while let Ok(None) = child.try_wait() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn drive_server(
    cli: &Cli,
    child: &mut std::process::Child,
    out: &std::path::Path,
) -> Result<(), BenchError> {
    let stdout = child.stdout.take().ok_or(BenchError::ServerExited)?;
    let ready = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .map_err(|_| BenchError::ServerExited)?
    .map_err(BenchError::io("read server process output"))?;
    if ready.trim() != "ready" {
        return Err(BenchError::ServerExited);
    }
    let text = std::fs::read(out).map_err(BenchError::io("read setup file"))?;
    let setup: Setup = serde_json::from_slice(&text).map_err(BenchError::Json)?;

    let settings = Settings {
        run: Duration::from_secs_f64(cli.secs),
        runs: cli.runs.max(1),
        connections: cli.connections.max(2),
        concurrency: cli.concurrency.max(1),
    };
    println!(
        "# school-bench: {} runs of {:.1} s per side, {} connections, {} calls in flight, \
         server CPU {}\n",
        settings.runs,
        cli.secs,
        settings.connections,
        settings.concurrency,
        cli.server_cpu
            .map_or_else(|| "unpinned".to_owned(), |cpu| cpu.to_string()),
    );
    let bench = Bench::connect(settings, setup, child.id()).await?;
    let names: Vec<String> = if cli.only.is_empty() {
        Bench::scenario_names()
            .iter()
            .map(|name| (*name).to_owned())
            .collect()
    } else {
        cli.only.clone()
    };
    for name in &names {
        let row = bench.run(name).await?;
        println!("{}", row.render());
    }
    Ok(())
}

fn report_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        line.push_str(": ");
        line.push_str(&inner.to_string());
        cause = inner.source();
    }
    line
}
