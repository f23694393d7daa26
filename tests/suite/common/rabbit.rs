//! The RabbitMQ fixture: the server on 127.0.0.1:5672 (guest/guest; `FQ_RABBITMQ_URL` points
//! elsewhere), the skip notice when it is unreachable (a failure under
//! `FQ_REQUIRE_RABBITMQ=1`), queue names no other test uses, their deletion whatever happens,
//! and the lock that keeps the tests that stop the server apart from all others.
#![allow(dead_code, unreachable_pub)]

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use fq::{BrokerKind, Config, Engine, TaskId};
use lapin::options::QueueDeleteOptions;
use lapin::{Connection, ConnectionProperties};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The server's URL.
pub fn url() -> String {
    std::env::var("FQ_RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// True when RabbitMQ answers; otherwise prints a skip notice, or panics under
/// `FQ_REQUIRE_RABBITMQ=1`.
pub fn rabbitmq_available() -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], 5672).into();
    if std::env::var("FQ_RABBITMQ_URL").is_ok()
        || TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
    {
        return true;
    }
    assert!(
        std::env::var("FQ_REQUIRE_RABBITMQ").as_deref() != Ok("1"),
        "RabbitMQ is not reachable on 127.0.0.1:5672 and FQ_REQUIRE_RABBITMQ=1 (start it with \
         `rabbitmq-server -detached`)"
    );
    eprintln!(
        "skipping: RabbitMQ is not reachable on 127.0.0.1:5672 (set FQ_REQUIRE_RABBITMQ=1 to \
         fail instead)"
    );
    false
}

/// A queue name no other test (or earlier run) uses.
pub fn unique_queue(label: &str) -> String {
    format!("fqtest.{label}.{}", &TaskId::new().to_string()[24..])
}

/// Deletes the test's queues (and their `.dead` siblings) when dropped, from a thread of its
/// own (drop may run in a panicking async test).
#[derive(Debug)]
pub struct Queues(pub Vec<String>);

impl Drop for Queues {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.0);
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(conn) = plain_connection().await else {
                    return;
                };
                for queue in names {
                    for name in [queue.clone(), format!("{queue}.dead")] {
                        if let Ok(channel) = conn.create_channel().await {
                            let _ = channel
                                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                                .await;
                        }
                    }
                }
                let _ = conn.close(200, "bye".into()).await;
            });
        })
        .join();
    }
}

/// A plain lapin connection to the server.
pub async fn plain_connection() -> lapin::Result<Connection> {
    Connection::connect(&url(), ConnectionProperties::default()).await
}

/// A configuration for `broker: rabbitmq` with its store in `dir`, serving `queue`.
pub fn rabbit_config(dir: &Path, queue: &str, concurrency: usize) -> Config {
    let mut config = Config {
        broker: BrokerKind::Rabbitmq,
        database: dir.join("fq.redb"),
        ..Config::default()
    };
    config.rabbitmq.url = Some(url());
    config.defaults.queue = queue.to_owned();
    config.defaults.retry_delay = Duration::from_millis(200);
    config.defaults.retry_max_delay = Duration::from_secs(1);
    config.worker.queues = vec![queue.to_owned()];
    config.worker.concurrency = concurrency;
    config
}

/// Opens an engine on `config`, without a control socket.
pub fn open(config: Config) -> fq::Result<Engine> {
    Engine::builder(config.database.clone())
        .config(config)
        .control(false)
        .open()
}

/// Serializes the tests that stop RabbitMQ against all others (of every area): they take it
/// for writing, the rest for reading.
static BROKER: RwLock<()> = RwLock::const_new(());

/// The broker for a test that leaves it running.
pub async fn shared_broker() -> RwLockReadGuard<'static, ()> {
    BROKER.read().await
}

/// The broker for a test that stops it: no other test uses it meanwhile.
pub async fn exclusive_broker() -> RwLockWriteGuard<'static, ()> {
    BROKER.write().await
}

/// Which hold a test has on the broker.
#[derive(Debug)]
enum Hold {
    Shared(RwLockReadGuard<'static, ()>),
    Exclusive(RwLockWriteGuard<'static, ()>),
}

/// A RabbitMQ test's setting: its own queue (deleted with its `.dead` sibling when the fixture
/// drops, even when the test fails), a temp dir, and its hold on the broker. Dropped in that
/// order: the folder, the queues, then the hold.
#[derive(Debug)]
pub struct Rabbit {
    /// The test's queue, named `fqtest.<label>.<unique>`.
    pub queue: String,
    /// A temp dir for the test's stores.
    pub dir: tempfile::TempDir,
    cleanup: Queues,
    hold: Hold,
}

impl Rabbit {
    /// The setting of a test that leaves the broker running; `None` (after the skip notice)
    /// when RabbitMQ is unreachable.
    pub async fn shared(label: &str) -> Option<Self> {
        if !rabbitmq_available() {
            return None;
        }
        let hold = Hold::Shared(shared_broker().await);
        Some(Self::new(label, hold))
    }

    /// The setting of a test that stops the broker; `None` as for [`Rabbit::shared`].
    pub async fn exclusive(label: &str) -> Option<Self> {
        if !rabbitmq_available() {
            return None;
        }
        let hold = Hold::Exclusive(exclusive_broker().await);
        Some(Self::new(label, hold))
    }

    fn new(label: &str, hold: Hold) -> Self {
        let queue = unique_queue(label);
        Self {
            cleanup: Queues(vec![queue.clone()]),
            queue,
            dir: tempfile::tempdir().expect("temp dir"),
            hold,
        }
    }

    /// Another queue of the test's own, deleted with the fixture.
    pub fn another_queue(&mut self, label: &str) -> String {
        let queue = unique_queue(label);
        self.cleanup.0.push(queue.clone());
        queue
    }

    /// [`rabbit_config`] for the test's queue, with the store in `dir`.
    pub fn config_in(&self, dir: &Path, concurrency: usize) -> Config {
        rabbit_config(dir, &self.queue, concurrency)
    }

    /// An engine on the test's queue with its store in the fixture's folder.
    pub fn open(&self, concurrency: usize) -> fq::Result<Engine> {
        open(self.config_in(self.dir.path(), concurrency))
    }
}
