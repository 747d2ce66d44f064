//! The toolkit's decisions, free of IO: what the toolkit knows about OpenMRS (`profile`), the
//! entity model built from a schema and the profile, with the SQL that computes identities
//! (`model`), the schema's shape (`schema`), dialect-dependent SQL text (`sql`), the three-way
//! merge that decides conflicts (`merge`), the one problem/alert rule set (`alerts`), the one
//! seeded random generator (`rng`) and the size and depth limits a document from another host
//! must keep before it is parsed (`xml_guard`). Nothing here opens a connection, a file or a socket, or
//! reads a clock; a tidy test keeps IO crates out of this crate's dependencies.

pub mod alerts;
pub mod atom;
pub mod exposition;
pub mod merge;
pub mod model;
pub mod profile;
pub mod rng;
pub mod schema;
pub mod sql;
pub mod xml_guard;
