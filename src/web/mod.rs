//! The web dashboard (feature `web`): an axum [`Router`] over an [`Engine`] that shows queues,
//! tasks and their outcomes as server-rendered HTML, and, for a visitor holding `http.token`,
//! acts on them (retry, cancel, retry failed, purge, pause, resume). It owns the HTTP surface
//! only: every read and action goes through the engine's public API, never the store.
//!
//! Layout: `auth` (login cookie, per-session CSRF tokens), `pages` (one function per page and
//! per section), `actions` (the POST handlers), `activity` (completions and failures per minute
//! for the overview's chart), `assets` (the stylesheet and the live-refresh script, embedded).

mod actions;
mod activity;
mod assets;
mod auth;
mod observe;
mod pages;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::routing::{get, post};

use crate::Engine;
use crate::config::exposed_without_token;

pub(crate) use activity::Activity;
use auth::Sessions;

/// Why the dashboard could not be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebError {
    /// An address other than loopback without `http.token`.
    #[error(
        "refusing to serve the dashboard on {addr} without http.token: it is not a loopback address, so anyone who can reach it could read every task's arguments"
    )]
    InsecureListen {
        /// The address.
        addr: SocketAddr,
    },
    /// The address could not be bound.
    #[error("cannot listen on {addr} (http.listen)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// Serving stopped with an I/O error.
    #[error("the dashboard stopped serving")]
    Serve(#[source] std::io::Error),
}

/// What every handler shares: the engine, the token, the logged-in sessions, the chart's data.
#[derive(Clone)]
pub(crate) struct Dashboard {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    /// `http.token`; `None` makes the dashboard read-only.
    token: Option<String>,
    sessions: Sessions,
    activity: Arc<Activity>,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the token, not the sessions' secrets.
        f.debug_struct("Dashboard")
            .field("read_only", &self.inner.token.is_none())
            .finish_non_exhaustive()
    }
}

impl Dashboard {
    fn engine(&self) -> &Engine {
        &self.inner.engine
    }
}

/// The dashboard as an axum router, to serve by itself or merge into an application's own.
///
/// Its pages are `/` (overview), `/tasks` (filters and paging), `/tasks/{id}`, `/workers` and
/// `/login`; its actions are POSTs under `/tasks/{id}/…` and `/queues/{queue}/…`; its assets
/// are under `/assets/`. The token is the engine's `http.token`: without one the dashboard is
/// read-only (no action buttons; every POST gets 403). With one, a visitor logs in with it and
/// gets an HttpOnly, SameSite=Strict session cookie; every POST must also carry the session's
/// CSRF token (a hidden field of each form).
///
/// Completions and failures per minute (the overview's chart) are counted from the engine's
/// events from the moment this is called, when it is called inside a tokio runtime.
pub fn router(engine: Engine) -> Router {
    let token = engine.config().http.token.clone();
    let activity = Arc::new(Activity::default());
    activity::follow(&engine, &activity);
    let dashboard = Dashboard {
        inner: Arc::new(Inner {
            engine,
            token,
            sessions: Sessions::default(),
            activity,
        }),
    };
    Router::new()
        .route("/", get(pages::overview))
        .route("/tasks", get(pages::tasks))
        .route("/tasks/{id}", get(pages::task))
        .route("/workers", get(observe::workers))
        .route("/login", get(pages::login).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/tasks/{id}/{action}", post(actions::task))
        .route("/queues/{queue}/{action}", post(actions::queue))
        .route("/assets/fq.css", get(assets::css))
        .route("/assets/live.js", get(assets::live_js))
        // Outside the token: Prometheus scrapes without one.
        .route("/metrics", get(observe::metrics))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(dashboard)
}

/// Headers on every response: a policy that lets only our own script and stylesheet run (a
/// second line of defence behind escaping), and no framing (clickjacking of the action buttons).
async fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// A bound dashboard listener: [`Server::bind`], then [`Server::run`].
#[derive(Debug)]
pub struct Server {
    listener: tokio::net::TcpListener,
    router: Router,
    addr: SocketAddr,
}

impl Server {
    /// Binds `listen` for the dashboard of `engine`, after the rule `control.listen` follows
    /// too: an address other than loopback only with a token (`http.token`).
    ///
    /// # Errors
    /// [`WebError::InsecureListen`] for a non-loopback address without `http.token`,
    /// [`WebError::Bind`] when the address cannot be bound.
    pub async fn bind(engine: Engine, listen: SocketAddr) -> Result<Server, WebError> {
        if exposed_without_token(listen, engine.config().http.token.as_deref()) {
            return Err(WebError::InsecureListen { addr: listen });
        }
        let bind = |source| WebError::Bind {
            addr: listen,
            source,
        };
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        Ok(Server {
            listener,
            router: router(engine),
            addr,
        })
    }

    /// The address bound (the port chosen by the system for port 0).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` completes, then lets open requests finish.
    ///
    /// # Errors
    /// [`WebError::Serve`] when accepting connections fails for good.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), WebError> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(WebError::Serve)
    }
}
