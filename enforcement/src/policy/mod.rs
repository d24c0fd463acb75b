//! Masking policies attached to tags, compiled with the tags of governed
//! columns into the snapshot every statement is planned against.

mod mask;
mod sink;
mod snapshot;
mod store;

pub use mask::Mask;
pub use sink::PolicySink;
pub use snapshot::{
    AppliedMask, GovernedTable, MaskingPolicy, PolicySnapshot, Source, TenantPolicies,
};
pub use store::PolicyStore;
