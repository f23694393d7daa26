//! The `web_app` example, end to end: runs its binary on a free port over a temporary store,
//! registers a user over plain HTTP/1.1, follows the queued welcome email through
//! `GET /tasks/{id}` until the in-process worker has sent it, checks the error answers, then
//! stops the app with SIGTERM and reads the record back from the store it left behind.
//!
//! An example cannot be imported, so the test runs it as a child process. `cargo test` builds
//! examples before it runs tests, but `cargo test --test suite -- web_app::` does not, and a
//! binary left from an earlier build may be stale; so the test asks cargo to build it (a no-op
//! when it is fresh) and takes the binary's path from cargo's own report.

use std::error::Error;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use fq::{Engine, TaskId, TaskStatus};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type TestResult<T = ()> = Result<T, Box<dyn Error>>;

/// How long the app may take to print its address (a cold build is done before this starts).
const STARTUP: Duration = Duration::from_secs(30);
/// How long the welcome email may take to be sent.
const EMAIL_SENT: Duration = Duration::from_secs(10);
/// How long one HTTP exchange may take.
const EXCHANGE: Duration = Duration::from_secs(5);
/// How long the app may take to exit after SIGTERM.
const EXIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn registering_queues_a_welcome_email_that_the_app_sends() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("var").join("web_app.redb");
    let mut app = App::start(&web_app_binary()?, dir.path(), &db)?;
    let addr = app.addr;

    // POST /register answers the new user's id and the welcome email's task id.
    let reply = request(
        addr,
        "POST",
        "/register",
        Some(r#"{"email": "ada@example.com", "username": "ada"}"#),
    )
    .await?;
    app.check(reply.status == 200, &format!("POST /register: {reply:?}"))?;
    app.check(
        reply
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        &format!("POST /register answered something other than JSON: {reply:?}"),
    )?;
    let answer: Value = serde_json::from_str(&reply.body)?;
    let user_id = answer["user_id"].as_u64();
    app.check(
        user_id.is_some(),
        &format!("no numeric user_id in {answer}"),
    )?;
    let task_id: TaskId = answer["email_task_id"]
        .as_str()
        .ok_or_else(|| format!("no email_task_id string in {answer}"))?
        .parse()?;

    // GET /tasks/{id} follows it to COMPLETED; the result says where it was sent.
    let record = wait_for_completion(&app, task_id).await?;
    app.check(
        record["id"] == json!(task_id.to_string()),
        &format!("record of another task: {record}"),
    )?;
    app.check(
        record["name"] == "myapp.tasks.send_welcome_email"
            && record["queue"] == "emails"
            && record["max_retries"] == 3
            && record["attempts"] == 1,
        &format!("record does not match the task's definition: {record}"),
    )?;
    app.check(
        record["payload"]["kwargs"] == json!({"user_id": user_id, "email": "ada@example.com"}),
        &format!("the task was queued with other arguments: {record}"),
    )?;
    app.check(
        record["result"] == json!({"status": "sent", "email": "ada@example.com"}),
        &format!("the result does not say the email was sent to ada: {record}"),
    )?;

    // A second user gets a new id and a task of its own.
    let reply = request(
        addr,
        "POST",
        "/register",
        Some(r#"{"email": "bob@example.com", "username": "bob"}"#),
    )
    .await?;
    app.check(
        reply.status == 200,
        &format!("second POST /register: {reply:?}"),
    )?;
    let second: Value = serde_json::from_str(&reply.body)?;
    app.check(
        second["user_id"].as_u64().is_some()
            && second["user_id"] != answer["user_id"]
            && second["email_task_id"].is_string()
            && second["email_task_id"] != answer["email_task_id"],
        &format!("second registration reused ids: {answer} then {second}"),
    )?;

    // Bad requests are refused with a 4xx and a JSON error, and queue nothing.
    for (body, why) in [
        ("{not json", "a body that is not JSON"),
        (r#"{"email": "eve@example.com"}"#, "a body missing username"),
        (
            r#"{"email": "eve", "username": "eve"}"#,
            "an address without @",
        ),
    ] {
        let reply = request(addr, "POST", "/register", Some(body)).await?;
        app.check(
            (400..500).contains(&reply.status),
            &format!("{why} got {reply:?}"),
        )?;
        let error: Value = serde_json::from_str(&reply.body)?;
        app.check(
            error["error"].is_string(),
            &format!("{why}: no JSON error in {reply:?}"),
        )?;
    }
    let reply = request(addr, "GET", "/tasks/not-a-task-id", None).await?;
    app.check(reply.status == 400, &format!("malformed id: {reply:?}"))?;
    let reply = request(addr, "GET", &format!("/tasks/{}", TaskId::new()), None).await?;
    app.check(reply.status == 404, &format!("unknown id: {reply:?}"))?;

    // The app stops cleanly and leaves a store that another process can open.
    app.stop()?;
    let engine = Engine::open(&db)?;
    let stored = engine
        .task(task_id)
        .await?
        .ok_or("the welcome email's task is missing from the store after exit")?;
    assert_eq!(stored.status, TaskStatus::Completed);
    let users_queued = engine
        .stats()
        .await?
        .queues
        .get("emails")
        .map_or(0, |queue| queue.completed);
    assert_eq!(
        users_queued, 2,
        "exactly the two good registrations queued an email"
    );
    Ok(())
}

/// Polls `GET /tasks/{id}` until the task is COMPLETED; fails at once if it fails.
async fn wait_for_completion(app: &App, id: TaskId) -> TestResult<Value> {
    let deadline = Instant::now() + EMAIL_SENT;
    loop {
        let reply = request(app.addr, "GET", &format!("/tasks/{id}"), None).await?;
        app.check(reply.status == 200, &format!("GET /tasks/{id}: {reply:?}"))?;
        let record: Value = serde_json::from_str(&reply.body)?;
        match record["status"].as_str() {
            Some("COMPLETED") => return Ok(record),
            Some("PENDING" | "RUNNING") => {}
            _ => app.check(
                false,
                &format!("the welcome email did not go out: {record}"),
            )?,
        }
        app.check(
            Instant::now() < deadline,
            &format!("still not sent after {EMAIL_SENT:?}: {record}"),
        )?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The running example, killed if the test ends early.
struct App {
    child: Child,
    addr: SocketAddr,
    /// Everything the app printed, for failure messages.
    output: Arc<Mutex<Vec<String>>>,
}

impl App {
    /// Starts the app on a free port with its store at `db`, and waits for its address.
    fn start(binary: &Path, workdir: &Path, db: &Path) -> TestResult<App> {
        let mut child = Command::new(binary)
            .current_dir(workdir)
            .env("FQ_WEB_ADDR", "127.0.0.1:0")
            .env("FQ_WEB_DB", db)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        let stdout = child.stdout.take().ok_or("the app's stdout is not piped")?;
        let output = Arc::new(Mutex::new(Vec::new()));
        // Keeps reading until the app exits, so it never blocks on a full pipe.
        let (lines_tx, lines_rx) = mpsc::channel();
        let log = Arc::clone(&output);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                log.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line.clone());
                // An error only means the test stopped listening.
                let _ = lines_tx.send(line);
            }
        });
        let mut app = App {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            output,
        };
        let deadline = Instant::now() + STARTUP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        app.addr = addr.trim().parse()?;
                        return Ok(app);
                    }
                }
                Err(_) => {
                    let status = app.child.try_wait()?;
                    app.check(
                        false,
                        &format!(
                            "the app printed no address within {STARTUP:?} (exit status {status:?})"
                        ),
                    )?;
                }
            }
        }
    }

    /// What the app printed so far.
    fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .join("\n")
    }

    /// Fails with `message` and the app's output unless `ok`. (A panic, not an `Err`: the test
    /// harness prints an `Err` with `Debug`, which would escape the output's line breaks.)
    fn check(&self, ok: bool, message: &str) -> TestResult {
        assert!(ok, "{message}\n--- the app printed:\n{}", self.output());
        Ok(())
    }

    /// Asks the app to stop (SIGTERM on Unix) and checks that it exits cleanly.
    fn stop(&mut self) -> TestResult {
        #[cfg(unix)]
        {
            let pid = self.child.id().to_string();
            let sent = Command::new("sh")
                .args(["-c", "kill -TERM \"$1\"", "sh", &pid])
                .status()?;
            self.check(sent.success(), "could not send SIGTERM to the app")?;
            let deadline = Instant::now() + EXIT;
            let status = loop {
                if let Some(status) = self.child.try_wait()? {
                    break status;
                }
                self.check(
                    Instant::now() < deadline,
                    &format!("the app did not exit within {EXIT:?} of SIGTERM"),
                )?;
                std::thread::sleep(Duration::from_millis(20));
            };
            self.check(
                status.success(),
                &format!("the app exited with {status} after SIGTERM"),
            )?;
            // The reader thread may not have seen the last lines yet.
            let deadline = Instant::now() + Duration::from_secs(2);
            while !self.output().contains("worker stopped") && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            self.check(
                self.output().contains("worker stopped"),
                "the app exited without stopping its worker",
            )
        }
        #[cfg(not(unix))]
        {
            self.child.kill()?;
            self.child.wait()?;
            Ok(())
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One HTTP/1.1 exchange over a fresh connection.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json_body: Option<&str>,
) -> TestResult<Reply> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut message =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        if let Some(body) = json_body {
            message.push_str("Content-Type: application/json\r\n");
            message.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        } else {
            message.push_str("\r\n");
        }
        stream.write_all(message.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(EXCHANGE, exchange)
        .await
        .map_err(|_| format!("{method} {path}: no answer within {EXCHANGE:?}"))??;
    parse_reply(&raw).map_err(|e| format!("{method} {path}: {e}").into())
}

fn parse_reply(raw: &[u8]) -> Result<Reply, String> {
    let text = String::from_utf8(raw.to_vec()).map_err(|e| format!("answer is not UTF-8: {e}"))?;
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("answer has no end of headers: {text:?}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let mut reply = Reply {
        status,
        headers,
        body: String::new(),
    };
    reply.body = if reply
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        decode_chunked(rest)?
    } else if let Some(length) = reply.header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| format!("bad content-length {length:?}"))?;
        rest.get(..length)
            .ok_or_else(|| format!("body shorter than its content-length {length}: {rest:?}"))?
            .to_owned()
    } else {
        rest.to_owned()
    };
    Ok(reply)
}

