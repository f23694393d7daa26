//! `fq bench [--tasks N] [--producers P] [--concurrency C] [--payload BYTES] [--unique]`: runs
//! the load generator on fresh stores (in a temporary folder, or beside `--db`, kept) and
//! prints its figures as a table or one JSON object.

use std::sync::Mutex;

use crate::cli::Context;
use crate::cli::args::BenchArgs;
use crate::cli::error::CliError;
use crate::cli::loadgen::{self, BenchParams, BenchReport, MetricsCost};
use crate::{BrokerKind, Config};

/// Runs every phase with a progress bar per phase on stderr, then prints the report.
pub(crate) async fn run(ctx: &Context, args: &BenchArgs) -> Result<(), CliError> {
    if ctx.db().is_some_and(|db| db.is_dir()) {
        return Err(CliError::usage(
            "--db names a store file; bench keeps its stores beside it",
        ));
    }
    let params = BenchParams {
        tasks: args.tasks,
        producers: usize::from(args.producers),
        concurrency: usize::from(args.concurrency),
        payload_bytes: args.payload as usize,
        unique: args.unique,
        dir: ctx.db().map(|db| {
            db.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| ".".into(), std::path::Path::to_path_buf)
        }),
        config: bench_config(ctx)?,
        config_file: ctx.config_file().map(std::path::Path::to_path_buf),
    };
    let out = ctx.out();
    let current: Mutex<Option<(String, indicatif::ProgressBar)>> = Mutex::new(None);
    let progress = |phase: &str, done: u64, total: u64| {
        let mut current = current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.as_ref().is_none_or(|(name, _)| name != phase) {
            if let Some((_, bar)) = current.take() {
                bar.finish_and_clear();
            }
            *current = Some((phase.to_owned(), out.bar(total, phase.to_owned())));
        }
        if let Some((_, bar)) = current.as_ref() {
            bar.set_length(total);
            bar.set_position(done);
        }
    };
    // The last phase's bar goes before the figures are printed, whether the run ended or failed.
    let clear_bar = || {
        if let Some((_, bar)) = current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            bar.finish_and_clear();
        }
    };
    if args.metrics_cost {
        let cost = loadgen::metrics_cost(&params, &progress).await;
        clear_bar();
        let cost = cost?;
        return if out.is_json() {
            out.document(&cost)
        } else {
            out.text(&cost_table(&cost))
        };
    }
    let report = loadgen::run(&params, &progress).await;
    clear_bar();
    let report = report?;
    if out.is_json() {
        out.document(&report)
    } else {
        out.text(&table(&report))
    }
}

/// The configuration the bench's stores open with: the user's (so `--config`, `fq.toml` and
/// the `FQ_*` overrides count, and a bad file is refused), less what cannot apply to stores the
/// bench makes for itself and opens one after another: it measures the embedded engine, so
/// `broker` is `database`; no TCP control listener (each store would claim its port); and each
/// store's control socket beside it, never the configured one, which a running engine may hold.
fn bench_config(ctx: &Context) -> Result<Config, CliError> {
    let mut config = ctx.config()?;
    config.broker = BrokerKind::Database;
    config.control.listen = None;
    config.control.socket = None;
    Ok(config)
}

/// `fq bench-open PATH`: the reopen figure of `fq bench`, measured in this fresh process.
pub(crate) fn open_timing(ctx: &Context, path: &std::path::Path) -> Result<(), CliError> {
    let seconds = loadgen::time_open(path, bench_config(ctx)?)?;
    let out = ctx.out();
    if out.is_json() {
        out.document(&serde_json::json!({ "open_seconds": seconds }))
    } else {
        out.text(&format!("opened {} in {seconds:.3} s", path.display()))
    }
}

