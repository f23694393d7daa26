//! `EngineBuilder`: the settings an engine is opened with, and `open`, which wires the store,
//! the broker (embedded or RabbitMQ), the events and the control socket together.

use super::*;

/// Options for opening an [`Engine`].
#[must_use = "an engine opens only with .open()"]
pub struct EngineBuilder {
    pub(super) path: PathBuf,
    pub(super) config: Config,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) store: StoreOptions,
    pub(super) lease: Duration,
    pub(super) control: bool,
    pub(super) read_only: bool,
    pub(super) self_heal: bool,
}

impl std::fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("path", &self.path)
            .field("clock", &self.clock)
            .field("lease", &self.lease)
            .field("control", &self.control)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl EngineBuilder {
    /// Settings from a configuration (default: [`Config::default`]). The builder's path wins
    /// over `config.database`.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The time source (default: the system clock). Tests pass a [`crate::ManualClock`].
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The store's page cache in bytes (default 64 MiB).
    pub fn cache_size(mut self, bytes: usize) -> Self {
        self.store.cache_bytes = bytes;
        self
    }

    /// Verify every page checksum when opening (default true): a damaged file is refused at
    /// open, by a [`read_only`](Self::read_only) open too (which leaves the file as it is).
    /// Turning it off makes opening a large store faster.
    pub fn verify_on_open(mut self, verify: bool) -> Self {
        self.store.verify_on_open = verify;
        self
    }

    /// How long a claimed attempt stays leased without a heartbeat before it is presumed dead
    /// and retried (default 60 s; workers heartbeat every 10 s, or every third of a shorter
    /// lease).
    pub fn lease_duration(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Keeps the store's bytes in `backend` instead of the file at the builder's path (which
    /// then only names the store in errors and places the control socket). For fq's own
    /// power-loss and I/O-error tests; not a stable API. The free-space watermark
    /// (`limits.min_free_bytes`) does not apply: the backend's free space is unknown.
    #[doc(hidden)]
    pub fn storage_backend(mut self, backend: impl Into<CustomBackend>) -> Self {
        self.store.backend = Some(backend.into());
        self
    }

    /// Keeps the write-ahead log (config `write_ahead_log`) in `backend` instead of the file
    /// beside the store: with [`EngineBuilder::storage_backend`], for fq's own power-loss and
    /// I/O-error tests of the log; not a stable API. Without it, a store in a custom backend
    /// keeps no log.
    #[doc(hidden)]
    pub fn log_backend(mut self, backend: impl Into<CustomBackend>) -> Self {
        self.store.log_backend = Some(backend.into());
        self
    }

    /// Takes a write-ahead log checkpoint whenever the log holds `bytes` (default 2 MiB): fq's
    /// power-loss tests make it small so their crash points meet checkpoints; not a stable API.
    #[doc(hidden)]
    pub fn wal_checkpoint_bytes(mut self, bytes: u64) -> Self {
        self.store.wal_checkpoint_bytes = bytes;
        self
    }

    /// Sends every batch through the writer's pipeline, a lone one too, which otherwise syncs
    /// the log on the writer's thread and is answered before the B-tree commits: for fq's own
    /// tests of the pipeline; not a stable API.
    #[doc(hidden)]
    pub fn pipeline_every_batch(mut self) -> Self {
        self.store.sync_lone_batches_here = false;
        self
    }

    /// Keeps the B-tree transaction of every batch open for the next ones (`store/held.rs`),
    /// which the engine otherwise does only for batches that commit while a sync of the log
    /// runs, and sends every batch through the pipeline: for fq's own crash-image and error
    /// tests of held transactions; not a stable API.
    #[doc(hidden)]
    pub fn hold_every_batch(mut self) -> Self {
        self.store.sync_lone_batches_here = false;
        self.store.hold_every_batch = true;
        self
    }

    /// Whether the engine serves its control socket, so other processes (the `fq` CLI,
    /// `Engine::connect`) can reach it (default true). The socket and TCP listener come from
    /// the configuration's `control` section.
    pub fn control(mut self, serve: bool) -> Self {
        self.control = serve;
        self
    }

    /// Opens a store whose write-ahead log (`<store>-wal`) went missing after a crash, going
    /// on without the changes only that log held (default false: such a store is refused with
    /// [`crate::StoreError::Corrupt`] naming the log, since those changes were acknowledged).
    /// For a log lost for good; [`RecoveryReport::missing_log_forgotten`] says whether it
    /// was. A store stopped cleanly, or whose log is there, opens as without it.
    ///
    /// [`RecoveryReport::missing_log_forgotten`]: crate::RecoveryReport::missing_log_forgotten
    pub fn forget_missing_log(mut self, forget: bool) -> Self {
        self.store.forget_missing_log = forget;
        self
    }

    /// Whether the engine heals itself after a failed commit (default true): it reopens its
    /// store with backoff and accepts writes again once an empty durable commit succeeds,
    /// serving reads meanwhile. Off, it refuses every write until the application reopens it.
    pub fn self_heal(mut self, heal: bool) -> Self {
        self.self_heal = heal;
        self
    }

    /// Opens an existing store only to look at it (default false): queries read the file as it
    /// is (checked first, see [`verify_on_open`](Self::verify_on_open)), every change is refused with [`crate::StoreError::ReadOnly`], and nothing of the
    /// store changes: no crash recovery (a RUNNING task a crashed owner left stays RUNNING until
    /// an engine that owns the store opens it), no threads, no control socket, no RabbitMQ
    /// bridge (with `broker: rabbitmq`, [`Engine::stats`] makes one short connection to read
    /// RabbitMQ's depths of the store's queues). The file stays free for other readers; an owner waits for it (see
    /// `worker.lock_wait`).
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Opens the store (creating it if missing), recovers what a previous process left
    /// running, starts the engine's threads, and (unless turned off with
    /// [`EngineBuilder::control`]) serves the control socket.
    ///
    /// With `broker: rabbitmq` (cargo feature `rabbitmq`) the store is the durable outbox of
    /// a RabbitMQ bridge: the engine must be opened inside a tokio runtime, and it connects to
    /// RabbitMQ in the background (reconnecting with backoff), so opening and queuing succeed
    /// while RabbitMQ is down. [`Engine::ready`] waits for the connection.
    ///
    /// # Errors
    /// An invalid configuration; a store that is not fq's, corrupt, newer, locked by another
    /// process or unreadable ([`crate::StoreError`]); a control socket already served by a
    /// live engine, a socket path that is too long, or a TCP address that cannot be bound
    /// ([`crate::ControlError`]); for `broker: rabbitmq`, [`Error::Rabbit`] for an unusable
    /// URL, no tokio runtime, or a build without the `rabbitmq` feature.
    pub fn open(self) -> Result<Engine> {
        let config = self.config;
        config.validate()?;
        #[cfg(not(feature = "rabbitmq"))]
        if config.broker == BrokerKind::Rabbitmq {
            return Err(crate::broker::RabbitError::NotBuilt.into());
        }
        #[cfg(feature = "rabbitmq")]
        let rabbit_settings = match config.broker {
            BrokerKind::Rabbitmq => Some(RabbitSettings::from_config(&config, self.lease)?),
            BrokerKind::Database => None,
        };
        // After the RabbitMQ settings are checked: a bad URL is refused on every path.
        if self.read_only {
            let store = StoreOptions {
                write_ahead_log: config.write_ahead_log,
                ..self.store
            };
            let broker = ReadOnlyBroker::open(
                &self.path,
                &store,
                self.clock,
                config.limits.max_payload_bytes,
            )?;
            // In RabbitMQ mode `stats` adds RabbitMQ's depths, from a connection that only
            // looks; the store itself is read as it is, with no bridge started.
            #[cfg(feature = "rabbitmq")]
            let broker = match &rabbit_settings {
                Some(rabbit) => {
                    broker.with_stats_probe(crate::broker::rabbitmq::read_only_stats(rabbit))
                }
                None => broker,
            };
            let config = Config {
                database: self.path,
                ..config
            };
            // Only the scrape-time figures (depths) mean anything here: nothing runs.
            let metrics = MetricsSource::of(&config);
            return Ok(Engine::from_broker(
                Arc::new(broker),
                config,
                self.lease,
                metrics,
            ));
        }
        let socket = config.control.socket_path(&self.path);
        if self.control {
            // Before the store: a live engine on it is reported by pid, not as a locked file.
            ControlServer::probe(&socket)?;
        }
        let metrics = MetricsSource::of(&config);
        let settings = LocalSettings {
            store: StoreOptions {
                attempt_history: config.limits.attempt_history,
                write_ahead_log: config.write_ahead_log,
                ..self.store
            },
            retry: RetryPolicy {
                base: config.defaults.retry_delay,
                max: config.defaults.retry_max_delay,
                ..RetryPolicy::default()
            },
            lease: self.lease,
            max_pending: config.limits.max_pending,
            max_payload_bytes: config.limits.max_payload_bytes,
            min_free_bytes: config.limits.min_free_bytes,
            self_heal: self.self_heal,
            // Checked before the store is opened: a bad entry creates no store.
            schedules: super::schedules::config_schedules(&config)?,
            metrics: metrics.local().cloned(),
        };
        // In rabbitmq mode the waiting tasks are the outbox, which is always bounded.
        #[cfg(feature = "rabbitmq")]
        let settings = LocalSettings {
            max_pending: rabbit_settings
                .as_ref()
                .map_or(settings.max_pending, |rabbit| Some(rabbit.outbox_limit)),
            ..settings
        };
        let events = EventBus::new();
        let local = Arc::new(LocalBroker::open(
            &self.path,
            settings,
            self.clock,
            events.clone(),
        )?);
        for (queue, queue_config) in &config.queues {
            let limits = queue_config.limits().map_err(|(field, reason)| {
                Error::invalid("queues", format!("queues.{queue}.{field} {reason}"))
            })?;
            local.set_queue_limits(queue, limits);
        }
        #[cfg(feature = "rabbitmq")]
        let rabbit = match rabbit_settings {
            Some(rabbit) => Some(Arc::new(RabbitBroker::start(Arc::clone(&local), rabbit)?)),
            None => None,
        };
        #[cfg(feature = "rabbitmq")]
        let broker: Arc<dyn Broker> = match &rabbit {
            Some(rabbit) => rabbit.clone(),
            None => local.clone(),
        };
        #[cfg(not(feature = "rabbitmq"))]
        let broker: Arc<dyn Broker> = local.clone();
        let defaults = EnqueueDefaults::from_config(&config);
        let config = Config {
            database: self.path,
            ..config
        };
        let control = if self.control {
            let settings = ServerSettings {
                socket,
                listen: config.control.listen,
                token: config.control.token.clone(),
                max_connections: config.control.max_connections,
                max_frame_bytes: config.limits.max_frame_bytes,
                max_payload_bytes: config.limits.max_payload_bytes,
                metrics: metrics.local().cloned(),
                store: config.database.clone(),
                defaults: defaults.clone(),
                retention: retention_of(&config),
                lease: self.lease,
            };
            Some(ControlServer::start(Arc::clone(&broker), settings)?)
        } else {
            None
        };
        Ok(Engine {
            inner: Arc::new(EngineInner {
                control,
                broker,
                local: Some(local),
                #[cfg(feature = "rabbitmq")]
                rabbit,
                config,
                defaults,
                events,
                lease: self.lease,
                metrics,
            }),
        })
    }
}