fn decode_chunked(mut rest: &str) -> Result<String, String> {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").ok_or("chunk without a size line")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or_default().trim(), 16)
            .map_err(|_| format!("bad chunk size {size:?}"))?;
        if size == 0 {
            return Ok(body);
        }
        body.push_str(after.get(..size).ok_or("chunk shorter than its size")?);
        rest = after
            .get(size..)
            .and_then(|r| r.strip_prefix("\r\n"))
            .ok_or("chunk without its line end")?;
    }
}

/// Builds the example (a no-op when it is up to date) and returns its binary's path, as cargo
/// reports it: right whatever the target directory, build directory or profile.
fn web_app_binary() -> TestResult<PathBuf> {
    let mut build = Command::new(env!("CARGO"));
    build.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "build",
        "--example",
        "web_app",
        "--message-format=json",
    ]);
    // Same features as this test, so nothing is rebuilt just for the example.
    if !cfg!(feature = "cli") {
        build.arg("--no-default-features");
    }
    // Same profile as this test: its binary sits in target/<profile>/deps.
    let exe = std::env::current_exe()?;
    let profile_dir = exe.parent().and_then(Path::parent);
    match profile_dir
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
    {
        Some("debug") | None => {}
        Some("release") => {
            build.arg("--release");
        }
        Some(profile) => {
            build.args(["--profile", profile]);
        }
    }
    let output = build.stderr(Stdio::piped()).output()?;
    assert!(
        output.status.success(),
        "cargo build --example web_app failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout)?;
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| {
            message["reason"] == "compiler-artifact"
                && message["target"]["name"] == "web_app"
                && message["target"]["kind"] == json!(["example"])
        })
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| "cargo reported no executable for the web_app example".into())
}
