//! Child processes: this test binary run again as one of its own tests (a remote worker, a
//! server, a producer that is killed), and the `fq` binary.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// This test binary run again, filtered to exactly the test `test` (its full path in the
/// suite, e.g. `"control::child_process"`), on one thread, its output not captured. The
/// caller adds the environment that gives the child its role; without it the child test
/// returns at once.
pub fn rerun(test: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("the test binary's path"));
    command.args(["--exact", test, "--nocapture", "--test-threads", "1"]);
    command
}

/// The path of this build's `fq` binary.
#[cfg(feature = "cli")]
pub fn fq_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fq"))
}

/// This build's `fq` binary, to be given its arguments.
#[cfg(feature = "cli")]
pub fn fq() -> Command {
    Command::new(fq_path())
}

/// Starts `command` with its stderr in `<dir>/<role>-<n>.stderr` (`n` counts this process's
/// logged children, so reruns of a role keep their logs apart), for when a run goes wrong; its
/// stdin and stdout go nowhere. The child is killed when the guard drops.
pub fn spawn_logged(mut command: Command, dir: &Path, role: &str) -> ChildGuard {
    static SPAWNED: AtomicUsize = AtomicUsize::new(0);
    let n = SPAWNED.fetch_add(1, Ordering::Relaxed);
    let log = std::fs::File::create(dir.join(format!("{role}-{n}.stderr")))
        .expect("create the child's log");
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    ChildGuard(command.spawn().expect("spawn a child process"))
}

/// Kills a child process when dropped, so a failing test leaves none behind.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Kills the child (SIGKILL) and reaps it; nothing happens if it is gone already.
    pub fn kill(&mut self) {
        drop(self.0.kill());
        drop(self.0.wait());
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}
