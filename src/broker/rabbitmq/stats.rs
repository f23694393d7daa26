//! RabbitMQ's side of `stats`: each queue's ready messages, consumers and dead letters,
//! counted through passive declarations, for a serving bridge (its own connection) and for a
//! store opened read-only (one short connection per call).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::RabbitError;
use super::bridge::RabbitSettings;
use super::link::{Link, Session, Target};
use super::topology::{dead_queue, queue_counts};
use crate::broker::{RabbitQueueStats, RabbitStats};

/// How long `stats` waits for RabbitMQ's queue counts.
const STATS_TIMEOUT: Duration = Duration::from_secs(5);

/// Stats naming `queues`, with no numbers yet.
pub(super) fn empty_stats(target: &Target, queues: &BTreeSet<String>) -> RabbitStats {
    RabbitStats {
        endpoint: target.endpoint.clone(),
        connected: false,
        error: None,
        queues: queues
            .iter()
            .map(|q| (q.clone(), RabbitQueueStats::default()))
            .collect(),
    }
}

/// Fills in RabbitMQ's counts of each of `queues` and its dead-letter queue. Each is declared
/// first (as every connection does for the queues its tasks use), so the passive declarations
/// that count find them: a missing queue would close the channel with an error in lapin's
/// log. A conflicting queue (`on_conflict` hears of it) still exists and is counted.
async fn count_queues(
    session: &Session,
    queues: &BTreeSet<String>,
    stats: &mut RabbitStats,
    on_conflict: impl Fn(&str, &RabbitError),
) -> Result<(), RabbitError> {
    for queue in queues {
        if let Err(error) = session.ensure_queue(queue).await {
            on_conflict(queue, &error);
        }
    }
    let mut channel = None;
    for queue in queues {
        for (name, dead) in [(queue.clone(), false), (dead_queue(queue), true)] {
            let open = match channel.take() {
                Some(open) => open,
                None => session.open_channel("open a channel").await?,
            };
            let counts = queue_counts(&open, &name).await;
            // A passive declaration of a missing queue closes the channel.
            if matches!(counts, Ok(Some(_))) {
                channel = Some(open);
            }
            let entry = stats.queues.entry(queue.clone()).or_default();
            match counts? {
                Some((messages, _)) if dead => entry.dead = Some(messages),
                Some((messages, consumers)) => {
                    entry.messages = Some(messages);
                    entry.consumers = Some(consumers);
                }
                None => {}
            }
        }
    }
    // Closed here rather than dropped: a channel dropped open is closed by lapin in the
    // background, racing the connection's own close when a one-shot command ends (lapin then
    // logs "invalid connection state" errors).
    if let Some(open) = channel {
        let _ = open.close(200, "fq stats done".into()).await;
    }
    Ok(())
}

/// Counts `queues` into `stats` ([`count_queues`]) within [`STATS_TIMEOUT`], and records why
/// counting stopped short, if it did.
pub(super) async fn count_within(
    session: &Session,
    queues: &BTreeSet<String>,
    stats: &mut RabbitStats,
    on_conflict: impl Fn(&str, &RabbitError),
) {
    let counted = tokio::time::timeout(
        STATS_TIMEOUT,
        count_queues(session, queues, stats, on_conflict),
    )
    .await;
    match counted {
        Ok(Ok(())) => {}
        Ok(Err(error)) => stats.error = Some(error.to_string()),
        Err(_) => {
            stats.error = Some(format!("RabbitMQ did not answer within {STATS_TIMEOUT:?}"));
        }
    }
}

/// RabbitMQ's depths for `stats` on a store opened read-only (`fq stats` on a store nobody
/// serves, issue 11 #8): one connection per call, closed before it returns, that declares the
/// store's queues as any engine using them does and counts them; nothing of the store changes.
pub(crate) fn read_only_stats(settings: &RabbitSettings) -> crate::broker::local::StatsProbe {
    let target = settings.target.clone();
    Arc::new(move |queues: BTreeSet<String>| {
        let target = target.clone();
        Box::pin(async move {
            let mut stats = empty_stats(&target, &queues);
            let link = Link::new(target, 0);
            let session = match link.connect_once().await {
                Ok(session) => session,
                Err(error) => {
                    stats.error = Some(error.to_string());
                    return stats;
                }
            };
            stats.connected = true;
            count_within(&session, &queues, &mut stats, |_, _| {}).await;
            session.close("fq stats done").await;
            stats
        })
    })
}
