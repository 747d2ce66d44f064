//! The feed publisher: turns an OpenMRS database's changes into paged Atom feeds of entity
//! links and serves each entity's current state. The binary in `main.rs` is a thin CLI over
//! these modules; tests and benchmarks drive them directly.

pub mod dashboard;
pub mod metrics;
pub mod network;
pub mod openmrs_session;
pub mod server;
pub mod status;
pub mod tls;

pub mod usb;

