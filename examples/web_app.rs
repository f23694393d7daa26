//! Framefox's "Complete Example" as a real web app: an axum server whose `POST /register`
//! creates a user and queues `send_welcome_email(user_id, email)` on queue "emails"
//! (`max_retries` 3), with the worker running in the same process.
//!
//! Routes:
//! - `POST /register` with a JSON body `{"email": ..., "username": ...}` answers
//!   `{"user_id": 1, "email_task_id": "<uuid>"}`; a body that is not valid JSON gets 400, one
//!   missing a field 422, one without `Content-Type: application/json` 415.
//! - `GET /tasks/{id}` answers the task's record as JSON (`status`, `attempts`, `result`,
//!   `error`, ...); 404 for an unknown id, 400 for one that is not a UUID.
//!
//! Settings come from the environment: `FQ_WEB_ADDR` (default `127.0.0.1:8080`; port 0 picks a
//! free one) and `FQ_WEB_DB` (default `var/web_app.redb`). Once ready it prints
//! `listening on <addr>`. Ctrl-C (or SIGTERM) stops taking requests, lets the running tasks
//! finish, and exits.
//!
//! ```text
//! cargo run --example web_app
//! curl -s -H 'content-type: application/json' -d '{"email":"ada@example.com","username":"ada"}' \
//!     localhost:8080/register
//! curl -s localhost:8080/tasks/<email_task_id>
//! ```
//!
//! `tests/web_app.rs` runs this binary and talks to it over HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fq::{
    Engine, Registry, Task, TaskContext, TaskError, TaskId, TaskRecord, TaskSettings, WorkerManager,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const DEFAULT_ADDR: &str = "127.0.0.1:8080";
const DEFAULT_DB: &str = "var/web_app.redb";

// ---- tasks.py ----

/// `@AsyncTask(queue="emails", max_retries=3) async def send_welcome_email(user_id, email)`
#[derive(Debug, Serialize, Deserialize)]
struct SendWelcomeEmail {
    user_id: u64,
    email: String,
}

impl Task for SendWelcomeEmail {
    const NAME: &'static str = "myapp.tasks.send_welcome_email";
    const SETTINGS: TaskSettings = TaskSettings::new().queue("emails").max_retries(3);
    type Output = Value;

    async fn run(self, ctx: TaskContext) -> Result<Value, TaskError> {
        println!(
            "sending welcome email to {} (user {}, attempt {})",
            self.email,
            self.user_id,
            ctx.attempt()
        );
        // Stands in for `await email_service.send(to=email, subject="Welcome to Our App!", ...)`;
        // an `Err` here would be logged by the worker and retried, as the seed's `raise`.
        tokio::time::sleep(Duration::from_millis(50)).await;
        println!("welcome email sent to {}", self.email);
        Ok(json!({"status": "sent", "email": self.email}))
    }
}

// ---- routes.py ----

/// What every handler shares: the engine, and a stand-in for the users table.
#[derive(Clone)]
struct AppState {
    engine: Engine,
    next_user_id: Arc<AtomicU64>,
}

#[derive(Deserialize)]
struct RegisterForm {
    email: String,
    username: String,
}

struct User {
    id: u64,
    email: String,
}

/// `create_user(email, username)`: an in-memory counter stands in for the database.
fn create_user(state: &AppState, form: RegisterForm) -> User {
    let id = state.next_user_id.fetch_add(1, Ordering::Relaxed);
    println!("created user {id} ({}, {})", form.username, form.email);
    User {
        id,
        email: form.email,
    }
}

/// `POST /register`: create the user, queue the welcome email, answer both ids.
async fn register(
    State(state): State<AppState>,
    form: Result<Json<RegisterForm>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    // axum picks the status (400 bad JSON, 422 missing field, 415 not JSON); we pick the body.
    let Json(form) = form.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    if !form.email.contains('@') {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{:?} is not an email address", form.email),
        ));
    }
    let user = create_user(&state, form);
    let task_id = SendWelcomeEmail {
        user_id: user.id,
        email: user.email,
    }
    .delay(&state.engine)
    .await?;
    Ok(Json(json!({"user_id": user.id, "email_task_id": task_id})))
}

/// `GET /tasks/{id}`: the task's record.
async fn show_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskRecord>, ApiError> {
    let id: TaskId = id
        .parse()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    match state.engine.task(id).await? {
        Some(record) => Ok(Json(record)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no task with id {id}"),
        )),
    }
}

/// The routes, over an open engine.
fn router(engine: Engine) -> Router {
    Router::new()
        .route("/register", post(register))
        .route("/tasks/{id}", get(show_task))
        .with_state(AppState {
            engine,
            next_user_id: Arc::new(AtomicU64::new(1)),
        })
}

/// An error answered as `{"error": "..."}` with its status code.
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl std::fmt::Display) -> Self {
        Self {
            status,
            message: message.to_string(),
        }
    }
}

impl From<fq::Error> for ApiError {
    fn from(error: fq::Error) -> Self {
        let status = match &error {
            fq::Error::InvalidInput { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            fq::Error::NotFound(_) => StatusCode::NOT_FOUND,
            error if error.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            eprintln!("request failed: {error}");
        }
        Self::new(status, error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": self.message}))).into_response()
    }
}

// ---- the process: engine, worker, server ----

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::var("FQ_WEB_ADDR")
        .unwrap_or_else(|_| DEFAULT_ADDR.to_owned())
        .parse()
        .map_err(|e| format!("FQ_WEB_ADDR: {e}"))?;
    let db = std::env::var_os("FQ_WEB_DB").map_or_else(|| PathBuf::from(DEFAULT_DB), PathBuf::from);
    let engine = Engine::open(&db)?;

    // Workers in the same process, on the "emails" queue. Signals are handled below, once,
    // for the server and the worker together.
    let mut registry = Registry::new();
    registry.register::<SendWelcomeEmail>();
    let mut worker = WorkerManager::new(engine.clone(), registry);
    worker
        .set_queues(["emails"])
        .set_concurrent_tasks(4)
        .set_handle_signals(false);
    let stop_worker = worker.shutdown_handle();
    let worker = tokio::spawn(async move { worker.start().await });

    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    println!("store: {}", db.display());
    axum::serve(listener, router(engine))
        .with_graceful_shutdown(shutdown_signal())
        .await?;

    println!("server stopped; stopping the worker");
    stop_worker.shutdown();
    let report = worker.await??;
    println!(
        "worker stopped: {} completed, {} retried, {} failed",
        report.completed, report.retried, report.failed
    );
    Ok(())
}

/// Resolves on Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            eprintln!("cannot listen for Ctrl-C: {error}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(error) => {
                eprintln!("cannot listen for SIGTERM: {error}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => println!("Ctrl-C received; shutting down"),
        () = terminate => println!("SIGTERM received; shutting down"),
    }
}
