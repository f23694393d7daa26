//! The command line's shape as clap types: global flags, the subcommands and their flags, and
//! the value parsers that turn flag text into checked values (a bad value is a usage error,
//! exit code 2, before anything is opened). Nothing here touches an engine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{ArgAction, Args, Parser, Subcommand};
use serde_json::{Map, Value};

use crate::config::{
    DurationStyle, MAX_WORKER_WAIT, check_name, format_duration, parse_duration, parse_listen,
};
use crate::{TaskId, TaskStatus};

/// Durable background tasks: run workers, queue tasks, inspect and operate queues.
///
/// Every command except `serve` and `demo` works on the store named by --db (or `database` in
/// the configuration): through the control socket of the engine that owns it when one is
/// running, else by opening the file directly.
#[derive(Debug, Parser)]
#[command(name = "fq", version, propagate_version = true, max_term_width = 100)]
pub(crate) struct Cli {
    /// Flags every command accepts.
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Flags every command accepts, before or after the command name.
#[derive(Debug, Clone, Args)]
pub(crate) struct GlobalArgs {
    /// Configuration file [default: fq.toml, else config/services.yaml, else built-in defaults]
    #[arg(long, global = true, value_name = "PATH")]
    pub(crate) config: Option<PathBuf>,
    /// Store file; overrides `database` from the configuration
    #[arg(long, global = true, value_name = "PATH")]
    pub(crate) db: Option<PathBuf>,
    /// Talk to the engine serving a store: unix:PATH, a socket path, or tcp:HOST:PORT
    #[arg(long, global = true, value_name = "ADDR", conflicts_with = "db")]
    pub(crate) connect: Option<String>,
    /// Machine-readable output: one JSON document, or one JSON object per line for streams
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// More log output on stderr (-v, -vv, -vvv); RUST_LOG overrides
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub(crate) verbose: u8,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Own a store and serve it to other processes (workers, producers, this CLI) until
    /// SIGINT or SIGTERM
    Serve(ServeArgs),
    /// Run workers
    #[command(subcommand)]
    Worker(WorkerCommand),
    /// Queue a task by name
    Enqueue(EnqueueArgs),
    /// Task counts per queue: ready, scheduled, running, retrying, completed, failed, oldest
    /// waiting age and completions in the last minute
    Stats,
    /// Print the engine's Prometheus metrics (the `/metrics` body): from the running `fq
    /// serve` when there is one, else the store's queue depths read directly; with --json,
    /// `{"content_type", "text"}`
    Metrics,
    /// List tasks, oldest first
    List(ListArgs),
    /// Show everything about one task, with its attempt history (number, start, duration,
    /// worker, outcome, error of each run)
    Show(IdArgs),
    /// Say where a task stands and what it waits for: its place in its queue, whether a live
    /// worker serves its queue and has its handler, a pause or limit holding it, its next
    /// run, the worker running it, or why it ended and what to do
    Why(IdArgs),
    /// List the live workers (host, pid, queues, slots, running tasks, counts) and those
    /// gone in the last hour with why (stopped, lost)
    Workers,
    /// Put a FAILED or CANCELLED task back to PENDING, or every FAILED task with --failed
    Retry(RetryArgs),
    /// Cancel a PENDING or RETRYING task
    Cancel(IdArgs),
    /// Wait for a task's outcome and print its result (its record with --json); exit code 0
    /// for COMPLETED, 1 for FAILED or CANCELLED (or any failure), 3 when --timeout passes
    Wait(WaitArgs),
    /// Pause a queue (durably): its tasks stay queued and none starts until `resume`; running
    /// tasks finish. A queue with no task yet can be paused ahead
    Pause(QueueArgs),
    /// Resume a paused queue: its waiting tasks start again
    Resume(QueueArgs),
    /// Recurring schedules: with no subcommand, list them (name, spec, zone, next and last
    /// fire, last task and its status, paused)
    Schedules(SchedulesArgs),
    /// Set a queue's concurrency and rate limits on the engine serving the store (until it
    /// stops; `[queues.<name>]` in the config sets them at start). A limit left out is removed
    Limit(LimitArgs),
    /// Delete the tasks of a queue (all but RUNNING ones, or only those with --status)
    Purge(PurgeArgs),
    /// Delete finished tasks past their retention now (`cleanup` in the configuration)
    Cleanup,
    /// Open a store whose write-ahead log (`<store>-wal`) went missing after a crash, without
    /// the changes only that log held (they are lost); every other open refuses such a store.
    /// Put the log back instead if you can. Refused while the log is there
    ForgetLog,
    /// A first run: queue a mix of demo tasks on a scratch store, run a worker, watch the
    /// events, print the stats
    Demo(DemoArgs),
    /// Measure this machine: fsync rate, enqueue (1 producer, many, batch), drain, a mixed
    /// steady state and an idle worker with enqueue-to-start latency, store size, reopen time,
    /// peak memory
    Bench(BenchArgs),
    /// `fq bench`'s reopen figure: opens the store at PATH as its owner would (checksums
    /// verified, recovery run) in this fresh process and prints the seconds it took as JSON
    #[command(hide = true)]
    BenchOpen {
        /// The store to open
        path: PathBuf,
    },
}

/// `serve` flags.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Also listen on this TCP address (`control.listen`): 127.0.0.1:7878, [::1]:7878 or
    /// localhost:7878; any other address needs `control.token` in the configuration
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_arg)]
    pub(crate) listen: Option<SocketAddr>,
    /// Serve the web dashboard on this address (`http.listen`): 127.0.0.1:8080 or
    /// localhost:8080; any other address needs `http.token` in the configuration
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_arg)]
    pub(crate) http: Option<SocketAddr>,
    /// How long to wait for a store another process holds before giving up
    /// [default: `worker.lock_wait`, else 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_worker_wait)]
    pub(crate) lock_wait: Option<Duration>,
}

