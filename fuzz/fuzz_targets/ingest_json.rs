//! Any body for any JSON route, as the API reads it before anything is
//! written: parsed, checked against the route's JSON Schema, searched for
//! U+0000. Nothing may panic, and a refusal must point at a place that
//! exists in the body (the JSON pointer the caller is told).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// What `schemas.rs` needs of the API's error type, and no more.
mod error {
    /// The refusals the schema checks make.
    #[derive(Debug)]
    pub enum InboundError {
        MalformedJson(String),
        SchemaViolation {
            schema: String,
            path: String,
            message: String,
        },
        Internal(String),
    }
    pub type Result<T, E = InboundError> = std::result::Result<T, E>;
}

// The schema checks alone, without the API's dependencies.
#[allow(dead_code)]
#[path = "../../inbound/src/schemas.rs"]
mod schemas;

fn compiled() -> &'static schemas::Schemas {
    static SCHEMAS: OnceLock<schemas::Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| schemas::Schemas::compile().expect("the schemas compile"))
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the route's schema; the rest is the body.
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let (name, _) = schemas::SCHEMAS[usize::from(which) % schemas::SCHEMAS.len()];
    let Ok(value) = schemas::parse_json(body) else {
        return;
    };
    match compiled().validate(name, &value) {
        Ok(()) => {}
        Err(error::InboundError::SchemaViolation { path, message, .. }) => {
            assert!(!message.is_empty());
            assert!(
                path == "/" || value.pointer(&path).is_some(),
                "{name}: the refusal points at {path}, which is not in the body"
            );
        }
        Err(other) => panic!("{name}: {other:?}"),
    }
});
