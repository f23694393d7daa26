//! Item 9 of the reliability suite (issue 6): the control socket's security.
//!
//! - The socket is mode 0600 inside a directory of mode 0700 that only its owner can enter,
//!   whatever the mode of the store's own directory; the documented path (`<store>.sock`) is
//!   a link into it, and leftovers of a killed engine are replaced while files fq did not make
//!   are refused, never deleted.
//! - Another local user cannot connect: as root, the test creates a system user and runs the
//!   `fq` binary as that user against the socket (skipped with a notice when not root, a
//!   failure under `FQ_REQUIRE_ROOT_TESTS=1`).
//! - `fq serve`, `fq worker start` and an embedded engine listen on no TCP port by default
//!   (read from `/proc/<pid>/fd` and `/proc/net/tcp{,6}`).
//! - A listener on an address other than loopback without a token refuses to start (IPv6 and
//!   library cases here; IPv4, config-file and CLI cases are in tests/suite/control.rs and
//!   tests/suite/bad_input_table.rs).
//! - Tokens: every wrong one (each prefix, each single-byte change, longer ones) is refused
//!   over TCP; the comparison is `subtle`'s (unit test `wrong_tokens_of_every_length_and_prefix
//!   _are_refused` in src/control/server.rs). No timing is measured.
//! - The connection limit holds across Unix and TCP while the first N keep working; an
//!   oversized frame is refused before authentication. The frame limit itself is covered
//!   row by row by tests/suite/bad_input_table.rs (zero, one-over-the-limit, cut and huge
//!   prefixes).
//! - No secret (AMQP password, in `rabbitmq.password` or in a URL, the control token) appears
//!   in TRACE-level logs of an engine run (RabbitMQ unreachable and refusing with
//!   `--features rabbitmq`), nor in the stdout/stderr of `fq` commands, `--json` and `-vvv`,
//!   nor in configuration errors.
//!
//! Every test prints its figures and its seed: `FQ_SEED=<n>` replays the secrets and token
//! variants, `FQ_FULL=1` tries every byte value at every token position over TCP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::common::child::{self, ChildGuard};

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use fq::{Config, ConnectOptions, ControlError, Engine, Error, Registry, TaskContext, TaskError};
use serde_json::{Value, json};

use common::PATIENCE;

use crate::common::run;
use run::{full, seed};

// --- seeds, secrets, captured logs ------------------------------------------------------------

/// A random secret no other test uses: `<label>` plus 20 letters and digits.
fn secret(rng: &mut fastrand::Rng, label: &str) -> String {
    let tail: String = (0..20).map(|_| rng.alphanumeric()).collect();
    format!("{label}{tail}")
}

/// While this counts more than 0 (a test of this file is running), everything every thread of
/// the test binary logs, at TRACE level (fq's and lapin's), is captured; otherwise nothing is
/// (the suite's other areas run in the same process, and their logs would only cost time).
static CAPTURING: AtomicUsize = AtomicUsize::new(0);

/// Captures the logs (see [`CAPTURING`]) until the guard drops: each test takes one first.
struct Capture;

impl Drop for Capture {
    fn drop(&mut self) {
        CAPTURING.fetch_sub(1, Ordering::SeqCst);
    }
}

fn capture_logs() -> Capture {
    CAPTURING.fetch_add(1, Ordering::SeqCst);
    let _ = logs();
    Capture
}

