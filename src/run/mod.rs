//! The imperative shell: the command a command line asks for, around the pure planner.
//! [`execute`] is the one entry point; a reconcile run ([`reconcile`]) goes
//! policy -> sources -> snapshot -> plan -> diff -> apply -> report.

pub mod commands;
pub mod current;
pub mod inputs;
pub mod ledger_step;
pub mod log_lines;
pub mod output;
pub mod reconcile;

use crate::cli::{Cli, Command};
use crate::error::{Error, Exit};
use crate::man;
use commands::{explain_command, fleet_command, status_command};
use output::write_stdout;
use reconcile::reconcile_command;

/// Runs what the command line asks for and returns its exit status, or the error that ended
/// it (its report, when the command has one, already printed): `main` logs that error with
/// its causes, and exits with the code its kind maps to.
pub fn execute(cli: &Cli) -> Result<Exit, Error> {
    match &cli.command {
        None => reconcile_command(cli),
        Some(Command::Status) => status_command(cli),
        Some(Command::Explain { image }) => explain_command(cli, image),
        Some(Command::Fleet) => fleet_command(cli),
        Some(Command::Completions { shell }) => Ok(write_stdout(&man::completions(*shell))),
        Some(Command::Man) => Ok(write_stdout(&man::page())),
    }
}
