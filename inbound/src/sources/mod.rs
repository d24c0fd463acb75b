//! SaaS sources that push to Lily: each a module with its routes and its
//! own `[section]` of configuration; adding one is one module and one line
//! here.

pub mod datahub;
mod jira;
pub mod monte_carlo;
mod okta;
mod openlineage;

use std::sync::Arc;

use axum::Router;

use crate::server::Inbound;

/// The routes of every source.
pub fn routes() -> Router<Arc<Inbound>> {
    Router::new()
        .merge(monte_carlo::routes())
        .merge(okta::routes())
        .merge(jira::routes())
        .merge(openlineage::routes())
        .merge(datahub::routes())
}
