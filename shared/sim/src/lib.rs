//! Test and simulation support, never linked into the two services: a freshly created database
//! per test (`testdb`), the OpenMRS-style seeded workload (`workload`), the demo's clinic
//! simulator (`clinic`), a publisher served on a loopback port for tests (`publisher`) and a
//! parent with children for network tests (`network`).

pub mod clinic;
pub mod network;
pub mod publisher;
pub mod testdb;
pub mod workload;
