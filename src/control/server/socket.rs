//! The control socket file's life (docs/protocol.md "Transport"): a private 0700 directory
//! `<socket>.d` holding the 0600 socket `s`, and a link at `<socket>` to it, created without a
//! race, probed for a live engine before it is replaced, and removed at close only while it is
//! still this server's. Blocking file-system calls only: it runs before and after the server's
//! runtime.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::control::ControlError;
use crate::control::protocol::{
    ClientHello, FrameCodec, FrameError, HEADER_BYTES, HelloFrame, PROTOCOL_VERSION, ServerHello,
    encode_frame,
};

/// Longest a Unix socket path may be: `sun_path` holds 108 bytes with the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// How long probing an existing socket may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest answer to a probe taken for a hello.
const MAX_PROBE_ANSWER: usize = 1 << 20;

/// Checks, before the store is opened, that no live engine serves `socket` and that a
/// server could bind it: an error names the live engine's pid, a path that is too long, or
/// a file that is not a socket. A stale socket (nobody answers) is left for `start` to
/// replace.
pub(super) fn probe(socket: &Path) -> std::result::Result<(), ControlError> {
    let layout = Layout::of(socket)?;
    let meta = match std::fs::symlink_metadata(socket) {
        Ok(meta) => meta,
        // No link; but an engine whose link was deleted by hand may still serve in its
        // directory, and must be named, not have its socket taken away.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return match std::fs::symlink_metadata(&layout.real) {
                Ok(meta) if meta.file_type().is_socket() => probe_live(&layout.real),
                _ => Ok(()),
            };
        }
        Err(e) => return Err(ControlError::io("inspect the control socket", socket, e)),
    };
    // The path is fq's link into the private directory (or, left by an older fq, the
    // socket itself); anything else is somebody's file.
    let meta = if meta.file_type().is_symlink() {
        match std::fs::metadata(socket) {
            Ok(meta) => meta,
            // A dangling link: the private directory went away; `start` replaces it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(ControlError::io("inspect the control socket", socket, e)),
        }
    } else {
        meta
    };
    if !meta.file_type().is_socket() {
        return Err(ControlError::NotASocket {
            path: socket.to_path_buf(),
        });
    }
    probe_live(socket)
}

/// Where the pieces of one control socket live. The socket is bound inside a directory of
/// its own, `<socket>.d/` (mode 0700), and `<socket>` is a symbolic link to it: a client
/// connecting through the link must be able to enter the directory, so only its owner (and
/// root) can, whatever the mode of the directory `<socket>` sits in (the store's, usually
/// shared) and even on systems that ignore a socket's own mode. The link keeps the
/// documented path (`var/fq.redb.sock`) working.
#[derive(Debug)]
struct Layout {
    /// `<socket>.d`, the private directory.
    dir: PathBuf,
    /// `<socket>.d/s`, the socket itself.
    real: PathBuf,
    /// What the link at `<socket>` points to: `<name>.d/s`, relative so that the whole can be
    /// moved with its directory.
    target: PathBuf,
}

/// The socket's name inside its private directory: short, as the whole path must fit in
/// a Unix socket address.
const SOCKET_NAME: &str = "s";

impl Layout {
    /// Refuses paths the kernel cannot bind, naming the setting to change: the socket bound is
    /// `<socket>.d/s`, 4 bytes longer than `<socket>`.
    fn of(socket: &Path) -> std::result::Result<Self, ControlError> {
        let Some(name) = socket.file_name() else {
            return Err(ControlError::io(
                "use as the control socket",
                socket,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "the path names no file (set control.socket to a file path)",
                ),
            ));
        };
        let mut dir_name = name.to_owned();
        dir_name.push(".d");
        let dir = socket.with_file_name(&dir_name);
        let real = dir.join(SOCKET_NAME);
        let len = real.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(ControlError::PathTooLong {
                path: socket.to_path_buf(),
                len,
            });
        }
        Ok(Self {
            dir,
            real,
            target: Path::new(&dir_name).join(SOCKET_NAME),
        })
    }
}

/// Whether anything answers on the socket file at `socket`: `Ok` when nobody does (a stale
/// socket, replaced by `start`), else an error naming the live engine or what answered.
fn probe_live(socket: &Path) -> std::result::Result<(), ControlError> {
    let stream = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %socket.display(), "replacing a stale control socket (no engine answers on it)");
            return Ok(());
        }
        Err(e) => return Err(ControlError::io("probe the control socket", socket, e)),
    };
    match probe_hello(stream) {
        Ok(hello) => Err(ControlError::AlreadyServed {
            socket: socket.to_path_buf(),
            pid: hello.pid,
            store: hello.store,
        }),
        Err(reason) => Err(ControlError::SocketInUse {
            socket: socket.to_path_buf(),
            reason,
        }),
    }
}

