//! The web dashboard (`fq::web`, feature `web`): plain HTTP checks through the router
//! (escaping of every task string, read-only without a token, CSRF refusal, the loopback rule),
//! and one test in a real browser (headless Chromium through chromedriver and WebDriver) that
//! reads the overview's counts, opens a failed task, logs in, presses retry, and checks that
//! a task whose arguments hold markup shows it as text and runs none of it.
//!
//! The browser test skips with a notice when `chromium` or `chromedriver` is missing, unless
//! `FQ_REQUIRE_BROWSER=1` (as `.ci/run` sets), which makes it fail. It saves a screenshot of
//! each page under `target/web-screenshots/`.

use crate::common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use fq::{Config, Engine, Registry, TaskError, TaskId, TaskStatus};
use serde_json::json;
use tower::ServiceExt;

const TOKEN: &str = "let-me-in";

/// What the hostile task's arguments hold: markup that would set `window.__fq_xss` if a page
/// ever let it through as HTML.
const SCRIPT: &str = "<script>window.__fq_xss = 1</script>";
const IMG: &str = "<img src=x onerror=\"window.__fq_xss = 2\">";
/// A failing handler's error message, with markup as well.
const ERROR: &str =
    "the printer is on fire <b id=\"bold\">twice</b> <img src=x onerror=\"window.__fq_xss = 3\">";

/// An engine in a temp dir, with `http.token` when `token` is set.
fn engine(token: Option<&str>) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config {
        database: dir.path().join("fq.redb"),
        http: fq::HttpConfig {
            token: token.map(str::to_owned),
            ..fq::HttpConfig::default()
        },
        ..Config::default()
    };
    let engine = Engine::from_config(config).expect("open engine");
    (dir, engine)
}

async fn hostile_task(engine: &Engine) -> fq::Result<TaskId> {
    engine
        .queue_task_named(
            "web.hostile",
            &json!({"kwargs": {"html": SCRIPT, "img": IMG}}),
        )
        .queue("held")
        .send()
        .await
}

/// A response's status, `Set-Cookie` and body.
struct Reply {
    status: StatusCode,
    cookie: Option<String>,
    body: String,
}

