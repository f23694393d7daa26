//! The `fq` command-line tool: a thin shell over `fq::cli`.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
