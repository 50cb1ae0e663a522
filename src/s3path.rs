//! `s3://bucket/key` links and the rules a key must follow to be served from the mount.

use std::fmt;

/// Why a link or key cannot be projected; becomes an `invalid_key` skip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyProblem(pub String);

impl fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses `s3://<bucket>/<key>` and returns the key, which must lie in `bucket` and be a
/// valid key (see [`check_key`]).
pub fn key_in_bucket<'a>(link: &'a str, bucket: &str) -> Result<&'a str, KeyProblem> {
    let rest = link
        .strip_prefix("s3://")
        .ok_or_else(|| KeyProblem(format!("link {} is not an s3:// URL", quoted(link))))?;
    let (link_bucket, key) = rest
        .split_once('/')
        .ok_or_else(|| KeyProblem(format!("link {} names no object key", quoted(link))))?;
    if link_bucket != bucket {
        return Err(KeyProblem(format!(
            "link {} is outside bucket {bucket:?}",
            quoted(link)
        )));
    }
    check_key(key)?;
    Ok(key)
}

/// A key is served as the file `<mount>/<key>` and written into the kernel's fileio control
/// string, which is comma-separated: a comma, newline or NUL cannot be expressed there, and
/// `..`, `.` or empty segments would name a different file than S3 holds.
pub fn check_key(key: &str) -> Result<(), KeyProblem> {
    if key.is_empty() {
        return Err(KeyProblem("empty object key".to_string()));
    }
    if let Some(c) = key.chars().find(|c| matches!(c, ',' | '\n' | '\r' | '\0')) {
        return Err(KeyProblem(format!(
            "key {} holds {c:?}, which a fileio device path cannot carry",
            quoted(key)
        )));
    }
    if key.starts_with('/') {
        return Err(KeyProblem(format!("key {} starts with '/'", quoted(key))));
    }
    if key.ends_with('/') {
        return Err(KeyProblem(format!(
            "key {} is a folder marker",
            quoted(key)
        )));
    }
    if let Some(segment) = key
        .split('/')
        .find(|s| s.is_empty() || *s == "." || *s == "..")
    {
        let what = if segment.is_empty() {
            "an empty path segment".to_string()
        } else {
            format!("a {segment:?} segment")
        };
        return Err(KeyProblem(format!(
            "key {} holds {what} and would leave its place in the mount",
            quoted(key)
        )));
    }
    Ok(())
}

/// A key or link in a message: quoted, printable, cut to a readable length.
fn quoted(text: &str) -> String {
    format!("\"{}\"", crate::describe::key(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_links() {
        assert_eq!(
            key_in_bucket("s3://boot-images/abc/rootfs", "boot-images"),
            Ok("abc/rootfs")
        );
        assert_eq!(
            key_in_bucket("s3://boot-images/PE/a b+c.squashfs", "boot-images"),
            Ok("PE/a b+c.squashfs")
        );
    }

    #[test]
    fn rejects_other_buckets_and_schemes() {
        assert!(key_in_bucket("s3://other/abc/rootfs", "boot-images").is_err());
        assert!(key_in_bucket("https://boot-images/abc", "boot-images").is_err());
        assert!(key_in_bucket("s3://boot-images", "boot-images").is_err());
        assert!(key_in_bucket("s3://boot-images-2/x", "boot-images").is_err());
    }

    #[test]
    fn rejects_keys_a_fileio_dev_cannot_hold() {
        for key in [
            "", "a,b", "a\nb", "a\0b", "/abs", "dir/", "a/../b", "../x", "a//b", "./a",
        ] {
            assert!(check_key(key).is_err(), "{key:?} should be rejected");
        }
        assert!(check_key("a..b/c...d").is_ok());
    }
}
