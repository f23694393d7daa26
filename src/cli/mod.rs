//! The `fq` command line as a library: [`run`] parses the arguments, sets up logging and a
//! tokio runtime, finds the engine a command works on (a live one through its control socket,
//! else the store file itself), runs the command and turns the outcome into an exit code.
//! An application's own binary gets the whole CLI, with its tasks registered, from one call.
//!
//! Layout: `args` (clap types), `commands/` (one file per subcommand), `output` (text, JSON,
//! progress), `error` (exit codes), `signals`, `tasks` (the built-in `fq.demo.*` tasks).

mod args;
mod commands;
mod error;
mod loadgen;
mod observe;
mod output;
mod tasks;

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches};

pub use tasks::{demo_registry, register_demo_tasks};

use crate::config::{DurationStyle, format_duration};
use crate::{Config, ConnectOptions, Engine, Registry};
use args::{Cli, Command, GlobalArgs};
use error::CliError;
use output::Output;

/// How long the runtime waits, after a command returns, for blocking handlers still running.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(1);

/// Runs the command line given to this process, with `registry`'s tasks available to
/// `worker start`, and returns the exit code: 0 on success, 2 for a usage error (bad flags or
/// values, a bad configuration, a missing `--yes`), 1 for a failure (store errors, an unknown
/// task, a task in the wrong state). Errors are printed once on stderr, with their causes.
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     let mut registry = fq::Registry::new();
///     registry.register_fn("myapp.tasks.resize", |args: serde_json::Value| {
///         Ok::<_, fq::TaskError>(args)
///     });
///     // `myapp worker start --queues default,urgent --concurrent 20 --interval 10`
///     fq::cli::run(registry)
/// }
/// ```
pub fn run(registry: Registry) -> ExitCode {
    run_from(registry, std::env::args_os())
}

/// [`run`] with the arguments given (the first one is the program's name), for wrappers and
/// tests.
pub fn run_from<I, T>(registry: Registry, args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let program = args
        .first()
        .and_then(|first| Path::new(first).file_stem())
        .and_then(|stem| stem.to_str())
        .unwrap_or("fq")
        .to_owned();
    let command = with_handler_list(Cli::command(), &registry)
        .name(program.clone())
        .bin_name(program.clone());
    let parsed = command
        .try_get_matches_from(args)
        .and_then(|matches| Cli::from_arg_matches(&matches));
    let cli = match parsed {
        Ok(cli) => cli,
        // clap prints help and version itself, and its errors are usage errors (exit code 2).
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(error::EXIT_USAGE));
        }
    };
    init_tracing(&cli);
    crate::quiet_caught_storage_panics();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let error = CliError::from(error).context("cannot start the async runtime");
            eprintln!("{program}: {error}");
            return error.exit_code();
        }
    };
    let res = runtime.block_on(commands::dispatch(cli, registry));
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.is_broken_pipe() => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{program}: {error}");
            error.exit_code()
        }
    }
}

/// `worker start --help` ends with the handlers this program registers: the tasks a plain
/// `worker start` can run (the built-in demo tasks for the `fq` binary itself).
fn with_handler_list(command: clap::Command, registry: &Registry) -> clap::Command {
    let names = registry.names();
    let list = if names.is_empty() {
        "Handlers: none registered in this program; tasks it claims fail as unknown. Register \
         them in your own binary with fq::cli::run(registry)."
            .to_owned()
    } else {
        format!(
            "Handlers this program runs ({}): {}\nAn application's own tasks need its own binary: \
             fq::cli::run(registry).",
            names.len(),
            names.join(", ")
        )
    };
    command.mut_subcommand("worker", |worker| {
        worker.mut_subcommand("start", |start| start.after_help(list))
    })
}

