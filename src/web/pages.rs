//! The dashboard's pages, server-rendered with maud (which escapes every value it is given):
//! one function per page, and within a page one function per section; the sections about
//! workers, attempts and `why` live in `observe.rs`.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use super::activity::activity_section;
use super::auth::Access;
use super::{Dashboard, observe};
use crate::{Error, ListQuery, QueueStats, Stats, TaskId, TaskRecord, TaskStatus};

/// Tasks per page of the task list.
const PAGE: usize = 50;

/// Records read at most to fill one page when filtering by name (the engine's list API filters
/// by queue and status only): bounds the cost of a rare name.
const NAME_SCAN_LIMIT: usize = 20_000;

/// The page around every body: head, navigation, login state.
pub(super) fn layout(title: &str, access: &Access, body: &Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · fq" }
                link rel="stylesheet" href="/assets/fq.css";
                script src="/assets/live.js" defer {}
            }
            body {
                header {
                    a.brand href="/" { "fq" }
                    a href="/" { "Overview" }
                    a href="/tasks" { "Tasks" }
                    a href="/workers" { "Workers" }
                    div.auth {
                        label title="reload every 5 seconds" {
                            input #live type="checkbox"; " live"
                        }
                        (auth_box(access))
                    }
                }
                main { (body) }
            }
        }
    }
}