/// Says hello to whatever listens on an existing socket; its hello, or why it is not an fq
/// engine. Blocking, with timeouts: it runs before the engine has a runtime.
fn probe_hello(
    mut stream: std::os::unix::net::UnixStream,
) -> std::result::Result<ServerHello, String> {
    stream
        .set_read_timeout(Some(PROBE_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(PROBE_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let hello = HelloFrame {
        hello: ClientHello {
            protocol: PROTOCOL_VERSION,
            client: format!("fq {} socket probe", env!("CARGO_PKG_VERSION")),
            token: None,
        },
    };
    let frame = encode_frame(&hello).map_err(|e| e.to_string())?;
    stream
        .write_all(&frame)
        .map_err(|e| format!("cannot write to it: {e}"))?;
    let body = read_answer(&mut stream)?;
    match serde_json::from_slice::<HelloFrame<ServerHello>>(&body) {
        Ok(frame) => Ok(frame.hello),
        Err(_) => {
            let text = String::from_utf8_lossy(&body);
            Err(format!(
                "it answered {}, not an fq hello",
                text.chars().take(200).collect::<String>()
            ))
        }
    }
}

/// Reads the one frame a probed socket answers, through the protocol's [`FrameCodec`]: what
/// answered, or why it is not a frame an fq engine would send.
fn read_answer(
    stream: &mut std::os::unix::net::UnixStream,
) -> std::result::Result<Vec<u8>, String> {
    let mut codec = FrameCodec::new(MAX_PROBE_ANSWER);
    let mut buffer = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        match codec.decode(&mut buffer) {
            Ok(Some(body)) => return Ok(body.to_vec()),
            Ok(None) => {}
            Err(FrameError::Empty) => {
                return Err("it answered a frame of 0 bytes, not an fq hello".to_owned());
            }
            Err(FrameError::TooLarge { len, .. }) => {
                return Err(format!(
                    "it answered a frame of {len} bytes, not an fq hello"
                ));
            }
            Err(e) => return Err(e.to_string()),
        }
        let read = match stream.read(&mut chunk) {
            Ok(0) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "failed to fill whole buffer",
            )),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            read => read,
        };
        match read {
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(e) if buffer.len() < HEADER_BYTES => {
                return Err(format!(
                    "it accepts connections but does not answer a hello: {e}"
                ));
            }
            Err(e) => return Err(format!("its answer was cut short: {e}")),
        }
    }
}

/// Creates the Unix socket for `path` (see [`Layout`]): a fresh directory `<path>.d` of mode
/// 0700, the socket inside it chmod'ed to 0600 (binding creates it with the umask's mode, but
/// nobody else can enter the directory meanwhile), then a link at `path` put in place by an
/// atomic rename, which replaces a stale socket or link. Changing the umask instead would race
/// with files other threads create meanwhile. The directory is made anew each time, so it is
/// this process's, with this mode, whoever left one there before.
pub(super) fn bind_unix(
    path: &Path,
) -> std::result::Result<(std::os::unix::net::UnixListener, (u64, u64)), ControlError> {
    let layout = Layout::of(path)?;
    clear_stale_dir(path, &layout.dir)?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&layout.dir)
        .map_err(|e| ControlError::io("create the control socket's directory", &layout.dir, e))?;
    let bound = (|| {
        // The umask may have taken the owner's bits too; it cannot have added any.
        std::fs::set_permissions(&layout.dir, std::fs::Permissions::from_mode(0o700)).map_err(
            |e| ControlError::io("set the control socket directory's mode", &layout.dir, e),
        )?;
        let listener = std::os::unix::net::UnixListener::bind(&layout.real)
            .map_err(|e| ControlError::io("bind the control socket", &layout.real, e))?;
        std::fs::set_permissions(&layout.real, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| ControlError::io("set the control socket's mode", &layout.real, e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| ControlError::io("configure the control socket", &layout.real, e))?;
        let meta = std::fs::symlink_metadata(&layout.real)
            .map_err(|e| ControlError::io("inspect the control socket", &layout.real, e))?;
        // A fixed name, so that one left by an engine killed right here is reused, not
        // accumulated; it is only ever a link of ours.
        let mut link_name = std::ffi::OsString::from(".");
        link_name.push(path.file_name().unwrap_or_default());
        link_name.push(".link");
        let temp_link = path.with_file_name(link_name);
        if std::fs::symlink_metadata(&temp_link).is_ok_and(|meta| meta.file_type().is_symlink()) {
            drop(std::fs::remove_file(&temp_link));
        }
        std::os::unix::fs::symlink(&layout.target, &temp_link)
            .map_err(|e| ControlError::io("link the control socket", &temp_link, e))?;
        if let Err(e) = std::fs::rename(&temp_link, path) {
            drop(std::fs::remove_file(&temp_link));
            return Err(ControlError::io(
                "move the control socket into place",
                path,
                e,
            ));
        }
        Ok((listener, (meta.dev(), meta.ino())))
    })();
    if bound.is_err() {
        drop(std::fs::remove_file(&layout.real));
        drop(std::fs::remove_dir(&layout.dir));
    }
    bound
}