async fn call(router: &axum::Router, request: Request<Body>) -> Reply {
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("the router answers");
    let status = response.status();
    let cookie = response
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .expect("body");
    Reply {
        status,
        cookie,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn get(router: &axum::Router, path: &str, cookie: Option<&str>) -> Reply {
    let mut request = Request::get(path);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    call(router, request.body(Body::empty()).expect("request")).await
}

async fn post(router: &axum::Router, path: &str, cookie: Option<&str>, form: &str) -> Reply {
    let mut request =
        Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    call(
        router,
        request.body(Body::from(form.to_owned())).expect("request"),
    )
    .await
}

/// The CSRF token in a page's forms.
fn csrf_of(page: &str) -> Option<String> {
    let start = page.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    let len = page[start..].find('"')?;
    Some(page[start..start + len].to_owned())
}

/// Logs in with `token`; the session cookie (`name=value`) on success.
async fn login(router: &axum::Router, token: &str) -> Reply {
    post(router, "/login", None, &format!("token={token}")).await
}

fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap_or_default().to_owned()
}

async fn paused(engine: &Engine, queue: &str) -> bool {
    engine
        .stats()
        .await
        .expect("stats")
        .queues
        .get(queue)
        .is_some_and(|q| q.paused)
}

#[tokio::test]
async fn every_task_string_is_escaped() -> fq::Result<()> {
    let (_dir, engine) = engine(None);
    let id = hostile_task(&engine).await?;
    // The markup really is in the record: the checks below are about the page, not the input.
    let record = engine.task(id).await?.expect("the task exists");
    assert!(record.payload.as_str().contains("<script>"));
    let router = fq::web::router(engine.clone());

    let page = get(&router, &format!("/tasks/{id}"), None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body
            .contains("&lt;script&gt;window.__fq_xss = 1&lt;/script&gt;"),
        "{}",
        page.body
    );
    assert!(page.body.contains("&lt;img src=x onerror="));
    assert!(!page.body.contains("<script>window"), "{}", page.body);
    assert!(!page.body.contains("<img"), "{}", page.body);
    // The page's own script tag is there (so the check above is not vacuous about tags).
    assert!(page.body.contains("<script src=\"/assets/live.js\""));

    // A failed task's error, on its page and in the list.
    let mut registry = Registry::new();
    registry.register_fn(
        "web.broken",
        |_: serde_json::Value| -> Result<(), TaskError> { Err(TaskError::permanent(ERROR)) },
    );
    let failed = engine
        .queue_task_named("web.broken", &json!({}))
        .max_retries(0)
        .send()
        .await?;
    let worker = common::start_worker(&engine, registry, &["default"], 1);
    let record = engine.wait(failed, common::PATIENCE).await?;
    worker.stop().await;
    assert_eq!(record.status, TaskStatus::Failed);
    for path in [
        format!("/tasks/{failed}"),
        "/tasks?status=FAILED".to_owned(),
    ] {
        let page = get(&router, &path, None).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        assert!(
            page.body.contains("&lt;b id=\"bold\"&gt;twice&lt;/b&gt;")
                || page
                    .body
                    .contains("&lt;b id=&quot;bold&quot;&gt;twice&lt;/b&gt;"),
            "{path}: {}",
            page.body
        );
        assert!(!page.body.contains("<b id"), "{path}");
        assert!(!page.body.contains("<img"), "{path}");
    }
    // The task page's attempt history holds the run with its (escaped) error, and `why` says
    // what to do.
    let page = get(&router, &format!("/tasks/{failed}"), None).await;
    let attempts = &page.body[page.body.find("id=\"attempts\"").expect("attempts section")..];
    assert!(attempts.contains("data-attempt=\"1\""), "{attempts}");
    assert!(attempts.contains("permanent"), "{attempts}");
    assert!(attempts.contains("&lt;b id="), "{attempts}");
    assert!(
        page.body.contains(&format!("fq retry {failed}")),
        "{}",
        page.body
    );
    // A filter value is echoed escaped as well.
    let page = get(
        &router,
        "/tasks?name=%22%3E%3Cscript%3Ex%3C%2Fscript%3E",
        None,
    )
    .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains("<script>x"), "{}", page.body);
    assert!(
        page.body.contains("&quot;&gt;&lt;script&gt;x"),
        "{}",
        page.body
    );
    Ok(())
}

