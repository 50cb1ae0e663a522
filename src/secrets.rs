//! Secrets this run holds (the IMS bearer token, the S3 secret key), kept out of every line
//! the tool writes: a server that echoes request headers in an error body must not put a
//! token into the journal or the report.

use std::borrow::Cow;
use std::sync::Mutex;

static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// What stands in for a secret in messages.
pub const REDACTED: &str = "[redacted]";

/// Remembers a secret for [`redact`]. Values shorter than 8 characters are not secrets
/// worth matching (and would redact ordinary words).
pub fn register(secret: &str) {
    if secret.len() < 8 {
        return;
    }
    if let Ok(mut secrets) = SECRETS.lock() {
        if !secrets.iter().any(|s| s == secret) {
            secrets.push(secret.to_string());
        }
    }
}

/// `text` with every registered secret replaced by [`REDACTED`].
pub fn redact(text: &str) -> Cow<'_, str> {
    let Ok(secrets) = SECRETS.lock() else {
        return Cow::Borrowed(text);
    };
    let mut out = Cow::Borrowed(text);
    for secret in secrets.iter() {
        if out.contains(secret.as_str()) {
            out = Cow::Owned(out.replace(secret.as_str(), REDACTED));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_secrets_never_reach_a_message() {
        register("eyJhbGciOiJSUzI1NiJ9.secret-token");
        register("short");
        let text = "IMS answered HTTP 400: {\"headers\": \"Bearer eyJhbGciOiJSUzI1NiJ9.secret-token\"}; short";
        assert_eq!(
            redact(text),
            "IMS answered HTTP 400: {\"headers\": \"Bearer [redacted]\"}; short"
        );
    }
}
