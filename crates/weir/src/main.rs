//! `weir`: a zero-trust ambient service mesh for event streaming.
#![deny(unsafe_code)]

/// `println!` for the commands whose output is read by other programs
/// (`weir check ... | head -1`): a reader that went away ends the command
/// quietly with success, as for other Unix tools, instead of a panic.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!($($arg)*))
    };
}

/// `eprintln!` for the same commands: a closed standard error ends the
/// command as a closed standard output does, instead of a panic.
macro_rules! diag {
    ($($arg:tt)*) => {
        $crate::write_stderr(format_args!($($arg)*))
    };
}

mod check;
mod cli;
mod control;
mod crds;
mod demo;
mod explain;
mod gateway;
mod malloc;
mod node;

use std::process::ExitCode;

use clap::Parser;

/// The exit code a broken pipe ends the command with: 0 unless the command
/// said its result is a failure ([`fail_on_broken_pipe`]), so that
/// `weir check bad.yaml | head -1` still fails under `set -o pipefail`.
static PIPE_EXIT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Makes a later broken pipe end the command with `code`.
fn fail_on_broken_pipe(code: u8) {
    PIPE_EXIT.store(code, std::sync::atomic::Ordering::Relaxed);
}

fn broken_pipe_exit() -> ! {
    std::process::exit(i32::from(
        PIPE_EXIT.load(std::sync::atomic::Ordering::Relaxed),
    ))
}

fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"))
    {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            broken_pipe_exit();
        }
        write_stderr(format_args!("weir: cannot write to standard output: {e}"));
        std::process::exit(1);
    }
}

fn write_stderr(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stderr = std::io::stderr().lock();
    if let Err(e) = stderr
        .write_fmt(args)
        .and_then(|()| stderr.write_all(b"\n"))
    {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            broken_pipe_exit();
        }
    }
}

/// Prints `value` as pretty JSON on stdout (`--output json`), through [`out!`].
fn print_json(value: &impl serde::Serialize) {
    out!(
        "{}",
        serde_json::to_string_pretty(value).expect("serializable")
    );
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Check(args) => check::run(&args),
        cli::Command::Explain(args) => explain::run(&args),
        cli::Command::Node(args) => {
            malloc::tune_for_proxying();
            node::run(*args)
        }
        cli::Command::Gateway(args) => {
            malloc::tune_for_proxying();
            gateway::run(*args)
        }
        cli::Command::Control(args) => control::run(*args),
        cli::Command::Crds => crds::run(),
        cli::Command::Demo(args) => demo::run(args),
    }
}