#[tokio::test]
async fn without_a_token_the_dashboard_is_read_only() -> fq::Result<()> {
    let (_dir, engine) = engine(None);
    let failed_queue_task = engine.queue_task_named("web.x", &json!({})).send().await?;
    let router = fq::web::router(engine.clone());
    let page = get(&router, "/", None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("read-only"));
    assert!(!page.body.contains("name=\"csrf\""), "no action forms");
    assert!(!page.body.contains(">Pause<"));
    let page = get(&router, &format!("/tasks/{failed_queue_task}"), None).await;
    assert!(!page.body.contains(">Cancel<"));
    // Every POST is refused, whatever it carries, and changes nothing.
    for (path, form) in [
        ("/queues/default/pause", "csrf=anything"),
        ("/queues/default/pause", ""),
        ("/login", "token=anything"),
        ("/login", "token="),
    ] {
        let reply = post(&router, path, None, form).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path} {form}");
        assert!(reply.cookie.is_none());
    }
    let reply = post(
        &router,
        &format!("/tasks/{failed_queue_task}/cancel"),
        None,
        "",
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(!paused(&engine, "default").await);
    let status = engine.task(failed_queue_task).await?.map(|r| r.status);
    assert_eq!(status, Some(TaskStatus::Pending));

    // The negative control: the same POST with a token configured and a session goes through.
    let (_dir, engine) = engine_with_token();
    engine.queue_task_named("web.x", &json!({})).send().await?;
    let router = fq::web::router(engine.clone());
    let session = cookie_pair(&login(&router, TOKEN).await.cookie.expect("a cookie"));
    let csrf = csrf_of(&get(&router, "/", Some(&session)).await.body).expect("a form");
    let reply = post(
        &router,
        "/queues/default/pause",
        Some(&session),
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert!(paused(&engine, "default").await);
    Ok(())
}

fn engine_with_token() -> (tempfile::TempDir, Engine) {
    engine(Some(TOKEN))
}

#[tokio::test]
async fn actions_need_the_session_and_its_csrf_token() -> fq::Result<()> {
    let (_dir, engine) = engine_with_token();
    engine.queue_task_named("web.x", &json!({})).send().await?;
    let router = fq::web::router(engine.clone());

    // Logged out: a login link, no action forms.
    let page = get(&router, "/", None).await;
    assert!(page.body.contains("href=\"/login\""));
    assert!(!page.body.contains("name=\"csrf\""));

    // A wrong token sets no cookie; the right one does, HttpOnly and SameSite=Strict.
    for wrong in ["let-me-i", "let-me-inn", "", "LET-ME-IN"] {
        let reply = login(&router, wrong).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{wrong:?}");
        assert!(reply.cookie.is_none(), "{wrong:?}");
    }
    let reply = login(&router, TOKEN).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    let set_cookie = reply.cookie.expect("a session cookie");
    assert!(set_cookie.starts_with("fq_session="), "{set_cookie}");
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    let session = cookie_pair(&set_cookie);
    let page = get(&router, "/", Some(&session)).await;
    let csrf = csrf_of(&page.body).expect("forms carry the CSRF token");
    assert!(page.body.contains(">Pause<"));

    // Refused: no CSRF token, a wrong one, a right one without the session, a made-up session.
    let refusals = [
        (Some(session.as_str()), String::new()),
        (Some(session.as_str()), "csrf=".to_owned()),
        (
            Some(session.as_str()),
            format!("csrf={}", &csrf[..csrf.len() - 1]),
        ),
        (Some(session.as_str()), format!("csrf={csrf}x")),
        (None, format!("csrf={csrf}")),
        (Some("fq_session=forged"), format!("csrf={csrf}")),
    ];
    for (cookie, form) in &refusals {
        let reply = post(&router, "/queues/default/pause", *cookie, form).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{cookie:?} {form}");
        assert!(!paused(&engine, "default").await, "{cookie:?} {form}");
    }
    // Accepted with both.
    let reply = post(
        &router,
        "/queues/default/pause",
        Some(&session),
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert!(paused(&engine, "default").await);
    let reply = post(
        &router,
        "/queues/default/resume",
        Some(&session),
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert!(!paused(&engine, "default").await);

    // Purge asks for its confirmation box.
    let reply = post(
        &router,
        "/queues/default/purge",
        Some(&session),
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(engine.stats().await?.queues["default"].pending, 1);
    let form = format!("csrf={csrf}&confirm=yes");
    let reply = post(&router, "/queues/default/purge", Some(&session), &form).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(
        engine
            .stats()
            .await?
            .queues
            .get("default")
            .map_or(0, |q| q.pending),
        0
    );

    // Logging out ends the session: its CSRF token no longer works.
    let reply = post(&router, "/logout", Some(&session), &format!("csrf={csrf}")).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    let reply = post(
        &router,
        "/queues/default/pause",
        Some(&session),
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    Ok(())
}

#[tokio::test]
async fn the_dashboard_listens_off_loopback_only_with_a_token() -> fq::Result<()> {
    let _tcp = common::tcp_lock().await;
    let open = "0.0.0.0:0".parse().expect("address");
    let (_dir, read_only) = engine(None);
    let err = fq::web::Server::bind(read_only.clone(), open)
        .await
        .expect_err("no token, not loopback");
    assert!(
        matches!(err, fq::web::WebError::InsecureListen { .. }),
        "{err:?}"
    );
    // Loopback without a token, and any address with one, are served.
    let server = fq::web::Server::bind(read_only, "127.0.0.1:0".parse().expect("address"))
        .await
        .expect("loopback");
    assert!(server.local_addr().ip().is_loopback());
    drop(server);
    let (_dir, guarded) = engine_with_token();
    let server = fq::web::Server::bind(guarded, open)
        .await
        .expect("with a token");
    assert!(server.local_addr().ip().is_unspecified());
    Ok(())
}

// --- the browser ------------------------------------------------------------------------------

/// chromedriver, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// chromedriver on a free loopback port, once it accepts connections.
async fn start_driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver { child, port };
    common::eventually(
        "chromedriver to listen",
        common::PATIENCE,
        Duration::from_millis(100),
        || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        },
    )
    .await;
    driver
}

fn screenshots_dir() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
        std::path::PathBuf::from,
    );
    target.join("web-screenshots")
}

async fn screenshot(client: &fantoccini::Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    let dir = screenshots_dir();
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("screenshot written");
}

async fn text(client: &fantoccini::Client, css: &str) -> String {
    client
        .find(fantoccini::Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_a_real_browser() -> fq::Result<()> {
    let required = std::env::var("FQ_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    if !installed("chromium") || !installed("chromedriver") {
        assert!(
            !required,
            "FQ_REQUIRE_BROWSER=1 but chromium or chromedriver is missing (apt-get install chromium chromium-driver)"
        );
        eprintln!("web: chromium or chromedriver not installed; skipping the browser test");
        return Ok(());
    }
    let _tcp = common::tcp_lock().await;
    let (_dir, engine) = engine_with_token();

    // The dashboard first: its chart counts the runs it sees happen.
    let server = fq::web::Server::bind(engine.clone(), "127.0.0.1:0".parse().expect("address"))
        .await
        .expect("bind");
    let base = format!("http://{}", server.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));

    // A mix: three that complete, one that fails until fixed, one scheduled later, one hostile
    // (on a queue nobody serves, so it stays PENDING).
    let fixed = Arc::new(AtomicBool::new(false));
    let mut registry = Registry::new();
    registry.register_fn(
        "web.ok",
        |args: serde_json::Value| -> Result<_, TaskError> { Ok(json!({"echo": args})) },
    );
    let flag = fixed.clone();
    registry.register_fn(
        "web.flaky",
        move |_: serde_json::Value| -> Result<_, TaskError> {
            if flag.load(Ordering::SeqCst) {
                Ok(json!("fixed"))
            } else {
                Err(TaskError::new(ERROR))
            }
        },
    );
    for n in 0..3 {
        engine
            .queue_task_named("web.ok", &json!({"kwargs": {"n": n}}))
            .send()
            .await?;
    }
    let failing = engine
        .queue_task_named("web.flaky", &json!({"kwargs": {"to": "printer"}}))
        .max_retries(0)
        .send()
        .await?;
    engine
        .queue_task_named("web.ok", &json!({}))
        .queue("later")
        .delay(Duration::from_secs(3600))
        .unique("nightly-report")
        .send()
        .await?;
    let hostile = hostile_task(&engine).await?;
    let worker = common::start_worker(&engine, registry, &["default"], 2);
    common::eventually(
        "the mix to settle",
        common::PATIENCE,
        Duration::from_millis(50),
        || {
            let engine = engine.clone();
            async move {
                engine.stats().await.is_ok_and(|s| {
                    s.queues
                        .get("default")
                        .is_some_and(|q| q.completed == 3 && q.failed == 1)
                })
            }
        },
    )
    .await;

    let driver = start_driver().await;
    let mut capabilities = serde_json::Map::new();
    let mut chrome = json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
        "--disable-dev-shm-usage", "--window-size=1280,900"]});
    if std::path::Path::new("/usr/bin/chromium").exists() {
        chrome["binary"] = json!("/usr/bin/chromium");
    }
    capabilities.insert("goog:chromeOptions".to_owned(), chrome);
    let client =
        fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .expect("a WebDriver session");

    // Overview: every count shown is the engine's.
    client.goto(&format!("{base}/")).await.expect("overview");
    let stats = engine.stats().await?;
    assert!(stats.queues.len() >= 3, "{stats:?}");
    for (queue, counts) in &stats.queues {
        for (field, want) in [
            ("pending", counts.pending),
            ("scheduled", counts.scheduled),
            ("running", counts.running),
            ("retrying", counts.retrying),
            ("completed", counts.completed),
            ("failed", counts.failed),
            ("cancelled", counts.cancelled),
        ] {
            let shown = text(
                &client,
                &format!("tr[data-queue=\"{queue}\"] td[data-count=\"{field}\"]"),
            )
            .await;
            assert_eq!(shown, want.to_string(), "{queue} {field}");
        }
    }
    assert_eq!(
        text(
            &client,
            "tr[data-queue=\"default\"] td[data-count=\"completed\"]"
        )
        .await,
        "3"
    );
    assert_eq!(text(&client, "#completed-hour").await, "3");
    assert_eq!(text(&client, "#failed-hour").await, "1");
    // The live worker, as `Engine::workers` lists it.
    let live = engine.workers().await?.live;
    assert_eq!(live.len(), 1, "{live:?}");
    let worker_id = live[0].info.id.to_string();
    assert!(text(&client, "#live-workers").await.contains(&worker_id));
    screenshot(&client, "overview-logged-out").await;

    client.goto(&format!("{base}/tasks")).await.expect("tasks");
    screenshot(&client, "tasks").await;
    client
        .goto(&format!("{base}/workers"))
        .await
        .expect("workers");
    assert!(text(&client, "#live-workers").await.contains(&worker_id));
    screenshot(&client, "workers").await;

    // A failed task: its error, as text.
    client
        .goto(&format!("{base}/tasks/{failing}"))
        .await
        .expect("task");
    assert_eq!(text(&client, "#task-error").await, ERROR);
    assert!(text(&client, "#task-status").await.contains("FAILED"));
    // Its attempt history: run 1, by the live worker, an error with its message as text.
    let attempt = text(&client, "#attempts tr[data-attempt='1']").await;
    assert!(attempt.contains(&worker_id), "{attempt}");
    assert!(attempt.contains("error"), "{attempt}");
    assert!(attempt.contains(ERROR), "{attempt}");
    assert!(
        text(&client, "#why")
            .await
            .contains(&format!("fq retry {failing}"))
    );
    // Logged out: no retry button.
    assert!(
        client
            .find(fantoccini::Locator::Id(&format!("retry-{failing}")))
            .await
            .is_err()
    );
    screenshot(&client, "task-failed").await;

    // The hostile task: the markup is visible text, and none of it ran.
    client
        .goto(&format!("{base}/tasks/{hostile}"))
        .await
        .expect("hostile task");
    let args = text(&client, "#task-args").await;
    assert!(
        args.contains("<script>window.__fq_xss = 1</script>"),
        "{args}"
    );
    assert!(args.contains("<img src=x onerror="), "{args}");
    let xss = client
        .execute("return typeof window.__fq_xss;", vec![])
        .await
        .expect("script");
    assert_eq!(xss, json!("undefined"));
    let images = client
        .execute(
            "return document.querySelectorAll('main img, main script').length;",
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(images, json!(0));
    // The negative control: a global set by a script that does run is seen by the same check.
    let probe = client
        .execute(
            "window.__fq_probe = 1; return typeof window.__fq_probe;",
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(probe, json!("number"));
    screenshot(&client, "task-hostile").await;

    // Log in, press retry on the failed task, and see it complete.
    client.goto(&format!("{base}/login")).await.expect("login");
    client
        .find(fantoccini::Locator::Id("token"))
        .await
        .expect("token field")
        .send_keys(TOKEN)
        .await
        .expect("typed");
    client
        .find(fantoccini::Locator::Id("login"))
        .await
        .expect("button")
        .click()
        .await
        .expect("login");
    // A click returns before the navigation it starts has finished: wait for its page.
    client
        .wait()
        .at_most(common::PATIENCE)
        .for_element(fantoccini::Locator::Id("logout"))
        .await
        .expect("logged in: a log-out button");
    fixed.store(true, Ordering::SeqCst);
    client
        .goto(&format!("{base}/tasks/{failing}"))
        .await
        .expect("task");
    client
        .find(fantoccini::Locator::Id(&format!("retry-{failing}")))
        .await
        .expect("a retry button once logged in")
        .click()
        .await
        .expect("retry");
    // The retry's POST may still be on its way when the click returns (and the task is
    // FAILED until it lands): poll the engine.
    common::eventually(
        "the retried task to complete",
        common::PATIENCE,
        Duration::from_millis(50),
        || {
            let engine = engine.clone();
            async move {
                engine
                    .task(failing)
                    .await
                    .is_ok_and(|r| r.is_some_and(|r| r.status == TaskStatus::Completed))
            }
        },
    )
    .await;
    client.refresh().await.expect("reload");
    assert!(text(&client, "#task-status").await.contains("COMPLETED"));
    assert_eq!(text(&client, "#task-result").await, "\"fixed\"");
    screenshot(&client, "task-retried").await;

    // A POST from the logged-in page without the CSRF token is refused.
    let status = client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/queues/default/pause', {method: 'POST',
                 headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: ''})
               .then(r => done(r.status), e => done(String(e)));",
            vec![],
        )
        .await
        .expect("fetch");
    assert_eq!(status, json!(403));
    assert!(!paused(&engine, "default").await);

    client.goto(&format!("{base}/")).await.expect("overview");
    screenshot(&client, "overview").await;

    client.close().await.expect("close the session");
    drop(driver);
    let _ = stop.send(());
    let _ = serving.await;
    worker.stop().await;
    Ok(())
}

