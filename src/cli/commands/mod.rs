//! One file per subcommand; this file only routes a parsed command line to its command.

mod bench;
mod cancel;
mod cleanup;
mod demo;
mod enqueue;
mod forget_log;
mod limit;
mod list;
mod metrics;
mod pause;
mod purge;
mod retry;
mod schedules;
mod serve;
mod show;
mod stats;
mod wait;
mod why;
mod worker;
mod workers;

use super::Context;
use super::args::{Cli, Command, WorkerCommand};
use super::error::CliError;
use crate::Registry;

/// Runs the command `cli` names; `registry` holds the tasks `worker start` can run.
pub(crate) async fn dispatch(cli: Cli, registry: Registry) -> Result<(), CliError> {
    let ctx = Context::new(cli.global);
    match cli.command {
        Command::Serve(args) => serve::run(&ctx, &args).await,
        Command::Worker(WorkerCommand::Start(args)) => worker::start(&ctx, args, registry).await,
        Command::Enqueue(args) => enqueue::run(&ctx, args).await,
        Command::Stats => stats::run(&ctx).await,
        Command::Metrics => metrics::run(&ctx).await,
        Command::List(args) => list::run(&ctx, args).await,
        Command::Show(args) => show::run(&ctx, &args).await,
        Command::Why(args) => why::run(&ctx, &args).await,
        Command::Workers => workers::run(&ctx).await,
        Command::Retry(args) => retry::run(&ctx, args).await,
        Command::Cancel(args) => cancel::run(&ctx, &args).await,
        Command::Wait(args) => wait::run(&ctx, &args).await,
        Command::Pause(args) => pause::run(&ctx, &args, true).await,
        Command::Resume(args) => pause::run(&ctx, &args, false).await,
        Command::Schedules(args) => schedules::run(&ctx, args).await,
        Command::Limit(args) => limit::run(&ctx, &args).await,
        Command::Purge(args) => purge::run(&ctx, args).await,
        Command::Cleanup => cleanup::run(&ctx).await,
        Command::ForgetLog => forget_log::run(&ctx),
        Command::Demo(args) => demo::run(&ctx, args).await,
        Command::Bench(args) => bench::run(&ctx, &args).await,
        Command::BenchOpen { path } => bench::open_timing(&ctx, &path),
    }
}