/// The captured logs (the subscriber is installed for the process at the first call).
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        use tracing_subscriber::Layer;
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buffer);
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || LogWriter(Arc::clone(&sink)))
            .with_filter(tracing_subscriber::filter::dynamic_filter_fn(|_, _| {
                CAPTURING.load(Ordering::SeqCst) > 0
            }));
        let installed = tracing_subscriber::registry().with(layer).try_init();
        assert!(installed.is_ok(), "another subscriber was installed first");
        buffer
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The captured logs as text.
fn captured() -> String {
    let bytes = logs()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The forms a secret could take in text: itself, percent-encoded, JSON-escaped.
fn forms(secret: &str) -> Vec<String> {
    let mut encoded = String::new();
    for byte in secret.bytes() {
        if byte.is_ascii_alphanumeric() {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    let json = serde_json::to_string(secret).unwrap();
    let mut forms = vec![
        secret.to_owned(),
        encoded.clone(),
        encoded.to_lowercase(),
        json.trim_matches('"').to_owned(),
    ];
    forms.dedup();
    forms
}

/// Fails naming the secret and the context around its first appearance in `text`.
fn assert_no_secret(what: &str, text: &str, secrets: &[String]) {
    for secret in secrets {
        for form in forms(secret) {
            if let Some(at) = text.find(&form) {
                let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
                panic!(
                    "a secret ({form:?}) appears in {what} (seed {}): {}",
                    seed(),
                    &text[start..end]
                );
            }
        }
    }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// `fq` with `args` in `dir`, with no `FQ_*`/`RUST_LOG` from the caller's environment.
fn fq_command(dir: &Path, args: &[&str]) -> Command {
    let mut command = child::fq();
    command.args(args).current_dir(dir).stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("FQ_") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    command
}

/// Runs to the end within `limit`, else kills (SIGTERM first, so `serve` and `worker start`
/// say goodbye) and collects what it printed.
fn run_for(mut command: Command, limit: Duration) -> (Option<i32>, String, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        drop(stdout.read_to_string(&mut text));
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        drop(stderr.read_to_string(&mut text));
        text
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            drop(
                Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status(),
            );
            let grace = Instant::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(20));
            }
            drop(child.kill());
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code(), out.join().unwrap(), err.join().unwrap())
}

async fn wait_for_socket(socket: &Path) -> Engine {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match Engine::connect(&format!("unix:{}", socket.display())).await {
            Ok(engine) => return engine,
            Err(err) => assert!(Instant::now() < deadline, "{}: {err}", socket.display()),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

use common::{tcp_lock, tcp_lock_blocking};

fn echo_registry() -> Registry {
    let mut registry = Registry::new();
    registry.register_async("sec.echo", |args: Value, _ctx: TaskContext| async move {
        Ok::<_, TaskError>(args)
    });
    registry
}

// --- the socket file: 0600 in a 0700 directory --------------------------------------------------

/// The socket used to sit in the store's own directory: whoever could enter that directory
/// (usually everyone, `/srv/app/var` is 0755) reached the socket, protected by its 0600 mode
/// alone, which some systems ignore for sockets. It now lives in `<socket>.d/` (0700), with
/// `<socket>` a link to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_the_socket_lived_in_a_directory_other_users_could_enter() -> fq::Result<()> {
    let _capture = capture_logs();
    let dir = tempfile::tempdir().unwrap();
    // A typical shared data directory, as most deployments have.
    chmod(dir.path(), 0o755);
    let store = dir.path().join("fq.redb");
    let socket = dir.path().join("fq.redb.sock");
    let private = dir.path().join("fq.redb.sock.d");
    let engine = Engine::open(&store)?;
    assert_eq!(engine.control_socket(), Some(socket.as_path()));
    let owner = std::fs::metadata(&store).unwrap().uid();

    let link = std::fs::symlink_metadata(&socket).unwrap();
    assert!(link.file_type().is_symlink(), "{:?}", link.file_type());
    assert_eq!(
        std::fs::read_link(&socket).unwrap(),
        Path::new("fq.redb.sock.d/s")
    );
    let private_meta = std::fs::symlink_metadata(&private).unwrap();
    assert!(private_meta.file_type().is_dir());
    assert_eq!(mode(&private), 0o700, "the socket's directory");
    assert_eq!(private_meta.uid(), owner);
    let real = private.join("s");
    let real_meta = std::fs::symlink_metadata(&real).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_socket(
        &real_meta.file_type()
    ));
    assert_eq!(mode(&real), 0o600, "the socket");
    assert_eq!(real_meta.uid(), owner);
    // The documented addresses keep working: the link, the store path, the socket itself.
    for addr in [
        format!("unix:{}", socket.display()),
        store.display().to_string(),
        format!("unix:{}", real.display()),
    ] {
        let remote = Engine::connect(&addr).await?;
        assert_eq!(remote.stats().await?.total(), 0, "{addr}");
    }
    drop(engine);
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["fq.redb".to_owned()], "left behind");

    // A configured socket elsewhere, in a world-writable sticky directory like /tmp.
    let shared = tempfile::tempdir().unwrap();
    chmod(shared.path(), 0o1777);
    let elsewhere = shared.path().join("app.sock");
    let mut config = Config::default();
    config.control.socket = Some(elsewhere.clone());
    let engine = Engine::builder(&store).config(config.clone()).open()?;
    assert_eq!(mode(&shared.path().join("app.sock.d")), 0o700);
    assert_eq!(mode(&shared.path().join("app.sock.d/s")), 0o600);
    drop(Engine::connect(&format!("unix:{}", elsewhere.display())).await?);
    // With its link deleted by hand, the engine still serves in its directory: a second one
    // configured with the same path names it (before creating its store) instead of taking
    // its socket away.
    std::fs::remove_file(&elsewhere).unwrap();
    let other = dir.path().join("other.redb");
    let err = Engine::builder(&other)
        .config(config.clone())
        .open()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Control(ControlError::AlreadyServed { pid, .. }) if *pid == std::process::id()),
        "{err:?}"
    );
    assert!(!other.exists(), "a store was created before the refusal");
    let real_elsewhere = shared.path().join("app.sock.d/s");
    drop(Engine::connect(&format!("unix:{}", real_elsewhere.display())).await?);
    drop(engine);
    assert!(!real_elsewhere.exists(), "the socket outlived its engine");

    // What a killed engine leaves (a link, a directory opened up meanwhile, a stale socket)
    // is replaced by a fresh private directory.
    let stale_dir = shared.path().join("app.sock.d");
    std::fs::create_dir(&stale_dir).unwrap();
    chmod(&stale_dir, 0o777);
    drop(std::os::unix::net::UnixListener::bind(stale_dir.join("s")).unwrap());
    std::os::unix::fs::symlink("app.sock.d/s", &elsewhere).unwrap();
    // Killed while putting the link in place.
    std::os::unix::fs::symlink("app.sock.d/s", shared.path().join(".app.sock.link")).unwrap();
    let engine = Engine::builder(&store).config(config.clone()).open()?;
    assert_eq!(
        mode(&stale_dir),
        0o700,
        "the stale directory was reused as is"
    );
    let names: Vec<String> = std::fs::read_dir(shared.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    drop(Engine::connect(&format!("unix:{}", elsewhere.display())).await?);
    drop(engine);

    // Somebody else's files in the way are refused, never deleted, never followed.
    let mut refused = 0;
    std::fs::create_dir(&stale_dir).unwrap();
    std::fs::write(stale_dir.join("notes.txt"), "mine").unwrap();
    let target = tempfile::tempdir().unwrap();
    let target_mode = mode(target.path());
    for setup in [
        "foreign file inside",
        "a file in its place",
        "a link in its place",
    ] {
        match setup {
            "a file in its place" => {
                std::fs::remove_file(stale_dir.join("notes.txt")).unwrap();
                std::fs::remove_dir(&stale_dir).unwrap();
                std::fs::write(&stale_dir, "mine").unwrap();
            }
            "a link in its place" => {
                std::fs::remove_file(&stale_dir).unwrap();
                std::os::unix::fs::symlink(target.path(), &stale_dir).unwrap();
            }
            _ => {}
        }
        let err = Engine::builder(&store)
            .config(config.clone())
            .open()
            .unwrap_err();
        assert!(
            matches!(err, Error::Control(ControlError::ForeignDirectory { .. })),
            "{setup}: {err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("app.sock.d") && message.contains("control.socket"),
            "{message}"
        );
        assert!(!elsewhere.exists(), "{setup}: a socket was served anyway");
        refused += 1;
    }
    assert!(std::fs::read_link(&stale_dir).is_ok_and(|t| t == target.path()));
    assert_eq!(mode(target.path()), target_mode, "the link was followed");
    println!(
        "socket: link {} -> fq.redb.sock.d/s, directory {:o}, socket {:o} (store directory \
         0755); a stale 0777 directory replaced by a 0700 one; {refused} \
         foreign paths refused and kept; seed {}",
        socket.display(),
        0o700,
        0o600,
        seed()
    );
    Ok(())
}

/// The modes are set, not inherited: under a umask of 000 (binding would make a 0777
/// socket) and of 077, and (as root, where an unreadable store still opens) 0777.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_and_directory_modes_do_not_depend_on_the_umask() {
    let _capture = capture_logs();
    let mut umasks = vec!["000", "077"];
    if is_root() {
        umasks.push("777");
    }
    for umask in &umasks {
        let dir = tempfile::tempdir().unwrap();
        let script = format!("umask {umask} && exec \"$0\" serve --db fq.redb");
        let child = ChildGuard(
            Command::new("sh")
                .arg("-c")
                .arg(&script)
                .arg(child::fq_path())
                .current_dir(dir.path())
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        drop(wait_for_socket(&dir.path().join("fq.redb.sock")).await);
        assert_eq!(
            mode(&dir.path().join("fq.redb.sock.d")),
            0o700,
            "umask {umask}"
        );
        assert_eq!(
            mode(&dir.path().join("fq.redb.sock.d/s")),
            0o600,
            "umask {umask}"
        );
        assert_eq!(
            mode(&dir.path().join("fq.redb")) & 0o077,
            0,
            "the store file, umask {umask}"
        );
        drop(child);
    }
    println!(
        "socket 0600 in a 0700 directory under umasks {}; seed {}",
        umasks.join(", "),
        seed()
    );
}