/// The task list filters by queue, status and name, 50 rows a page, with a link to the next.
#[tokio::test]
async fn the_task_list_filters_and_pages() -> fq::Result<()> {
    let (_dir, engine) = engine(None);
    for n in 0..55 {
        engine
            .queue_task_named("web.report", &json!({"kwargs": {"n": n}}))
            .queue("reports")
            .send()
            .await?;
    }
    for _ in 0..3 {
        engine
            .queue_task_named("web.mail", &json!({}))
            .send()
            .await?;
    }
    let router = fq::web::router(engine.clone());
    let rows = |page: &str| page.matches("<tr data-task=").count();

    let first = get(&router, "/tasks?queue=reports", None).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(rows(&first.body), 50);
    let marker = "id=\"next-page\" href=\"";
    let start = first.body.find(marker).expect("a next link") + marker.len();
    let len = first.body[start..].find('"').expect("end of the link");
    let next = first.body[start..start + len].replace("&amp;", "&");
    let second = get(&router, &next, None).await;
    assert_eq!(rows(&second.body), 5, "{next}");
    assert!(!second.body.contains("id=\"next-page\""));

    // By name (a substring), by status, and both with a queue that has none.
    assert_eq!(rows(&get(&router, "/tasks?name=mail", None).await.body), 3);
    assert_eq!(rows(&get(&router, "/tasks?name=web.", None).await.body), 50);
    assert_eq!(
        rows(
            &get(&router, "/tasks?status=PENDING&queue=default", None)
                .await
                .body
        ),
        3
    );
    assert_eq!(
        rows(&get(&router, "/tasks?status=FAILED", None).await.body),
        0
    );
    assert_eq!(
        rows(
            &get(&router, "/tasks?queue=reports&name=mail", None)
                .await
                .body
        ),
        0
    );
    // A bad filter is a 400 that says which.
    let bad = get(&router, "/tasks?status=SLEEPING", None).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("SLEEPING"));
    let bad = get(&router, "/tasks?after=nope", None).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    // An unknown task is a 404.
    let missing = get(&router, &format!("/tasks/{}", TaskId::new()), None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    Ok(())
}

