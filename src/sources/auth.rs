//! Credentials for IMS: a bearer token from a file, or a JWT-SVID from the SPIRE agent.
//!
//! The SPIRE registration on CSM matches the agent binary the old agent ran, so the tool
//! runs that binary too, with an argument vector (no shell). Tokens never reach a log line.

use crate::deadline::Deadline;
use crate::error::{SourceError, SvidProblem};
use crate::policy::{ImsAuth, Spire};
use crate::process::run_bounded;
use serde_json::Value;
use std::process::Command;

/// A token or credentials file is a line or two.
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Where this node's xname lives on CSM.
pub const XNAME_FILE: &str = "/etc/cray/xname";

/// The bearer token for this run, if the policy asks for one.
pub fn token(auth: &ImsAuth, deadline: &Deadline) -> Result<Option<String>, SourceError> {
    match auth {
        ImsAuth::None => Ok(None),
        ImsAuth::TokenFile(path) => {
            crate::fsio::warn_if_shared("IMS token file", path);
            let bytes =
                crate::fsio::read_regular(path, MAX_SECRET_FILE_BYTES).map_err(|source| {
                    SourceError::Read {
                        what: "IMS token file",
                        source,
                    }
                })?;
            let text = String::from_utf8_lossy(&bytes);
            let token = text.trim();
            if token.is_empty() || token.contains(char::is_whitespace) {
                return Err(SourceError::FileContent {
                    what: "IMS token file",
                    path: path.clone(),
                    problem: "does not hold one token".to_string(),
                });
            }
            crate::secrets::register(token);
            Ok(Some(token.to_string()))
        }
        ImsAuth::Spire(spire) => {
            let xname = std::fs::read_to_string(XNAME_FILE)
                .ok()
                .map(|x| x.trim().to_string());
            spire_token(spire, xname.as_deref(), deadline).map(Some)
        }
    }
}

/// Runs `AGENT api fetch jwt -audience AUD -socketPath SOCK -output json` and returns the
/// SVID of the first accepted SPIFFE ID.
pub fn spire_token(
    spire: &Spire,
    xname: Option<&str>,
    deadline: &Deadline,
) -> Result<String, SourceError> {
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
    let output = run_bounded(&mut command, deadline.cap(spire.timeout)).map_err(|source| {
        SourceError::SpireRun {
            agent: spire.agent.clone(),
            source,
        }
    })?;
    if !output.success {
        return Err(SourceError::SpireFailed {
            agent: spire.agent.clone(),
            stderr: output.stderr_first_line().unwrap_or_default(),
            status: output.status,
        });
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
    let token =
        select_svid(&output.stdout, &accepted).map_err(|problem| SourceError::SpireAnswer {
            agent: spire.agent.clone(),
            problem,
        })?;
    crate::secrets::register(&token);
    Ok(token)
}

/// Picks the SVID for the first accepted SPIFFE ID from the agent's JSON output, which is a
/// list of `{"svids": [{"spiffe_id": .., "svid": ..}]}` and `{"bundles": ..}` entries.
pub fn select_svid(stdout: &[u8], accepted: &[String]) -> Result<String, SvidProblem> {
    let value: Value = serde_json::from_slice(stdout).map_err(SvidProblem::NotJson)?;
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
    Err(SvidProblem::NoAcceptedId {
        accepted: accepted.to_vec(),
        offered: svids.iter().map(|(id, _)| (*id).to_string()).collect(),
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
        let err = select_svid(out, &accepted[..1]).unwrap_err().to_string();
        assert!(
            err.contains("spiffe://shasta/other") && !err.contains("nope"),
            "{err}"
        );
        assert!(select_svid(b"garbage", &accepted).is_err());
        assert!(select_svid(b"{}", &accepted).is_err());
    }
}
