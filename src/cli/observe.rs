//! The text the CLI prints for what the engine tells about tasks and workers: the attempt
//! table of `fq show`, the tables of `fq workers` and the sentences of `fq why`. Strings from
//! tasks and workers (errors, names, hosts) are untrusted: control characters are replaced so
//! they cannot move the cursor or forge lines. Formatting only: no engine calls.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::output::{Table, format_millis, format_time, relative, shorten};
use crate::{AttemptRecord, Explanation, WorkersReport};

/// `text` on one line, control characters shown as `?`.
pub(crate) fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The attempt history of `fq show`: one row per attempt, oldest first.
pub(crate) fn attempt_table(history: &[AttemptRecord]) -> String {
    let mut table = Table::new(&[
        ("#", true),
        ("STARTED", false),
        ("DURATION", true),
        ("WORKER", false),
        ("OUTCOME", false),
        ("ERROR", false),
    ]);
    for attempt in history {
        table.row(vec![
            attempt.attempt.to_string(),
            format_time(attempt.started_at),
            format_millis(attempt.duration_ms),
            attempt
                .worker
                .map_or_else(|| "-".to_owned(), |w| short_worker(&w.to_string())),
            attempt.outcome.as_str().to_owned(),
            attempt.error.as_ref().map_or_else(String::new, |e| {
                shorten(&one_line(&format!("{}: {}", e.kind, e.message)), 70)
            }),
        ]);
    }
    table.render()
}

/// The last 12 hex digits of a worker id (its random part), as `short_id` does for tasks.
fn short_worker(id: &str) -> String {
    id.get(id.len().saturating_sub(12)..)
        .unwrap_or(id)
        .to_owned()
}

/// `fq workers`: the live workers, then those gone in the last hour.
pub(crate) fn workers_text(report: &WorkersReport, now: DateTime<Utc>) -> String {
    let mut text = String::new();
    if report.live.is_empty() {
        text.push_str("no live workers\n");
    } else {
        let mut table = Table::new(&[
            ("WORKER", false),
            ("HOST", false),
            ("PID", true),
            ("QUEUES", false),
            ("SLOTS", true),
            ("RUNNING", true),
            ("DONE", true),
            ("FAILED", true),
            ("VERSION", false),
            ("STARTED", false),
            ("SEEN", false),
        ]);
        for worker in &report.live {
            table.row(vec![
                worker.info.id.to_string(),
                shorten(&one_line(&worker.info.host), 30),
                worker.info.pid.to_string(),
                shorten(&one_line(&worker.info.queues.join(",")), 40),
                worker.info.concurrency.to_string(),
                worker.running.len().to_string(),
                worker.completed.to_string(),
                worker.failed.to_string(),
                shorten(&one_line(&worker.info.version), 20),
                format_time(worker.info.started_at),
                relative(worker.last_seen, now),
            ]);
        }
        text.push_str(&table.render());
        text.push('\n');
        let running: Vec<_> = report
            .live
            .iter()
            .flat_map(|w| w.running.iter().map(move |r| (w, r)))
            .collect();
        if !running.is_empty() {
            text.push_str("\nrunning:\n");
            let mut table = Table::new(&[
                ("WORKER", false),
                ("TASK", false),
                ("ATTEMPT", true),
                ("SINCE", false),
            ]);
            for (worker, run) in running {
                table.row(vec![
                    short_worker(&worker.info.id.to_string()),
                    run.id.to_string(),
                    run.attempt.to_string(),
                    relative(run.since, now),
                ]);
            }
            text.push_str(&table.render());
            text.push('\n');
        }
    }
    if !report.gone.is_empty() {
        text.push_str("\ngone in the last hour:\n");
        let mut table = Table::new(&[
            ("WORKER", false),
            ("HOST", false),
            ("PID", true),
            ("QUEUES", false),
            ("WHY", false),
            ("GONE", false),
            ("DONE", true),
            ("FAILED", true),
        ]);
        for worker in &report.gone {
            table.row(vec![
                worker.info.id.to_string(),
                shorten(&one_line(&worker.info.host), 30),
                worker.info.pid.to_string(),
                shorten(&one_line(&worker.info.queues.join(",")), 40),
                worker.why.as_str().to_owned(),
                relative(worker.gone_at, now),
                worker.completed.to_string(),
                worker.failed.to_string(),
            ]);
        }
        text.push_str(&table.render());
        text.push('\n');
    }
    text.pop();
    text
}

/// `fq why`: the explanation's sentences, one per line.
pub(crate) fn why_text(explanation: &Explanation) -> String {
    let mut text = String::new();
    for sentence in &explanation.sentences {
        let _ = writeln!(text, "{}", one_line(sentence));
    }
    text.pop();
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_text_stays_on_one_line() {
        assert_eq!(one_line("a\nb\u{1b}[2J"), "a?b?[2J");
    }
}