/// Logs to stderr: `RUST_LOG` when set, else `warn` (`info` for `serve` and `worker`, whose
/// logs are their story), one level more per `-v`. An application that installed its own
/// subscriber keeps it.
fn init_tracing(cli: &Cli) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
    let base: usize = match cli.command {
        Command::Serve(_) | Command::Worker(_) => 2,
        // The demo fails a task on purpose; its events already tell the story.
        Command::Demo(_) => 0,
        _ => 1,
    };
    let level = LEVELS
        .get(base + usize::from(cli.global.verbose))
        .copied()
        .unwrap_or("trace");
    // `RUST_LOG` as `target=level` pairs and a default level (`fq=debug,lapin=warn`, `info`):
    // the `Targets` filter, without the span and regex directives of `EnvFilter`, whose regex
    // engine would double the CLI's cold build for a feature nobody uses on a job queue's CLI.
    let from_env = std::env::var("RUST_LOG").ok().and_then(|text| {
        text.parse::<Targets>()
            .map_err(|error| eprintln!("fq: ignoring RUST_LOG={text:?}: {error}"))
            .ok()
    });
    let filter = from_env.unwrap_or_else(|| {
        Targets::new().with_default(level.parse().unwrap_or(tracing::Level::WARN))
    });
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init();
}

/// How a command that finds no live engine opens the store itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Store {
    /// Long-running commands (`worker start`) create the store when missing and serve its
    /// control socket, so producers and the CLI in other processes reach it meanwhile.
    Serve,
    /// Producers (`enqueue`) create the store when missing; a one-shot command does not serve.
    CreateIfMissing,
    /// Admin commands refuse a missing store rather than create an empty one where a path was
    /// mistyped.
    MustExist,
    /// Commands that only read (`stats`, `list`, `show`) refuse a missing store too, and open
    /// one nobody serves read-only: they never change it (no crash recovery, no threads), and
    /// an owner starting meanwhile waits for them (`worker.lock_wait`).
    ReadOnly,
}

/// What every command gets: the global flags and the output settings.
#[derive(Debug)]
pub(crate) struct Context {
    global: GlobalArgs,
    out: Output,
}

impl Context {
    fn new(global: GlobalArgs) -> Self {
        let out = Output::new(global.json);
        Self { global, out }
    }

    /// The `--db` flag, if given.
    pub(crate) fn db(&self) -> Option<&std::path::Path> {
        self.global.db.as_deref()
    }

    /// How to print.
    pub(crate) fn out(&self) -> Output {
        self.out
    }

    /// The configuration: `--config`, else `fq.toml`, else `config/services.yaml`, else the
    /// defaults; `--db` overrides its store path.
    pub(crate) fn config(&self) -> Result<Config, CliError> {
        let mut config = Config::load(self.global.config.as_deref())?;
        if let Some(db) = &self.global.db {
            config.database.clone_from(db);
        }
        Ok(config)
    }

    /// The configuration file named with `--config`, if one was.
    pub(crate) fn config_file(&self) -> Option<&Path> {
        self.global.config.as_deref()
    }

    /// Where the user sets `database`: the configuration file this command read, in its
    /// own words (fq.toml at the top level, Framefox's services.yaml under `task:`).
    fn where_database_is_set(&self) -> String {
        let yaml = |path: &Path| format!("under `task:` in {}", path.display());
        match self.global.config.as_deref() {
            Some(path) if path.extension().is_some_and(|e| e == "yaml" || e == "yml") => yaml(path),
            Some(path) => format!("in {}", path.display()),
            None if Path::new("fq.toml").exists() => "in fq.toml".to_owned(),
            None if Path::new("config/services.yaml").exists() => {
                yaml(Path::new("config/services.yaml"))
            }
            None => "in fq.toml, or under `task:` in config/services.yaml".to_owned(),
        }
    }

    /// The engine a command works on: the one at `--connect`; else the live engine serving
    /// the store (its control socket answers); else the store file, opened here.
    pub(crate) async fn engine(&self, store: Store) -> Result<Engine, CliError> {
        self.engine_once(store, self.config()?).await
    }

    /// The engine a worker (`fq worker start`) runs on, as [`Context::engine`] with
    /// [`Store::Serve`]; it waits up to `lock_wait` (else `worker.lock_wait`) for a store
    /// another process holds, looking again for a live engine each time.
    pub(crate) async fn owner_engine(
        &self,
        lock_wait: Option<Duration>,
    ) -> Result<Engine, CliError> {
        let config = self.config()?;
        let wait = lock_wait.unwrap_or(config.worker.lock_wait);
        let path = config.database.clone();
        wait_for_lock(&path, wait, || {
            self.engine_once(Store::Serve, config.clone())
        })
        .await
    }

