//! What the CLI prints: human tables and lines on stdout by default, JSON with `--json` (one
//! pretty document per command, one compact object per line for streams), progress bars on
//! stderr. Field names in JSON are the records' own (`TaskRecord`, `Stats`, ...).

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::{Value, json};

use super::error::CliError;
use crate::config::{DurationStyle, format_duration};
use crate::{Event, EventKind, QueueStats, Stats, TaskRecord, TaskStatus};

/// Where and how a command prints.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    json: bool,
}

impl Output {
    /// Human text, or JSON when `json`.
    pub(crate) fn new(json: bool) -> Self {
        Self { json }
    }

    /// True with `--json`.
    pub(crate) fn is_json(self) -> bool {
        self.json
    }

    /// Prints text (a line break is added) on stdout.
    pub(crate) fn text(self, text: &str) -> Result<(), CliError> {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{text}")?;
        stdout.flush()?;
        Ok(())
    }

    /// Prints one pretty JSON document on stdout.
    pub(crate) fn document<T: Serialize + ?Sized>(self, value: &T) -> Result<(), CliError> {
        self.text(&serde_json::to_string_pretty(value)?)
    }

    /// Prints one compact JSON object on a line of its own, for streams.
    pub(crate) fn json_line<T: Serialize + ?Sized>(self, value: &T) -> Result<(), CliError> {
        self.text(&serde_json::to_string(value)?)
    }

    /// A spinner on stderr for work whose size is unknown; hidden with `--json` or when stderr
    /// is not a terminal.
    pub(crate) fn spinner(self, message: impl Into<String>) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(None, self.draw_target());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(message.into());
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    }

    /// A bar on stderr counting up to `len`; hidden like [`Output::spinner`].
    pub(crate) fn bar(self, len: u64, message: impl Into<String>) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(Some(len), self.draw_target());
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed}")
                .map(|style| style.progress_chars("=> "))
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(message.into());
        bar
    }

    fn draw_target(self) -> ProgressDrawTarget {
        // indicatif draws to stderr only when it is a terminal.
        if self.json {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        }
    }
}

