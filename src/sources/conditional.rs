//! Conditional writes: the version a write is made against, how it went, and what an S3
//! server's answer to a conditional PUT means on each server met in the field.
//!
//! The servers disagree (checked on Ceph RGW 16.2.15 and moto 5.2.5):
//! - RGW compares `If-Match` byte for byte with the ETag it stores, which has no quotes: the
//!   quoted form (as S3 returns ETags, and as RFC 9110 writes them) always answers 412 there.
//!   moto and AWS accept the bare form, so it is sent first;
//! - `If-Match` on a missing key answers 412 on RGW, 404 on moto: a refusal says nothing
//!   about why, so the object is looked at again to tell "changed since" from "deleted
//!   since" (and from a server that wants the other form of the ETag);
//! - a writer that loses a race inside RGW can get 500 (ECANCELED is not mapped to an S3
//!   error): a 5xx, a timeout or a lost connection leaves the outcome unknown. Such a write
//!   is never sent again blindly: the object is read again and compared.

/// What a stored object was read at, for the conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    /// There was none: create it only if there still is none.
    Absent,
    /// The object's ETag (without quotes).
    ETag(String),
    /// A file's bytes.
    Bytes(Vec<u8>),
}

/// Why a conditional write wrote nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Another writer changed it since it was read.
    Changed,
    /// It was deleted since it was read.
    Deleted,
    /// It was created since it was read as absent.
    Created,
}

impl Since {
    /// For messages: "the ledger {changed since this run read it}".
    pub fn describe(self) -> &'static str {
        match self {
            Since::Changed => "changed since this run read it (another run wrote it)",
            Since::Deleted => "was deleted since this run read it",
            Since::Created => "was created since this run found none (another run wrote it)",
        }
    }
}

/// How a conditional write went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Written,
    /// The object is not at the version read any more: nothing written.
    Conflict(Since),
}

/// The form of an ETag in `If-Match`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ETagForm {
    /// As RGW stores it (and moto and AWS accept): sent first.
    Bare,
    /// As S3 returns it and RFC 9110 writes it, for a server that wants it.
    Quoted,
}

impl ETagForm {
    pub fn header(self, etag: &str) -> String {
        let bare = etag.trim_matches('"');
        match self {
            ETagForm::Bare => bare.to_string(),
            ETagForm::Quoted => format!("\"{bare}\""),
        }
    }
}

/// What the server answered to a conditional PUT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 2xx, with the new ETag when the server gave one.
    Stored(Option<String>),
    /// 412, 409 (another conditional write in flight) or 404 (moto's `If-Match` on a missing
    /// key): the condition did not hold, or the server did not take its form.
    Refused(u16),
    /// 5xx, a timeout or a lost connection: the object may or may not have been written.
    Unknown(String),
    /// Any other answer (403, a bad request): nothing was written.
    Failed(String),
}

impl Answer {
    /// Sorts an HTTP status (`None`: no answer came).
    pub fn of_status(status: Option<u16>, error: String) -> Answer {
        match status {
            Some(code @ (409 | 412 | 404)) => Answer::Refused(code),
            Some(500..=599) | None => Answer::Unknown(error),
            Some(_) => Answer::Failed(error),
        }
    }
}

/// What to do after a refusal, given the object's ETag now (`None`: there is none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterRefusal {
    Conflict(Since),
    /// The object is still at the version read: the server did not take the condition's
    /// form. Send it once more in this form (only ever the same conditional request).
    Retry(ETagForm),
    /// Refused in both forms while the object stayed at the version read.
    Error(String),
}

pub fn after_refusal(version: &Version, form: ETagForm, now: Option<&str>) -> AfterRefusal {
    match (version, now) {
        (Version::Absent, Some(_)) => AfterRefusal::Conflict(Since::Created),
        (Version::Absent, None) => AfterRefusal::Error(
            "the server refused to create the object (If-None-Match: *), yet there is none"
                .to_string(),
        ),
        (_, None) => AfterRefusal::Conflict(Since::Deleted),
        (Version::ETag(read), Some(now)) if read.trim_matches('"') == now.trim_matches('"') => {
            match form {
                ETagForm::Bare => AfterRefusal::Retry(ETagForm::Quoted),
                ETagForm::Quoted => AfterRefusal::Error(format!(
                    "the server refused If-Match with ETag {now} in both forms, which is the \
                     object's ETag"
                )),
            }
        }
        (_, Some(_)) => AfterRefusal::Conflict(Since::Changed),
    }
}

/// The object as read again after an unknown outcome.
pub struct Reread<'a> {
    pub bytes: &'a [u8],
    pub etag: &'a str,
}

