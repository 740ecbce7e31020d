//! Version 2 ids of the example views, computed by hand from the definition
//! in docs/protocol.md ("Version 2"), independently of the crate's code.

use edgenet_model::v2::{parse_state_id, SectionName, SectionedView};
use edgenet_model::*;
use proptest::prelude::*;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

const EXAMPLE: &str = include_str!("../../examples/cloud.json");

/// The manifests of the example's views: each digest is the SHA-256 of one
/// section's RFC 8785 text, worked out outside this crate.
const NC1_MANIFEST: &str = concat!(
    r#"{"group_members/sg-db":"e78b75f05a6b44e46b7977013afd2473285893013c1ecb4e7b30061bf44ef040","#,
    r#""group_members/sg-lb":"53b4fd820571ef837dd60e95bff84a35e21c22fb97773d7ef5ce32e6f8fe4c5d","#,
    r#""group_members/sg-web":"13c643d69a6457e321feafbb7e732088b04312948d60d3921e16b9636e520ae5","#,
    r#""instances":"8d8337fc53ee0a12d56545676b33dd6a14120a8ba565621eda57c2d988df738d","#,
    r#""metadata":"7471e781da5a95d34fc6d552bf48a61207041928f73b926aec8e273b6cf0abfb","#,
    r#""node":"01ad69825d1f909e33f10682f7e67312c986dc6bbeb01890a002b17a352e70e1","#,
    r#""public_ips":"f9d0d4e68d711fe94a17b2a0d86cbc39b636d752cdb9ab7d382b0fddcb926404","#,
    r#""routes":"671714263d228c0c279a229677b6e755102fb8bea0c6b691341f44c6d4291e13","#,
    r#""schema":"6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b","#,
    r#""security_groups/sg-admin":"a32301ff29d6b468b91b475bc4a2dfa4f0ab9b8b8922cc8d9ec1d61909d80b73","#,
    r#""security_groups/sg-db":"a570c26df1192ad77b54e8e3fc13d0d37804f262307c9b2c595c78e908b94133","#,
    r#""security_groups/sg-lb":"5777fca5761705bada5659d5211c0db711005462a3add6508505912c72ff3db3","#,
    r#""security_groups/sg-web":"275ea05ceb4b290e2f299401d6ca6fad229cf7cc0bdc9ffec066126317fb4cf9","#,
    r#""subnets":"e8de11618134a99a96f2888e565878ffc0b9caa4a8adc43c47fbda3e9a19f1bd"}"#,
);

const NC2_MANIFEST: &str = concat!(
    r#"{"group_members/sg-db":"e78b75f05a6b44e46b7977013afd2473285893013c1ecb4e7b30061bf44ef040","#,
    r#""group_members/sg-lb":"53b4fd820571ef837dd60e95bff84a35e21c22fb97773d7ef5ce32e6f8fe4c5d","#,
    r#""group_members/sg-web":"13c643d69a6457e321feafbb7e732088b04312948d60d3921e16b9636e520ae5","#,
    r#""instances":"37013bd75061a2f8e7ecbbe28062f460a85c3c2044c698b43645ecfc7af63260","#,
    r#""metadata":"7471e781da5a95d34fc6d552bf48a61207041928f73b926aec8e273b6cf0abfb","#,
    r#""node":"ab890388b756f87f86635dafd312df06dfd3001fa0c36ab2084398e939b5c239","#,
    r#""public_ips":"f9d0d4e68d711fe94a17b2a0d86cbc39b636d752cdb9ab7d382b0fddcb926404","#,
    r#""routes":"e5d5e5e96b223b5d82bf34ef81f34c739e073228bbc0585a3729c87ebb339e6c","#,
    r#""schema":"6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b","#,
    r#""security_groups/sg-admin":"a32301ff29d6b468b91b475bc4a2dfa4f0ab9b8b8922cc8d9ec1d61909d80b73","#,
    r#""security_groups/sg-db":"a570c26df1192ad77b54e8e3fc13d0d37804f262307c9b2c595c78e908b94133","#,
    r#""security_groups/sg-lb":"5777fca5761705bada5659d5211c0db711005462a3add6508505912c72ff3db3","#,
    r#""security_groups/sg-web":"275ea05ceb4b290e2f299401d6ca6fad229cf7cc0bdc9ffec066126317fb4cf9","#,
    r#""subnets":"e8de11618134a99a96f2888e565878ffc0b9caa4a8adc43c47fbda3e9a19f1bd"}"#,
);