/// A text table with a header row; numbers align right.
#[derive(Debug, Default)]
pub(crate) struct Table {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(columns: &[(&'static str, bool)]) -> Self {
        Self {
            headers: columns.iter().map(|(name, _)| *name).collect(),
            right: columns.iter().map(|(_, right)| *right).collect(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut text = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                let width = widths.get(column).copied().unwrap_or(0);
                if column > 0 {
                    line.push_str("  ");
                }
                if self.right.get(column).copied().unwrap_or(false) {
                    let _ = write!(line, "{cell:>width$}");
                } else {
                    let _ = write!(line, "{cell:<width$}");
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text.pop();
        text
    }
}

/// The `stats` table: one row per queue, and a total row when there are several.
pub(crate) fn stats_table(stats: &Stats) -> String {
    if stats.queues.is_empty() {
        return "no tasks".to_owned();
    }
    let mut table = Table::new(&[
        ("QUEUE", false),
        ("READY", true),
        ("SCHEDULED", true),
        ("RUNNING", true),
        ("RETRYING", true),
        ("COMPLETED", true),
        ("FAILED", true),
        ("CANCELLED", true),
        ("OLDEST WAITING", true),
        ("DONE/MIN", true),
    ]);
    let mut total = QueueStats::default();
    for (name, queue) in &stats.queues {
        table.row(stats_row(name, queue));
        total.ready += queue.ready;
        total.scheduled += queue.scheduled;
        total.running += queue.running;
        total.retrying += queue.retrying;
        total.completed += queue.completed;
        total.failed += queue.failed;
        total.cancelled += queue.cancelled;
        total.completed_last_minute += queue.completed_last_minute;
        total.oldest_ready_ms = total.oldest_ready_ms.max(queue.oldest_ready_ms);
    }
    if stats.queues.len() > 1 {
        table.row(stats_row("(all)", &total));
    }
    table.render()
}

fn stats_row(name: &str, queue: &QueueStats) -> Vec<String> {
    let mut marks = Vec::new();
    if queue.paused {
        marks.push("paused".to_owned());
    }
    if let Some(concurrency) = queue.limits.concurrency {
        marks.push(format!("concurrency {concurrency}"));
    }
    if let Some(rate) = queue.limits.rate {
        marks.push(format!("rate {rate}"));
    }
    vec![
        if marks.is_empty() {
            name.to_owned()
        } else {
            format!("{name} ({})", marks.join(", "))
        },
        queue.ready.to_string(),
        queue.scheduled.to_string(),
        queue.running.to_string(),
        queue.retrying.to_string(),
        queue.completed.to_string(),
        queue.failed.to_string(),
        queue.cancelled.to_string(),
        queue
            .oldest_ready_ms
            .map_or_else(|| "-".to_owned(), format_millis),
        queue.completed_last_minute.to_string(),
    ]
}

/// The `list` table: one row per task.
pub(crate) fn task_table(records: &[TaskRecord], now: DateTime<Utc>) -> String {
    let mut table = Table::new(&[
        ("ID", false),
        ("STATUS", false),
        ("QUEUE", false),
        ("PRIORITY", true),
        ("RUNS", true),
        ("NAME", false),
        ("CREATED", false),
        ("NOTE", false),
    ]);
    for record in records {
        table.row(vec![
            record.id.to_string(),
            record.status.as_str().to_owned(),
            record.queue.clone(),
            record.priority.to_string(),
            format!(
                "{}/{}",
                record.attempts,
                record.max_retries.saturating_add(1)
            ),
            record.name.clone(),
            format_time(record.created_at),
            shorten(&note(record, now), 60),
        ]);
    }
    table.render()
}

/// The `schedules` table: one row per schedule.
pub(crate) fn schedule_table(schedules: &[crate::ScheduleInfo], now: DateTime<Utc>) -> String {
    let mut table = Table::new(&[
        ("NAME", false),
        ("SPEC", false),
        ("ZONE", false),
        ("NEXT FIRE", false),
        ("LAST FIRE", false),
        ("LAST TASK", false),
        ("STATUS", false),
        ("STATE", false),
    ]);
    let time = |at: Option<DateTime<Utc>>| {
        at.map_or_else(
            || "-".to_owned(),
            |at| format!("{} ({})", format_time(at), relative(at, now)),
        )
    };
    for schedule in schedules {
        let state = if schedule.orphaned {
            "orphaned"
        } else if schedule.paused {
            "paused"
        } else {
            "active"
        };
        table.row(vec![
            schedule.name.clone(),
            schedule.spec.clone(),
            schedule.zone.clone(),
            time(schedule.next_fire),
            time(schedule.last_fire),
            schedule
                .last_task
                .map_or_else(|| "-".to_owned(), |id| id.to_string()),
            schedule
                .last_status
                .map_or_else(|| "-".to_owned(), |status| status.as_str().to_owned()),
            state.to_owned(),
        ]);
    }
    table.render()
}

/// What a table says about a task besides its fields: its error, or when it runs.
fn note(record: &TaskRecord, now: DateTime<Utc>) -> String {
    match record.status {
        TaskStatus::Failed | TaskStatus::Retrying if record.error.is_some() => {
            let error = record.error.as_ref().map(ToString::to_string);
            let mut note = error.unwrap_or_default();
            if record.status == TaskStatus::Retrying {
                let when = if record.due_at > now {
                    format!("next run {}", relative(record.due_at, now))
                } else {
                    "due again".to_owned()
                };
                note = format!("{when}; {note}");
            }
            note
        }
        TaskStatus::Pending if record.due_at > now => {
            format!("runs {}", relative(record.due_at, now))
        }
        _ => String::new(),
    }
}

/// Every field of one task, one per line.
pub(crate) fn task_details(record: &TaskRecord, now: DateTime<Utc>) -> String {
    let mut text = String::new();
    let mut field = |name: &str, value: String| {
        let _ = writeln!(text, "{name:<13}{value}");
    };
    field("id", record.id.to_string());
    field("name", record.name.clone());
    field("queue", record.queue.clone());
    field("priority", record.priority.to_string());
    field("status", record.status.as_str().to_owned());
    field(
        "attempts",
        format!(
            "{} of {} (max_retries {})",
            record.attempts,
            record.max_retries.saturating_add(1),
            record.max_retries
        ),
    );
    if let Some(timeout) = record.timeout {
        field("timeout", format_duration(timeout, DurationStyle::Short));
    }
    if let Some(key) = &record.unique_key {
        let held = match record.unique_for {
            Some(period) => format!(
                "held until finished, and {} after creation",
                format_duration(period, DurationStyle::Short)
            ),
            None => "held until finished".to_owned(),
        };
        field("unique_key", format!("{key:?} ({held})"));
    }
    field("payload", record.payload.to_string());
    field("created_at", timestamp(record.created_at, now));
    field("scheduled_at", timestamp(record.scheduled_at, now));
    if record.status.is_waiting() {
        field("due_at", timestamp(record.due_at, now));
    }
    if let Some(started) = record.started_at {
        field("started_at", timestamp(started, now));
    }
    if let Some(finished) = record.finished_at {
        field("finished_at", timestamp(finished, now));
    }
    if let Some(by) = &record.cancelled_by {
        field("cancelled_by", by.clone());
    }
    if let Some(result) = &record.result {
        field("result", result.to_string());
    }
    if let Some(error) = &record.error {
        field("error", error.to_string());
    }
    text.pop();
    text
}

/// A lifecycle event as a JSON line: its name, time, the task's record, and what the event adds.
pub(crate) fn event_json(event: &Event) -> Value {
    json!({
        "event": event.name(),
        "at": event.at,
        "task": event.task,
        "result": event.result,
        "error": event.error,
        "retry_at": event.retry_at,
    })
}

/// A lifecycle event as one human line: what happened to which task, and what it adds.
pub(crate) fn event_line(event: &Event) -> String {
    let task = &event.task;
    let detail = match event.kind {
        EventKind::Queued => {
            let mut detail = format!("queue {}, priority {}", task.queue, task.priority);
            if task.due_at > event.at {
                let _ = write!(detail, ", runs {}", relative(task.due_at, event.at));
            }
            detail
        }
        EventKind::BeforeExecution => format!(
            "attempt {} of {}",
            task.attempts,
            task.max_retries.saturating_add(1)
        ),
        EventKind::AfterExecution => format!(
            "result {}",
            shorten(
                &event
                    .result
                    .as_ref()
                    .map_or(Value::Null, Clone::clone)
                    .to_string(),
                70
            )
        ),
        EventKind::Retrying => {
            let when = event
                .retry_at
                .map_or_else(String::new, |at| format!(" {}", relative(at, event.at)));
            format!("runs again{when}")
        }
        _ => event
            .error
            .as_ref()
            .map_or_else(String::new, ToString::to_string),
    };
    let line = format!(
        "{:<28}  {}  {:<24}  {detail}",
        event.name(),
        short_id(task),
        task.name
    );
    line.trim_end().to_owned()
}

/// The last 12 hex digits of a task id: the random part of a UUID v7, enough to tell tasks
/// apart on screen.
pub(crate) fn short_id(task: &TaskRecord) -> String {
    let text = task.id.to_string();
    text.get(text.len().saturating_sub(12)..)
        .unwrap_or(&text)
        .to_owned()
}

/// A duration in whole milliseconds, for JSON fields and progress counts (`u64::MAX` past it).
pub(crate) fn whole_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `2030-06-01 09:30:00` (UTC).
pub(crate) fn format_time(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// RFC 3339 with milliseconds, and how long ago or ahead that is.
fn timestamp(time: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!(
        "{} ({})",
        time.to_rfc3339_opts(SecondsFormat::Millis, true),
        relative(time, now)
    )
}

/// `in 5s`, `3m 2s ago`, `now`.
pub(crate) fn relative(time: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let delta = time.signed_duration_since(now).num_milliseconds();
    let magnitude = delta.unsigned_abs();
    if magnitude < 10 {
        "now".to_owned()
    } else if delta > 0 {
        format!("in {}", format_millis(magnitude))
    } else {
        format!("{} ago", format_millis(magnitude))
    }
}

/// Milliseconds, short: `750ms`, `4.2s`, `3m 5s`, `2h 10m`, `3d 4h`.
pub(crate) fn format_millis(ms: u64) -> String {
    format_duration(Duration::from_millis(ms), DurationStyle::Short)
}

/// `text` cut to `max` characters, with an ellipsis when cut.
pub(crate) fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(3)).collect();
    cut.push_str("...");
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_short() {
        assert_eq!(format_millis(750), "750ms");
        assert_eq!(format_millis(4_250), "4.2s");
        assert_eq!(format_millis(185_000), "3m 5s");
        assert_eq!(format_millis(7_800_000), "2h 10m");
        assert_eq!(format_millis(3 * 86_400_000 + 4 * 3_600_000), "3d 4h");
        let now = Utc::now();
        assert_eq!(relative(now, now), "now");
        assert_eq!(relative(now + chrono::TimeDelta::seconds(5), now), "in 5s");
        assert_eq!(format_millis(30_000), "30s");
        assert_eq!(format_millis(86_400_000), "1d");
        assert_eq!(format_millis(7_200_000), "2h");
        assert_eq!(
            relative(now - chrono::TimeDelta::seconds(90), now),
            "1m 30s ago"
        );
    }

    #[test]
    fn tables_align_and_total() {
        let mut stats = Stats::default();
        stats.queues.insert(
            "default".into(),
            QueueStats {
                ready: 12,
                completed: 3,
                oldest_ready_ms: Some(1_500),
                ..QueueStats::default()
            },
        );
        stats.queues.insert(
            "urgent".into(),
            QueueStats {
                failed: 1,
                ..QueueStats::default()
            },
        );
        let table = stats_table(&stats);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].starts_with("QUEUE    READY  SCHEDULED"), "{table}");
        assert!(lines[1].starts_with("default     12"), "{table}");
        assert!(lines[1].contains("1.5s"), "{table}");
        assert!(lines[3].starts_with("(all)       12"), "{table}");
        assert_eq!(stats_table(&Stats::default()), "no tasks");
        assert_eq!(shorten("abcdefgh", 6), "abc...");
    }
}