/// The store file was created with the process's umask (0644 under the usual 022), so any
/// local user could copy it and read every task's arguments while the socket refused them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_the_store_file_was_readable_by_other_local_users() -> fq::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let store = dir.path().join("fq.redb");
    drop(Engine::open(&store)?);
    assert_eq!(mode(&store), 0o600, "a new store file");
    // Reopening an existing store leaves its mode alone: an operator's choice stands.
    chmod(&store, 0o640);
    drop(Engine::open(&store)?);
    assert_eq!(mode(&store), 0o640, "an existing store file");
    Ok(())
}

// --- another local user -------------------------------------------------------------------------

const OTHER_USER: &str = "fq-sec-test";

/// The other user's (uid, gid), created when missing; `None` (after a notice) when this
/// process cannot do it, a failure under `FQ_REQUIRE_ROOT_TESTS=1`.
fn other_user() -> Option<(u32, u32)> {
    let required = std::env::var("FQ_REQUIRE_ROOT_TESTS").is_ok_and(|v| v == "1");
    let skip = |why: &str| {
        assert!(!required, "FQ_REQUIRE_ROOT_TESTS=1 but {why}");
        println!(
            "skipping the other-user test: {why} (set FQ_REQUIRE_ROOT_TESTS=1 to fail instead)"
        );
        None
    };
    if !is_root() {
        return skip("not running as root");
    }
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, OTHER_USER]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    if id("-u").is_none() {
        let created = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                OTHER_USER,
            ])
            .status();
        match created {
            // 9: created meanwhile by a parallel run.
            Ok(status) if status.success() || status.code() == Some(9) => {}
            Ok(status) => return skip(&format!("useradd failed ({status})")),
            Err(e) => return skip(&format!("useradd is missing ({e})")),
        }
    }
    match (id("-u"), id("-g")) {
        (Some(uid), Some(gid)) if uid != 0 => Some((uid, gid)),
        other => skip(&format!("cannot read the user's ids: {other:?}")),
    }
}

/// `fq args` run as the other user (setpriv drops every privilege root has, supplementary
/// groups included).
fn fq_as(user: (u32, u32), fq: &Path, dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={}", user.0))
        .arg(format!("--regid={}", user.1))
        .arg("--clear-groups")
        .arg(fq)
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", dir)
        .stdin(Stdio::null());
    run_for(command, PATIENCE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_local_user_cannot_connect() -> fq::Result<()> {
    let _capture = capture_logs();
    let Some(user) = other_user() else {
        return Ok(());
    };
    if Command::new("setpriv").arg("--version").output().is_err() {
        assert!(
            !std::env::var("FQ_REQUIRE_ROOT_TESTS").is_ok_and(|v| v == "1"),
            "setpriv is missing"
        );
        println!("skipping the other-user test: setpriv is missing");
        return Ok(());
    }
    let dir = tempfile::tempdir().unwrap();
    // The other user may enter the store's directory, as in a typical deployment, so only
    // the socket's own directory and mode stand in the way.
    chmod(dir.path(), 0o755);
    // The binary may sit where the other user cannot reach it (CI's clone): use a copy.
    let mut fq = child::fq_path();
    if fq_as(user, &fq, dir.path(), &["--version"]).0 != Some(0) {
        let copy = dir.path().join("fq");
        std::fs::copy(&fq, &copy).unwrap();
        chmod(&copy, 0o755);
        fq = copy;
    }
    let (code, out, err) = fq_as(user, &fq, dir.path(), &["--version"]);
    assert_eq!(code, Some(0), "the other user cannot run fq: {out}{err}");

    let store = dir.path().join("fq.redb");
    let socket = dir.path().join("fq.redb.sock");
    let engine = Engine::open(&store)?;
    engine
        .queue_task_named("sec.private", &json!({"kwargs": {"x": 1}}))
        .send()
        .await?;

    // The control: the same user, binary and command reach an engine whose socket and
    // directory were opened up by hand, so a refusal below is the permissions' doing.
    let open_dir = dir.path().join("open");
    std::fs::create_dir(&open_dir).unwrap();
    chmod(&open_dir, 0o755);
    let mut config = Config::default();
    config.control.socket = Some(open_dir.join("b.sock"));
    let open_engine = Engine::builder(open_dir.join("b.redb"))
        .config(config)
        .open()?;
    chmod(&open_dir.join("b.sock.d"), 0o755);
    chmod(&open_dir.join("b.sock.d/s"), 0o666);
    let open_addr = format!("unix:{}", open_dir.join("b.sock").display());
    let (code, out, err) = fq_as(
        user,
        &fq,
        dir.path(),
        &["--json", "--connect", &open_addr, "stats"],
    );
    assert_eq!(code, Some(0), "control run failed: {out}{err}");
    let stats: Value = serde_json::from_str(&out).unwrap();
    assert!(stats.is_object(), "{out}");
    drop(open_engine);

    let mut denied = 0;
    let real = dir.path().join("fq.redb.sock.d/s");
    let cases: [(&str, String, Option<u32>); 3] = [
        (
            "through the link",
            format!("unix:{}", socket.display()),
            None,
        ),
        (
            "the socket itself",
            format!("unix:{}", real.display()),
            None,
        ),
        (
            "socket chmod 0666 (a system ignoring socket modes)",
            format!("unix:{}", socket.display()),
            Some(0o666),
        ),
    ];
    for (case, addr, socket_mode) in cases {
        if let Some(socket_mode) = socket_mode {
            chmod(&real, socket_mode);
        }
        let (code, out, err) = fq_as(
            user,
            &fq,
            dir.path(),
            &["--json", "--connect", &addr, "stats"],
        );
        chmod(&real, 0o600);
        println!("other user, {case}: exit {code:?}: {}", err.trim());
        assert_eq!(code, Some(1), "{case}: {out}{err}");
        assert!(out.trim().is_empty(), "{case}: printed {out}");
        assert!(
            err.to_lowercase().contains("permission denied"),
            "{case}: {err}"
        );
        denied += 1;
    }
    // The CLI's own discovery (`--db`): the socket refuses, and the store is not opened.
    let (code, out, err) = fq_as(
        user,
        &fq,
        dir.path(),
        &["--json", "--db", &store.display().to_string(), "stats"],
    );
    println!("other user, fq stats --db: exit {code:?}: {}", err.trim());
    assert_ne!(code, Some(0), "{out}{err}");
    assert!(
        !out.contains("sec.private") && !out.contains("pending"),
        "{out}"
    );
    denied += 1;
    // The owner still gets in.
    let remote = Engine::connect(&format!("unix:{}", socket.display())).await?;
    assert_eq!(remote.stats().await?.total(), 1);
    println!(
        "another user (uid {}): {denied} attempts denied, control run through an opened-up \
         socket succeeded; store file mode {:o}; seed {}",
        user.0,
        mode(&store),
        seed()
    );
    Ok(())
}

// --- no TCP listener by default -----------------------------------------------------------------

/// The TCP sockets (IPv4 and IPv6) among `pid`'s file descriptors: (local address, state in
/// /proc/net/tcp's hex, `0A` = LISTEN).
fn tcp_sockets_of(pid: u32) -> Vec<(String, String)> {
    let mut inodes = std::collections::HashSet::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let target = target.to_string_lossy().into_owned();
                if let Some(inode) = target
                    .strip_prefix("socket:[")
                    .and_then(|rest| rest.strip_suffix(']'))
                {
                    inodes.insert(inode.to_owned());
                }
            }
        }
    }
    let mut found = Vec::new();
    for table in [
        format!("/proc/{pid}/net/tcp"),
        format!("/proc/{pid}/net/tcp6"),
    ] {
        let Ok(text) = std::fs::read_to_string(&table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 9 && inodes.contains(fields[9]) {
                found.push((fields[1].to_owned(), fields[3].to_owned()));
            }
        }
    }
    found
}