fn auth_box(access: &Access) -> Markup {
    match access {
        Access::ReadOnly => html! { span.muted #access { "read-only" } },
        Access::LoggedOut => html! { a #login-link href="/login" { "Log in" } },
        Access::LoggedIn { csrf } => html! {
            form.inline method="post" action="/logout" {
                input type="hidden" name="csrf" value=(csrf);
                button #logout type="submit" { "Log out" }
            }
        },
    }
}

/// A page that only says something (an error, a refusal), with its status code.
pub(super) fn message(status: StatusCode, title: &str, text: &str, access: &Access) -> Response {
    let body = html! {
        h1 { (title) }
        section { p.error #message { (text) } p { a href="/" { "Back to the overview" } } }
    };
    (status, Html(layout(title, access, &body).into_string())).into_response()
}

/// An engine error as a page: 404 for an unknown task, 409 for a task in the wrong state, 400
/// for bad input, 500 otherwise.
pub(super) fn engine_error(error: &Error, access: &Access) -> Response {
    let status = match error {
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::WrongState { .. } => StatusCode::CONFLICT,
        Error::InvalidInput { .. } => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    message(status, "Error", &error.to_string(), access)
}

fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn status_badge(status: TaskStatus) -> Markup {
    html! { span class={ "status s-" (status.as_str()) } { (status.as_str()) } }
}

/// A form that POSTs one action with the session's CSRF token.
fn action_button(csrf: &str, action: &str, label: &str, id: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            input type="hidden" name="csrf" value=(csrf);
            button id=(id) type="submit" { (label) }
        }
    }
}

// --- overview ---------------------------------------------------------------------------------

/// `GET /`: queues, activity, workers.
pub(super) async fn overview(State(dashboard): State<Dashboard>, headers: HeaderMap) -> Response {
    let access = dashboard.access(&headers);
    let stats = match dashboard.engine().stats().await {
        Ok(stats) => stats,
        Err(error) => return engine_error(&error, &access),
    };
    let workers = dashboard.engine().workers().await;
    let now = Utc::now();
    let body = html! {
        h1 { "Overview" }
        @if let Some(why) = &stats.writes_refused {
            section { p.error { "Writes are refused: " (why) } }
        }
        (queues_section(&stats, &access))
        (activity_section(&dashboard.inner.activity.last_hour(now)))
        (observe::workers_section(workers.as_ref().map_err(ToString::to_string)))
    };
    Html(layout("Overview", &access, &body).into_string()).into_response()
}

/// The columns of the queue table: (heading, field name for tests, count).
fn queue_counts(counts: &QueueStats) -> [(&'static str, &'static str, u64); 7] {
    [
        ("Pending", "pending", counts.pending),
        ("Scheduled", "scheduled", counts.scheduled),
        ("Running", "running", counts.running),
        ("Retrying", "retrying", counts.retrying),
        ("Completed", "completed", counts.completed),
        ("Failed", "failed", counts.failed),
        ("Cancelled", "cancelled", counts.cancelled),
    ]
}

fn queues_section(stats: &Stats, access: &Access) -> Markup {
    let columns = queue_counts(&QueueStats::default());
    html! {
        section #queues {
            h2 { "Queues" }
            @if stats.queues.is_empty() {
                p.muted { "No tasks yet." }
            } @else {
                table {
                    thead { tr {
                        th { "Queue" }
                        @for (heading, _, _) in columns { th.n { (heading) } }
                        th { "State" }
                        @if access.csrf().is_some() { th { "Actions" } }
                    } }
                    tbody {
                        @for (queue, counts) in &stats.queues {
                            tr data-queue=(queue) {
                                td { a href={ "/tasks?queue=" (url_encode(queue)) } { (queue) } }
                                @for (_, field, count) in queue_counts(counts) {
                                    td.n data-count=(field) {
                                        @if count > 0 {
                                            a href={ "/tasks?queue=" (url_encode(queue)) "&status=" (field.to_ascii_uppercase()) } { (count) }
                                        } @else { (count) }
                                    }
                                }
                                td data-paused=(counts.paused) {
                                    @if counts.paused { span.paused { "paused" } } @else { "running" }
                                }
                                @if let Some(csrf) = access.csrf() {
                                    td { (queue_actions(csrf, queue, counts)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn queue_actions(csrf: &str, queue: &str, counts: &QueueStats) -> Markup {
    let base = format!("/queues/{}", url_encode(queue));
    html! {
        @if counts.paused {
            (action_button(csrf, &format!("{base}/resume"), "Resume", &format!("resume-{queue}")))
        } @else {
            (action_button(csrf, &format!("{base}/pause"), "Pause", &format!("pause-{queue}")))
        }
        " "
        @if counts.failed > 0 {
            (action_button(csrf, &format!("{base}/retry-failed"), "Retry failed", &format!("retry-failed-{queue}")))
            " "
        }
        // Purging deletes for good: a box to tick first, checked by the server.
        form.inline method="post" action={ (base) "/purge" } {
            input type="hidden" name="csrf" value=(csrf);
            label { input type="checkbox" name="confirm" value="yes"; " sure" }
            " "
            button id={ "purge-" (queue) } type="submit" { "Purge" }
        }
    }
}

// --- tasks ------------------------------------------------------------------------------------

/// The task list's filters (query string).
#[derive(Debug, Default, Deserialize)]
pub(super) struct TaskFilter {
    #[serde(default)]
    queue: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    after: Option<String>,
}

fn non_empty(value: Option<&String>) -> Option<&str> {
    value.map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// `GET /tasks`: filters by queue, status and name (a substring), a page at a time.
pub(super) async fn tasks(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Query(filter): Query<TaskFilter>,
) -> Response {
    let access = dashboard.access(&headers);
    let bad = |text: String| message(StatusCode::BAD_REQUEST, "Bad filter", &text, &access);
    let status = match non_empty(filter.status.as_ref()) {
        Some(text) => match text.parse::<TaskStatus>() {
            Ok(status) => Some(status),
            Err(_) => return bad(format!("unknown status {text:?}")),
        },
        None => None,
    };
    let after = match non_empty(filter.after.as_ref()) {
        Some(text) => match text.parse::<TaskId>() {
            Ok(id) => Some(id),
            Err(_) => return bad(format!("not a task id: {text:?}")),
        },
        None => None,
    };
    let queue = non_empty(filter.queue.as_ref()).map(str::to_owned);
    let name = non_empty(filter.name.as_ref());
    let page = match list_page(&dashboard, queue.clone(), status, name, after).await {
        Ok(page) => page,
        Err(error) => return engine_error(&error, &access),
    };
    let body = html! {
        h1 { "Tasks" }
        (filter_section(queue.as_deref(), status, name))
        (task_table_section(&page.records, &access))
        @if let Some(next) = page.next {
            p { a #next-page href={ "/tasks?" (filter_query(queue.as_deref(), status, name)) "after=" (next) } { "Next page →" } }
        }
    };
    Html(layout("Tasks", &access, &body).into_string()).into_response()
}

/// One page of matching tasks and the cursor to the next page, if there may be one.
struct TaskPage {
    records: Vec<TaskRecord>,
    next: Option<TaskId>,
}

async fn list_page(
    dashboard: &Dashboard,
    queue: Option<String>,
    status: Option<TaskStatus>,
    name: Option<&str>,
    mut after: Option<TaskId>,
) -> crate::Result<TaskPage> {
    let Some(name) = name else {
        let records = dashboard
            .engine()
            .list(ListQuery {
                queue,
                status,
                limit: PAGE,
                after,
                unique_key: None,
            })
            .await?;
        let next = (records.len() == PAGE)
            .then(|| records.last().map(|r| r.id))
            .flatten();
        return Ok(TaskPage { records, next });
    };
    // The list API has no name filter: read pages and keep the matches, up to a bound.
    let mut records = Vec::new();
    let mut scanned = 0;
    loop {
        let batch = dashboard
            .engine()
            .list(ListQuery {
                queue: queue.clone(),
                status,
                limit: 500,
                after,
                unique_key: None,
            })
            .await?;
        let full = batch.len() == 500;
        for record in batch {
            scanned += 1;
            after = Some(record.id);
            if record.name.contains(name) {
                records.push(record);
                if records.len() == PAGE {
                    return Ok(TaskPage {
                        records,
                        next: after,
                    });
                }
            }
        }
        if !full {
            return Ok(TaskPage {
                records,
                next: None,
            });
        }
        if scanned >= NAME_SCAN_LIMIT {
            return Ok(TaskPage {
                records,
                next: after,
            });
        }
    }
}

/// `queue=…&status=…&name=…&`, for links that keep the filters.
fn filter_query(queue: Option<&str>, status: Option<TaskStatus>, name: Option<&str>) -> String {
    let mut query = String::new();
    if let Some(queue) = queue {
        query.push_str(&format!("queue={}&", url_encode(queue)));
    }
    if let Some(status) = status {
        query.push_str(&format!("status={}&", status.as_str()));
    }
    if let Some(name) = name {
        query.push_str(&format!("name={}&", url_encode(name)));
    }
    query
}

fn filter_section(queue: Option<&str>, status: Option<TaskStatus>, name: Option<&str>) -> Markup {
    html! {
        section #filters {
            form.filters method="get" action="/tasks" {
                label { "Queue" input name="queue" value=(queue.unwrap_or_default()); }
                label { "Status"
                    select name="status" {
                        option value="" { "any" }
                        @for each in TaskStatus::ALL {
                            option value=(each.as_str()) selected[status == Some(each)] { (each.as_str()) }
                        }
                    }
                }
                label { "Name contains" input name="name" value=(name.unwrap_or_default()); }
                button type="submit" { "Filter" }
            }
        }
    }
}

fn task_table_section(records: &[TaskRecord], access: &Access) -> Markup {
    html! {
        section #task-list {
            @if records.is_empty() {
                p.muted { "No tasks match." }
            } @else {
                table {
                    thead { tr {
                        th { "Id" } th { "Name" } th { "Queue" } th { "Status" }
                        th.n { "Runs" } th { "Created" } th { "Last error" }
                        @if access.csrf().is_some() { th { "Actions" } }
                    } }
                    tbody {
                        @for record in records {
                            tr data-task=(record.id) {
                                td { a href={ "/tasks/" (record.id) } { code { (record.id) } } }
                                td { (record.name) }
                                td { (record.queue) }
                                td { (status_badge(record.status)) }
                                td.n { (record.attempts) "/" (record.max_retries.saturating_add(1)) }
                                td { (time(record.created_at)) }
                                td.error { @if let Some(error) = &record.error { (error.message) } }
                                @if let Some(csrf) = access.csrf() {
                                    td { (task_actions(csrf, record)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn task_actions(csrf: &str, record: &TaskRecord) -> Markup {
    let base = format!("/tasks/{}", record.id);
    html! {
        @if matches!(record.status, TaskStatus::Failed | TaskStatus::Cancelled) {
            (action_button(csrf, &format!("{base}/retry"), "Retry", &format!("retry-{}", record.id)))
        }
        @if matches!(record.status, TaskStatus::Pending | TaskStatus::Retrying) {
            (action_button(csrf, &format!("{base}/cancel"), "Cancel", &format!("cancel-{}", record.id)))
        }
    }
}

// --- one task ---------------------------------------------------------------------------------

/// `GET /tasks/{id}`.
pub(super) async fn task(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let access = dashboard.access(&headers);
    let Ok(id) = id.parse::<TaskId>() else {
        return message(StatusCode::NOT_FOUND, "Not found", "not a task id", &access);
    };
    let record = match dashboard.engine().task(id).await {
        Ok(Some(record)) => record,
        Ok(None) => return engine_error(&Error::NotFound(id), &access),
        Err(error) => return engine_error(&error, &access),
    };
    let attempts = dashboard.engine().attempts(id).await;
    let explanation = dashboard.engine().explain(id).await;
    let body = html! {
        h1 { "Task " code { (record.id) } }
        (summary_section(&record, &access))
        (schedule_section(&record))
        (arguments_section(&record))
        (outcome_section(&record))
        (observe::why_section(explanation.as_ref().map_err(ToString::to_string)))
        (observe::attempts_section(attempts.as_deref().map_err(ToString::to_string)))
    };
    Html(layout(&record.name, &access, &body).into_string()).into_response()
}

fn summary_section(record: &TaskRecord, access: &Access) -> Markup {
    html! {
        section #summary {
            table {
                tr { th { "Name" } td #task-name { (record.name) } }
                tr { th { "Queue" } td { a href={ "/tasks?queue=" (url_encode(&record.queue)) } { (record.queue) } } }
                tr { th { "Status" } td #task-status { (status_badge(record.status)) } }
                tr { th { "Priority" } td { (record.priority) } }
                tr { th { "Runs" } td { (record.attempts) " of at most " (record.max_retries.saturating_add(1)) } }
                tr { th { "Created" } td { (time(record.created_at)) } }
                @if let Some(at) = record.started_at { tr { th { "Started" } td { (time(at)) } } }
                @if let Some(at) = record.finished_at { tr { th { "Finished" } td { (time(at)) } } }
                @if let Some(by) = &record.cancelled_by { tr { th { "Cancelled by" } td #cancelled-by { (by) } } }
                @if let Some(timeout) = record.timeout {
                    tr { th { "Timeout" } td { (crate::config::format_duration(timeout, crate::config::DurationStyle::Short)) } }
                }
            }
            @if let Some(csrf) = access.csrf() {
                p { (task_actions(csrf, record)) }
            }
        }
    }
}

/// When it may run, and its unique key: shown only when they say more than "now, not unique".
fn schedule_section(record: &TaskRecord) -> Markup {
    let scheduled = record.scheduled_at > record.created_at;
    let waiting = matches!(record.status, TaskStatus::Pending | TaskStatus::Retrying);
    if !scheduled && !waiting && record.unique_key.is_none() {
        return html! {};
    }
    html! {
        section #schedule {
            h2 { "Schedule" }
            table {
                tr { th { "Scheduled for" } td { (time(record.scheduled_at)) } }
                @if waiting { tr { th { "Next run due" } td #due-at { (time(record.due_at)) } } }
                @if let Some(key) = &record.unique_key {
                    tr { th { "Unique key" } td #unique-key { (key) } }
                    @if let Some(window) = record.unique_for {
                        tr { th { "Unique for" } td { (crate::config::format_duration(window, crate::config::DurationStyle::Short)) } }
                    }
                }
            }
        }
    }
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn arguments_section(record: &TaskRecord) -> Markup {
    html! {
        section #arguments {
            h2 { "Arguments" }
            pre #task-args { (pretty(&record.payload.to_value())) }
        }
    }
}

fn outcome_section(record: &TaskRecord) -> Markup {
    html! {
        @if let Some(result) = &record.result {
            section #result { h2 { "Result" } pre #task-result { (pretty(result)) } }
        }
        @if let Some(error) = &record.error {
            section #error {
                h2 { "Error" }
                p { "Kind: " code { (error.kind) } }
                pre.error #task-error { (error.message) }
            }
        }
    }
}

// --- login ---------------------------------------------------------------------------

/// `GET /login`: the token form (or why there is none).
pub(super) async fn login(State(dashboard): State<Dashboard>, headers: HeaderMap) -> Response {
    let access = dashboard.access(&headers);
    let body = html! {
        h1 { "Log in" }
        section {
            @match &access {
                Access::ReadOnly => p { "This dashboard is read-only: set " code { "http.token" } " in the configuration to allow actions." },
                Access::LoggedIn { .. } => p { "You are logged in." },
                Access::LoggedOut => form method="post" action="/login" {
                    label { "Token " input #token type="password" name="token" autocomplete="current-password"; }
                    " "
                    button #login type="submit" { "Log in" }
                },
            }
        }
    };
    Html(layout("Log in", &access, &body).into_string()).into_response()
}

/// Percent-encodes a path segment or query value (queue names are `[A-Za-z0-9._:-]`, but task
/// names in a filter may hold anything).
fn url_encode(text: &str) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    const KEEP: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    utf8_percent_encode(text, KEEP).to_string()
}
