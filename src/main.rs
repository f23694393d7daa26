//! The `fq` binary: the command line of `fq::cli` with the built-in demo tasks (`fq.demo.*`)
//! registered. `fq::cli::run` parses the arguments, sets up logging from `RUST_LOG` and `-v`,
//! runs the command and returns the exit code (0 ok, 1 failure, 2 usage error).

use std::process::ExitCode;

fn main() -> ExitCode {
    fq::cli::run(fq::cli::demo_registry())
}
