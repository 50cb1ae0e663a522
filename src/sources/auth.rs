//! Credentials for IMS: a bearer token from a file, or a JWT-SVID from the SPIRE agent.
//!
//! The SPIRE registration on CSM matches the agent binary the old agent ran, so the tool
//! runs that binary too, with an argument vector (no shell). Tokens never reach a log line.

use crate::error::Error;
use crate::policy::{ImsAuth, Spire};
use serde_json::Value;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where this node's xname lives on CSM.
pub const XNAME_FILE: &str = "/etc/cray/xname";

/// The bearer token for this run, if the policy asks for one.
pub fn token(auth: &ImsAuth) -> Result<Option<String>, Error> {
    match auth {
        ImsAuth::None => Ok(None),
        ImsAuth::TokenFile(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::Source(format!(
                    "cannot read IMS token file {}: {e}",
                    path.display()
                ))
            })?;
            let token = text.trim();
            if token.is_empty() || token.contains(char::is_whitespace) {
                return Err(Error::Source(format!(
                    "IMS token file {} does not hold one token",
                    path.display()
                )));
            }
            Ok(Some(token.to_string()))
        }
        ImsAuth::Spire(spire) => {
            let xname = std::fs::read_to_string(XNAME_FILE)
                .ok()
                .map(|x| x.trim().to_string());
            spire_token(spire, xname.as_deref()).map(Some)
        }
    }
}

/// Runs `AGENT api fetch jwt -audience AUD -socketPath SOCK -output json` and returns the
/// SVID of the first accepted SPIFFE ID.
pub fn spire_token(spire: &Spire, xname: Option<&str>) -> Result<String, Error> {
    let mut command = Command::new(&spire.agent);
    command.args([
        "api",
        "fetch",
        "jwt",
        "-audience",
        &spire.audience,
        "-socketPath",
    ]);
    command.arg(&spire.socket);
    command.args(["-output", "json"]);
    let output = run_bounded(&mut command, spire.timeout)
        .map_err(|e| Error::Source(format!("SPIRE agent {}: {e}", spire.agent.display())))?;
    if !output.success {
        let first = output
            .stderr
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(Error::Source(format!(
            "SPIRE agent {} failed ({}): {first}",
            spire.agent.display(),
            output.status
        )));
    }
    let accepted: Vec<String> = spire
        .spiffe_ids
        .iter()
        .filter_map(|id| match (id.contains("{xname}"), xname) {
            (false, _) => Some(id.clone()),
            (true, Some(xname)) if !xname.is_empty() => Some(id.replace("{xname}", xname)),
            (true, _) => None,
        })
        .collect();
    select_svid(&output.stdout, &accepted)
        .map_err(|e| Error::Source(format!("SPIRE agent {}: {e}", spire.agent.display())))
}

/// Picks the SVID for the first accepted SPIFFE ID from the agent's JSON output, which is a
/// list of `{"svids": [{"spiffe_id": .., "svid": ..}]}` and `{"bundles": ..}` entries.
pub fn select_svid(stdout: &[u8], accepted: &[String]) -> Result<String, String> {
    let value: Value =
        serde_json::from_slice(stdout).map_err(|e| format!("its output is not JSON: {e}"))?;
    let svids: Vec<(&str, &str)> = value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.get("svids")?.as_array())
        .flatten()
        .filter_map(|svid| {
            Some((
                svid.get("spiffe_id")?.as_str()?,
                svid.get("svid")?.as_str()?,
            ))
        })
        .collect();
    for wanted in accepted {
        if let Some((_, token)) = svids.iter().find(|(id, _)| id == wanted) {
            return Ok((*token).to_string());
        }
    }
    let seen: Vec<&str> = svids.iter().map(|(id, _)| *id).collect();
    Err(format!(
        "no SVID for an accepted SPIFFE ID (accepted: {accepted:?}; offered: {seen:?})"
    ))
}

pub struct BoundedOutput {
    pub success: bool,
    pub status: String,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// Runs a command with no stdin, killing it past `timeout`.
pub fn run_bounded(command: &mut Command, timeout: Duration) -> Result<BoundedOutput, String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start it: {e}"))?;
    let mut stdout_pipe = child.stdout.take();
    let mut stderr_pipe = child.stderr.take();
    let stdout_reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(pipe) = stdout_pipe.as_mut() {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(pipe) = stderr_pipe.as_mut() {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "no answer within {:.1} s; killed",
                    timeout.as_secs_f64()
                ));
            }
            Err(e) => return Err(format!("cannot wait for it: {e}")),
        }
    };
    let stdout = stdout_reader.join().unwrap_or_default();
    let stderr = String::from_utf8_lossy(&stderr_reader.join().unwrap_or_default()).into_owned();
    Ok(BoundedOutput {
        success: status.success(),
        status: status.to_string(),
        stdout,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_first_accepted_spiffe_id() {
        let out = br#"[{"svids": [
            {"spiffe_id": "spiffe://shasta/other", "svid": "nope"},
            {"spiffe_id": "spiffe://shasta/ncn/x3000c0s1b0n0/workload/sbps-marshal", "svid": "tok-x"}]},
            {"bundles": {"spiffe://shasta": "e30="}}]"#;
        let accepted = vec![
            "spiffe://shasta/ncn/workload/sbps-marshal".to_string(),
            "spiffe://shasta/ncn/x3000c0s1b0n0/workload/sbps-marshal".to_string(),
        ];
        assert_eq!(select_svid(out, &accepted).unwrap(), "tok-x");
        let err = select_svid(out, &accepted[..1]).unwrap_err();
        assert!(
            err.contains("spiffe://shasta/other") && !err.contains("nope"),
            "{err}"
        );
        assert!(select_svid(b"garbage", &accepted).is_err());
        assert!(select_svid(b"{}", &accepted).is_err());
    }
}