fn listening(sockets: &[(String, String)]) -> Vec<String> {
    sockets
        .iter()
        .filter(|(_, state)| state == "0A")
        .map(|(addr, _)| addr.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fq_serve_and_worker_start_listen_on_no_tcp_port_by_default() {
    let _capture = capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let spawn = |args: &[&str]| {
        ChildGuard(
            fq_command(dir.path(), args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let serve = spawn(&["serve", "--db", "a.redb"]);
    let worker = spawn(&["worker", "start", "--db", "b.redb"]);
    let listen = spawn(&["serve", "--db", "c.redb", "--listen", "127.0.0.1:0"]);
    let mut figures = Vec::new();
    for (name, child, socket, expect_listener) in [
        ("fq serve", &serve, "a.redb.sock", false),
        ("fq worker start", &worker, "b.redb.sock", false),
        (
            "fq serve --listen 127.0.0.1:0 (control)",
            &listen,
            "c.redb.sock",
            true,
        ),
    ] {
        // Answering on its socket means the engine has started every listener it will.
        let remote = wait_for_socket(&dir.path().join(socket)).await;
        remote.stats().await.unwrap();
        let sockets = tcp_sockets_of(child.0.id());
        let listeners = listening(&sockets);
        figures.push(format!("{name}: {} TCP sockets", sockets.len()));
        if expect_listener {
            // Proves the scan finds what is there: one listener, on 127.0.0.1 (0100007F).
            assert_eq!(listeners.len(), 1, "{name}: {sockets:?}");
            assert!(listeners[0].starts_with("0100007F:"), "{listeners:?}");
        } else {
            assert!(sockets.is_empty(), "{name} holds TCP sockets: {sockets:?}");
        }
    }
    drop((serve, worker, listen));
    println!("no TCP by default: {}; seed {}", figures.join(", "), seed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_engine_listens_on_no_tcp_port_by_default() -> fq::Result<()> {
    let _capture = capture_logs();
    let _tcp = tcp_lock().await;
    let pid = std::process::id();
    let before = listening(&tcp_sockets_of(pid));
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path().join("fq.redb"))?;
    let worker = common::start_worker(&engine, echo_registry(), &["default"], 2);
    let remote = wait_for_socket(&dir.path().join("fq.redb.sock")).await;
    remote.stats().await?;
    assert_eq!(engine.control_addr(), None);
    let after = listening(&tcp_sockets_of(pid));
    assert_eq!(before, after, "the engine opened a TCP listener");
    worker.stop().await;
    println!(
        "embedded engine: TCP listeners of this process before {}, after {}; seed {}",
        before.len(),
        after.len(),
        seed()
    );
    Ok(())
}

// --- non-loopback without a token ---------------------------------------------------------------

/// IPv4 `0.0.0.0` through the configuration file and `fq serve --listen` is covered by
/// tests/suite/control.rs (`tcp_needs_a_token_off_loopback_and_checks_it`) and
/// tests/suite/bad_input_table.rs; here the IPv6 wildcard and the library path, and nothing is
/// created before the refusal.
#[tokio::test]
async fn a_non_loopback_listener_without_a_token_refuses_to_start() {
    let _capture = capture_logs();
    let _tcp = tcp_lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut refused = 0;
    for addr in ["[::]:0", "0.0.0.0:0"] {
        let mut config = Config::default();
        config.control.listen = Some(addr.parse().unwrap());
        let err = Engine::builder(dir.path().join("fq.redb"))
            .config(config)
            .open()
            .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("control.token") && message.contains("loopback"),
            "{addr}: {message}"
        );
        let (code, out, err) = run_for(
            fq_command(dir.path(), &["serve", "--db", "cli.redb", "--listen", addr]),
            PATIENCE,
        );
        assert_eq!(code, Some(2), "{addr}: {out}{err}");
        assert!(err.contains("token"), "{err}");
        refused += 2;
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "created before refusing: {left:?}");
    println!(
        "non-loopback without a token: {refused} starts refused; seed {}",
        seed()
    );
}

// --- tokens --------------------------------------------------------------------------------------

fn assert_unauthorized(result: fq::Result<Engine>, given: &str) {
    match result {
        Err(Error::Remote { kind, message }) if kind == "unauthorized" => {
            // Short guesses are common words; a long one in the message would be an echo.
            assert!(given.len() < 8 || !message.contains(given), "{message}");
        }
        Err(other) => panic!("token {given:?}: {other:?}"),
        Ok(_) => panic!("token {given:?} was accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_wrong_token_is_refused_over_tcp() -> fq::Result<()> {
    let _capture = capture_logs();
    let _tcp = tcp_lock().await;
    let mut rng = fastrand::Rng::with_seed(seed());
    let token = secret(&mut rng, "tok-");
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.control.listen = Some("127.0.0.1:0".parse().unwrap());
    config.control.token = Some(token.clone());
    let engine = Engine::builder(dir.path().join("fq.redb"))
        .config(config)
        .open()?;
    let tcp = format!("tcp:{}", engine.control_addr().unwrap());
    let connect = |given: Option<String>| {
        let tcp = tcp.clone();
        async move {
            let mut options = ConnectOptions::new().connect_timeout(PATIENCE);
            if let Some(given) = given {
                options = options.token(given);
            }
            Engine::connect_with(&tcp, options).await
        }
    };
    let bytes = token.as_bytes();
    let mut wrong: Vec<String> = Vec::new();
    for len in 0..bytes.len() {
        wrong.push(token[..len].to_owned());
        wrong.push(token[len + 1..].to_owned());
    }
    wrong.push(format!("{token}x"));
    wrong.push(format!("{token}{token}"));
    wrong.push(format!("{token}\0"));
    wrong.push(format!(" {token}"));
    wrong.push(token.to_uppercase());
    let alphabet: Vec<char> = ('!'..='~').collect();
    for index in 0..bytes.len() {
        let tries = if full() { alphabet.len() } else { 1 };
        for attempt in 0..tries {
            let replacement = if full() {
                alphabet[attempt]
            } else {
                alphabet[rng.usize(..alphabet.len())]
            };
            let mut changed: Vec<char> = token.chars().collect();
            changed[index] = replacement;
            wrong.push(changed.into_iter().collect());
        }
    }
    wrong.retain(|given| given != &token);
    let started = Instant::now();
    assert_unauthorized(connect(None).await, "");
    for given in &wrong {
        assert_unauthorized(connect(Some(given.clone())).await, given);
    }
    let remote = connect(Some(token.clone())).await?;
    assert_eq!(remote.stats().await?.total(), 0);
    drop(engine);
    let logs = captured();
    assert_no_secret("the logs", &logs, std::slice::from_ref(&token));
    println!(
        "tokens over TCP: {} wrong tokens (every prefix and suffix, each position changed, \
         longer, padded) refused in {:.1?}, the right one accepted; seed {}",
        wrong.len() + 1,
        started.elapsed(),
        seed()
    );
    Ok(())
}

/// The client put its token (`FQ_TOKEN`, meant for a TCP server) in every hello, also on a
/// Unix socket, where no engine checks it: whatever listened on that path (a stale path
/// reused by another program, a socket planted in a shared directory) received the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_the_client_sent_its_token_to_whatever_listened_on_a_unix_socket() {
    let _capture = capture_logs();
    let mut rng = fastrand::Rng::with_seed(seed() ^ 4);
    let token = secret(&mut rng, "unixtok-");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("planted.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    // Not an engine: it records the hello, then hangs up.
    let planted = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut header = [0u8; 4];
        stream.read_exact(&mut header).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
        stream.read_exact(&mut body).unwrap();
        String::from_utf8_lossy(&body).into_owned()
    });
    let options = ConnectOptions::new()
        .token(token.clone())
        .connect_timeout(Duration::from_secs(5));
    let refused = Engine::connect_with(&format!("unix:{}", path.display()), options).await;
    assert!(refused.is_err(), "a hang-up is not an engine");
    let hello = planted.join().unwrap();
    assert!(hello.contains("\"hello\""), "{hello}");
    assert_no_secret(
        "the hello sent to a Unix socket",
        &hello,
        std::slice::from_ref(&token),
    );
    println!("hello sent over a Unix socket: {hello}; seed {}", seed());
}

// --- connection and frame limits ------------------------------------------------------------------

/// Reads one frame from a raw stream.
fn read_raw_frame(stream: &mut std::net::TcpStream) -> Option<Value> {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    stream.read_exact(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_holds_across_unix_and_tcp_while_the_first_n_keep_working()
-> fq::Result<()> {
    let _capture = capture_logs();
    let _tcp = tcp_lock().await;
    const MAX: usize = 4;
    let mut rng = fastrand::Rng::with_seed(seed());
    let token = secret(&mut rng, "lim-");
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.control.max_connections = MAX;
    config.control.listen = Some("127.0.0.1:0".parse().unwrap());
    config.control.token = Some(token.clone());
    let engine = Engine::builder(dir.path().join("fq.redb"))
        .config(config)
        .open()?;
    let unix = format!("unix:{}", dir.path().join("fq.redb.sock").display());
    let tcp_addr = engine.control_addr().unwrap();
    let tcp = format!("tcp:{tcp_addr}");
    let with_token = || ConnectOptions::new().token(token.clone());

    // A wrong token is turned away and gives its slot back.
    for _ in 0..MAX + 2 {
        assert_unauthorized(
            Engine::connect_with(&tcp, ConnectOptions::new().token("nope")).await,
            "nope",
        );
    }
    let mut first_n = vec![
        Engine::connect(&unix).await?,
        Engine::connect(&unix).await?,
        Engine::connect_with(&tcp, with_token()).await?,
        Engine::connect_with(&tcp, with_token()).await?,
    ];
    assert_eq!(first_n.len(), MAX);
    let mut refused = 0;
    for round in 0..3 {
        for (transport, result) in [
            ("unix", Engine::connect(&unix).await),
            ("tcp", Engine::connect_with(&tcp, with_token()).await),
        ] {
            match result {
                Err(Error::Remote { kind, message }) if kind == "too_many_connections" => {
                    assert!(
                        message.contains("control.max_connections")
                            && message.contains(&MAX.to_string()),
                        "{message}"
                    );
                    refused += 1;
                }
                Err(other) => panic!("{transport} round {round}: {other:?}"),
                Ok(_) => panic!("{transport} round {round}: connection {} accepted", MAX + 1),
            }
        }
        // A raw client over TCP, which never says hello, is refused the same way at once.
        let mut raw = std::net::TcpStream::connect(tcp_addr).unwrap();
        let frame = read_raw_frame(&mut raw).expect("an error frame");
        assert_eq!(frame["error"]["kind"], "too_many_connections", "{frame}");
        refused += 1;
        // The first N keep working.
        for (index, remote) in first_n.iter().enumerate() {
            remote
                .queue_task_named(
                    "sec.limit",
                    &json!({"kwargs": {"round": round, "client": index}}),
                )
                .send()
                .await?;
        }
    }
    assert_eq!(engine.stats().await?.total(), 3 * MAX as u64);
    // A slot given back is usable again once the server has seen the close.
    first_n.pop();
    let deadline = Instant::now() + PATIENCE;
    let again = loop {
        match Engine::connect_with(&tcp, with_token()).await {
            Ok(remote) => break remote,
            Err(err) => assert!(Instant::now() < deadline, "{err}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(again.stats().await?.total(), 3 * MAX as u64);

    // The frame limit holds before authentication: a 4 GiB hello over TCP is refused at once.
    drop(again);
    first_n.clear();
    let deadline = Instant::now() + PATIENCE;
    let kind = loop {
        let mut raw = std::net::TcpStream::connect(tcp_addr).unwrap();
        raw.write_all(&u32::MAX.to_be_bytes()).unwrap();
        let frame = read_raw_frame(&mut raw).expect("an error frame");
        let kind = frame["error"]["kind"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if kind != "too_many_connections" || Instant::now() > deadline {
            break kind;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(kind, "frame_too_large");
    println!(
        "connection limit {MAX} (2 Unix + 2 TCP): {refused} extra connections refused with \
         too_many_connections while the first {MAX} queued {} tasks; {} wrong-token clients \
         gave their slots back; a 4 GiB hello before authentication refused as {kind}; seed {}",
        3 * MAX,
        MAX + 2,
        seed()
    );
    Ok(())
}

// --- secrets in logs ------------------------------------------------------------------------------

/// An engine whose configuration holds an AMQP password (field and URL) and a control token,
/// serving local and remote workers and refusing bad clients, logs at TRACE level without
/// any of them; so does an application that logs the configuration itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_of_an_engine_run() -> fq::Result<()> {
    let _capture = capture_logs();
    let _tcp = tcp_lock().await;
    let mut rng = fastrand::Rng::with_seed(seed() ^ 1);
    let password = secret(&mut rng, "pw-");
    let url_password = secret(&mut rng, "urlpw-");
    let token = secret(&mut rng, "tk-");
    let secrets = vec![password.clone(), url_password.clone(), token.clone()];
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("fq.toml");
    std::fs::write(
        &config_path,
        format!(
            "database = \"{}\"\n[rabbitmq]\nusername = \"fq\"\npassword = \"{password}\"\n\
             url = \"amqp://fq:{url_password}@127.0.0.1:1/%2f\"\n[control]\n\
             listen = \"127.0.0.1:0\"\ntoken = \"{token}\"\n",
            dir.path().join("fq.redb").display()
        ),
    )
    .unwrap();
    let marker = format!("trace marker {}", secret(&mut rng, "m-"));
    tracing::trace!("{marker}");
    let engine = Engine::from_config_file(Some(&config_path))?;
    tracing::info!(config = ?engine.config(), "the application logs its configuration");
    tracing::debug!(config = ?engine.config(), "pretty: {:#?}", engine.config());
    let tcp = format!("tcp:{}", engine.control_addr().unwrap());
    let local_worker = common::start_worker(&engine, echo_registry(), &["default"], 2);
    let remote = Engine::connect_with(&tcp, ConnectOptions::new().token(token.clone())).await?;
    let remote_worker = common::start_worker(&remote, echo_registry(), &["default"], 2);
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(
            remote
                .queue_task_named("sec.echo", &json!({"kwargs": {"n": n}}))
                .send()
                .await?,
        );
    }
    // Requests that fail (logged at TRACE by the server), clients that get things wrong.
    let unknown = fq::TaskId::new();
    assert!(remote.cancel(unknown).await.is_err());
    for given in [&token[..token.len() - 1], "wrong", &format!("{token}x")] {
        assert_unauthorized(
            Engine::connect_with(&tcp, ConnectOptions::new().token(given)).await,
            given,
        );
    }
    let addr = engine.control_addr().unwrap();
    let mut raw = std::net::TcpStream::connect(addr).unwrap();
    let hello = serde_json::to_vec(&json!({"hello": {"protocol": 1, "token": token, "client": 7}}))
        .unwrap();
    raw.write_all(&u32::try_from(hello.len()).unwrap().to_be_bytes())
        .unwrap();
    raw.write_all(&hello).unwrap();
    let refusal = read_raw_frame(&mut raw).expect("a refusal");
    assert_no_secret("a refusal frame", &refusal.to_string(), &secrets);
    let unix = Engine::connect(&format!(
        "unix:{}",
        dir.path().join("fq.redb.sock").display()
    ))
    .await?;
    let deadline = Instant::now() + PATIENCE;
    while completed(&unix.stats().await?) < ids.len() as u64 {
        assert!(Instant::now() < deadline, "tasks did not complete");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    remote_worker.stop().await;
    local_worker.stop().await;
    let stats = serde_json::to_string(&engine.stats().await?).unwrap();
    drop((remote, unix));
    drop(engine);
    let logs = captured();
    assert!(
        logs.contains("TRACE") && logs.contains(&marker),
        "TRACE lines are captured"
    );
    assert!(
        logs.contains("control request failed"),
        "the server's TRACE lines are captured"
    );
    assert!(
        logs.contains(&dir.path().join("fq.redb.sock").display().to_string()),
        "this engine's logs are captured"
    );
    assert!(
        logs.contains("<redacted>"),
        "the configuration was logged (redacted)"
    );
    assert_no_secret("the logs", &logs, &secrets);
    assert_no_secret("the stats", &stats, &secrets);
    println!(
        "logs of an engine run: {} bytes captured at TRACE so far ({} lines, this run and the \
         tests before it), 3 secrets absent; seed {}",
        logs.len(),
        logs.lines().count(),
        seed()
    );
    Ok(())
}

fn completed(stats: &fq::Stats) -> u64 {
    stats.queues.values().map(|queue| queue.completed).sum()
}

/// A port on 127.0.0.1 nothing listens on (bound, then released).
#[cfg(feature = "rabbitmq")]
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The RabbitMQ bridge with the password in the URL, then in `rabbitmq.password` (with
/// characters that must be percent-encoded), RabbitMQ unreachable, then reachable but
/// refusing the password: neither the logs at TRACE (fq's and lapin's), nor the errors, nor
/// the stats show it.
#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_amqp_password_reaches_the_logs_when_rabbitmq_is_unreachable_or_refuses()
-> fq::Result<()> {
    use fq::BrokerKind;
    let _capture = capture_logs();
    // Binds a port to find a closed one (see `tcp_lock`), and must not see RabbitMQ stopped
    // by a test of `rabbitmq` (the refusing case needs it up).
    let _tcp = tcp_lock().await;
    let _broker = common::rabbit::shared_broker().await;
    let mut rng = fastrand::Rng::with_seed(seed() ^ 2);
    let in_url = secret(&mut rng, "amqpurl-");
    let in_field = format!("{}/@:%?#", secret(&mut rng, "amqpfield-"));
    let refused_pw = secret(&mut rng, "amqprefused-");
    let secrets = vec![in_url.clone(), in_field.clone(), refused_pw.clone()];
    let port = closed_port();
    let live = std::net::TcpStream::connect_timeout(
        &"127.0.0.1:5672".parse().unwrap(),
        Duration::from_secs(1),
    )
    .is_ok();
    if !live {
        assert!(
            !std::env::var("FQ_REQUIRE_RABBITMQ").is_ok_and(|v| v == "1"),
            "FQ_REQUIRE_RABBITMQ=1 but RabbitMQ is not reachable on 127.0.0.1:5672"
        );
        println!("RabbitMQ is not reachable on 127.0.0.1:5672: the refusing case is skipped");
    }
    type Case = (&'static str, Box<dyn Fn(&mut Config)>);
    let mut cases: Vec<Case> = vec![
        (
            "unreachable, password in the URL",
            Box::new(move |config: &mut Config| {
                config.rabbitmq.url = Some(format!("amqp://fqsec:{in_url}@127.0.0.1:{port}/%2f"));
            }),
        ),
        (
            "unreachable, password in rabbitmq.password",
            Box::new(move |config: &mut Config| {
                config.rabbitmq.host = "127.0.0.1".into();
                config.rabbitmq.port = port;
                config.rabbitmq.username = "fqsec".into();
                config.rabbitmq.password = in_field.clone();
            }),
        ),
    ];
    if live {
        cases.push((
            "reachable, wrong password",
            Box::new(move |config: &mut Config| {
                config.rabbitmq.url = Some(format!("amqp://guest:{refused_pw}@127.0.0.1:5672/%2f"));
            }),
        ));
    }
    let mut outputs = String::new();
    for (case, set) in &cases {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            broker: BrokerKind::Rabbitmq,
            database: dir.path().join("fq.redb"),
            ..Config::default()
        };
        set(&mut config);
        tracing::info!(config = ?config, case, "opening a RabbitMQ bridge");
        let engine = Engine::builder(&config.database)
            .config(config.clone())
            .control(false)
            .open()?;
        engine
            .queue_task_named("sec.outbox", &json!({"kwargs": {}}))
            .send()
            .await?;
        // Long enough for a few connection attempts and their logs.
        let ready = engine.ready(Duration::from_millis(1500)).await;
        let error = ready.expect_err("RabbitMQ cannot be used");
        outputs.push_str(&format!("{error} {error:?}\n"));
        let stats = engine.stats().await?;
        outputs.push_str(&serde_json::to_string(&stats).unwrap());
        outputs.push('\n');
        println!("{case}: {error}");
        drop(engine);
    }
    let logs = captured();
    assert!(logs.contains("RabbitMQ"), "the bridge's logs are captured");
    assert_no_secret("the bridge's logs", &logs, &secrets);
    assert_no_secret("errors and stats", &outputs, &secrets);
    println!(
        "RabbitMQ bridge: {} cases, {} bytes of TRACE logs, passwords absent; seed {}",
        cases.len(),
        logs.len(),
        seed()
    );
    Ok(())
}

// --- secrets in the CLI's output -------------------------------------------------------------------

/// Every `fq` command that prints configuration or errors, `--json` and `-vvv` (TRACE logs on
/// stderr), with a configuration holding the secrets (directly, through `${VAR}` and through
/// `FQ_RABBITMQ_URL`), and every kind of configuration error next to them: no secret in stdout
/// or stderr.
#[test]
fn no_secret_reaches_the_output_of_cli_commands() {
    let _capture = capture_logs();
    let mut rng = fastrand::Rng::with_seed(seed() ^ 3);
    let password = secret(&mut rng, "clipw-");
    let url_password = secret(&mut rng, "cliurl-");
    let env_password = secret(&mut rng, "clienv-");
    let override_password = secret(&mut rng, "cliovr-");
    let token = secret(&mut rng, "clitok-");
    let bad = secret(&mut rng, "clibad-");
    let secrets = vec![
        password.clone(),
        url_password.clone(),
        env_password.clone(),
        override_password.clone(),
        token.clone(),
        bad.clone(),
    ];
    let dir = tempfile::tempdir().unwrap();
    let good = |broker: &str| {
        format!(
            "broker = \"{broker}\"\ndatabase = \"fq.redb\"\n[rabbitmq]\nusername = \"fq\"\n\
             password = \"{password}\"\nurl = \"amqp://fq:${{FQ_SEC_PW}}@127.0.0.1:1/%2f\"\n\
             [control]\nlisten = \"127.0.0.1:0\"\ntoken = \"{token}\"\n"
        )
    };
    let mut runs = 0usize;
    let mut scanned = 0usize;
    let mut check = |what: &str, (code, out, err): (Option<i32>, String, String)| {
        assert_ne!(code, Some(101), "{what} panicked: {err}");
        assert_no_secret(&format!("`{what}` stdout"), &out, &secrets);
        assert_no_secret(&format!("`{what}` stderr"), &err, &secrets);
        runs += 1;
        scanned += out.len() + err.len();
        (code, out, err)
    };
    let limit = Duration::from_secs(60);
    let with_env = |args: &[&str]| {
        let mut command = fq_command(dir.path(), args);
        command.env("FQ_SEC_PW", &env_password);
        command
    };

    // A working configuration, broker `database`.
    std::fs::write(dir.path().join("fq.toml"), good("database")).unwrap();
    let (code, out, _) = check(
        "--json enqueue",
        run_for(
            with_env(&["--json", "enqueue", "sec.task", "--kwargs", "{\"a\":1}"]),
            limit,
        ),
    );
    assert_eq!(code, Some(0), "{out}");
    let id = serde_json::from_str::<Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for args in [
        vec!["--json", "stats"],
        vec!["-vvv", "--json", "stats"],
        vec!["-vvv", "--json", "list"],
        vec!["-vvv", "--json", "show", &id],
        vec!["-vvv", "--json", "cleanup"],
        vec!["-vvv", "--json", "worker", "start", "--queues", "a b"],
        vec!["-vvv", "--json", "worker", "start", "--concurrent", "0"],
        vec!["-vvv", "--json", "retry", "--failed"],
    ] {
        check(&args.join(" "), run_for(with_env(&args), limit));
    }
    // A server and a worker logging at TRACE, and commands going through its socket.
    let serve = with_env(&["-vvv", "--json", "serve"]);
    let server = std::thread::spawn(move || run_for(serve, Duration::from_secs(4)));
    let socket = dir.path().join("fq.redb.sock");
    let deadline = Instant::now() + PATIENCE;
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "fq serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, out, err) = check(
        "-vvv --json stats (through the socket)",
        run_for(with_env(&["-vvv", "--json", "stats"]), limit),
    );
    assert_eq!(code, Some(0), "{out}{err}");
    check(
        "-vvv worker start (through the socket)",
        run_for(
            with_env(&["-vvv", "worker", "start"]),
            Duration::from_secs(2),
        ),
    );
    check("-vvv --json serve", server.join().unwrap());

    // Through TCP with `FQ_TOKEN`: the right token, a wrong one (itself a secret), and the
    // right one offered to the Unix socket, where it is not needed.
    {
        let _tcp = tcp_lock_blocking();
        let served = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.control.listen = Some("127.0.0.1:0".parse().unwrap());
        config.control.token = Some(token.clone());
        let engine = Engine::builder(served.path().join("fq.redb"))
            .config(config)
            .open()
            .unwrap();
        let tcp = format!("tcp:{}", engine.control_addr().unwrap());
        let unix = format!("unix:{}", served.path().join("fq.redb.sock").display());
        for (given, addr, ok) in [
            (&token, &tcp, true),
            (&bad, &tcp, false),
            (&token, &unix, true),
        ] {
            let mut command = with_env(&["-vvv", "--json", "--connect", addr, "stats"]);
            command.env("FQ_TOKEN", given);
            let (code, out, err) = check("FQ_TOKEN=… --connect stats", run_for(command, limit));
            assert_eq!(code == Some(0), ok, "{addr}: {out}{err}");
            if !ok {
                assert!(err.contains("wrong control token"), "{err}");
            }
        }
    }

    // With broker `rabbitmq`: unreachable at 127.0.0.1:1; `FQ_RABBITMQ_URL` overrides.
    std::fs::write(dir.path().join("fq.toml"), good("rabbitmq")).unwrap();
    let override_url = format!("amqp://fq:{override_password}@127.0.0.1:1/%2f");
    for args in [
        vec!["-vvv", "--json", "stats"],
        vec!["-vvv", "--json", "enqueue", "sec.task"],
        vec!["-vvv", "worker", "start"],
    ] {
        check(
            &args.join(" "),
            run_for(with_env(&args), Duration::from_secs(3)),
        );
        let mut command = with_env(&args);
        command.env("FQ_RABBITMQ_URL", &override_url);
        check(
            &format!("FQ_RABBITMQ_URL=… {}", args.join(" ")),
            run_for(command, Duration::from_secs(3)),
        );
    }

    // Configuration errors next to the secrets, TOML and YAML.
    let errors: Vec<(&str, &str, String)> = vec![
        (
            "unterminated password",
            "fq.toml",
            format!("[rabbitmq]\npassword = \"{bad}\n"),
        ),
        (
            "misspelt password key",
            "fq.toml",
            format!("[rabbitmq]\npasword = \"{bad}\"\n"),
        ),
        (
            "password of the wrong type",
            "fq.toml",
            format!("[rabbitmq]\npassword = [\"{bad}\"]\n"),
        ),
        (
            "password in a table",
            "fq.toml",
            format!("[rabbitmq.password]\nvalue = \"{bad}\"\n"),
        ),
        (
            "URL with a bad port",
            "fq.toml",
            format!("[rabbitmq]\nurl = \"amqp://fq:{bad}@127.0.0.1:notaport/%2f\"\n"),
        ),
        (
            "URL of another scheme",
            "fq.toml",
            format!("[rabbitmq]\nurl = \"http://fq:{bad}@127.0.0.1/\"\n"),
        ),
        (
            "URL without a host",
            "fq.toml",
            format!("[rabbitmq]\nurl = \"amqp://fq:{bad}@\"\n"),
        ),
        (
            "amqps URL",
            "fq.toml",
            format!(
                "broker = \"rabbitmq\"\n[rabbitmq]\nurl = \"amqps://fq:{bad}@127.0.0.1/%2f\"\n"
            ),
        ),
        (
            "token of the wrong type",
            "fq.toml",
            format!("[control]\ntoken = [\"{bad}\"]\n"),
        ),
        (
            "misspelt token key",
            "fq.toml",
            format!("[control]\ntokn = \"{bad}\"\n"),
        ),
        (
            "token with a bad listen",
            "fq.toml",
            format!("[control]\ntoken = \"{bad}\"\nlisten = \"here\"\n"),
        ),
        (
            "unset variable next to a password",
            "fq.toml",
            format!("[rabbitmq]\npassword = \"{bad}${{FQ_SEC_UNSET}}\"\n"),
        ),
        (
            "YAML unterminated password",
            "config/services.yaml",
            format!("task:\n  rabbitmq:\n    password: \"{bad}\n"),
        ),
        (
            "YAML password of the wrong type",
            "config/services.yaml",
            format!("task:\n  rabbitmq:\n    password: [{bad}]\n"),
        ),
        (
            "YAML misspelt password key",
            "config/services.yaml",
            format!("task:\n  rabbitmq:\n    passwd: {bad}\n"),
        ),
        (
            "YAML bad URL",
            "config/services.yaml",
            format!("task:\n  rabbitmq:\n    url: amqp://fq:{bad}@:x/\n"),
        ),
    ];
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    let mut config_errors = 0;
    for (case, file, text) in &errors {
        drop(std::fs::remove_file(dir.path().join("fq.toml")));
        drop(std::fs::remove_file(
            dir.path().join("config/services.yaml"),
        ));
        // Broker `rabbitmq`, so that a URL the file check lets through is parsed at open.
        let text = match (text.contains("broker"), file.ends_with(".toml")) {
            (true, _) => text.clone(),
            (false, true) => format!("broker = \"rabbitmq\"\n{text}"),
            (false, false) => text.replacen("task:\n", "task:\n  broker: rabbitmq\n", 1),
        };
        std::fs::write(dir.path().join(file), text).unwrap();
        for args in [
            vec!["--json", "stats"],
            vec!["-vvv", "--json", "worker", "start"],
        ] {
            let (code, out, err) = check(
                &format!("{case}: {}", args.join(" ")),
                run_for(with_env(&args), Duration::from_secs(3)),
            );
            assert!(
                code.is_some_and(|code| code != 0),
                "{case}: accepted: {out}{err}"
            );
            config_errors += 1;
        }
    }
    // A bad override from the environment.
    drop(std::fs::remove_file(
        dir.path().join("config/services.yaml"),
    ));
    std::fs::write(dir.path().join("fq.toml"), good("rabbitmq")).unwrap();
    for url in [
        format!("amqp://fq:{bad}@127.0.0.1:notaport/%2f"),
        format!("amqp://fq:{bad}@[::1"),
        format!("fq:{bad}@127.0.0.1"),
    ] {
        let mut command = with_env(&["--json", "stats"]);
        command.env("FQ_RABBITMQ_URL", &url);
        let (code, out, err) = check("bad FQ_RABBITMQ_URL", run_for(command, limit));
        assert_ne!(code, Some(0), "{out}{err}");
        config_errors += 1;
    }
    println!(
        "CLI output: {runs} runs ({config_errors} configuration errors), {scanned} bytes of \
         stdout and stderr, {} secrets absent; seed {}",
        secrets.len(),
        seed()
    );
}
