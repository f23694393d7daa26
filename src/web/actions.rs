//! The dashboard's actions: POST handlers that check the session and its CSRF token first
//! (`Dashboard::refusal`), then call the engine's own operation, then redirect back
//! (303, so a reload does not post again).

use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::Dashboard;
use super::auth::CsrfForm;
use super::pages::{engine_error, message};
use crate::TaskId;

/// `POST /tasks/{id}/retry|cancel`.
pub(super) async fn task(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(refused) = dashboard.refusal(&headers, form.csrf.as_deref()) {
        return refused;
    }
    let access = dashboard.access(&headers);
    let Ok(id) = id.parse::<TaskId>() else {
        return message(StatusCode::NOT_FOUND, "Not found", "not a task id", &access);
    };
    let done = match action.as_str() {
        "retry" => dashboard.engine().retry(id).await,
        "cancel" => dashboard.engine().cancel_by(id, "the web dashboard").await,
        _ => {
            return message(
                StatusCode::NOT_FOUND,
                "Not found",
                "no such action",
                &access,
            );
        }
    };
    match done {
        Ok(_) => Redirect::to(&format!("/tasks/{id}")).into_response(),
        Err(error) => engine_error(&error, &access),
    }
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
) -> Response {
    if let Some(refused) = dashboard.refusal(&headers, form.csrf.as_deref()) {
        return refused;
    }
    let access = dashboard.access(&headers);
    let engine = dashboard.engine();
    let done = match action.as_str() {
        "pause" => engine.pause_queue(&queue).await.map(drop),
        "resume" => engine.resume_queue(&queue).await.map(drop),
        "retry-failed" => engine.retry_failed(Some(&queue)).await.map(drop),
        "purge" => {
            if form.confirm.as_deref() != Some("yes") {
                let text = "purge deletes the queue's tasks for good: tick the box to confirm";
                return message(StatusCode::BAD_REQUEST, "Not purged", text, &access);
            }
            engine.purge(&queue, None).await.map(drop)
        }
        _ => {
            return message(
                StatusCode::NOT_FOUND,
                "Not found",
                "no such action",
                &access,
            );
        }
    };
    match done {
        Ok(()) => Redirect::to("/").into_response(),
        Err(error) => engine_error(&error, &access),
    }
}
