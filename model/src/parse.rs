//! Reading model and view documents, with errors that say where.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ModelError;
use crate::types::{CloudModel, NodeView};

/// Parses and validates a cloud model file's content.
pub fn parse_model(bytes: &[u8]) -> Result<CloudModel, ModelError> {
    let model: CloudModel = parse_document(bytes)?;
    model.validate()?;
    Ok(model)
}

/// Parses a view's JSON shape. Its content is checked by
/// [`crate::sanitize_view`], which leaves out what is invalid instead of
/// refusing the whole view.
pub fn parse_view(bytes: &[u8]) -> Result<NodeView, ModelError> {
    parse_document(bytes)
}

/// Deserialises with the path of the first shape error. Entities in lists
/// are named by id where the document gives one, as validation names them.
pub fn parse_document<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ModelError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        shape_error(bytes, &path, error.inner())
    })?;
    deserializer
        .end()
        .map_err(|error| shape_error(bytes, ".", &error))?;
    Ok(value)
}

fn shape_error(bytes: &[u8], path: &str, error: &serde_json::Error) -> ModelError {
    let path = if path == "." {
        "document".to_string()
    } else {
        name_entities(bytes, path)
    };
    ModelError::Parse {
        path,
        message: error.to_string(),
    }
}

/// `instances[3].mac` → `instances[i-0a1b].mac` when entity 3 has an id.
fn name_entities(bytes: &[u8], path: &str) -> String {
    let Ok(document) = serde_json::from_slice::<Value>(bytes) else {
        return path.to_string();
    };
    let (head, rest) = match path.find('.') {
        Some(dot) => path.split_at(dot),
        None => (path, ""),
    };
    let Some((list, position)) = head.strip_suffix(']').and_then(|h| h.split_once('[')) else {
        return path.to_string();
    };
    let id = position
        .parse::<usize>()
        .ok()
        .and_then(|position| document.get(list)?.get(position)?.get("id")?.as_str());
    match id {
        Some(id) if !id.is_empty() => format!("{list}[{id}]{rest}"),
        _ => path.to_string(),
    }
}
