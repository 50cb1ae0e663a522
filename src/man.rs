//! The sbps-reconcile(8) man page: synopsis, options and commands rendered from the clap
//! definitions (so they cannot drift from the parser), the rest written here.
//! `man/sbps-reconcile.8` is this output, and a test keeps it so.

use crate::cli::Cli;
use crate::error::ErrorKind;
use crate::skip::ReasonCode;
use clap::CommandFactory;

const EXIT_STATUS: &str = r#".SH "EXIT STATUS"
.TP
.B 0
Success, with or without changes (unless \fB\-\-detailed\-exitcode\fR). Skipped images are not failures.
.TP
.B 1
Run\-time failure: a source could not be read, the current configuration is unreadable, or the apply failed and was rolled back (or the rollback failed too; the report says which). Also: \fBexplain\fR found no such image.
.TP
.B 2
Only with \fB\-\-detailed\-exitcode\fR: success, and the plan had changes (applied, or pending under \fB\-\-dry\-run\fR).
.TP
.B 3
Refused by a safety limit (\fBsafety.max_removals\fR); nothing was touched.
.TP
.B 64
Usage error.
.TP
.B 75
Another run, or an interactive targetcli, holds the lock.
.TP
.B 78
The policy is missing or invalid.
"#;

const SECTIONS: &str = r#".SH ENVIRONMENT
.TP
.B SBPS_RECONCILE_POLICY
Policy file, when \fB\-\-policy\fR is not given.
.TP
.B RUST_LOG
Log level (error, warn, info, debug, trace), overriding \fB\-v\fR and \fB\-q\fR.
.TP
.B JOURNAL_STREAM
Set by systemd when stderr goes to the journal. Each entry is then sent over the journal's native protocol with its priority and the decision's fields: \fBREASON_CODE\fR, \fBKIND\fR, \fBIMAGE_ID\fR, \fBIMAGE_NAME\fR and \fBIMAGE_SOURCE\fR on a skipped image; \fBACTION\fR, \fBLUN\fR, \fBSTORAGE_OBJECT\fR and the image fields on a projection. So \fBjournalctl \-p warning \-u sbps\-reconcile\fR shows the skipped images and the failures, and \fBjournalctl \-u sbps\-reconcile REASON_CODE=missing_etag\fR or \fBIMAGE_ID=\fR\fIid\fR finds one kind of decision. When the journal socket cannot be reached, the lines go to stderr with syslog priorities (\fB<4>\fR). Without it, on a terminal, each decision is shown once, in the report, and not logged again; to a pipe or a file, one line per decision is logged on stderr as well. Kept LUNs and images that are not tagged are logged at debug (\fB\-v\fR): a run that changes nothing logs its summary line only. When stdout is the journal as well (the unit as shipped), the text report is not printed: the journal gets each decision and one summary line, never the diff; an applied run's diff is kept beside the backups and the summary names it.
.TP
.B SBPS_JOURNAL_SOCKET
The journal's native socket (default \fI/run/systemd/journal/socket\fR), for a journald that listens elsewhere.
.SH FILES
.TP
.I /etc/sbps\-reconcile/policy.yaml
The policy; see \fBsbps\-reconcile.policy\fR(5).
.TP
.I /etc/target/saveconfig.json
The LIO configuration the tool plans against and writes (\fBlio.saveconfig\fR).
.TP
.I /etc/target/backup/saveconfig\-YYYYmmdd\-HH:MM:SS\-json.gz
Backups of the previous configuration, as targetcli makes them; 10 kept (\fBlio.backup_dir\fR).
.TP
.I /etc/target/backup/saveconfig\-YYYYmmdd\-HH:MM:SS\-diff.txt
Under the journal, the diff of each applied run, named in its summary line; as many kept as backups.
.TP
.I /run/sbps\-reconcile.lock
One run at a time (\fBlio.lock_file\fR); \fI/var/run/targetcli.lock\fR is taken too.
.TP
.I /var/lib/node_exporter/textfile_collector/sbps_reconcile.prom
Prometheus metrics, when \fBmetrics.file\fR or \fB\-\-metrics\-file\fR names it.
.TP
.I /var/lib/cps\-local/boot\-images
The s3fs mount of the bucket; LIO serves the image files from here (\fBcatalogue.mount\fR).
.TP
.I s3://boot\-images/sbps\-reconcile/luns/<iqn>.json
The target's LUN ledger, which keeps every image's LUN number across runs, rebuilds and workers (\fBcatalogue.s3.ledger_prefix\fR, or a local file: \fBlio.ledger_file\fR). A ledger that cannot be read or used stops the run (exit 1, nothing touched); see LUN LEDGER in \fBsbps\-reconcile.policy\fR(5).
.TP
.I /var/lib/sbps\-reconcile/failures.json
The plan that keeps failing, while runs back off from it (\fBlio.state_dir\fR; safe to delete).
.SH EXAMPLES
Plan without changing anything, as an operator would before enabling the timer:
.PP
.RS
.nf
sbps\-reconcile \-\-dry\-run
.fi
.RE
.PP
What a playbook in check mode runs (exit 2 means changes are pending):
.PP
.RS
.nf
sbps\-reconcile \-\-dry\-run \-\-output json \-\-detailed\-exitcode
.fi
.RE
.PP
Trigger a run the way the timer does, and read its log:
.PP
.RS
.nf
systemctl start sbps\-reconcile.service
journalctl \-u sbps\-reconcile \-p warning
.fi
.RE
.PP
Before draining or rebuilding a worker: who else serves what it serves, at which LUN? Exit 2 means the targets disagree (the marked rows say where); rebuild, run once, and ask again:
.PP
.RS
.nf
sbps\-reconcile fleet
systemctl start sbps\-reconcile.service     # on the rebuilt worker
sbps\-reconcile fleet \-\-output json | jq '.images[] | select(.marks != [])'
.fi
.RE
.PP
Why does a node not find its root disk?
.PP
.RS
.nf
sbps\-reconcile status
sbps\-reconcile explain 1b2f3c4d\-0001\-4e5f\-8a9b\-0c1d2e3f4a51
.fi
.RE
.SH "SEE ALSO"
\fBsbps\-reconcile.policy\fR(5), \fBtargetctl\fR(8), \fBtargetcli\fR(8), \fBsystemd.timer\fR(5), \fBjournalctl\fR(1)
"#;

