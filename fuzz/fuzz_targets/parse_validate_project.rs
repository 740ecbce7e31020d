//! Any bytes through parse, validate and project: nothing may panic, and
//! what the index computes must agree with the direct projection.
#![no_main]

use std::sync::Arc;

use edgenet_model::{parse_model, parse_view, sanitize_view, view_for, ModelIndex};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = parse_model(data) {
        let index = ModelIndex::build(Arc::new(model.clone()));
        for node in &model.nodes {
            let view = view_for(&model, &node.id).expect("a model node has a view");
            assert_eq!(index.state_id(&node.id), Some(&view.state_id()));
            let sanitized = sanitize_view(&view);
            assert!(sanitized.left_out.is_empty(), "a valid model projects to valid views");
        }
    }
    if let Ok(view) = parse_view(data) {
        let sanitized = sanitize_view(&view);
        if let Some(clean) = sanitized.view {
            let _ = clean.state_id();
        }
    }
});
