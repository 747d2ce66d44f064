//! Code both services share: the database boundary, the schema model read from a live
//! database, the OpenMRS profile, entity identity, and the wire types of the publisher's
//! resources. Nothing here speaks HTTP or renders feeds.

pub mod apply;
pub mod bundle;
pub mod capture;
pub mod cli;
pub mod compare;
pub mod db;
pub mod exchange;
pub mod merge;
pub mod model;
pub mod profile;
pub mod progress;
pub mod resource;
pub mod schema;
pub mod search;
