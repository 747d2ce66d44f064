//! What `publisher-bench` and `subscriber-bench` share: fresh MariaDB databases, the in-process
//! publisher, a keep-alive HTTP client, a counting HTTP proxy, MariaDB status counters, CPU
//! meters and medians. Each binary keeps only its own measurements.

pub mod client;
pub mod counters;
pub mod cpu;
pub mod database;
pub mod edge;
pub mod proxy;
pub mod server;
pub mod stats;
