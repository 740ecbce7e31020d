//! Why a view could not be cut into sections, or a delta not applied.

use crate::canonical::StateId;

/// A set of sections that is not a view.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SectionError {
    #[error("unknown section name {0:?}")]
    UnknownSection(String),
    #[error("section {0} is named twice")]
    NamedTwice(String),
    #[error("section {0} is missing; every view has it")]
    Missing(String),
    #[error("section {0} holds a value of another kind (or another group's id)")]
    WrongValue(String),
}

/// A delta that cannot be applied to the view it names as its base. The
/// view held stays as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("the delta is against {base}, the view held is {held}")]
    BaseMismatch { base: StateId, held: StateId },
    #[error("delta: section {0} is named twice")]
    NamedTwice(String),
    #[error("delta: removes section {0}, which the base does not have")]
    RemoveAbsent(String),
    #[error("delta: removes section {0}, which every view has")]
    RemoveRequired(String),
    #[error("delta: members of group {0}, whose list the base does not have")]
    MembersForAbsentList(String),
    #[error("delta: group_members/{group}: {address} is named twice")]
    MemberNamedTwice { group: String, address: String },
    #[error("delta: group_members/{group}: removes {address}, which is not a member")]
    MemberNotPresent { group: String, address: String },
    #[error("delta: group_members/{group}: adds {address}, which is already a member")]
    MemberAlreadyPresent { group: String, address: String },
    #[error("delta: {0}")]
    Section(#[from] SectionError),
    /// The hash check: what the delta gives is not the view it claims.
    #[error("delta result hashes to {computed}, the answer says {expected}")]
    IdMismatch {
        expected: StateId,
        computed: StateId,
    },
}
