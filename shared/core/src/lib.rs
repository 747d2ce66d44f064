//! The toolkit's decisions, free of IO: what the toolkit knows about OpenMRS (`profile`), the
//! entity model built from a schema and the profile, with the SQL that computes identities
//! (`model`), the schema's shape (`schema`), dialect-dependent SQL text (`sql`), and the
//! three-way merge that decides conflicts (`merge`), and the one problem/alert rule set
//! (`alerts`). Nothing here opens a connection, a file or a socket, or reads a clock; a tidy
//! test keeps IO crates out of this crate's dependencies.

pub mod alerts;
pub mod atom;
pub mod exposition;
pub mod merge;
pub mod model;
pub mod profile;
pub mod schema;
pub mod sql;
