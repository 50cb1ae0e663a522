//! The plan's vocabulary, shared by the planner and the ledger: what a LUN serves
//! ([`Kind`]), which image it came from ([`ImageRef`]) and what a plan does to it
//! ([`Action`]).

use crate::codes::named_enum;
use crate::describe::printable;
use crate::image::ImageRecord;

named_enum! {
    /// What kind of image a projection serves.
    pub enum Kind {
        /// A root file system image from IMS.
        Rootfs = "rootfs",
        /// A PE image: an object under a PE prefix, or under a prefix source whose identity
        /// is its key.
        Pe = "pe",
        /// An object under a prefix source whose identity is its key and ETag
        /// (`identity: key+etag`).
        Object = "object",
    }
}

named_enum! {
    /// What the plan does with a projection.
    pub enum Action {
        /// A new storage object and LUN.
        Add = "add",
        /// Nothing differs.
        Keep = "keep",
        /// Managed facts drifted and are rewritten.
        Update = "update",
        /// The storage object and its LUNs go.
        Remove = "remove",
    }
}

/// An IMS image (or, for PE, the object key standing in for one).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageRef {
    pub id: Option<String>,
    pub name: Option<String>,
}

impl ImageRef {
    pub fn of(record: &ImageRecord) -> ImageRef {
        ImageRef {
            id: Some(record.id.clone()),
            name: Some(record.name.clone()),
        }
    }

    /// A PE image is named by its key.
    pub fn pe(key: &str) -> ImageRef {
        ImageRef {
            id: None,
            name: Some(key.to_string()),
        }
    }

    pub fn unknown() -> ImageRef {
        ImageRef {
            id: None,
            name: None,
        }
    }

    pub fn is_known(&self) -> bool {
        self.id.is_some() || self.name.is_some()
    }

    /// `"name" (id ID)`, as reports and logs name an image (the name quoted and escaped,
    /// the id escaped: both come from outside).
    pub fn describe(&self) -> String {
        let id = self.id.as_deref().map(printable);
        match (&self.name, id) {
            (Some(name), Some(id)) => format!("{name:?} (id {id})"),
            (Some(name), None) => format!("{name:?}"),
            (None, Some(id)) => format!("(id {id})"),
            (None, None) => "(record without id)".to_string(),
        }
    }
}
