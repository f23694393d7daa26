//! `fq stats`: task counts per queue, as a table or as the `Stats` JSON. With `broker:
//! rabbitmq`, a second table puts the local outbox beside RabbitMQ's own queue depths and
//! consumer counts.

use std::fmt::Write as _;

use crate::cli::error::CliError;
use crate::cli::output::stats_table;
use crate::cli::{Context, Store};
use crate::{RabbitStats, Stats};

/// Prints the stats of the store.
pub(crate) async fn run(ctx: &Context) -> Result<(), CliError> {
    let engine = ctx.engine(Store::ReadOnly).await?;
    let stats = engine.stats().await?;
    let out = ctx.out();
    if out.is_json() {
        out.document(&stats)
    } else {
        let mut text = stats_table(&stats);
        if let Some(rabbit) = &stats.rabbitmq {
            text.push_str("\n\n");
            text.push_str(&rabbit_table(&stats, rabbit));
        }
        if let Some(reason) = &stats.writes_refused {
            let _ = write!(
                text,
                "\n\nWRITES REFUSED: {reason} (the engine retries its store by itself)"
            );
        }
        out.text(&text)
    }
}

fn count(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_owned(), |n| n.to_string())
}

/// The RabbitMQ table: per queue, what waits locally (the outbox: due, being forwarded or
/// scheduled; the table above splits it), what was forwarded, and what RabbitMQ holds (ready
/// messages, consumers, dead letters).
fn rabbit_table(stats: &Stats, rabbit: &RabbitStats) -> String {
    let state = if rabbit.connected {
        "connected".to_owned()
    } else {
        "not connected".to_owned()
    };
    let mut text = format!("RabbitMQ {} ({state})", rabbit.endpoint);
    if let Some(error) = &rabbit.error {
        let _ = write!(text, "\n{error}");
    }
    let header = [
        "QUEUE",
        "OUTBOX",
        "FORWARDED",
        "RABBITMQ READY",
        "CONSUMERS",
        "DEAD",
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    for (queue, depth) in &rabbit.queues {
        let local = stats.queues.get(queue).copied().unwrap_or_default();
        rows.push(vec![
            queue.clone(),
            (local.pending + local.retrying).to_string(),
            local.forwarded.to_string(),
            count(depth.messages),
            count(depth.consumers),
            count(depth.dead),
        ]);
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(&rows) {
        text.push('\n');
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            let width = widths[column];
            if column == 0 {
                let _ = write!(line, "{cell:<width$}");
            } else {
                let _ = write!(line, "  {cell:>width$}");
            }
        }
        text.push_str(line.trim_end());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{QueueStats, RabbitQueueStats};

    #[test]
    fn the_rabbitmq_table_sits_beside_the_outbox() {
        let mut stats = Stats::default();
        stats.queues.insert(
            "emails".into(),
            QueueStats {
                ready: 3,
                pending: 3,
                forwarded: 120,
                ..QueueStats::default()
            },
        );
        let mut rabbit = RabbitStats {
            endpoint: "amqp://guest@127.0.0.1:5672/%2f".into(),
            connected: true,
            ..RabbitStats::default()
        };
        rabbit.queues.insert(
            "emails".into(),
            RabbitQueueStats {
                messages: Some(17),
                consumers: Some(2),
                dead: Some(1),
            },
        );
        rabbit
            .queues
            .insert("other".into(), RabbitQueueStats::default());
        let text = rabbit_table(&stats, &rabbit);
        assert!(text.starts_with("RabbitMQ amqp://guest@127.0.0.1:5672/%2f (connected)"));
        let emails = text.lines().find(|l| l.starts_with("emails")).unwrap();
        let cells: Vec<&str> = emails.split_whitespace().collect();
        assert_eq!(cells, ["emails", "3", "120", "17", "2", "1"]);
        let other = text.lines().find(|l| l.starts_with("other")).unwrap();
        let cells: Vec<&str> = other.split_whitespace().collect();
        assert_eq!(cells, ["other", "0", "0", "-", "-", "-"]);
    }
}