/// nc-3 references no group by a group rule: no member lists.
const NC3_MANIFEST: &str = concat!(
    r#"{"instances":"e5e29326049ddd78d24534834f71222c7ddaa228518c932080ef93ad5b637581","#,
    r#""metadata":"7471e781da5a95d34fc6d552bf48a61207041928f73b926aec8e273b6cf0abfb","#,
    r#""node":"afbfd5274d482ec9bae5db55780fb036be291146f12aaa23c6ee35e595e02446","#,
    r#""public_ips":"f9d0d4e68d711fe94a17b2a0d86cbc39b636d752cdb9ab7d382b0fddcb926404","#,
    r#""routes":"e5d5e5e96b223b5d82bf34ef81f34c739e073228bbc0585a3729c87ebb339e6c","#,
    r#""schema":"6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b","#,
    r#""security_groups/sg-admin":"a32301ff29d6b468b91b475bc4a2dfa4f0ab9b8b8922cc8d9ec1d61909d80b73","#,
    r#""security_groups/sg-lb":"5777fca5761705bada5659d5211c0db711005462a3add6508505912c72ff3db3","#,
    r#""subnets":"e8de11618134a99a96f2888e565878ffc0b9caa4a8adc43c47fbda3e9a19f1bd"}"#,
);

/// nc-3's view without metadata: the section is left out, not null.
const NC3_NO_METADATA_MANIFEST: &str = concat!(
    r#"{"instances":"e5e29326049ddd78d24534834f71222c7ddaa228518c932080ef93ad5b637581","#,
    r#""node":"afbfd5274d482ec9bae5db55780fb036be291146f12aaa23c6ee35e595e02446","#,
    r#""public_ips":"f9d0d4e68d711fe94a17b2a0d86cbc39b636d752cdb9ab7d382b0fddcb926404","#,
    r#""routes":"e5d5e5e96b223b5d82bf34ef81f34c739e073228bbc0585a3729c87ebb339e6c","#,
    r#""schema":"6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b","#,
    r#""security_groups/sg-admin":"a32301ff29d6b468b91b475bc4a2dfa4f0ab9b8b8922cc8d9ec1d61909d80b73","#,
    r#""security_groups/sg-lb":"5777fca5761705bada5659d5211c0db711005462a3add6508505912c72ff3db3","#,
    r#""subnets":"e8de11618134a99a96f2888e565878ffc0b9caa4a8adc43c47fbda3e9a19f1bd"}"#,
);

/// The definition, in one line: `v2-` and 32 hex digits of the manifest's hash.
fn v2_id_by_hand(manifest_json: &str) -> String {
    format!("v2-{}", &hex::encode(Sha256::digest(manifest_json))[..32])
}

fn example_view(node: &str) -> NodeView {
    view_for(&parse_model(EXAMPLE.as_bytes()).unwrap(), node).unwrap()
}

#[test]
fn example_views_have_the_pinned_v2_ids() {
    let mut nc3_bare = example_view("nc-3");
    nc3_bare.metadata = None;
    let cases = [
        (
            example_view("nc-1"),
            NC1_MANIFEST,
            "v2-fdfdb75724c2df7b409fea361b82929e",
        ),
        (
            example_view("nc-2"),
            NC2_MANIFEST,
            "v2-e85e8dc6676070999f8e70bb13784b3a",
        ),
        (
            example_view("nc-3"),
            NC3_MANIFEST,
            "v2-bded48bd8899d4d1c9aa04492f01598e",
        ),
        (
            nc3_bare,
            NC3_NO_METADATA_MANIFEST,
            "v2-bd0d83f8fcc854fe170eb4bba3e78ca6",
        ),
    ];
    for (view, manifest, id) in cases {
        assert_eq!(v2_id_by_hand(manifest), id);
        let sectioned = SectionedView::from_view(&view).unwrap();
        assert_eq!(
            String::from_utf8(sectioned.manifest_json()).unwrap(),
            manifest
        );
        assert_eq!(sectioned.state_id().as_str(), id, "{}", view.node.id);
        assert_eq!(parse_state_id(id).unwrap(), *sectioned.state_id());
    }
}

#[test]
fn the_pinned_manifests_are_the_definition_applied_to_the_v1_bodies() {
    for (node, manifest) in [
        ("nc-1", NC1_MANIFEST),
        ("nc-2", NC2_MANIFEST),
        ("nc-3", NC3_MANIFEST),
    ] {
        let body: Value = serde_json::from_slice(&example_view(node).canonical_json()).unwrap();
        assert_eq!(jcs(&manifest_by_hand(&body)), manifest, "{node}");
    }
}

