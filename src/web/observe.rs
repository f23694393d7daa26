//! The dashboard's views of what the engine observes: the live and recently gone workers (the
//! overview's section and the workers page), on a task's page its attempt history and the
//! `fq why` sentences (every value through maud, which escapes it), and `/metrics` for
//! Prometheus.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{Markup, html};

use super::Dashboard;
use super::pages::{engine_error, layout};
use crate::{AttemptRecord, Explanation, WorkerInfo, WorkersReport};

fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The cells that say which worker a row is about, live or gone: id, host, process.
fn who_cells(info: &WorkerInfo) -> Markup {
    html! {
        td { code { (info.id) } }
        td { (info.host) }
        td.n { (info.pid) }
    }
}

/// The live workers, with their running tasks and counts, then those gone in the last hour.
/// `None`: the engine could not say (the reason is shown).
pub(super) fn workers_section(report: Result<&WorkersReport, String>) -> Markup {
    html! {
        section #workers {
            h2 { "Workers" }
            @match report {
                Err(why) => p.error { "Cannot list the workers: " (why) },
                Ok(report) => {
                    @if report.live.is_empty() {
                        p.muted #no-live-workers { "No live worker: nothing runs tasks from this store now." }
                    } @else {
                        table #live-workers {
                            thead { tr {
                                th { "Worker" } th { "Host" } th.n { "PID" } th { "Queues" }
                                th.n { "Slots" } th { "Running" } th.n { "Completed" }
                                th.n { "Failed" } th { "Last seen" } th { "Version" }
                            } }
                            tbody {
                                @for worker in &report.live {
                                    tr data-worker=(worker.info.id) {
                                        (who_cells(&worker.info))
                                        td { (worker.info.queues.join(", ")) }
                                        td.n { (worker.info.concurrency) }
                                        td {
                                            @for run in &worker.running {
                                                a href={ "/tasks/" (run.id) } { code { (run.id) } }
                                                " (run " (run.attempt) " since " (time(run.since)) ") "
                                            }
                                            @if worker.running.is_empty() { span.muted { "idle" } }
                                        }
                                        td.n { (worker.completed) }
                                        td.n { (worker.failed) }
                                        td { (time(worker.last_seen)) }
                                        td { (worker.info.version) }
                                    }
                                }
                            }
                        }
                    }
                    @if !report.gone.is_empty() {
                        h3 { "Gone in the last hour" }
                        table #gone-workers {
                            thead { tr {
                                th { "Worker" } th { "Host" } th.n { "PID" } th { "Gone at" }
                                th { "Why" } th.n { "Completed" } th.n { "Failed" }
                            } }
                            tbody {
                                @for worker in &report.gone {
                                    tr data-worker=(worker.info.id) {
                                        (who_cells(&worker.info))
                                        td { (time(worker.gone_at)) }
                                        td { (worker.why.as_str()) }
                                        td.n { (worker.completed) }
                                        td.n { (worker.failed) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /workers`.
pub(super) async fn workers(State(dashboard): State<Dashboard>, headers: HeaderMap) -> Response {
    let access = dashboard.access(&headers);
    let report = match dashboard.engine().workers().await {
        Ok(report) => report,
        Err(error) => return engine_error(&error, &access),
    };
    let body = html! { h1 { "Workers" } (workers_section(Ok(&report))) };
    Html(layout("Workers", &access, &body).into_string()).into_response()
}

/// A task's runs, oldest first, each with its worker, outcome and error.
pub(super) fn attempts_section(attempts: Result<&[AttemptRecord], String>) -> Markup {
    html! {
        section #attempts {
            h2 { "Attempts" }
            @match attempts {
                Err(why) => p.error { "Cannot read the attempt history: " (why) },
                Ok([]) => p.muted { "No run has ended yet." },
                Ok(attempts) => table {
                    thead { tr {
                        th.n { "#" } th { "Started" } th.n { "Took" } th { "Worker" }
                        th { "Outcome" } th { "Error" }
                    } }
                    tbody {
                        @for attempt in attempts {
                            tr data-attempt=(attempt.attempt) {
                                td.n { (attempt.attempt) }
                                td { (time(attempt.started_at)) }
                                td.n { (attempt.duration_ms) " ms" }
                                td { @match &attempt.worker {
                                    Some(worker) => code { (worker) },
                                    None => span.muted { "-" },
                                } }
                                td { (attempt.outcome.as_str()) }
                                td { @if let Some(error) = &attempt.error {
                                    code { (error.kind.as_str()) } " " pre.inline { (error.message) }
                                } }
                            }
                        }
                    }
                },
            }
        }
    }
}

/// Where the task stands and what it waits for, in `fq why`'s words.
pub(super) fn why_section(explanation: Result<&Explanation, String>) -> Markup {
    html! {
        section #why {
            h2 { "Why" }
            @match explanation {
                Err(why) => p.error { "Cannot explain this task: " (why) },
                Ok(explanation) => {
                    @for sentence in &explanation.sentences { p { (sentence) } }
                }
            }
        }
    }
}

/// `GET /metrics`: the engine's metrics in the OpenMetrics text format, readable without the
/// token (a scraper has none; the metrics name queues and task names, never arguments). With
/// `metrics.enabled = false`, 404 and why.
pub(super) async fn metrics(State(dashboard): State<Dashboard>) -> Response {
    match crate::metrics::render(dashboard.engine()).await {
        Ok(text) => {
            let mut response = text.into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            response
        }
        Err(crate::Error::Metrics(error)) => {
            (StatusCode::NOT_FOUND, format!("{error}\n")).into_response()
        }
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response(),
    }
}