/// `worker` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum WorkerCommand {
    /// Run a worker until SIGINT or SIGTERM, then finish running tasks and print a summary
    Start(WorkerStartArgs),
}

/// `worker start` flags; each defaults to the configuration's `worker` section.
#[derive(Debug, Args)]
pub(crate) struct WorkerStartArgs {
    /// Serve the web dashboard on this address (`http.listen`): 127.0.0.1:8080 or
    /// localhost:8080; any other address needs `http.token` in the configuration
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_arg)]
    pub(crate) http: Option<SocketAddr>,
    /// Queues to serve, comma-separated, highest priority first across all of them
    #[arg(long, value_name = "A,B", value_delimiter = ',', num_args = 1..,
          value_parser = parse_queue)]
    pub(crate) queues: Vec<String>,
    /// Tasks run at once
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=10_000))]
    pub(crate) concurrent: Option<u16>,
    /// Longest idle wait before looking for work again, in seconds or as a duration
    /// ("10", "500ms"); new work wakes the worker at once
    #[arg(long, value_name = "SECS", value_parser = parse_worker_interval)]
    pub(crate) interval: Option<Duration>,
    /// How long shutdown waits for running tasks before releasing them ("30s")
    #[arg(long, value_name = "DURATION", value_parser = parse_worker_wait)]
    pub(crate) shutdown_timeout: Option<Duration>,
    /// How long to wait for a store another process holds before giving up ("10s")
    #[arg(long, value_name = "DURATION", value_parser = parse_worker_wait)]
    pub(crate) lock_wait: Option<Duration>,
    /// Print no line per finished task, only the summary
    #[arg(short, long)]
    pub(crate) quiet: bool,
}

