//! What `fq bench` measures of the machine rather than of fq: the disk's fsync rate (plain, with
//! a commit's scattered pages, and handed to a thread and back), redb's own commit rate, the
//! file system holding the stores and the process's peak memory. No engine here: plain files
//! and redb alone, the yardsticks the phases are compared with.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{Progress, rate};
use crate::cli::output::whole_ms;
use crate::{Error, Result, store_commit_rate};

/// Pages a one-task enqueue commit writes besides redb's header (counted with strace: the
/// task table, the ready index and the counters with their tree paths, the table tree and
/// redb's own allocator tree).
pub(super) const COMMIT_PAGES: u64 = 9;
/// How long each disk probe runs.
const PROBE: Duration = Duration::from_secs(1);

/// Durable writes per second: `scattered_pages` 4 KiB pages at pseudo-random places of a
/// preallocated file plus a small write at its start (a commit's header), then one fdatasync.
/// With no scattered pages, the disk's plain single-fsync rate.
pub(super) fn fsync_rate(path: &Path, scattered_pages: u64, progress: Progress<'_>) -> Result<f64> {
    use std::os::unix::fs::FileExt;
    /// Spread of the scattered pages: a store of a few MiB.
    const SPAN_PAGES: u64 = 2048;
    let io = |e: std::io::Error| probe_failed(path, &e);
    let phase = if scattered_pages == 0 {
        "fsync rate"
    } else {
        "fsync rate of a commit's pages"
    };
    let file = std::fs::File::create(path).map_err(io)?;
    let block = [0x5au8; 4096];
    if scattered_pages > 0 {
        // Written, not sparse: holes would add the file system's block allocation to every
        // write, which a store that has grown to its size does not pay.
        for page in 0..SPAN_PAGES {
            file.write_all_at(&block, page * 4096).map_err(io)?;
        }
        file.sync_all().map_err(io)?;
    }
    let mut place = fastrand::Rng::with_seed(7);
    let started = Instant::now();
    let mut syncs = 0u64;
    while started.elapsed() < PROBE {
        for _ in 0..scattered_pages {
            file.write_all_at(&block, place.u64(1..SPAN_PAGES) * 4096)
                .map_err(io)?;
        }
        durable_write(&file, &block).map_err(io)?;
        syncs += 1;
        progress(phase, elapsed_ms(started.elapsed()), probe_ms());
    }
    drop(file);
    let _ = std::fs::remove_file(path);
    Ok(rate(syncs, started.elapsed()))
}

/// A disk probe's I/O error, naming the file it measured with.
fn probe_failed(path: &Path, error: &std::io::Error) -> Error {
    Error::invalid(
        "dir",
        format!("cannot measure fsync in {}: {error}", path.display()),
    )
}

/// A commit's header write (a small write at the file's start), then fdatasync.
fn durable_write(file: &std::fs::File, block: &[u8; 4096]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(&block[..512], 0)?;
    file.sync_data()
}

/// The disk's single durable write done right here and handed to a thread and back.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct HandedOff {
    /// Done on this task's own thread, per second.
    pub(super) here_per_sec: f64,
    /// Asked of a thread over a channel, which does it and answers over a oneshot, each
    /// awaited before the next, per second: one producer and a writer thread, with nothing
    /// else to do.
    pub(super) handed_off_per_sec: f64,
}

/// The single durable write of [`fsync_rate`], on this task's thread and handed to a thread of
/// its own and back, alternating in 100 ms slices so that both see the same disk. The second
/// over the first is the most one sequential producer can keep of the disk's rate when its
/// writes go to a writer thread over a channel, as fq's do, whatever the store does.
pub(super) async fn handed_off_fsync_rate(
    path: &Path,
    progress: Progress<'_>,
) -> Result<HandedOff> {
    const SLICE: Duration = Duration::from_millis(100);
    const PHASE: &str = "fsync rate, handed to a thread";
    let io = |e: std::io::Error| probe_failed(path, &e);
    let file = std::sync::Arc::new(std::fs::File::create(path).map_err(io)?);
    let block = [0x5au8; 4096];
    type Reply = tokio::sync::oneshot::Sender<std::io::Result<()>>;
    let (requests, inbox) = crossbeam_channel::bounded::<Reply>(1);
    let thread_file = std::sync::Arc::clone(&file);
    let thread = std::thread::Builder::new()
        .name("fq-bench-sync".into())
        .spawn(move || {
            for reply in inbox {
                let _ = reply.send(durable_write(&thread_file, &block));
            }
        })
        .map_err(io)?;
    let (mut here, mut handed_off) = ((0u64, Duration::ZERO), (0u64, Duration::ZERO));
    let started = Instant::now();
    let measured = async {
        while started.elapsed() < PROBE {
            let slice = Instant::now();
            while slice.elapsed() < SLICE {
                durable_write(&file, &block).map_err(io)?;
                here.0 += 1;
            }
            here.1 += slice.elapsed();
            let slice = Instant::now();
            while slice.elapsed() < SLICE {
                let (reply, answer) = tokio::sync::oneshot::channel();
                let ended = || io(std::io::Error::other("the probe's sync thread ended"));
                requests.send(reply).map_err(|_| ended())?;
                answer.await.map_err(|_| ended())?.map_err(io)?;
                handed_off.0 += 1;
            }
            handed_off.1 += slice.elapsed();
            progress(PHASE, elapsed_ms(started.elapsed()), probe_ms());
        }
        Ok::<(), Error>(())
    }
    .await;
    drop(requests);
    if thread.join().is_err() {
        tracing::error!("the fsync probe's thread panicked");
    }
    drop(file);
    let _ = std::fs::remove_file(path);
    measured?;
    Ok(HandedOff {
        here_per_sec: rate(here.0, here.1),
        handed_off_per_sec: rate(handed_off.0, handed_off.1),
    })
}

/// Durable commits per second of the store's engine alone (see [`store_commit_rate`]).
pub(super) fn redb_commit_rate(path: &Path, progress: Progress<'_>) -> Result<f64> {
    let commits_per_sec = store_commit_rate(path, PROBE, |elapsed| {
        progress("redb commit rate", elapsed_ms(elapsed), probe_ms());
    })?;
    Ok(commits_per_sec)
}

/// How far into a probe `elapsed` is, for its progress line (a probe's last step may end
/// past its length).
fn elapsed_ms(elapsed: Duration) -> u64 {
    whole_ms(elapsed).min(probe_ms())
}

fn probe_ms() -> u64 {
    whole_ms(PROBE)
}

/// The name of the file system holding `dir`, from its magic number.
#[cfg(target_os = "linux")]
pub(super) fn file_system(dir: &Path) -> &'static str {
    let Ok(stats) = rustix::fs::statfs(dir) else {
        return "unknown";
    };
    // Magic numbers from statfs(2).
    #[allow(clippy::unnecessary_cast)]
    match stats.f_type as i64 {
        0x0102_1994 => "tmpfs",
        0x8584_58f6 => "ramfs",
        0xef53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683e => "btrfs",
        0x2fc1_2fc1 => "zfs",
        0xf2f5_2010 => "f2fs",
        0x794c_7630 => "overlayfs",
        0x6969 => "nfs",
        0x0100_2001 | 0xff53_4d42 => "cifs",
        _ => "other",
    }
}

/// File systems are not told apart off Linux.
#[cfg(not(target_os = "linux"))]
pub(super) fn file_system(_dir: &Path) -> &'static str {
    "unknown"
}

pub(super) fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let kib: f64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024.0)
}