/// Cancel, retry, retry-all-failed and unknown actions, through the dashboard's POSTs.
#[tokio::test]
async fn task_and_queue_actions_call_the_engine() -> fq::Result<()> {
    let (_dir, engine) = engine_with_token();
    let router = fq::web::router(engine.clone());
    let session = cookie_pair(&login(&router, TOKEN).await.cookie.expect("a cookie"));
    let csrf = csrf_of(&get(&router, "/", Some(&session)).await.body).expect("a form");
    let form = format!("csrf={csrf}");
    let status = |id| {
        let engine = engine.clone();
        async move { engine.task(id).await.ok().flatten().map(|r| r.status) }
    };

    let waiting = engine.queue_task_named("web.x", &json!({})).send().await?;
    let page = get(&router, &format!("/tasks/{waiting}"), Some(&session)).await;
    assert!(page.body.contains(&format!("id=\"cancel-{waiting}\"")));
    assert!(
        !page.body.contains(&format!("id=\"retry-{waiting}\"")),
        "not retryable yet"
    );
    // Retrying a PENDING task is the engine's refusal, shown as a 409 page; nothing changes.
    let reply = post(
        &router,
        &format!("/tasks/{waiting}/retry"),
        Some(&session),
        &form,
    )
    .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.body);
    assert_eq!(status(waiting).await, Some(TaskStatus::Pending));
    let reply = post(
        &router,
        &format!("/tasks/{waiting}/cancel"),
        Some(&session),
        &form,
    )
    .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(status(waiting).await, Some(TaskStatus::Cancelled));
    let page = get(&router, &format!("/tasks/{waiting}"), Some(&session)).await;
    assert!(
        page.body
            .contains("<td id=\"cancelled-by\">the web dashboard</td>"),
        "the task page names who cancelled it"
    );
    let reply = post(
        &router,
        &format!("/tasks/{waiting}/retry"),
        Some(&session),
        &form,
    )
    .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(status(waiting).await, Some(TaskStatus::Pending));
    // Unknown actions and ids.
    let reply = post(
        &router,
        &format!("/tasks/{waiting}/explode"),
        Some(&session),
        &form,
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = post(
        &router,
        &format!("/tasks/{}/cancel", TaskId::new()),
        Some(&session),
        &form,
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = post(&router, "/queues/default/explode", Some(&session), &form).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);

    // Retry all failed of one queue: the other queue's failed task stays FAILED.
    let mut registry = Registry::new();
    registry.register_fn(
        "web.broken",
        |_: serde_json::Value| -> Result<(), TaskError> { Err(TaskError::permanent("no")) },
    );
    let here = engine
        .queue_task_named("web.broken", &json!({}))
        .queue("a")
        .send()
        .await?;
    let there = engine
        .queue_task_named("web.broken", &json!({}))
        .queue("b")
        .send()
        .await?;
    let worker = common::start_worker(&engine, registry, &["a", "b"], 1);
    for id in [here, there] {
        assert_eq!(
            engine.wait(id, common::PATIENCE).await?.status,
            TaskStatus::Failed
        );
    }
    worker.stop().await;
    let page = get(&router, "/", Some(&session)).await;
    assert!(
        page.body.contains("id=\"retry-failed-a\""),
        "a button where tasks failed"
    );
    assert!(
        !page.body.contains("id=\"retry-failed-default\""),
        "none where none did"
    );
    let reply = post(&router, "/queues/a/retry-failed", Some(&session), &form).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(status(here).await, Some(TaskStatus::Pending));
    assert_eq!(status(there).await, Some(TaskStatus::Failed));
    Ok(())
}