/// Removes what a previous engine left at `<path>.d` (it was killed, or a stale socket was
/// found): the directory and its socket, nothing else. A directory holding anything more, or
/// a file or link in its place, is somebody else's and is refused, never deleted.
fn clear_stale_dir(path: &Path, dir: &Path) -> std::result::Result<(), ControlError> {
    let foreign = |reason: String| ControlError::ForeignDirectory {
        path: dir.to_path_buf(),
        socket: path.to_path_buf(),
        reason,
    };
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(ControlError::io(
                "inspect the control socket's directory",
                dir,
                e,
            ));
        }
    };
    if !meta.file_type().is_dir() {
        return Err(foreign("it is not a directory".to_owned()));
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ControlError::io("read the control socket's directory", dir, e))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| ControlError::io("read the control socket's directory", dir, e))?;
        let is_socket = entry.file_type().is_ok_and(|kind| kind.is_socket());
        if entry.file_name() != SOCKET_NAME || !is_socket {
            return Err(foreign(format!(
                "it holds {:?}, which fq did not put there",
                entry.file_name()
            )));
        }
        // Stale only if nobody answers: an engine whose link was deleted still serves here.
        probe_live(&entry.path())?;
        std::fs::remove_file(entry.path())
            .map_err(|e| ControlError::io("remove a stale control socket", &entry.path(), e))?;
    }
    std::fs::remove_dir(dir)
        .map_err(|e| ControlError::io("remove the stale control socket directory", dir, e))
}

/// Removes the socket, its directory and the link to it, if the socket is still the one with
/// `id`: a later engine that has put its own in place keeps it.
pub(super) fn remove_if_ours(path: &Path, id: (u64, u64)) {
    let Ok(layout) = Layout::of(path) else {
        return;
    };
    let ours =
        std::fs::symlink_metadata(&layout.real).is_ok_and(|meta| (meta.dev(), meta.ino()) == id);
    if !ours {
        return;
    }
    if std::fs::read_link(path).is_ok_and(|target| target == layout.target)
        && let Err(e) = std::fs::remove_file(path)
    {
        tracing::warn!(socket = %path.display(), error = %e, "cannot remove the control socket's link");
    }
    if let Err(e) = std::fs::remove_file(&layout.real) {
        tracing::warn!(socket = %layout.real.display(), error = %e, "cannot remove the control socket");
    }
    if let Err(e) = std::fs::remove_dir(&layout.dir) {
        tracing::warn!(dir = %layout.dir.display(), error = %e, "cannot remove the control socket's directory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::ControlServer;

    #[test]
    fn long_socket_paths_are_refused_naming_the_setting() {
        let long = PathBuf::from(format!("/tmp/{}/fq.redb.sock", "d".repeat(120)));
        let err = ControlServer::probe(&long).unwrap_err().to_string();
        assert!(err.contains("control.socket"), "{err}");
        assert!(err.contains("bytes"), "{err}");
    }

    /// What the probe says of each answer that is not an fq hello, worded as when it read the
    /// frame by hand.
    #[test]
    fn probe_answers_that_are_not_hellos_are_named() {
        use std::os::unix::net::UnixStream;
        let answer = |bytes: &[u8]| {
            let (mut ours, mut theirs) = UnixStream::pair().unwrap();
            theirs.write_all(bytes).unwrap();
            drop(theirs);
            read_answer(&mut ours)
        };
        assert_eq!(answer(b"\0\0\0\x02{}").unwrap(), b"{}");
        assert_eq!(
            answer(b"\0\0\0\0").unwrap_err(),
            "it answered a frame of 0 bytes, not an fq hello"
        );
        assert_eq!(
            answer(&(2u32 << 20).to_be_bytes()).unwrap_err(),
            "it answered a frame of 2097152 bytes, not an fq hello"
        );
        assert_eq!(
            answer(b"\0\0").unwrap_err(),
            "it accepts connections but does not answer a hello: failed to fill whole buffer"
        );
        assert_eq!(
            answer(b"\0\0\0\x09{}").unwrap_err(),
            "its answer was cut short: failed to fill whole buffer"
        );
    }
}
