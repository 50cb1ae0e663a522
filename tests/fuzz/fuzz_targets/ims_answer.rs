//! An IMS answer: any bytes are a list of records or a refused answer; every record parses
//! to a valid or an invalid entry and goes through the tag filter, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sbps_reconcile::image::{parse_answer, ImageEntry, Selector, Untagged};

fuzz_target!(|bytes: &[u8]| {
    let Ok(records) = parse_answer(bytes) else {
        return;
    };
    let selector = Selector {
        metadata: [("sbps-project".to_string(), "true".to_string())].into(),
        untagged: Untagged::Project,
    };
    for entry in &records {
        if let ImageEntry::Valid(record) = entry {
            assert!(!record.id.is_empty());
            let _ = selector.check(&record);
            let _ = record.manifest_key("boot-images");
        }
    }
});
