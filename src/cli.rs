//! The command line: the only definition of flags. Their doc comments are the help text, and
//! the man page and shell completions are generated from them.

use crate::policy::DEFAULT_POLICY_PATH;
use clap::{ArgAction, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Project IMS and PE boot images as read-only LIO iSCSI LUNs: one reconcile run.
///
/// Reads the policy, the catalogue (IMS, S3, the s3fs mount) and the running target
/// (configfs), plans the LIO configuration, prints what changes, and (unless --dry-run)
/// applies it in place through configfs (or with `targetctl restore`), verifies it, rolls
/// back on failure, and saves saveconfig.json. Nothing runs when nothing changed.
#[derive(Debug, Parser)]
#[command(name = "sbps-reconcile", version, max_term_width = 100)]
pub struct Cli {
    /// Policy file (YAML).
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "SBPS_RECONCILE_POLICY",
        default_value = DEFAULT_POLICY_PATH
    )]
    pub policy: PathBuf,

    /// Report format on stdout (logs always go to stderr).
    #[arg(long, global = true, value_enum, value_name = "FORMAT", default_value_t = Output::Text)]
    pub output: Output,

    /// More log detail on stderr (-v debug, -vv trace).
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Log errors only.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Plan and print the changes; touch nothing and take no lock.
    #[arg(long)]
    pub dry_run: bool,

    /// Exit 2 when the plan had changes (applied, or pending under --dry-run).
    #[arg(long)]
    pub detailed_exitcode: bool,

    /// Apply even when the plan removes more LUNs than safety.max_removals, keeps fewer than
    /// safety.min_kept_fraction, or a source yields nothing while LUNs are projected from it.
    #[arg(long)]
    pub allow_removals: bool,

    /// Try a plan that failed the last time at once, without waiting out its backoff.
    #[arg(long)]
    pub retry_now: bool,

    /// How much of the saveconfig.json diff to print: auto (whole up to 2,000 lines, else
    /// its size) or full.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = DiffMode::Auto)]
    pub diff: DiffMode,

    /// Write Prometheus metrics (node_exporter textfile format) to PATH, also on a dry run.
    /// Without it, metrics.file from the policy is used for runs that are not dry runs.
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what is projected now (from saveconfig.json), LUN by LUN, and the image each
    /// LUN serves where the catalogue can tell. Changes nothing and takes no lock.
    Status,
    /// Explain why an image is or is not projected, rule by rule, with the identity it has or
    /// would have. IMAGE is an IMS image id, an image name, an object key or an s3:// URL.
    Explain {
        #[arg(value_name = "IMAGE")]
        image: String,
    },
    /// Show the whole fleet from any node that can read the bucket: every target's LUN
    /// ledger under the prefix, as a matrix of images by targets with each LUN number, rows
    /// marked where targets disagree (not served everywhere, different numbers, tagged in
    /// IMS and served by none), and each target's last run and version, stale ones flagged.
    /// Exits 0 when all agree, 2 on any disagreement, 1 when a ledger or IMS could not be
    /// read (the rest is still shown). Reads only.
    Fleet,
    /// Print a shell completion script (bash or zsh) on stdout.
    Completions {
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Print the sbps-reconcile(8) man page (roff) on stdout.
    #[command(hide = true)]
    Man,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// How much of the diff a report holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum DiffMode {
    /// The whole diff up to `diff::MAX_SHOWN_LINES` lines, else its size.
    #[default]
    Auto,
    /// The whole diff, however long.
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
}

impl Cli {
    /// Parses the process arguments; run-only flags given with a subcommand are a usage
    /// error too.
    pub fn parse_checked() -> Result<Cli, clap::Error> {
        Cli::check(Cli::try_parse()?)
    }

    pub fn check(cli: Cli) -> Result<Cli, clap::Error> {
        use clap::CommandFactory;
        if let Some(command) = &cli.command {
            // `fleet` always exits as --detailed-exitcode would; saying so is no conflict.
            let fleet = matches!(command, Command::Fleet);
            let run_only = [
                (cli.dry_run, "--dry-run"),
                (cli.detailed_exitcode && !fleet, "--detailed-exitcode"),
                (cli.allow_removals, "--allow-removals"),
                (cli.retry_now, "--retry-now"),
                (cli.metrics_file.is_some(), "--metrics-file"),
            ];
            if let Some((_, flag)) = run_only.iter().find(|(given, _)| *given) {
                let name = match command {
                    Command::Status => "status",
                    Command::Explain { .. } => "explain",
                    Command::Fleet => "fleet",
                    Command::Completions { .. } => "completions",
                    Command::Man => "man",
                };
                return Err(Cli::command().error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!("{flag} applies to a reconcile run, not to `{name}`"),
                ));
            }
        }
        Ok(cli)
    }

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
        assert!(cli.command.is_none());
        assert!(Cli::try_parse_from(["sbps-reconcile", "-q", "-v"]).is_err());
        assert!(Cli::try_parse_from(["sbps-reconcile", "--output", "yaml"]).is_err());
    }

    #[test]
    fn subcommands_take_the_global_flags_on_either_side() {
        let cli = Cli::try_parse_from([
            "sbps-reconcile",
            "status",
            "--policy",
            "/p",
            "--output",
            "json",
        ])
        .unwrap();
        assert!(matches!(cli.command, Some(Command::Status)));
        assert_eq!(cli.output, Output::Json);
        let cli =
            Cli::try_parse_from(["sbps-reconcile", "--policy", "/p", "explain", "abc"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Explain { ref image }) if image == "abc"));
        // Run flags make no sense with a subcommand.
        let parsed = Cli::try_parse_from(["sbps-reconcile", "--dry-run", "status"]).unwrap();
        assert!(Cli::check(parsed).is_err());
        assert!(Cli::try_parse_from(["sbps-reconcile", "completions", "fish"]).is_err());
    }
}
