//! The feed subscriber: follows publishers' Atom feeds, fetches the resources their entries
//! name and applies them to an OpenMRS database by identity. `main.rs` is a thin CLI over these
//! modules.

pub mod client;
pub mod config;
pub mod engine;
pub mod metrics;
pub mod network;
pub mod reader;
pub mod state;
pub mod openmrs_notify;
pub mod sink;

pub mod usb;