/// `enqueue` flags.
#[derive(Debug, Args)]
pub(crate) struct EnqueueArgs {
    /// The task's registered name, e.g. myapp.tasks.send_email
    pub(crate) name: String,
    /// Keyword arguments, a JSON object: '{"to": "ada@example.com"}'
    #[arg(long, value_name = "JSON", value_parser = parse_kwargs)]
    pub(crate) kwargs: Option<Map<String, Value>>,
    /// Positional arguments, a JSON array: '["ada@example.com", 3]'
    #[arg(long, value_name = "JSON", value_parser = parse_args)]
    pub(crate) args: Option<JsonArray>,
    /// Queue [default: `defaults.queue` from the configuration, else "default"]
    #[arg(long, value_name = "QUEUE")]
    pub(crate) queue: Option<String>,
    /// Priority; higher runs first [default: `defaults.priority`, else 0]
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub(crate) priority: Option<i32>,
    /// Retries after the first failed run [default: `defaults.max_retries`, else 3]
    #[arg(long, value_name = "N")]
    pub(crate) max_retries: Option<u32>,
    /// Run no sooner than this from now: "90s", "1h30m", "2d", or seconds
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg, conflicts_with = "at",
          allow_hyphen_values = true)]
    pub(crate) delay: Option<Duration>,
    /// Run no sooner than this time, RFC 3339: 2030-06-01T09:30:00Z. A time more than a
    /// minute in the past is refused (a typo, most likely) unless --allow-past is given
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub(crate) at: Option<DateTime<Utc>>,
    /// Accept an --at time in the past: the task is due now
    #[arg(long, requires = "at")]
    pub(crate) allow_past: bool,
    /// Time limit for each attempt ("30s"); a run that takes longer fails and is retried
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub(crate) timeout: Option<Duration>,
    /// Queue it only if no task holds this unique key; otherwise print the task that does
    /// (a key is held until its task finishes, or with --unique-for, for that long after
    /// its creation)
    #[arg(long, value_name = "KEY")]
    pub(crate) unique_key: Option<String>,
    /// With --unique-key: the key stays held this long after the task's creation, even once
    /// it has finished ("1h", "30m", up to 365 days)
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration,
          requires = "unique_key")]
    pub(crate) unique_for: Option<Duration>,
}

/// `list` flags.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only this queue
    #[arg(long, value_name = "QUEUE")]
    pub(crate) queue: Option<String>,
    /// Only this status: pending, running, completed, failed, retrying or cancelled
    #[arg(long, value_name = "STATUS")]
    pub(crate) status: Option<TaskStatus>,
    /// At most this many tasks
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) limit: u32,
    /// Only tasks created after this one (the last id of the previous page)
    #[arg(long, value_name = "ID")]
    pub(crate) after: Option<TaskId>,
    /// Only tasks queued with this unique key (holding it or not)
    #[arg(long, value_name = "KEY")]
    pub(crate) unique_key: Option<String>,
}

/// A command that takes one task id.
#[derive(Debug, Args)]
pub(crate) struct IdArgs {
    /// The task's id (a UUID, as `enqueue` and `list` print it)
    pub(crate) id: TaskId,
}

/// `schedules` and its subcommands.
#[derive(Debug, Args)]
pub(crate) struct SchedulesArgs {
    #[command(subcommand)]
    pub(crate) action: Option<ScheduleCommand>,
}

/// What to do to one schedule.
#[derive(Debug, Subcommand)]
pub(crate) enum ScheduleCommand {
    /// Pause a schedule (durably): it queues nothing until resumed
    Pause(ScheduleNameArgs),
    /// Resume a paused schedule from its next fire time (times passed while paused are not
    /// caught up)
    Resume(ScheduleNameArgs),
    /// Queue the schedule's task once, now
    Trigger(ScheduleNameArgs),
    /// Delete a schedule (the tasks it queued stay)
    Remove(ScheduleNameArgs),
}

/// A command that takes one schedule name.
#[derive(Debug, Args)]
pub(crate) struct ScheduleNameArgs {
    /// The schedule
    pub(crate) name: String,
}

/// A command that takes one queue name.
#[derive(Debug, Args)]
pub(crate) struct QueueArgs {
    /// The queue
    #[arg(value_parser = parse_queue)]
    pub(crate) queue: String,
}