fn table(report: &BenchReport) -> String {
    let BenchReport {
        params,
        fsync_per_sec,
        fsync_handed_off_per_sec,
        fsync_handed_off_ratio,
        fsync_commit_pages_per_sec,
        redb_commit_per_sec,
        enqueue_sequential_per_sec,
        sequential_to_fsync_ratio,
        sequential_to_redb_ratio,
        enqueue_concurrent_per_sec,
        enqueue_batch_per_sec,
        drain_per_sec,
        mixed,
        idle,
        store_bytes_per_task,
        reopen_seconds,
        reopen_unverified_seconds,
        sequential_tasks,
        mixed_tasks,
        peak_rss_mib,
        ..
    } = report;
    let (fsync_percent, redb_percent) = (
        sequential_to_fsync_ratio * 100.0,
        sequential_to_redb_ratio * 100.0,
    );
    let rows = [
        (
            "fsync rate (4 KiB write + fdatasync)",
            format!("{fsync_per_sec:.0} /s"),
        ),
        (
            "the same, handed to a thread and back",
            format!(
                "{fsync_handed_off_per_sec:.0} /s ({:.0}% of it in place: one producer's \
                 ceiling with a writer thread)",
                fsync_handed_off_ratio * 100.0
            ),
        ),
        (
            "fsync after a commit's 9 scattered pages",
            format!("{fsync_commit_pages_per_sec:.0} /s"),
        ),
        (
            "redb alone, 1 enqueue per durable commit",
            format!("{redb_commit_per_sec:.0} commits/s"),
        ),
        (
            "enqueue, 1 producer",
            format!(
                "{enqueue_sequential_per_sec:.0} tasks/s over {sequential_tasks} tasks \
                 ({fsync_percent:.0}% of the fsync rate, {redb_percent:.0}% of redb alone)"
            ),
        ),
        (
            "enqueue, concurrent producers",
            format!(
                "{enqueue_concurrent_per_sec:.0} tasks/s ({} producers)",
                params.producers
            ),
        ),
        (
            "enqueue, batch API (1,000 per call)",
            format!("{enqueue_batch_per_sec:.0} tasks/s"),
        ),
        (
            "drain, no-op tasks",
            format!(
                "{drain_per_sec:.0} tasks/s (concurrency {})",
                params.concurrency
            ),
        ),
        (
            "mixed steady state",
            format!(
                "{mixed_tasks} tasks, {:.0} offered, {:.0} done tasks/s; enqueue->start p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                mixed.offered_per_sec,
                mixed.achieved_per_sec,
                mixed.latency.latency_p50_ms,
                mixed.latency.latency_p99_ms,
                mixed.latency.latency_max_ms
            ),
        ),
        (
            "enqueue->start, idle worker",
            format!(
                "p50 {:.2} ms, p99 {:.2} ms over {} tasks, one at a time",
                idle.latency.latency_p50_ms, idle.latency.latency_p99_ms, idle.tasks
            ),
        ),
        (
            "store size",
            format!("{store_bytes_per_task:.0} bytes/task"),
        ),
        (
            "reopen, fresh process, verified",
            format!("{reopen_seconds:.3} s with {} pending tasks", params.tasks),
        ),
        (
            "reopen, same process, unverified",
            format!("{reopen_unverified_seconds:.3} s (right after writing; a lower bound)"),
        ),
        (
            "peak memory (RSS)",
            peak_rss_mib.map_or_else(|| "unknown".to_owned(), |mib| format!("{mib:.0} MiB")),
        ),
    ];
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    let mut text = format!(
        "fq bench: {} tasks per phase (the 1-producer and mixed phases: their own counts), \
         {}-byte payloads, durable (fsync per commit), stores on {}\n",
        report.params.tasks, report.params.payload_bytes, report.file_system
    );
    if !report.on_disk {
        text.push_str(&format!(
            "  WARNING: {} keeps the stores in memory; no durable figure below measures a disk\n",
            report.file_system
        ));
    }
    for (name, value) in rows {
        text.push_str(&format!("  {name:<width$}  {value}\n"));
    }
    text.pop();
    text
}

/// `fq bench --metrics-cost`: each phase's rounds and medians, on and off.
fn cost_table(cost: &MetricsCost) -> String {
    let rounds = |values: &[f64]| {
        values
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "metrics cost, {tasks} tasks per phase ({rounds} rounds each side, alternating)\n\
         enqueue, {producers} producers: on {eon:.0} /s [{eons}], off {eoff:.0} /s [{eoffs}]: cost {ec:.1}%\n\
         drain, concurrency {concurrency}: on {don:.0} /s [{dons}], off {doff:.0} /s [{doffs}]: cost {dc:.1}%",
        tasks = cost.params.tasks,
        rounds = cost.enqueue_on.len(),
        producers = cost.params.producers,
        concurrency = cost.params.concurrency,
        eon = cost.enqueue_on_median,
        eons = rounds(&cost.enqueue_on),
        eoff = cost.enqueue_off_median,
        eoffs = rounds(&cost.enqueue_off),
        ec = cost.enqueue_cost_percent,
        don = cost.drain_on_median,
        dons = rounds(&cost.drain_on),
        doff = cost.drain_off_median,
        doffs = rounds(&cost.drain_off),
        dc = cost.drain_cost_percent,
    )
}
