//! Build planner inputs in code.

use sbps_reconcile::identity::Identity;
use sbps_reconcile::image::{ImageEntry, ImageRecord, Metadata, MetadataValue};
use sbps_reconcile::lio::SaveConfig;
use sbps_reconcile::manifest::RootfsArtifact;
use sbps_reconcile::plan::Plan;
use sbps_reconcile::policy::{HostFacts, Policy};
use sbps_reconcile::snapshot::{ManifestRead, MountEntry, PeObject, Snapshot};
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub const IQN: &str = "iqn.2023-06.csm.iscsi:ncn-w001";

/// A policy for host ncn-w001 with the mount at /mnt/bi; `target_extra` lines go under
/// `target:` (e.g. "max_lun: 4").
pub fn policy(target_extra: &str) -> Policy {
    let text = format!(
        "target:\n  portals: [\"10.252.1.10:3260\", \"[fd00::10]:3260\"]\n  {target_extra}\n\
         catalogue:\n  mount: /mnt/bi\n  ims:\n    file: /dev/null\n"
    );
    Policy::from_yaml(&text, &HostFacts::from_hostname("ncn-w001"))
        .expect("test policy")
        .0
}

pub fn plan(policy: &Policy, snapshot: &Snapshot, current: &SaveConfig) -> Plan {
    sbps_reconcile::plan::plan(policy, snapshot, current, &Default::default())
}

pub fn empty() -> SaveConfig {
    SaveConfig::empty()
}

pub fn parse(value: Value) -> SaveConfig {
    SaveConfig::parse(value.to_string().as_bytes()).expect("test config")
}

pub fn current_value(config: &SaveConfig) -> Value {
    serde_json::from_str(&config.to_canonical()).expect("canonical JSON")
}

/// A snapshot under construction (offline: no S3 facts).
pub struct Snap(pub Snapshot);

impl Snap {
    pub fn new() -> Snap {
        Snap(Snapshot::default())
    }

    /// A tagged IMS image whose manifest names `s3://boot-images/<id>/rootfs` with `etag`,
    /// and whose file is in the mount with `size` bytes.
    pub fn rootfs(&mut self, id: &str, name: &str, etag: &str, size: u64) {
        self.image(id, name);
        self.0.manifests.insert(
            format!("{id}/manifest.json"),
            ManifestRead::Rootfs(RootfsArtifact {
                path: format!("s3://boot-images/{id}/rootfs"),
                etag: etag.into(),
            }),
        );
        self.0
            .mount
            .insert(format!("{id}/rootfs"), MountEntry::File { size });
    }

    /// A tagged IMS image whose own manifest points at the rootfs of image `other`.
    pub fn image_sharing_rootfs_of(&mut self, id: &str, name: &str, other: &str, etag: &str) {
        self.image(id, name);
        self.0.manifests.insert(
            format!("{id}/manifest.json"),
            ManifestRead::Rootfs(RootfsArtifact {
                path: format!("s3://boot-images/{other}/rootfs"),
                etag: etag.into(),
            }),
        );
    }

    fn image(&mut self, id: &str, name: &str) {
        self.0.images.push(ImageEntry::Valid(ImageRecord {
            id: id.into(),
            name: name.into(),
            link_path: Some(format!("s3://boot-images/{id}/manifest.json")),
            metadata: Metadata::Map(
                [(
                    "sbps-project".to_string(),
                    MetadataValue::Text("true".into()),
                )]
                .into_iter()
                .collect(),
            ),
        }));
    }

    /// A PE object present in the mount with the same size.
    pub fn pe(&mut self, key: &str, size: u64) {
        self.0.pe_objects.push(PeObject {
            key: key.into(),
            size,
            etag: None,
            mtime: None,
        });
        self.0.mount.insert(key.into(), MountEntry::File { size });
    }
}

/// A configuration whose TPG 1 maps PE objects (10 bytes each, as `Snap::pe(key, 10)`
/// would project them) at the given indices.
pub fn config_with_pe_luns(luns: &[(u32, &str)]) -> SaveConfig {
    let mut objects = Vec::new();
    let mut lun_list = Vec::new();
    for (index, key) in luns {
        let id = Identity::pe("boot-images", key);
        if !objects.iter().any(|o: &Value| o["name"] == json!(id.name)) {
            objects.push(json!({"name": id.name, "wwn": id.wwn, "plugin": "fileio",
                "dev": format!("/mnt/bi/{key}"), "size": 10, "write_back": false, "aio": false,
                "alua_tpgs": [], "attributes": {"emulate_model_alias": 1}}));
        }
        lun_list.push(
            json!({"index": index, "storage_object": format!("/backstores/fileio/{}", id.name)}),
        );
    }
    parse(
        json!({"fabric_modules": [], "storage_objects": objects, "targets": [
        {"fabric": "iscsi", "wwn": IQN, "tpgs": [{"tag": 1, "enable": true,
            "attributes": {"authentication": 0, "generate_node_acls": 1, "cache_dynamic_acls": 1,
                           "demo_mode_write_protect": 1, "prod_mode_write_protect": 1},
            "luns": lun_list, "node_acls": [],
            "portals": [{"ip_address": "10.252.1.10", "port": 3260, "iser": false, "offload": false},
                        {"ip_address": "[fd00::10]", "port": 3260, "iser": false, "offload": false}]}]}]}),
    )
}

pub fn storage_object(config: &SaveConfig, name: &str) -> Option<Value> {
    config
        .storage_objects()
        .iter()
        .find(|so| so["name"] == json!(name))
        .map(|so| so.as_ref().clone())
}

/// TPG 1 of the policy's target.
pub fn tpg1(config: &SaveConfig) -> Option<Value> {
    let target = config.targets().iter().find(|t| t["wwn"] == json!(IQN))?;
    target["tpgs"]
        .as_array()?
        .iter()
        .find(|t| t["tag"] == json!(1))
        .cloned()
}

/// TPG 1's LUNs: storage object name to index.
pub fn luns(config: &SaveConfig) -> BTreeMap<String, u32> {
    let Some(tpg) = tpg1(config) else {
        return BTreeMap::new();
    };
    tpg["luns"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            let name = l["storage_object"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_string();
            (name, l["index"].as_u64().unwrap() as u32)
        })
        .collect()
}

/// TPG 1's LUN indices that serve the PE object `key`.
pub fn luns_of(config: &SaveConfig, key: &str) -> Vec<u32> {
    let path = format!(
        "/backstores/fileio/{}",
        Identity::pe("boot-images", key).name
    );
    let Some(tpg) = tpg1(config) else {
        return Vec::new();
    };
    let mut found: Vec<u32> = tpg["luns"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["storage_object"] == json!(path))
        .map(|l| l["index"].as_u64().unwrap() as u32)
        .collect();
    found.sort();
    found
}
