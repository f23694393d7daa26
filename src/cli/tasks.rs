//! The built-in demo tasks (`fq.demo.*`): what the plain `fq` binary's worker runs and what
//! `fq demo` queues. They stand in for real work with short sleeps and never touch anything
//! outside their arguments.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::{Registry, TaskContext, TaskError};

/// `fq.demo.send_email {to, subject}`: "sends" an e-mail (about 120 ms).
pub(crate) const SEND_EMAIL: &str = "fq.demo.send_email";
/// `fq.demo.resize_image {path, width}`: a blocking function on the blocking pool (about 80 ms).
pub(crate) const RESIZE_IMAGE: &str = "fq.demo.resize_image";
/// `fq.demo.generate_report {kind}`: a slower job (about 200 ms).
pub(crate) const GENERATE_REPORT: &str = "fq.demo.generate_report";
/// `fq.demo.flaky {fail_times}`: fails its first `fail_times` runs, then succeeds.
pub(crate) const FLAKY: &str = "fq.demo.flaky";
/// `fq.demo.fail {reason}`: always fails (retryably), so it ends FAILED once retries are spent.
pub(crate) const FAIL: &str = "fq.demo.fail";
/// `fq.demo.echo`: returns its arguments (positional, or keyword) as its result.
pub(crate) const ECHO: &str = "fq.demo.echo";
/// `fq.demo.sleep {ms}`: sleeps, then returns how long it slept; for trying timeouts and
/// graceful shutdown.
pub(crate) const SLEEP: &str = "fq.demo.sleep";

#[derive(Deserialize)]
struct SendEmail {
    to: String,
    #[serde(default)]
    subject: String,
}

#[derive(Deserialize)]
struct ResizeImage {
    path: String,
    width: u32,
}

#[derive(Deserialize)]
struct GenerateReport {
    kind: String,
}

#[derive(Deserialize)]
struct Flaky {
    fail_times: u32,
}

#[derive(Deserialize)]
struct Fail {
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
struct Sleep {
    ms: u64,
}

/// A registry of the built-in demo tasks, `fq.demo.*`: `send_email {to, subject}`,
/// `resize_image {path, width}`, `generate_report {kind}`, `flaky {fail_times}` (fails its
/// first runs, then succeeds), `fail {reason}` (always fails), `echo` (returns its arguments)
/// and `sleep {ms}`.
///
/// The plain `fq` binary runs its CLI with this registry; an application passes its own to
/// [`crate::cli::run`], and may add these to it with [`register_demo_tasks`].
pub fn demo_registry() -> Registry {
    let mut registry = Registry::new();
    register_demo_tasks(&mut registry);
    registry
}

/// Adds the built-in demo tasks (see [`demo_registry`]) to `registry`.
pub fn register_demo_tasks(registry: &mut Registry) -> &mut Registry {
    registry
        .register_async(
            SEND_EMAIL,
            |args: SendEmail, _ctx: TaskContext| async move {
                tokio::time::sleep(Duration::from_millis(120)).await;
                Ok::<_, TaskError>(
                    json!({"status": "sent", "recipient": args.to, "subject": args.subject}),
                )
            },
        )
        .register_fn(RESIZE_IMAGE, |args: ResizeImage| {
            std::thread::sleep(Duration::from_millis(80));
            let stem = args
                .path
                .rsplit_once('.')
                .map_or(args.path.as_str(), |(stem, _)| stem);
            Ok::<_, TaskError>(json!({
                "source": args.path,
                "thumbnail": format!("{stem}_{}w.jpg", args.width),
                "width": args.width,
            }))
        })
        .register_async(
            GENERATE_REPORT,
            |args: GenerateReport, _ctx: TaskContext| async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok::<_, TaskError>(json!({"report": args.kind, "rows": 42}))
            },
        )
        .register_async(FLAKY, |args: Flaky, ctx: TaskContext| async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            if ctx.attempt() <= args.fail_times {
                return Err(TaskError::new(format!(
                    "upstream timed out (run {} of the {} that fail)",
                    ctx.attempt(),
                    args.fail_times
                )));
            }
            Ok(json!({"status": "ok", "succeeded_on_run": ctx.attempt()}))
        })
        .register_async(FAIL, |args: Fail, _ctx: TaskContext| async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            Err::<Value, _>(TaskError::new(
                args.reason
                    .unwrap_or_else(|| "this task always fails".to_owned()),
            ))
        })
        .register_async(ECHO, |args: Value, _ctx: TaskContext| async move {
            Ok::<_, TaskError>(args)
        })
        .register_async(SLEEP, |args: Sleep, _ctx: TaskContext| async move {
            tokio::time::sleep(Duration::from_millis(args.ms)).await;
            Ok::<_, TaskError>(json!({"slept_ms": args.ms}))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_demo_task_is_registered_under_fq_demo() {
        let registry = demo_registry();
        let names = registry.names();
        assert_eq!(names.len(), 7);
        for name in [
            SEND_EMAIL,
            RESIZE_IMAGE,
            GENERATE_REPORT,
            FLAKY,
            FAIL,
            ECHO,
            SLEEP,
        ] {
            assert!(registry.contains(name), "{name}");
            assert!(name.starts_with("fq.demo."));
        }
    }
}
