//! Frames (docs/protocol.md "Frames"): a 4-byte big-endian length, then that many bytes of
//! JSON. Reading goes through [`FrameCodec`], tokio-util's `LengthDelimitedCodec` behind a
//! check that refuses a zero or oversized length before anything is set aside for it, and
//! [`FrameReader`], which keeps one buffer per stream; writing goes through [`FrameWriter`],
//! which gathers frames so pipelined ones share a write. Owns the byte format, no sockets.

use std::io;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::{Error, Result};

/// Bytes of the length prefix.
pub(crate) const HEADER_BYTES: usize = 4;
/// The largest response frame a client accepts. Responses are not bound by the request limit
/// (a claim of many tasks with large payloads is legitimately big), but a length prefix past
/// this is taken for garbage.
pub(crate) const MAX_RESPONSE_BYTES: usize = 1 << 30;
/// The largest JSON document the length prefix can announce (4 GiB - 1).
const MAX_BODY_BYTES: u64 = u32::MAX as u64;
/// What a stream's read buffer starts with; it grows only for a frame that does not fit, as
/// the frame's bytes arrive.
pub(crate) const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Frames gathered before they are written out even though more are waiting.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// A zero length prefix: every frame holds a JSON document.
    #[error("frame length is zero; every frame must hold a JSON document")]
    Empty,
    /// A length prefix over the limit; nothing was allocated for it.
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// The length the prefix announced.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("truncated frame: the stream ended after {got} of {expected} bytes")]
    Truncated {
        /// Bytes received (of the header, or of the body).
        got: usize,
        /// Bytes announced.
        expected: usize,
    },
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The 4-byte big-endian length codec, configured for one limit.
fn length_codec(max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(HEADER_BYTES)
        .big_endian()
        .max_frame_length(max)
        .new_codec()
}

/// Decodes frames of at most `max` bytes of JSON, yielding each frame's JSON.
///
/// `LengthDelimitedCodec` reserves the whole announced length as soon as it reads a prefix,
/// and refuses one over the limit with an error that does not say how long it was. So the
/// prefix is checked here first, a refusal names the length and allocates nothing, and the
/// codec is handed a frame only once all of it has arrived: the buffer grows with the bytes
/// that come, so a lying prefix costs no memory.
#[derive(Debug)]
pub(crate) struct FrameCodec {
    max: usize,
    lengths: LengthDelimitedCodec,
}

impl FrameCodec {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            lengths: length_codec(max),
        }
    }

    /// The length the prefix at the start of `src` announces, once all 4 bytes are there.
    fn announced(src: &[u8]) -> Option<u32> {
        src.first_chunk::<HEADER_BYTES>()
            .map(|header| u32::from_be_bytes(*header))
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> std::result::Result<Option<BytesMut>, FrameError> {
        let Some(len) = Self::announced(src) else {
            return Ok(None);
        };
        let expected = match usize::try_from(len) {
            Ok(0) => {
                src.advance(HEADER_BYTES);
                return Err(FrameError::Empty);
            }
            Ok(expected) if expected <= self.max => expected,
            _ => {
                src.advance(HEADER_BYTES);
                return Err(FrameError::TooLarge {
                    len: u64::from(len),
                    max: self.max,
                });
            }
        };
        if src.len() < HEADER_BYTES + expected {
            return Ok(None);
        }
        Ok(self.lengths.decode(src)?)
    }

    fn decode_eof(
        &mut self,
        src: &mut BytesMut,
    ) -> std::result::Result<Option<BytesMut>, FrameError> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        if src.is_empty() {
            return Ok(None);
        }
        let truncated = match Self::announced(src) {
            None => FrameError::Truncated {
                got: src.len(),
                expected: HEADER_BYTES,
            },
            Some(len) => FrameError::Truncated {
                got: src.len() - HEADER_BYTES,
                expected: usize::try_from(len).unwrap_or(usize::MAX),
            },
        };
        // Nothing more will come: what was left is the truncated frame, taken whole.
        src.clear();
        Err(truncated)
    }
}

/// Reads frames off a byte stream through one buffer kept for the stream's life.
#[derive(Debug)]
pub(crate) struct FrameReader<R> {
    reader: R,
    buffer: BytesMut,
    codec: FrameCodec,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Frames of at most `max` bytes of JSON, read through a [`READ_BUFFER_BYTES`] buffer.
    pub(crate) fn new(reader: R, max: usize) -> Self {
        Self::with_capacity(reader, max, READ_BUFFER_BYTES)
    }

    /// As [`FrameReader::new`], with a read buffer of `capacity` bytes to start with.
    pub(crate) fn with_capacity(reader: R, max: usize, capacity: usize) -> Self {
        Self {
            reader,
            buffer: BytesMut::with_capacity(capacity),
            codec: FrameCodec::new(max),
        }
    }

    /// Reads one frame's JSON; `Ok(None)` when the stream ends cleanly between frames.
    ///
    /// Cancel-safe: bytes read before the future is dropped stay in the buffer.
    pub(crate) async fn read_frame(&mut self) -> std::result::Result<Option<BytesMut>, FrameError> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buffer)? {
                return Ok(Some(frame));
            }
            if self.reader.read_buf(&mut self.buffer).await? == 0 {
                return self.codec.decode_eof(&mut self.buffer);
            }
        }
    }

    /// The stream, dropping whatever was read but not yet taken as a frame.
    pub(crate) fn into_inner(self) -> R {
        self.reader
    }

    /// The stream.
    #[cfg(any(test, feature = "internals"))]
    pub(crate) fn get_ref(&self) -> &R {
        &self.reader
    }

    /// Bytes read from the stream but not yet taken as a frame.
    #[cfg(any(test, feature = "internals"))]
    pub(crate) fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// The read buffer's capacity.
    #[cfg(any(test, feature = "internals"))]
    pub(crate) fn capacity(&self) -> usize {
        self.buffer.capacity()
    }
}