/// `limit` flags.
#[derive(Debug, Args)]
pub(crate) struct LimitArgs {
    /// The queue
    #[arg(value_parser = parse_queue)]
    pub(crate) queue: String,
    /// Most tasks of the queue running at once, across every worker (at least 1)
    #[arg(long, value_name = "N")]
    pub(crate) concurrency: Option<u32>,
    /// Most starts per period, spread evenly: `100/1m`, `50/s`
    #[arg(long, value_name = "STARTS/PERIOD", value_parser = parse_rate)]
    pub(crate) rate: Option<crate::config::Rate>,
}

fn parse_rate(text: &str) -> Result<crate::config::Rate, String> {
    text.parse()
}

/// `wait` flags.
#[derive(Debug, Args)]
pub(crate) struct WaitArgs {
    /// The task's id (a UUID, as `enqueue` and `list` print it)
    pub(crate) id: TaskId,
    /// How long to wait for the outcome ("30s", "5m"); the task is left alone when it passes
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_positive_duration)]
    pub(crate) timeout: Duration,
}

/// `retry` flags: one task, or every failed one.
#[derive(Debug, Args)]
#[group(id = "what", required = true, args = ["id", "failed"])]
pub(crate) struct RetryArgs {
    /// The task to retry
    pub(crate) id: Option<TaskId>,
    /// Retry every FAILED task instead (of --queue only, if given)
    #[arg(long, conflicts_with = "id")]
    pub(crate) failed: bool,
    /// With --failed: only this queue
    #[arg(long, value_name = "QUEUE", requires = "failed")]
    pub(crate) queue: Option<String>,
}

/// `purge` flags.
#[derive(Debug, Args)]
pub(crate) struct PurgeArgs {
    /// The queue to purge
    #[arg(long, value_name = "QUEUE")]
    pub(crate) queue: String,
    /// Only tasks with this status (not running)
    #[arg(long, value_name = "STATUS")]
    pub(crate) status: Option<TaskStatus>,
    /// Confirm: the tasks are deleted for good
    #[arg(long)]
    pub(crate) yes: bool,
}

/// `demo` flags.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Keep the demo's store in this folder (default: a temporary folder, removed afterwards)
    #[arg(long, value_name = "PATH")]
    pub(crate) dir: Option<PathBuf>,
}

/// `bench` flags.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Tasks per phase
    #[arg(long, value_name = "N", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub(crate) tasks: u64,
    /// Concurrent producers in the concurrent-enqueue phase
    #[arg(long, value_name = "P", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=10_000))]
    pub(crate) producers: u16,
    /// Worker concurrency in the drain and mixed phases
    #[arg(long, value_name = "C", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=10_000))]
    pub(crate) concurrency: u16,
    /// Payload size of each task, in bytes
    #[arg(long, value_name = "BYTES", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) payload: u32,
    /// Give each task of the enqueue phases (so of the drain) a unique key of its own, to
    /// measure what unique tasks cost against a run without
    #[arg(long)]
    pub(crate) unique: bool,
    /// Measure only what metrics cost: the concurrent-enqueue and drain phases, 3 times with
    /// metrics on and 3 times off, alternating; prints each side's median and the difference
    #[arg(long)]
    pub(crate) metrics_cost: bool,
}

/// A JSON array given as one flag value (clap would take a bare `Vec` for repeated flags).
#[derive(Debug, Clone)]
pub(crate) struct JsonArray(pub(crate) Vec<Value>);

/// `--kwargs`: a JSON object.
fn parse_kwargs(text: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(kwargs)) => Ok(kwargs),
        Ok(other) => Err(format!(
            "expected a JSON object such as '{{\"to\": \"ada@example.com\"}}', got {}",
            crate::Payload::kind_of(&other)
        )),
        Err(error) => Err(format!("not valid JSON: {error}")),
    }
}

