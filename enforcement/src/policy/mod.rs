//! Masking policies attached to tags, compiled with the tags of every
//! tagged column into the snapshot each enforcement point reads.

mod effective;
mod events;
mod mask;
mod sink;
mod snapshot;
mod store;

pub use effective::{
    AppliedPolicy, ColumnPolicy, EffectivePolicy, PolicyState, TagState, column_policies,
};
pub use events::{PolicyEvents, cause};
pub use mask::Mask;
pub use sink::PolicySink;
pub use snapshot::{
    AppliedMask, ColumnTags, GovernedTable, MaskingPolicy, PolicySnapshot, Source, TagOrigin,
    TenantPolicies,
};
pub use store::{PolicyStore, SnapshotFollower};