/// Writes frames through a buffer: frames go out together at [`FrameWriter::flush`], or once
/// [`WRITE_BUFFER_BYTES`] are waiting, so many pipelined frames share one write system call.
#[derive(Debug)]
pub(crate) struct FrameWriter<W> {
    writer: W,
    buffer: BytesMut,
    codec: LengthDelimitedCodec,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub(crate) fn new(writer: W) -> Self {
        Self {
            writer,
            buffer: BytesMut::new(),
            // Any length the prefix can hold: what is written was sized by `encode_body`.
            codec: length_codec(usize::MAX),
        }
    }

    /// Queues a frame holding `body` (JSON from [`encode_body`]), writing out what waits once
    /// the buffer is full.
    ///
    /// # Errors
    /// The socket failed, or `body` is over 4 GiB.
    pub(crate) async fn send(&mut self, body: &[u8]) -> io::Result<()> {
        self.codec.encode(body, &mut self.buffer)?;
        if self.buffer.len() >= WRITE_BUFFER_BYTES {
            self.write_buffered().await?;
        }
        Ok(())
    }

    /// Writes out every queued frame.
    ///
    /// # Errors
    /// The socket failed.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        self.write_buffered().await?;
        self.writer.flush().await
    }

    /// Writes out every queued frame, then shuts the write side down.
    ///
    /// # Errors
    /// The socket failed.
    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        self.flush().await?;
        self.writer.shutdown().await
    }

    async fn write_buffered(&mut self) -> io::Result<()> {
        self.writer.write_all_buf(&mut self.buffer).await?;
        // A huge frame (a big claim or list page) is not kept as the connection's buffer.
        if self.buffer.capacity() > 4 * WRITE_BUFFER_BYTES {
            self.buffer = BytesMut::new();
        }
        Ok(())
    }
}

/// The JSON of a frame holding `value`.
///
/// # Errors
/// A value that does not serialize, or a document over 4 GiB.
pub(crate) fn encode_body<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let body = serde_json::to_vec(value)
        .map_err(|e| Error::Internal(format!("cannot encode a control frame: {e}")))?;
    if u64::try_from(body.len()).map_or(true, |len| len > MAX_BODY_BYTES) {
        return Err(Error::Internal(format!(
            "a control frame of {} bytes does not fit the 4-byte length prefix",
            body.len() + HEADER_BYTES
        )));
    }
    Ok(body)
}

/// A whole frame (length prefix included) holding `value` as JSON, for writers outside
/// tokio (the blocking socket probe).
///
/// # Errors
/// As [`encode_body`].
pub(crate) fn encode_frame<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let body = encode_body(value)?;
    let mut frame = BytesMut::with_capacity(HEADER_BYTES + body.len());
    length_codec(usize::MAX)
        .encode(&body[..], &mut frame)
        .map_err(|e| Error::Internal(format!("cannot frame a control message: {e}")))?;
    Ok(Vec::from(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_one(
        bytes: &[u8],
        max: usize,
    ) -> std::result::Result<Option<BytesMut>, FrameError> {
        FrameReader::new(bytes, max).read_frame().await
    }

    #[tokio::test]
    async fn frames_round_trip_and_bad_prefixes_are_refused_before_allocating() {
        let frame = encode_frame(&serde_json::json!({"a": 1})).unwrap();
        assert_eq!(&frame[..4], &7u32.to_be_bytes());
        let mut reader = FrameReader::new(&frame[..], 100);
        assert_eq!(
            &reader.read_frame().await.unwrap().unwrap()[..],
            br#"{"a":1}"#
        );
        assert!(reader.read_frame().await.unwrap().is_none());

        assert!(matches!(
            read_one(&[0u8, 0, 0, 0], 100).await,
            Err(FrameError::Empty)
        ));
        // 4 GiB - 1 announced, nothing behind it: refused on the prefix alone.
        let mut huge = FrameReader::with_capacity(&[0xffu8, 0xff, 0xff, 0xff][..], 2 << 20, 16);
        assert!(matches!(
            huge.read_frame().await,
            Err(FrameError::TooLarge {
                len: 4_294_967_295,
                ..
            })
        ));
        // The prefix taken leaves 12 of the 16 bytes: nothing was set aside for the length.
        assert!(huge.capacity() <= 16, "{}", huge.capacity());
        assert!(matches!(
            read_one(&[0u8, 0], 100).await,
            Err(FrameError::Truncated {
                got: 2,
                expected: 4
            })
        ));
        assert!(matches!(
            read_one(&[0u8, 0, 0, 10, b'{'], 100).await,
            Err(FrameError::Truncated {
                got: 1,
                expected: 10
            })
        ));
    }

    #[tokio::test]
    async fn written_frames_are_the_prefix_and_the_json() {
        let mut written = Vec::new();
        let mut writer = FrameWriter::new(&mut written);
        for value in [serde_json::json!({"a": 1}), serde_json::json!("é")] {
            writer.send(&encode_body(&value).unwrap()).await.unwrap();
        }
        writer.flush().await.unwrap();
        let mut expected = encode_frame(&serde_json::json!({"a": 1})).unwrap();
        expected.extend_from_slice(&encode_frame(&serde_json::json!("é")).unwrap());
        assert_eq!(written, expected);
        assert_eq!(&written[..4], &7u32.to_be_bytes());
        assert_eq!(&written[11..15], &4u32.to_be_bytes());
    }
}
