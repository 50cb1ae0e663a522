#![forbid(unsafe_code)]

use sbps_reconcile::cli::Cli;
use sbps_reconcile::error::Exit;
use sbps_reconcile::{logger, run};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match Cli::parse_checked() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                Exit::Usage.code()
            } else {
                0
            });
        }
    };
    logger::init(cli.log_level());
    ExitCode::from(run::execute(&cli).code())
}