/// After an answer that leaves the outcome unknown: the object read again (`None`: there is
/// none) says whether the write went through. `Err` when it did not and nobody else wrote:
/// the write failed, and the next run plans again.
pub fn after_unknown(
    version: &Version,
    ours: &[u8],
    now: Option<Reread<'_>>,
    answer: &str,
) -> Result<Written, String> {
    match (version, now) {
        (_, Some(now)) if now.bytes == ours => Ok(Written::Written),
        (Version::Absent, None) => Err(format!("not created ({answer})")),
        (Version::Absent, Some(_)) => Ok(Written::Conflict(Since::Created)),
        (_, None) => Ok(Written::Conflict(Since::Deleted)),
        (Version::ETag(read), Some(now))
            if read.trim_matches('"') == now.etag.trim_matches('"') =>
        {
            Err(format!("not written, the ledger is as it was ({answer})"))
        }
        (_, Some(_)) => Ok(Written::Conflict(Since::Changed)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etag(e: &str) -> Version {
        Version::ETag(e.to_string())
    }

    #[test]
    fn the_bare_form_goes_first_and_the_quoted_one_only_after_a_refusal_of_the_same_etag() {
        assert_eq!(ETagForm::Bare.header("\"abc-2\""), "abc-2");
        assert_eq!(ETagForm::Quoted.header("abc-2"), "\"abc-2\"");
        assert_eq!(
            after_refusal(&etag("abc"), ETagForm::Bare, Some("\"abc\"")),
            AfterRefusal::Retry(ETagForm::Quoted)
        );
        assert!(matches!(
            after_refusal(&etag("abc"), ETagForm::Quoted, Some("abc")),
            AfterRefusal::Error(_)
        ));
    }

    #[test]
    fn a_refusal_says_changed_deleted_or_created_from_what_is_there_now() {
        for form in [ETagForm::Bare, ETagForm::Quoted] {
            assert_eq!(
                after_refusal(&etag("abc"), form, Some("def")),
                AfterRefusal::Conflict(Since::Changed)
            );
            assert_eq!(
                after_refusal(&etag("abc"), form, None),
                AfterRefusal::Conflict(Since::Deleted)
            );
            assert_eq!(
                after_refusal(&Version::Absent, form, Some("def")),
                AfterRefusal::Conflict(Since::Created)
            );
        }
        assert!(matches!(
            after_refusal(&Version::Absent, ETagForm::Bare, None),
            AfterRefusal::Error(_)
        ));
    }

    #[test]
    fn an_unknown_outcome_is_decided_by_what_the_object_holds_now() {
        let ours = b"ours".as_slice();
        let theirs = b"theirs".as_slice();
        let now = |bytes, etag| Some(Reread { bytes, etag });
        // It went through: whatever the version, the bytes are ours.
        assert_eq!(
            after_unknown(&etag("old"), ours, now(ours, "new"), "500"),
            Ok(Written::Written)
        );
        assert_eq!(
            after_unknown(&Version::Absent, ours, now(ours, "new"), "500"),
            Ok(Written::Written)
        );
        // Nothing changed: not written, and nobody else wrote either.
        assert!(after_unknown(&etag("old"), ours, now(theirs, "\"old\""), "500").is_err());
        assert!(after_unknown(&Version::Absent, ours, None, "500").is_err());
        // Someone else wrote, or deleted it.
        assert_eq!(
            after_unknown(&etag("old"), ours, now(theirs, "other"), "500"),
            Ok(Written::Conflict(Since::Changed))
        );
        assert_eq!(
            after_unknown(&Version::Absent, ours, now(theirs, "other"), "500"),
            Ok(Written::Conflict(Since::Created))
        );
        assert_eq!(
            after_unknown(&etag("old"), ours, None, "500"),
            Ok(Written::Conflict(Since::Deleted))
        );
    }

    #[test]
    fn statuses_sort_into_refused_unknown_and_failed() {
        let e = || "e".to_string();
        assert_eq!(Answer::of_status(Some(412), e()), Answer::Refused(412));
        assert_eq!(Answer::of_status(Some(404), e()), Answer::Refused(404));
        assert_eq!(Answer::of_status(Some(409), e()), Answer::Refused(409));
        assert!(matches!(
            Answer::of_status(Some(500), e()),
            Answer::Unknown(_)
        ));
        assert!(matches!(
            Answer::of_status(Some(503), e()),
            Answer::Unknown(_)
        ));
        assert!(matches!(Answer::of_status(None, e()), Answer::Unknown(_)));
        assert!(matches!(
            Answer::of_status(Some(403), e()),
            Answer::Failed(_)
        ));
    }
}