/// `--args`: a JSON array.
fn parse_args(text: &str) -> Result<JsonArray, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(args)) => Ok(JsonArray(args)),
        Ok(other) => Err(format!(
            "expected a JSON array such as '[\"ada@example.com\", 3]', got {}",
            crate::Payload::kind_of(&other)
        )),
        Err(error) => Err(format!("not valid JSON: {error}")),
    }
}

/// A duration: `"90s"`, `"1h30m"`, or whole seconds.
fn parse_duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|error| error.to_string())
}

/// A duration greater than zero.
fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration_arg(text)?;
    if duration.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    Ok(duration)
}

/// A queue name, checked before anything is opened or announced.
fn parse_queue(text: &str) -> Result<String, String> {
    check_name(text).map_err(|problem| format!("queue {problem}"))?;
    Ok(text.to_owned())
}

/// A duration up to one day, the bound `worker.shutdown_timeout` and `worker.lock_wait` have
/// in the configuration.
fn parse_worker_wait(text: &str) -> Result<Duration, String> {
    let duration = parse_duration_arg(text)?;
    if duration > MAX_WORKER_WAIT {
        return Err(format!(
            "must be at most {}, as in the configuration's worker section",
            format_duration(MAX_WORKER_WAIT, DurationStyle::Exact)
        ));
    }
    Ok(duration)
}

/// A duration greater than zero and up to one day, as `worker.polling_interval`.
fn parse_worker_interval(text: &str) -> Result<Duration, String> {
    let duration = parse_positive_duration(text)?;
    if duration > MAX_WORKER_WAIT {
        return Err(format!(
            "must be at most {}, as worker.polling_interval",
            format_duration(MAX_WORKER_WAIT, DurationStyle::Exact)
        ));
    }
    Ok(duration)
}

/// An RFC 3339 time, converted to UTC.
fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text.trim())
        .map(|time| time.with_timezone(&Utc))
        .map_err(|error| {
            format!("expected an RFC 3339 time such as 2030-06-01T09:30:00Z ({error})")
        })
}

/// A TCP address for `serve --listen`.
fn parse_listen_arg(text: &str) -> Result<SocketAddr, String> {
    parse_listen(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flag_values_are_checked() {
        assert_eq!(parse_kwargs(r#"{"a": 1}"#).unwrap()["a"], 1);
        assert!(parse_kwargs("[1]").unwrap_err().contains("got an array"));
        assert!(parse_kwargs("{bad").unwrap_err().contains("not valid JSON"));
        assert_eq!(parse_args("[1, 2]").unwrap().0.len(), 2);
        assert!(parse_args("{}").unwrap_err().contains("got an object"));
        assert_eq!(
            parse_duration_arg("1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert!(parse_positive_duration("0s").is_err());
        assert_eq!(
            parse_time("2030-06-01T11:30:00+02:00")
                .unwrap()
                .to_rfc3339(),
            "2030-06-01T09:30:00+00:00"
        );
        assert!(parse_time("tomorrow").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn global_flags_go_anywhere_and_retry_needs_a_target() {
        let cli = Cli::try_parse_from(["fq", "list", "--json", "--db", "x.redb"]).unwrap();
        assert!(cli.global.json);
        assert_eq!(cli.global.db, Some(PathBuf::from("x.redb")));
        assert!(Cli::try_parse_from(["fq", "retry"]).is_err());
        assert!(Cli::try_parse_from(["fq", "retry", "--queue", "q"]).is_err());
        let cli = Cli::try_parse_from(["fq", "retry", "--failed", "--queue", "q"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Retry(RetryArgs { failed: true, .. })
        ));
        let cli = Cli::try_parse_from([
            "fq",
            "enqueue",
            "t",
            "--priority",
            "-5",
            "--args",
            "[1]",
            "--kwargs",
            "{}",
        ])
        .unwrap();
        let Command::Enqueue(args) = cli.command else {
            panic!("not enqueue: {:?}", cli.command)
        };
        assert_eq!(args.priority, Some(-5));
        assert_eq!(args.args.unwrap().0, [Value::from(1)]);
        assert_eq!(args.kwargs.unwrap().len(), 0);
    }
}
