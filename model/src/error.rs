//! Errors that name the entity and the field, as operators read them.

use std::fmt;

/// One problem in a model or view: `instances[i-0a1b].private_ip: …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Where: `kind[id].field`, with list positions for entities without ids.
    pub path: String,
    pub message: String,
    /// The entity a consumer leaves out when it skips invalid entities.
    pub entity: Entity,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Which entity an error belongs to, by its position in the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    /// The document as a whole (schema): nothing in it can be used.
    Document,
    Metadata,
    PublicIp(usize),
    Subnet(usize),
    Node(usize),
    Instance(usize),
    SecurityGroup(usize),
    Rule {
        group: usize,
        rule: usize,
    },
    Route(usize),
    GroupMember {
        group: usize,
        member: usize,
    },
}

/// Every error found, in document order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.0.len();
        write!(
            f,
            "{count} validation error{}",
            if count == 1 { "" } else { "s" }
        )?;
        for error in &self.0 {
            write!(f, "\n  {error}")?;
        }
        Ok(())
    }
}

impl ValidationErrors {
    pub fn iter(&self) -> impl Iterator<Item = &ValidationError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Why a model document could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// Not JSON, or JSON of the wrong shape: `path` names where.
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
}

impl ModelError {
    /// Every problem as its own line, for logs and `DescribeNodeStatus`.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ModelError::Parse { .. } => vec![self.to_string()],
            ModelError::Invalid(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }
}
