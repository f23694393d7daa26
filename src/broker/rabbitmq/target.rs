//! Where and how to reach RabbitMQ: the target parsed from the configured URL (the password
//! kept apart, so that no URL fq logs or hands to lapin carries it), the vhost's encoding, the
//! PLAIN credentials lapin asks for, and the mapping of a failed connection attempt to
//! `Refused` or `Unreachable`.

use std::time::Duration;

use lapin::auth::AuthProvider;
use lapin::protocol::AMQPErrorKind;
use lapin::types::{LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};

use super::RabbitError;

/// Where and how to connect: the URL without its password, and the password apart.
#[derive(Clone)]
pub(crate) struct Target {
    uri: AMQPUri,
    username: String,
    password: String,
    /// `amqp://user@host:port/vhost`, for messages.
    pub(crate) endpoint: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// Percent-encodes a vhost for display the way RabbitMQ's docs write it (`/` as `%2f`).
fn encode_vhost(vhost: &str) -> String {
    let mut out = String::new();
    for byte in vhost.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02x}"));
        }
    }
    out
}

impl Target {
    /// Parses an `amqp://` URL. Errors never show the password.
    pub(crate) fn parse(url: &str) -> Result<Self, RabbitError> {
        let shown = redacted(url);
        if url.to_ascii_lowercase().starts_with("amqps://") {
            return Err(RabbitError::InvalidUrl {
                endpoint: shown,
                reason: "amqps:// needs TLS, which this build of fq leaves out (use amqp://, or \
                         a TLS-terminating proxy on this machine)"
                    .to_owned(),
            });
        }
        let mut uri: AMQPUri = url.parse().map_err(|_| RabbitError::InvalidUrl {
            endpoint: shown.clone(),
            reason: "not an amqp://user:password@host:port/vhost URL".to_owned(),
        })?;
        let username = uri.authority.userinfo.username.clone();
        let password = std::mem::take(&mut uri.authority.userinfo.password);
        let endpoint = format!(
            "amqp://{}@{}:{}/{}",
            username,
            uri.authority.host,
            uri.authority.port,
            encode_vhost(&uri.vhost)
        );
        Ok(Self {
            uri,
            username,
            password,
            endpoint,
        })
    }
}

/// `url` with the password of its user info replaced, for errors about unparsable URLs.
fn redacted(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    match rest.rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!(
                "{}{}:<redacted>{}",
                &url[..start],
                &rest[..colon],
                &rest[at..]
            ),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// SASL PLAIN with credentials lapin never sees in a URI.
struct PlainAuth {
    username: String,
    password: String,
}

impl AuthProvider for PlainAuth {
    fn mechanism(&self) -> ShortString {
        "PLAIN".into()
    }

    fn auth_starter(&self) -> Result<LongString, String> {
        Ok(format!("\0{}\0{}", self.username, self.password).into())
    }
}

/// Maps a failed connection attempt: an answer that refuses is `Refused`, anything else
/// (nothing listening, a broken handshake) is `Unreachable`.
pub(crate) fn connect_error(endpoint: &str, error: lapin::Error) -> RabbitError {
    let reason = match error.kind() {
        lapin::ErrorKind::IOError(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused".to_owned()
        }
        lapin::ErrorKind::IOError(io) => io.to_string(),
        lapin::ErrorKind::ProtocolError(amqp) => {
            let refused = matches!(amqp.kind(), AMQPErrorKind::Hard(_) | AMQPErrorKind::Soft(_));
            if refused {
                return RabbitError::Refused {
                    endpoint: endpoint.to_owned(),
                    reason: amqp.get_message().as_str().to_owned(),
                    source: Some(Box::new(error)),
                };
            }
            amqp.get_message().as_str().to_owned()
        }
        _ => error.to_string(),
    };
    RabbitError::Unreachable {
        endpoint: endpoint.to_owned(),
        reason,
        source: Some(Box::new(error)),
    }
}

impl Target {
    /// One connection to the target, named after this process, given `timeout` to answer.
    ///
    /// # Errors
    /// `Unreachable` (no answer in time, nothing listening, a broken handshake) or `Refused`.
    pub(crate) async fn connect(&self, timeout: Duration) -> Result<Connection, RabbitError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("fq (pid {})", std::process::id()).into())
            .with_auth_provider(PlainAuth {
                username: self.username.clone(),
                password: self.password.clone(),
            });
        tokio::time::timeout(
            timeout,
            Connection::connect_uri(self.uri.clone(), properties),
        )
        .await
        .map_err(|_| RabbitError::Unreachable {
            endpoint: self.endpoint.clone(),
            reason: format!("no answer within {timeout:?}"),
            source: None,
        })?
        .map_err(|e| connect_error(&self.endpoint, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_reaches_the_uri_or_the_endpoint() {
        let target = Target::parse("amqp://app:s3cr%2Ft@rabbit.example:5673/prod").unwrap();
        assert_eq!(target.endpoint, "amqp://app@rabbit.example:5673/prod");
        assert_eq!(target.password, "s3cr/t");
        assert!(target.uri.authority.userinfo.password.is_empty());
        assert!(!format!("{target:?}").contains("s3cr"));
        let default_vhost = Target::parse("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(default_vhost.endpoint, "amqp://guest@127.0.0.1:5672/%2f");
    }

    #[test]
    fn bad_urls_are_refused_without_the_password() {
        let err = Target::parse("amqps://u:hunter2@h/").unwrap_err();
        assert!(err.to_string().contains("TLS"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = Target::parse("amqp://u:hunter2@h:notaport/").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
