//! The `fq` binary: the command line of `fq::cli` with the built-in demo tasks (`fq.demo.*`)
//! registered. `fq::cli::run` parses the arguments, sets up logging from `RUST_LOG` and `-v`,
//! runs the command and returns the exit code (0 ok, 1 failure, 2 usage error). It also owns the
//! binary's allocator choice; the library never sets one.

use std::process::ExitCode;

/// jemalloc instead of the system's malloc: glibc's malloc and free took a tenth of the writer
/// thread's time in the profiles, and `fq bench` measured the change (PERFORMANCE.md).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    fq::cli::run(fq::cli::demo_registry())
}
