//! Who may act: the login form's token check (constant time), the session cookie, and the
//! per-session CSRF token every POST must carry. Reading needs none of it.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::sync::Mutex;

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::Dashboard;
use super::pages;

/// The session cookie's name.
pub(super) const COOKIE: &str = "fq_session";

/// Most sessions kept; logging in beyond it forgets the oldest.
const MAX_SESSIONS: usize = 1024;

/// The logged-in sessions: session id → CSRF token.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    inner: Mutex<SessionTable>,
}

#[derive(Debug, Default)]
struct SessionTable {
    csrf: HashMap<String, String>,
    /// Ids in login order, to forget the oldest first.
    order: VecDeque<String>,
}

impl Sessions {
    fn table(&self) -> std::sync::MutexGuard<'_, SessionTable> {
        // A poisoned lock only means a panic elsewhere between two map updates.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn create(&self) -> std::io::Result<(String, String)> {
        let (id, csrf) = (random_token()?, random_token()?);
        let mut table = self.table();
        while table.order.len() >= MAX_SESSIONS {
            if let Some(old) = table.order.pop_front() {
                table.csrf.remove(&old);
            }
        }
        table.order.push_back(id.clone());
        table.csrf.insert(id.clone(), csrf.clone());
        Ok((id, csrf))
    }

    fn csrf(&self, id: &str) -> Option<String> {
        self.table().csrf.get(id).cloned()
    }

    fn remove(&self, id: &str) {
        let mut table = self.table();
        table.csrf.remove(id);
        table.order.retain(|old| old != id);
    }
}

/// 32 bytes from the kernel's CSPRNG, hex: session ids and CSRF tokens must not be guessable
/// (fq builds on Unix only, where `/dev/urandom` is always there).
fn random_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `a == b` in time that depends on the lengths only.
fn same(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// What a visitor may do, as the pages see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Access {
    /// No `http.token` configured: nobody acts.
    ReadOnly,
    /// A token is configured and the visitor has not logged in.
    LoggedOut,
    /// Logged in; forms carry this CSRF token.
    LoggedIn {
        /// The session's CSRF token.
        csrf: String,
    },
}

impl Access {
    /// The CSRF token for forms, when the visitor may act.
    pub(super) fn csrf(&self) -> Option<&str> {
        match self {
            Access::LoggedIn { csrf } => Some(csrf),
            _ => None,
        }
    }
}

/// The session id in the request's cookies, if any.
fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then(|| value.to_owned())
        })
}

impl Dashboard {
    /// What the visitor behind `headers` may do.
    pub(super) fn access(&self, headers: &HeaderMap) -> Access {
        if self.inner.token.is_none() {
            return Access::ReadOnly;
        }
        match session_id(headers).and_then(|id| self.inner.sessions.csrf(&id)) {
            Some(csrf) => Access::LoggedIn { csrf },
            None => Access::LoggedOut,
        }
    }

    /// Lets a POST through (`None`) only with a configured token, a live session and that
    /// session's CSRF token in the form; otherwise the 403 to answer.
    pub(super) fn refusal(&self, headers: &HeaderMap, csrf: Option<&str>) -> Option<Response> {
        let refuse = |why: &str| {
            Some(pages::message(
                StatusCode::FORBIDDEN,
                "Refused",
                why,
                &self.access(headers),
            ))
        };
        match self.access(headers) {
            Access::ReadOnly => refuse(
                "this dashboard is read-only: set http.token in the configuration to allow actions",
            ),
            Access::LoggedOut => refuse("log in first"),
            Access::LoggedIn { csrf: expected } => match csrf {
                Some(given) if same(given, &expected) => None,
                _ => refuse("missing or wrong CSRF token: reload the page and try again"),
            },
        }
    }
}

/// The login form's fields.
#[derive(Debug, Deserialize)]
pub(super) struct LoginForm {
    #[serde(default)]
    token: String,
}

/// Checks the token (constant time), starts a session, sets its cookie, goes to the overview.
pub(super) async fn login(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let Some(token) = dashboard.inner.token.as_deref() else {
        return pages::message(
            StatusCode::FORBIDDEN,
            "Refused",
            "this dashboard is read-only: set http.token in the configuration to allow actions",
            &Access::ReadOnly,
        );
    };
    if !same(&form.token, token) {
        return pages::message(
            StatusCode::FORBIDDEN,
            "Refused",
            "wrong token",
            &dashboard.access(&headers),
        );
    }
    let (id, _csrf) = match dashboard.inner.sessions.create() {
        Ok(session) => session,
        Err(error) => {
            return pages::message(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Error",
                &format!("cannot start a session: {error}"),
                &Access::LoggedOut,
            );
        }
    };
    // HttpOnly: no script reads it; SameSite=Strict: no other site's page sends it.
    let cookie = format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

/// The logout form's fields.
#[derive(Debug, Deserialize)]
pub(super) struct CsrfForm {
    #[serde(default)]
    pub(super) csrf: Option<String>,
}

/// Ends the session (CSRF-checked like every action) and clears the cookie.
pub(super) async fn logout(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(refused) = dashboard.refusal(&headers, form.csrf.as_deref()) {
        return refused;
    }
    if let Some(id) = session_id(&headers) {
        dashboard.inner.sessions.remove(&id);
    }
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_compared_whole() -> std::io::Result<()> {
        let (a, b) = (random_token()?, random_token()?);
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(same(&a, &a.clone()));
        assert!(!same(&a, &b));
        assert!(!same(&a, &a[..63]), "a prefix is not the token");
        assert!(!same(&a, ""));
        Ok(())
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        assert_eq!(session_id(&headers), None);
        headers.insert(
            header::COOKIE,
            axum::http::HeaderValue::from_static("a=1; fq_session=abc; b=2"),
        );
        assert_eq!(session_id(&headers).as_deref(), Some("abc"));
        let mut other = HeaderMap::new();
        other.insert(
            header::COOKIE,
            axum::http::HeaderValue::from_static("fq_sessionx=abc"),
        );
        assert_eq!(session_id(&other), None);
    }

    #[test]
    fn sessions_are_bounded_and_removable() -> std::io::Result<()> {
        let sessions = Sessions::default();
        let (first, csrf) = sessions.create()?;
        assert_eq!(sessions.csrf(&first), Some(csrf));
        for _ in 0..MAX_SESSIONS {
            sessions.create()?;
        }
        assert_eq!(sessions.csrf(&first), None, "the oldest is forgotten");
        let (last, _) = sessions.create()?;
        sessions.remove(&last);
        assert_eq!(sessions.csrf(&last), None);
        Ok(())
    }
}
