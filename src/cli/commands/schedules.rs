//! `fq schedules`: list the recurring schedules, or pause, resume, trigger or remove one.

use chrono::Utc;

use crate::ScheduleAction;
use crate::cli::args::{ScheduleCommand, SchedulesArgs};
use crate::cli::error::{CliError, usage_if_invalid};
use crate::cli::output::schedule_table;
use crate::cli::{Context, Store};

/// Lists the schedules (`--json`: an array of them), or acts on one and prints it as it is
/// after (`--json`: the schedule).
pub(crate) async fn run(ctx: &Context, args: SchedulesArgs) -> Result<(), CliError> {
    let out = ctx.out();
    let Some(command) = args.action else {
        let engine = ctx.engine(Store::ReadOnly).await?;
        let schedules = engine.schedules().await?;
        if out.is_json() {
            return out.document(&schedules);
        }
        if schedules.is_empty() {
            return out.text("no schedules");
        }
        return out.text(&schedule_table(&schedules, Utc::now()));
    };
    let (action, name) = match command {
        ScheduleCommand::Pause(args) => (ScheduleAction::Pause, args.name),
        ScheduleCommand::Resume(args) => (ScheduleAction::Resume, args.name),
        ScheduleCommand::Trigger(args) => (ScheduleAction::Trigger, args.name),
        ScheduleCommand::Remove(args) => (ScheduleAction::Remove, args.name),
    };
    let engine = ctx.engine(Store::MustExist).await?;
    let schedule = engine
        .act_on_schedule(&name, action)
        .await
        .map_err(usage_if_invalid)?;
    if out.is_json() {
        return out.document(&schedule);
    }
    let done = match action {
        ScheduleAction::Pause => "paused".to_owned(),
        ScheduleAction::Resume => "resumed".to_owned(),
        ScheduleAction::Remove => "removed".to_owned(),
        ScheduleAction::Trigger => match schedule.last_task {
            Some(id) => format!("triggered: task {id} queued"),
            None => "triggered".to_owned(),
        },
    };
    out.text(&format!("schedule {name} {done}"))
}
