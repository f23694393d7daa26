//! The dashboard's actions: POST handlers that check the session and its CSRF token first
//! (`Dashboard::refusal`), then call the engine's own operation, then redirect back
//! (303, so a reload does not post again). A handler's `Err` is the page saying why not.

use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Redirect, Response};
use serde::Deserialize;

use super::Dashboard;
use super::auth::{Access, CsrfForm};
use super::pages::{engine_error, message};
use crate::TaskId;

/// Who acts, once the session and its CSRF token pass (`Dashboard::refusal`): the first step
/// of every action.
#[allow(clippy::result_large_err)] // the error is the page axum sends as it is, once
fn admit(
    dashboard: &Dashboard,
    headers: &HeaderMap,
    csrf: Option<&str>,
) -> Result<Access, Response> {
    match dashboard.refusal(headers, csrf) {
        Some(refused) => Err(refused),
        None => Ok(dashboard.access(headers)),
    }
}

fn no_such_action(access: &Access) -> Response {
    message(StatusCode::NOT_FOUND, "Not found", "no such action", access)
}

/// `POST /tasks/{id}/retry|cancel`.
pub(super) async fn task(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Result<Redirect, Response> {
    let access = admit(&dashboard, &headers, form.csrf.as_deref())?;
    let Ok(id) = id.parse::<TaskId>() else {
        return Err(message(
            StatusCode::NOT_FOUND,
            "Not found",
            "not a task id",
            &access,
        ));
    };
    let done = match action.as_str() {
        "retry" => dashboard.engine().retry(id).await,
        "cancel" => dashboard.engine().cancel_by(id, "the web dashboard").await,
        _ => return Err(no_such_action(&access)),
    };
    done.map_err(|error| engine_error(&error, &access))?;
    Ok(Redirect::to(&format!("/tasks/{id}")))
}

/// The queue actions' form: the CSRF token, and purge's confirmation box.
#[derive(Debug, Deserialize)]
pub(super) struct QueueForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    confirm: Option<String>,
}

/// `POST /queues/{queue}/pause|resume|retry-failed|purge` (purge needs `confirm=yes`).
pub(super) async fn queue(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Path((queue, action)): Path<(String, String)>,
    Form(form): Form<QueueForm>,
) -> Result<Redirect, Response> {
    let access = admit(&dashboard, &headers, form.csrf.as_deref())?;
    let engine = dashboard.engine();
    let done = match action.as_str() {
        "pause" => engine.pause_queue(&queue).await.map(drop),
        "resume" => engine.resume_queue(&queue).await.map(drop),
        "retry-failed" => engine.retry_failed(Some(&queue)).await.map(drop),
        "purge" => {
            if form.confirm.as_deref() != Some("yes") {
                let text = "purge deletes the queue's tasks for good: tick the box to confirm";
                return Err(message(
                    StatusCode::BAD_REQUEST,
                    "Not purged",
                    text,
                    &access,
                ));
            }
            engine.purge(&queue, None).await.map(drop)
        }
        _ => return Err(no_such_action(&access)),
    };
    done.map_err(|error| engine_error(&error, &access))?;
    Ok(Redirect::to("/"))
}
