//! The command line: the only definition of flags (their doc comments are the help text).

use crate::policy::DEFAULT_POLICY_PATH;
use clap::{ArgAction, Parser, ValueEnum};
use std::path::PathBuf;

/// Project IMS and PE boot images as read-only LIO iSCSI LUNs: one reconcile run.
///
/// Reads the policy and the catalogue, plans the LIO configuration, prints what changes,
/// and (unless --dry-run) applies it with `targetctl restore`, verifies it, and rolls back
/// on failure. Nothing runs when nothing changed.
#[derive(Debug, Parser)]
#[command(name = "sbps-reconcile", version, max_term_width = 100)]
pub struct Cli {
    /// Policy file (YAML).
    #[arg(
        long,
        value_name = "PATH",
        env = "SBPS_RECONCILE_POLICY",
        default_value = DEFAULT_POLICY_PATH
    )]
    pub policy: PathBuf,

    /// Plan and print the changes; touch nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Report format on stdout (logs always go to stderr).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = Output::Text)]
    pub output: Output,

    /// Exit 2 when the plan had changes (applied, or pending under --dry-run).
    #[arg(long)]
    pub detailed_exitcode: bool,

    /// Apply even when the plan removes more LUNs than safety.max_removals.
    #[arg(long)]
    pub allow_removals: bool,

    /// More log detail on stderr (-v debug, -vv trace).
    #[arg(short, long, action = ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Log errors only.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

impl Cli {
    pub fn log_level(&self) -> log::LevelFilter {
        if self.quiet {
            return log::LevelFilter::Error;
        }
        match self.verbose {
            0 => log::LevelFilter::Info,
            1 => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "sbps-reconcile",
            "--policy",
            "/p.yaml",
            "--dry-run",
            "--output",
            "json",
            "--detailed-exitcode",
            "-vv",
        ])
        .unwrap();
        assert_eq!(cli.policy, PathBuf::from("/p.yaml"));
        assert!(cli.dry_run && cli.detailed_exitcode && !cli.allow_removals);
        assert_eq!(cli.output, Output::Json);
        assert_eq!(cli.log_level(), log::LevelFilter::Trace);
        assert!(Cli::try_parse_from(["sbps-reconcile", "-q", "-v"]).is_err());
        assert!(Cli::try_parse_from(["sbps-reconcile", "--output", "yaml"]).is_err());
    }
}
