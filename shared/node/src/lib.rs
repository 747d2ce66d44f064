//! Every database effect of a sync node, and no HTTP: change capture and the toolkit's tables
//! (`capture`), identity lookups and resource rendering (`lookup`), applying a resource by
//! identity (`apply`), the parent/child exchange: receive, inbox, outbox, conflicts, audit
//! (`exchange`), the parent side of the network (`parent`), patient search (`search`), two
//! databases compared by identity (`compare`), ages by the database's clock (`clock`), and the
//! progress line long work shows on a terminal (`progress`).

pub mod apply;
pub mod auth;
pub mod capture;
pub mod clock;
pub mod config;
pub mod compare;
pub mod exchange;
pub mod feed;
pub mod lookup;
pub mod openmrs_login;
pub mod parent;
pub mod progress;
pub mod search;
pub mod sequencer;
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
