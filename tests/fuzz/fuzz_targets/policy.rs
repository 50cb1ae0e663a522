//! A policy file: any text is a checked policy or an error message, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sbps_reconcile::policy::{HostFacts, Policy};

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let host = HostFacts::from_hostname("ncn-w001");
    if let Ok((policy, _)) = Policy::from_yaml_in(text, &host, Some(std::path::Path::new("/etc/x")))
    {
        assert!(policy.target.max_lun <= 65535);
        assert!(policy
            .target
            .portals
            .iter()
            .all(|p| !p.ip.is_unspecified() && p.port != 0));
    }
});
