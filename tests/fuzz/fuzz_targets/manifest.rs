//! A manifest from the bucket: any bytes are a rootfs artifact or a skip reason, never a
//! panic; an artifact's path and etag are never empty.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(artifact) = sbps_reconcile::manifest::parse(bytes) {
        assert!(!artifact.path.is_empty());
        assert!(!artifact.etag.is_empty());
        let _ = artifact.key("boot-images");
    }
});