/// `/metrics` serves the engine's exposition without the token (a scraper has none), with the
/// OpenMetrics content type; with metrics turned off it answers 404 and names the key.
#[tokio::test]
async fn metrics_are_served_without_the_token_and_refused_when_off() -> fq::Result<()> {
    let (_dir, engine) = engine_with_token();
    engine
        .queue_task_named("web.counted", &json!({}))
        .queue("scraped")
        .send()
        .await?;
    let router = fq::web::router(engine.clone());
    let reply = call(
        &router,
        Request::get("/metrics")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let line = reply
        .body
        .lines()
        .find(|line| line.starts_with("fq_tasks_queued_total{") && line.contains("scraped"))
        .unwrap_or_else(|| panic!("no queued counter for queue scraped: {}", reply.body));
    assert!(
        line.contains("web.counted") && line.ends_with(" 1"),
        "{line}"
    );
    let response = router
        .clone()
        .oneshot(
            Request::get("/metrics")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("the router answers");
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        fq::metrics::CONTENT_TYPE
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config {
        database: dir.path().join("fq.redb"),
        ..Config::default()
    };
    config.metrics.enabled = false;
    let off = Engine::from_config(config)?;
    let reply = get(&fq::web::router(off), "/metrics", None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.body);
    assert!(reply.body.contains("metrics.enabled"), "{}", reply.body);
    Ok(())
}
