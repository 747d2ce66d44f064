//! The feed publisher: turns an OpenMRS database's changes into paged Atom feeds of entity
//! links and serves each entity's current state. The binary in `main.rs` is a thin CLI over
//! these modules; tests and benchmarks drive them directly.

pub mod alerts;
pub mod atom;
pub mod config;
pub mod dashboard;
pub mod feed;
pub mod metrics;
pub mod network;
pub mod sequencer;
pub mod server;
pub mod status;

pub mod usb;

use feedsync_db::{Database, DbError};
use feedsync_core::model::{self, Model};
use feedsync_core::profile::Profile;
use feedsync_db::schema::read_schema;

/// Reads the live schema and builds the entity model with the configured profile.
pub async fn load_model(database: &Database, profile: &Profile) -> Result<Model, DbError> {
    let mut session = database.session().await?;
    let schema = read_schema(&mut session, database.schema_name()).await?;
    Ok(model::build(&schema, profile))
}
