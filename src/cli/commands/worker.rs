//! `fq worker start`: runs a `WorkerManager` with the program's registry until SIGINT or
//! SIGTERM, printing a line per finished task and a summary at the end (Framefox's
//! `framefox worker start [--queues] [--concurrent] [--interval]`).

use serde_json::json;

use crate::Signals;
use crate::cli::Context;
use crate::cli::args::WorkerStartArgs;
use crate::cli::error::{CliError, usage_if_invalid};
use crate::cli::output::{Output, event_json, whole_ms};
use crate::config::{DurationStyle, format_duration};
use crate::{Event, EventKind, Registry, WorkerReport};

/// Runs the worker and prints its report.
pub(crate) async fn start(
    ctx: &Context,
    args: WorkerStartArgs,
    registry: Registry,
) -> Result<(), CliError> {
    let mut signals = Signals::listen()?;
    let engine = ctx.owner_engine(args.lock_wait).await?;
    let settings = &engine.config().worker;
    let queues = if args.queues.is_empty() {
        settings.queues.clone()
    } else {
        args.queues
    };
    let concurrency = args.concurrent.map_or(settings.concurrency, usize::from);
    let interval = args.interval.unwrap_or(settings.polling_interval);
    let shutdown_timeout = args.shutdown_timeout.unwrap_or(settings.shutdown_timeout);
    let names = registry.names().join(", ");

    let dashboard = super::serve::Dashboard::start(&engine, args.http).await?;
    let mut worker = engine.worker(registry);
    worker
        .set_queues(queues.clone())
        .set_concurrent_tasks(concurrency)
        .set_polling_interval(interval)
        .set_shutdown_timeout(shutdown_timeout)
        // Signals are ours: installed above, before the banner, and they print what happens.
        .set_handle_signals(false);
    let stop = worker.shutdown_handle();
    let mut events = (!args.quiet).then(|| engine.events().subscribe());

    let out = ctx.out();
    if out.is_json() {
        out.json_line(&json!({
            "worker": "started",
            "pid": std::process::id(),
            "store": engine.path(),
            "queues": queues,
            "concurrency": concurrency,
            "polling_interval_ms": whole_ms(interval),
            "http": dashboard.as_ref().map(|d| format!("http://{}/", d.addr())),
        }))?;
    } else {
        out.text(&format!(
            "worker started (pid {}): queues {}, {concurrency} at a time, idle recheck every {}\ntasks: {}\nstop with Ctrl-C or SIGTERM",
            std::process::id(),
            queues.join(","),
            format_duration(interval, DurationStyle::Short),
            if names.is_empty() { "(none registered)" } else { &names },
        ))?;
        if let Some(dashboard) = &dashboard {
            out.text(&format!("dashboard: http://{}/", dashboard.addr()))?;
        }
    }

    let mut running = tokio::spawn(async move { worker.start().await });
    let (mut stopping, mut stopping_now) = (false, false);
    let joined = loop {
        tokio::select! {
            joined = &mut running => break joined,
            signal = signals.recv(), if !stopping_now => {
                if stopping {
                    // A second signal: Celery's cold shutdown.
                    stopping_now = true;
                    stop.stop_now();
                    tracing::warn!(signal, "stopping now: running tasks are released to be retried");
                    if !out.is_json() {
                        eprintln!("{signal} again: stopping now; running tasks are released to be retried");
                    }
                    continue;
                }
                stopping = true;
                stop.shutdown();
                tracing::info!(signal, "stopping: no new tasks; waiting for running ones");
                if !out.is_json() {
                    eprintln!(
                        "{signal}: stopping; waiting up to {} for running tasks (again to stop now)",
                        format_duration(shutdown_timeout, DurationStyle::Short)
                    );
                }
            }
            event = next_event(events.as_mut()) => match event {
                Some(event) => print_event(out, &event)?,
                None => events = None,
            },
        }
    };
    // Events of the last tasks may still be queued for us.
    if let Some(stream) = events.as_mut() {
        while let Some(event) = stream.recv_timeout(std::time::Duration::ZERO).await {
            print_event(out, &event)?;
        }
    }
    if let Some(dashboard) = dashboard {
        dashboard.stop().await;
    }
    let report = joined
        .map_err(|error| CliError::from_error(error).context("the worker stopped abnormally"))?
        .map_err(usage_if_invalid)?;
    print_report(out, &report)
}

async fn next_event(events: Option<&mut crate::EventStream>) -> Option<std::sync::Arc<Event>> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

/// One line per finished attempt: completed, will retry, failed for good.
fn print_event(out: Output, event: &Event) -> Result<(), CliError> {
    if !matches!(
        event.kind,
        EventKind::AfterExecution | EventKind::Retrying | EventKind::Failed
    ) {
        return Ok(());
    }
    if out.is_json() {
        return out.json_line(&event_json(event));
    }
    let task = &event.task;
    let runs = format!(
        "run {}/{}",
        task.attempts,
        task.max_retries.saturating_add(1)
    );
    let detail = match event.kind {
        EventKind::AfterExecution => "COMPLETED".to_owned(),
        EventKind::Retrying => {
            let error = event
                .error
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            let when = event.retry_at.map_or_else(String::new, |at| {
                format!("; next run {}", crate::cli::output::relative(at, event.at))
            });
            format!("RETRYING  {error}{when}")
        }
        _ => {
            let error = event
                .error
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            format!("FAILED    {error}")
        }
    };
    out.text(&format!(
        "{}  {}  {}  {runs}  {detail}",
        event.at.format("%H:%M:%S%.3f"),
        task.id,
        task.name
    ))
}

fn print_report(out: Output, report: &WorkerReport) -> Result<(), CliError> {
    if out.is_json() {
        return out.json_line(&json!({"worker": "stopped", "report": report}));
    }
    let mut text = format!(
        "worker stopped: {} completed, {} retried, {} failed",
        report.completed, report.retried, report.failed
    );
    if report.released > 0 {
        text.push_str(&format!(
            ", {} released to PENDING (still running when the worker stopped)",
            report.released
        ));
    }
    if report.unrecorded > 0 {
        text.push_str(&format!(
            ", {} whose outcome could not be recorded",
            report.unrecorded
        ));
    }
    out.text(&text)
}
