//! `weir`: a zero-trust ambient service mesh for event streaming.
#![forbid(unsafe_code)]

mod check;
mod cli;
mod control;
mod crds;
mod demo;
mod explain;
mod gateway;
mod node;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Check(args) => check::run(&args),
        cli::Command::Explain(args) => explain::run(&args),
        cli::Command::Node(args) => node::run(*args),
        cli::Command::Gateway(args) => gateway::run(*args),
        cli::Command::Control(args) => control::run(*args),
        cli::Command::Crds => crds::run(),
        cli::Command::Demo(args) => demo::run(args),
    }
}
