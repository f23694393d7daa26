//! The `fq` command-line tool. For now it identifies itself; queue inspection and operation
//! arrive with the control socket.

use std::process::ExitCode;

use clap::Parser;

/// fq: durable background tasks, embedded.
#[derive(Debug, Parser)]
#[command(name = "fq", version, about)]
struct Args {}

fn main() -> ExitCode {
    match Args::try_parse() {
        Ok(Args {}) => {
            println!(
                "fq {}: no command given; see `fq --help`",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            // clap prints help and version itself, and tells usage errors apart (exit code 2).
            let code = error.exit_code();
            let _ = error.print();
            ExitCode::from(u8::try_from(code).unwrap_or(2))
        }
    }
}