#[test]
fn a_schema_section_is_its_number() {
    let sectioned = SectionedView::from_view(&example_view("nc-3")).unwrap();
    let schema = sectioned.get(&SectionName::Schema).unwrap();
    assert_eq!(schema.json(), b"1");
    assert_eq!(
        schema.digest().to_string(),
        hex::encode(Sha256::digest(b"1"))
    );
}

/// Sections cut from the view's JSON with `serde_json::Value` alone.
fn manifest_by_hand(view: &Value) -> Value {
    let mut sections: Vec<(String, &Value)> = Vec::new();
    for key in [
        "schema",
        "node",
        "metadata",
        "public_ips",
        "subnets",
        "routes",
        "instances",
    ] {
        if let Some(value) = view.get(key) {
            sections.push((key.to_string(), value));
        }
    }
    for group in view["security_groups"].as_array().unwrap() {
        let id = group["id"].as_str().unwrap();
        sections.push((format!("security_groups/{id}"), group));
    }
    for (group, members) in view["group_members"].as_object().unwrap() {
        sections.push((format!("group_members/{group}"), members));
    }
    let manifest: Map<String, Value> = sections
        .into_iter()
        .map(|(name, value)| {
            let digest = hex::encode(Sha256::digest(jcs(value)));
            (name, Value::String(digest))
        })
        .collect();
    Value::Object(manifest)
}

/// An independent RFC 8785 writer over `serde_json::Value` (no floats here).
fn jcs(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
            let body: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), jcs(v)))
                .collect();
            format!("{{{}}}", body.join(","))
        }
        Value::Array(items) => format!("[{}]", items.iter().map(jcs).collect::<Vec<_>>().join(",")),
        scalar => scalar.to_string(),
    }
}

fn shapes() -> impl Strategy<Value = synthetic::Shape> {
    (1usize..5, 0usize..50, 1usize..8, any::<u64>()).prop_map(|(nodes, instances, groups, seed)| {
        synthetic::Shape {
            nodes,
            instances,
            groups,
            seed,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Sections back to a view give the v1 body byte for byte, and the
    /// manifest is the definition applied to that body.
    #[test]
    fn sections_round_trip_to_the_v1_body(shape in shapes()) {
        let model = synthetic::generate(shape);
        for node in &model.nodes {
            let view = view_for(&model, &node.id).unwrap();
            let sectioned = SectionedView::from_view(&view).unwrap();
            prop_assert_eq!(sectioned.canonical_json(), view.canonical_json());
            prop_assert_eq!(&sectioned.to_view(), &view);
            prop_assert_eq!(sectioned.v1_state_id(), view.state_id());
            let body: Value = serde_json::from_slice(&view.canonical_json()).unwrap();
            let manifest = jcs(&manifest_by_hand(&body));
            prop_assert_eq!(String::from_utf8(sectioned.manifest_json()).unwrap(), manifest.clone());
            prop_assert_eq!(sectioned.state_id().as_str(), v2_id_by_hand(&manifest));
        }
    }

    /// A view read from the wire out of order is put in order first.
    #[test]
    fn an_unordered_view_has_the_canonical_id(shape in shapes()) {
        let model = synthetic::generate(shape);
        let view = view_for(&model, &model.nodes[0].id).unwrap();
        let mut reversed = view.clone();
        reversed.instances.reverse();
        reversed.security_groups.reverse();
        reversed.public_ips.reverse();
        reversed.subnets.reverse();
        for members in reversed.group_members.values_mut() {
            members.reverse();
        }
        let id = SectionedView::from_view(&view).unwrap().state_id().clone();
        prop_assert_eq!(SectionedView::from_view(&reversed).unwrap().state_id().clone(), id);
    }

    /// The manifest's key order (the names' order) is RFC 8785's, whatever
    /// text a group id holds.
    #[test]
    fn section_names_sort_as_rfc_8785_sorts_keys(ids in prop::collection::vec("\\PC{1,6}", 0..12)) {
        let mut names: Vec<SectionName> = [
            SectionName::Schema, SectionName::Node, SectionName::Metadata,
            SectionName::PublicIps, SectionName::Subnets, SectionName::Routes,
            SectionName::Instances,
        ].into();
        for id in &ids {
            names.push(SectionName::security_group(id));
            names.push(SectionName::group_members(id));
        }
        names.sort();
        names.dedup();
        let texts: Vec<String> = names.iter().map(ToString::to_string).collect();
        let mut by_utf16 = texts.clone();
        by_utf16.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
        prop_assert_eq!(&texts, &by_utf16);
        for (name, text) in names.iter().zip(&texts) {
            prop_assert_eq!(&text.parse::<SectionName>().unwrap(), name);
        }
    }
}
