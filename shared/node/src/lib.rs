//! Every database effect of a sync node, and no HTTP: change capture and the toolkit's tables
//! (`capture`), identity lookups and resource rendering (`lookup`), applying a resource by
//! identity (`apply`), the parent/child exchange: receive, inbox, outbox, conflicts, audit
//! (`exchange`), patient search (`search`), two databases compared by identity (`compare`), and
//! the progress line long work shows on a terminal (`progress`).

pub mod apply;
pub mod capture;
pub mod compare;
pub mod exchange;
pub mod lookup;
pub mod progress;
pub mod search;
