//! Test harness for the parent/child network: a parent publisher serving over HTTP on a test
//! database and children applying into theirs, plus the checks the network tests share.
//! Used by this crate's tests and benchmarks; not part of the subscriber's behaviour.

use std::collections::BTreeSet;

use feedsync_node::parent as parent_network;
use crate::publisher::Publisher;
use feedsync_node::compare::{CompareOptions, Comparison, compare};
use feedsync_db::{Database, Value};
use feedsync_core::model::Model;
use feedsync_core::profile::Profile;
use crate::testdb::{Source, TestDatabase};
use crate::workload::{self, WorkloadConfig};

use feed_subscriber::network::{ChildNode, HttpParent};

pub async fn model_of(database: &Database) -> Model {
    feedsync_node::load_model(database, &Profile::openmrs()).await.unwrap()
}

pub struct Network {
    pub parent_db: TestDatabase,
    pub publisher: Publisher,
    /// Name, database, node, token.
    pub children: Vec<(String, TestDatabase, ChildNode<HttpParent>, String)>,
}

impl Network {
    pub async fn start(source: Source, names: &[&str]) -> Option<Network> {
        let parent_db = TestDatabase::create(source)?;
        let publisher = Publisher::start(&parent_db.database, |_| {}).await;
        let mut children = Vec::new();
        for name in names {
            let db = TestDatabase::create(source)?;
            let mut s = parent_db.database.session().await.unwrap();
            let token = parent_network::add_child(&mut s, name, &trusted_categories(), false).await.unwrap();
            let url = format!("http://{}", publisher.addr);
            let node = ChildNode::new(db.database.clone(), model_of(&db.database).await, HttpParent::new(&url, &token));
            node.prepare().await.unwrap();
            children.push((name.to_string(), db, node, token));
        }
        Some(Network { parent_db, publisher, children })
    }

    pub fn child(&self, name: &str) -> &ChildNode<HttpParent> {
        &self.children.iter().find(|c| c.0 == name).unwrap().2
    }

    pub fn db(&self, name: &str) -> &Database {
        if name == "parent" {
            return &self.parent_db.database;
        }
        &self.children.iter().find(|c| c.0 == name).unwrap().1.database
    }

    /// Rounds of every child (the parent's sequencer between them) until nothing moves.
    pub async fn settle(&self) -> usize {
        let mut conflicts = 0;
        for _ in 0..20 {
            let mut moved = self.publisher.publish().await > 0;
            for (name, _, node, _) in &self.children {
                let r = node.round().await.unwrap_or_else(|e| panic!("round of {name}: {e}"));
                conflicts += r.conflicts;
                moved |= r.moved();
                self.publisher.publish().await;
            }
            if !moved {
                return conflicts;
            }
        }
        panic!("the network did not settle in 20 rounds");
    }
}

pub async fn compare_dbs(a: &Database, b: &Database) -> Comparison {
    let (ma, mb) = (model_of(a).await, model_of(b).await);
    let mut sa = a.session().await.unwrap();
    let mut sb = b.session().await.unwrap();
    compare(&mut sa, &ma, &mut sb, &mb, &CompareOptions::default()).await.unwrap()
}

/// Every row of `child` is at the parent with equal values.
pub fn assert_parent_holds(c: &Comparison, child: &str) {
    for t in &c.tables {
        assert!(t.only_in_a == 0 && t.differing == 0, "{child} → parent, table {}: {} rows only at the child, {} differing: {:?}", t.table, t.only_in_a, t.differing, t.examples);
    }
}

pub async fn patient_uuids(db: &Database) -> BTreeSet<String> {
    let mut s = db.session().await.unwrap();
    s.query("SELECT pe.uuid AS uuid FROM person pe JOIN patient pt ON pt.patient_id = pe.person_id", &[])
        .await
        .unwrap()
        .iter()
        .filter_map(|r| r.text("uuid"))
        .collect()
}

pub async fn one_text(db: &Database, sql: &str, params: &[Value]) -> Option<String> {
    let mut s = db.session().await.unwrap();
    s.query(sql, params).await.unwrap().first().and_then(|r| r.values.first().and_then(|v| v.to_text()))
}

pub async fn exec(db: &Database, sql: &str, params: &[Value]) {
    db.session().await.unwrap().execute(sql, params).await.unwrap();
}

pub async fn run_workload(db: &Database, seed: u64, patients: usize) {
    let mut s = db.session().await.unwrap();
    workload::run(&mut s, &WorkloadConfig { seed, patients, visits_per_patient: 1, obs_per_encounter: 3, ..WorkloadConfig::default() }).await.unwrap();
}

/// The categories the test networks register children with: every one, accounts and roles
/// included (their workloads create users at the facilities), as an operator grants a trusted
/// facility with `child add --categories '*,privileged'`.
pub fn trusted_categories() -> Vec<String> {
    vec!["*".to_owned(), feedsync_wire::network::PRIVILEGED_GRANT.to_owned()]
}
