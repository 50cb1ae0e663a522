//! LUN identity: a contract with every booted compute node.
//!
//! Compute nodes find their root disk from the SCSI identity derived here, and the old agent
//! derived it the same way. Change one character and nodes do not boot, so this module is
//! tiny, has no options, and is tested against fixed vectors.

use sha2::{Digest, Sha224};

/// The storage object name and unit serial of one projected image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Storage object name, also exported as the SCSI product ID: digest[0..15].
    pub name: String,
    /// SCSI unit serial (VPD 0x80), the storage object `wwn`: digest[0..31].
    pub wwn: String,
}

impl Identity {
    /// Identity of a rootfs image: `"<manifest rootfs link.path>|<manifest rootfs link.etag>"`.
    pub fn rootfs(path: &str, etag: &str) -> Identity {
        Identity::from_message(&format!("{path}|{etag}"))
    }

    /// Identity of a PE image: `"s3://<bucket>/<key>"`.
    pub fn pe(bucket: &str, key: &str) -> Identity {
        Identity::from_message(&format!("s3://{bucket}/{key}"))
    }

    fn from_message(message: &str) -> Identity {
        let digest = hex(&Sha224::digest(message.as_bytes()));
        Identity {
            name: digest.get(..15).unwrap_or_default().to_string(),
            wwn: digest.get(..31).unwrap_or_default().to_string(),
        }
    }

    /// The WWID Linux initiators see through udev and multipath: NAA type 6 with the LIO
    /// OUI (`36001405`) followed by the first 25 hex digits of the unit serial.
    pub fn multipath_wwid(&self) -> String {
        format!("36001405{}", self.wwn.get(..25).unwrap_or(&self.wwn))
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pe_vector_from_the_contract() {
        let id = Identity::pe("boot-images", "PE/CPE-base.x86_64-24.11.squashfs");
        assert_eq!(id.name, "de4cc04e7dacfb9");
        assert_eq!(id.multipath_wwid(), "36001405de4cc04e7dacfb9ada0a6b4cc");
        assert_eq!(id.wwn.len(), 31);
        // Computed independently with Python's hashlib.
        assert_eq!(id.wwn, "de4cc04e7dacfb9ada0a6b4ccdae676");
    }

    #[test]
    fn sha224_of_known_strings() {
        // FIPS 180-4 test vector: sha224("abc").
        assert_eq!(
            hex(&Sha224::digest(b"abc")),
            "23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7"
        );
        let id = Identity::from_message("abc");
        assert_eq!(id.name, "23097d223405d82");
        assert_eq!(id.wwn, "23097d223405d8228642a477bda255b");
    }

    #[test]
    fn rootfs_message_joins_path_and_etag_with_a_bar() {
        let path = "s3://boot-images/1fb3/rootfs";
        let etag = "2a94e1d0c7b5a9b0e5f0f0a1b2c3d4e5-56";
        assert_eq!(
            Identity::rootfs(path, etag),
            Identity::from_message(&format!("{path}|{etag}"))
        );
        assert_ne!(
            Identity::rootfs(path, etag),
            Identity::rootfs(path, "other")
        );
    }
}
