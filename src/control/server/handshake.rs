//! The control server's side of the handshake (docs/protocol.md "Handshake"): reading and
//! checking the client's hello within [`HELLO_TIMEOUT`] (protocol version, and over TCP the
//! token, compared in constant time with `subtle`), and the hello the server answers with.

use std::time::Duration;

use tokio::io::AsyncRead;

use super::ServerCtx;
use super::connection::Transport;
use crate::control::protocol::{
    ClientHello, FrameError, FrameReader, HelloFrame, MAX_IN_FLIGHT, PROTOCOL_VERSION, ServerHello,
    WireDefaults, WireError, WireRetention,
};

/// How long a new connection has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads and checks the client's hello. `Err(None)`: the client left without one.
pub(super) async fn handshake<R: AsyncRead + Unpin>(
    ctx: &ServerCtx,
    reader: &mut FrameReader<R>,
    transport: Transport,
) -> std::result::Result<ClientHello, Option<WireError>> {
    let frame = match tokio::time::timeout(HELLO_TIMEOUT, reader.read_frame()).await {
        Err(_) => {
            return Err(Some(WireError::new(
                "handshake_timeout",
                format!("no hello within {} s", HELLO_TIMEOUT.as_secs()),
            )));
        }
        Ok(Ok(Some(frame))) => frame,
        Ok(Ok(None) | Err(FrameError::Io(_))) => return Err(None),
        Ok(Err(e @ FrameError::TooLarge { .. })) => {
            return Err(Some(WireError::new(
                "frame_too_large",
                format!("{e} (limits.max_frame_bytes)"),
            )));
        }
        Ok(Err(e)) => return Err(Some(WireError::new("bad_frame", e.to_string()))),
    };
    let hello = match serde_json::from_slice::<HelloFrame<ClientHello>>(&frame) {
        Ok(frame) => frame.hello,
        Err(e) => {
            return Err(Some(WireError::new(
                "hello_required",
                format!(
                    "the first frame must be a hello such as {{\"hello\": {{\"protocol\": {PROTOCOL_VERSION}, \"client\": \"my-app\"}}}}: {e}"
                ),
            )));
        }
    };
    if hello.protocol != PROTOCOL_VERSION {
        return Err(Some(WireError::new(
            "unsupported_protocol",
            format!(
                "this engine speaks control protocol {PROTOCOL_VERSION}; the client asked for protocol {}",
                hello.protocol
            ),
        )));
    }
    if transport == Transport::Tcp
        && let Some(token) = &ctx.settings.token
        && !hello
            .token
            .as_deref()
            .is_some_and(|given| same_token(token, given))
    {
        let problem = if hello.token.is_some() {
            "wrong control token"
        } else {
            "a control token is required over TCP"
        };
        return Err(Some(WireError::new(
            "unauthorized",
            format!("{problem} (the server's control.token; clients pass it as FQ_TOKEN)"),
        )));
    }
    Ok(hello)
}

/// Compares in time that depends only on `expected`'s length (the server's own token), so a
/// client can find neither the token byte by byte nor its length by timing refusals. `subtle`
/// keeps the optimizer from turning the loop into an early exit; its slice comparison is not
/// used because it returns at once on a length mismatch.
fn same_token(expected: &str, given: &str) -> bool {
    use subtle::ConstantTimeEq;
    let (expected, given) = (expected.as_bytes(), given.as_bytes());
    let mut equal = expected.len().ct_eq(&given.len());
    for (index, byte) in expected.iter().enumerate() {
        // Past the end of `given` the lengths already differ; 0 only keeps the work the same.
        equal &= byte.ct_eq(&given.get(index).copied().unwrap_or(0));
    }
    bool::from(equal)
}

pub(super) fn server_hello(ctx: &ServerCtx) -> ServerHello {
    let settings = &ctx.settings;
    ServerHello {
        protocol: PROTOCOL_VERSION,
        server: format!("fq {}", env!("CARGO_PKG_VERSION")),
        pid: std::process::id(),
        store: settings.store.display().to_string(),
        now_ms: ctx.broker.now_ms(),
        max_frame_bytes: settings.max_frame_bytes,
        max_payload_bytes: settings.max_payload_bytes,
        max_in_flight: MAX_IN_FLIGHT,
        lease_ms: crate::clock::duration_ms(settings.lease),
        defaults: WireDefaults {
            queue: settings.defaults.queue.clone(),
            priority: settings.defaults.priority,
            max_retries: settings.defaults.max_retries,
            timeout_ms: settings.defaults.timeout.map(crate::clock::duration_ms),
        },
        retention: WireRetention {
            completed_ms: crate::clock::duration_ms(settings.retention.completed),
            failed_ms: crate::clock::duration_ms(settings.retention.failed),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(same_token("s3cret", "s3cret"));
        assert!(!same_token("s3cret", "s3cre"));
        assert!(!same_token("s3cret", "s3cret!"));
        assert!(!same_token("s3cret", "S3cret"));
        assert!(!same_token("s3cret", ""));
    }

    /// Every wrong token is refused: each proper prefix (the empty one too), the token with
    /// anything appended, every single-byte change at every position (to every other byte
    /// value), a NUL-padded token (the comparison pads the shorter side with 0 internally),
    /// and tokens of every length up to twice the real one.
    #[test]
    fn wrong_tokens_of_every_length_and_prefix_are_refused() {
        let token = "k7#Qx9-v\u{e9}t\u{2603}z";
        let bytes = token.as_bytes();
        let mut refused = 0usize;
        let mut check = |given: &[u8]| {
            if given == bytes {
                return;
            }
            let given = String::from_utf8_lossy(given);
            if given.as_bytes() == bytes {
                return;
            }
            assert!(!same_token(token, &given), "accepted {given:?}");
            refused += 1;
        };
        for len in 0..bytes.len() {
            check(&bytes[..len]);
            check(&bytes[len + 1..]);
        }
        for extra in [&b"\0"[..], b"x", b"\0\0\0", bytes] {
            check(&[bytes, extra].concat());
        }
        for index in 0..bytes.len() {
            for value in 0..=u8::MAX {
                let mut changed = bytes.to_vec();
                changed[index] = value;
                check(&changed);
            }
        }
        for len in 0..=2 * bytes.len() {
            check(&vec![b'a'; len]);
            check(&vec![0; len]);
        }
        assert!(same_token(token, token));
        assert!(refused > 255 * bytes.len(), "{refused}");
        println!("same_token: {refused} wrong tokens refused");
    }
}