/// The page's roff text.
pub fn page() -> String {
    let man = clap_mangen::Man::new(Cli::command())
        .section("8")
        .manual("System Manager's Manual")
        .source(format!("sbps-reconcile {}", env!("CARGO_PKG_VERSION")));
    let mut out = Vec::new();
    let rendered = man
        .render_title(&mut out)
        .and_then(|()| man.render_name_section(&mut out))
        .and_then(|()| man.render_synopsis_section(&mut out))
        .and_then(|()| man.render_description_section(&mut out))
        .and_then(|()| man.render_options_section(&mut out))
        .and_then(|()| man.render_subcommands_section(&mut out));
    if rendered.is_err() {
        return String::new();
    }
    let mut page = String::from_utf8(out).unwrap_or_default();
    page.push_str(EXIT_STATUS);
    page.push_str(&codes_section(
        "ERROR KINDS",
        r"A run that fails says which kind of failure ended it (the JSON report's \fBerror.kind\fR, the \fBkind\fR label of \fBsbps_reconcile_failures_total\fR):",
        ErrorKind::ALL.iter().map(|k| (k.as_str(), k.description())),
    ));
    page.push_str(&codes_section(
        "SKIP REASONS",
        r"An image that cannot be projected is skipped with one of these codes (the JSON report's \fBreason_code\fR, the \fBreason\fR label of \fBsbps_reconcile_skipped_images\fR), and the run goes on with everything else:",
        ReasonCode::ALL.iter().map(|r| (r.as_str(), r.description())),
    ));
    page.push_str(SECTIONS);
    page
}

/// A section listing machine names and what each means, from the enum's own list.
fn codes_section<'a>(
    title: &str,
    intro: &str,
    codes: impl Iterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut out = format!(".SH \"{title}\"\n{intro}\n");
    for (code, description) in codes {
        out.push_str(&format!(".TP\n.B {code}\n{}\n", roff_text(description)));
    }
    out
}

/// Text as roff prints it literally: backslashes and hyphens escaped.
fn roff_text(text: &str) -> String {
    text.replace('\\', "\\e").replace('-', "\\-")
}

/// A completion script for `shell`.
pub fn completions(shell: crate::cli::CompletionShell) -> String {
    use clap_complete::Shell;
    let shell = match shell {
        crate::cli::CompletionShell::Bash => Shell::Bash,
        crate::cli::CompletionShell::Zsh => Shell::Zsh,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "sbps-reconcile", &mut out);
    String::from_utf8(out).unwrap_or_default()
}