    async fn engine_once(&self, store: Store, config: Config) -> Result<Engine, CliError> {
        if let Some(addr) = &self.global.connect {
            return Engine::connect_with(addr, connect_options())
                .await
                .map_err(|error| {
                    let error = CliError::from(error);
                    if error.render().contains(addr.as_str()) {
                        error
                    } else {
                        error.context(format!("cannot connect to {addr}"))
                    }
                });
        }
        let path = config.database.clone();
        let socket = config.control.socket_path(&path);
        let mut unanswered = None;
        if std::fs::symlink_metadata(&socket).is_ok()
            && let Some(socket_text) = socket.to_str()
        {
            match Engine::connect_with(&format!("unix:{socket_text}"), connect_options()).await {
                Ok(engine) => return Ok(engine),
                Err(error) => {
                    tracing::debug!(socket = %socket.display(), %error, "control socket did not answer; opening the store directly");
                    unanswered = Some(error);
                }
            }
        }
        if matches!(store, Store::MustExist | Store::ReadOnly) && !path.exists() {
            return Err(CliError::runtime(format!(
                "no store at {}: nothing has been queued there yet (pass --db PATH, or set `database` {})",
                path.display(),
                self.where_database_is_set()
            )));
        }
        // A store nobody serves is only read, in either broker mode (in RabbitMQ mode `stats`
        // still shows RabbitMQ's depths, from a connection that only looks).
        let opened = if store == Store::ReadOnly {
            Engine::builder(config.database.clone())
                .config(config)
                .read_only(true)
                .open()
        } else {
            open_store(config, store == Store::Serve)
        };
        opened.map_err(|error| match (error, unanswered) {
            (error @ crate::Error::Store(crate::StoreError::Locked { .. }), Some(connect)) => {
                CliError::from(error).context(format!(
                    "its control socket {} did not answer ({connect})",
                    socket.display()
                ))
            }
            (error, _) => CliError::from(error),
        })
    }
}

/// Opens the store a configuration names, in this process; with `serve_control`, the engine
/// also serves its control socket (and `control.listen`) to other processes.
pub(crate) fn open_store(config: Config, serve_control: bool) -> crate::Result<Engine> {
    Engine::builder(config.database.clone())
        .config(config)
        .control(serve_control)
        .open()
}

/// Runs `open` until it gets past a store another process holds, for at most `wait`: the
/// long-running owner (`fq serve`, `fq worker start`) must win over one-shot commands that hold
/// the file for a moment. Says once that it waits, and why.
pub(crate) async fn wait_for_lock<F, Fut>(
    path: &Path,
    wait: Duration,
    mut open: F,
) -> Result<Engine, CliError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Engine, CliError>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    let mut told = false;
    loop {
        match open().await {
            Err(error) if error.is_locked() && tokio::time::Instant::now() < deadline => {
                if !told {
                    tracing::warn!(
                        "{} is held by another process; waiting up to {} for it (worker.lock_wait, --lock-wait)",
                        path.display(),
                        format_duration(wait, DurationStyle::Short)
                    );
                    told = true;
                }
                tokio::time::sleep(LOCK_RETRY).await;
            }
            Err(error) if error.is_locked() && !wait.is_zero() => {
                return Err(error.context(format!(
                    "gave up after waiting {} for the store (worker.lock_wait, --lock-wait)",
                    format_duration(wait, DurationStyle::Short)
                )));
            }
            other => return other,
        }
    }
}

/// How often an owner waiting for a held store tries again.
const LOCK_RETRY: Duration = Duration::from_millis(50);

/// How the CLI connects: the token from `FQ_TOKEN`, named for the server's logs.
fn connect_options() -> ConnectOptions {
    ConnectOptions::from_env().client_name(format!("fq-cli/{}", env!("CARGO_PKG_VERSION")))
}
