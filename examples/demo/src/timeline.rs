//! The demo's timeline: a tick every `1 / speed` seconds; each tick is one clinic action at a
//! facility the seeded PRNG picks, or the next scene when its tick has come:
//!
//! 1. a patient registered at one facility moves to another: found at the parent by name
//!    (misspelled, with birth date and gender), the record fetched, a visit there;
//! 2. both facilities edit that patient's name before either syncs: a conflict, kept at the
//!    parent with both versions;
//! 3. a facility goes offline (its rounds stop, its clinic goes on);
//! 4. the offline facility syncs by USB: export, import at the parent (which writes a reply),
//!    import of the reply;
//! 5. it comes back online.
//!
//! Scenes are numbered in ticks, not seconds, so a seed gives the same story at any speed. A
//! scene that cannot play yet (no patient registered at the first facility) waits for a later
//! tick. Scenes that need two facilities are skipped, with a line saying so, when there is one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use feed_publisher::usb as parent_usb;
use feedsync_core::rng::SplitMix64;
use feedsync_sim::clinic::{Clinic, PatientInfo};
use feedsync_node::exchange;
use feedsync_node::search::Candidate;
use tokio::sync::watch;

use super::{Narrator, Parent, Site, describe_round};
use feed_subscriber::usb;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scene {
    PatientMoves,
    BothEditThePatient,
    GoesOffline,
    UsbTransfer,
    BackOnline,
}

/// Each scene and the tick it plays at (or the first tick after it where it can).
const SCENES: [(u64, Scene); 5] =
    [(20, Scene::PatientMoves), (36, Scene::BothEditThePatient), (50, Scene::GoesOffline), (80, Scene::UsbTransfer), (100, Scene::BackOnline)];

enum Played {
    Done,
    NotYet,
}

/// The patient of the moving scene, and where they were and are.
struct Moved {
    origin: usize,
    destination: usize,
    uuid: String,
}

pub(crate) struct Timeline<'a> {
    sites: &'a [Arc<Site>],
    clinics: Vec<Clinic>,
    parent: &'a Parent,
    narrator: &'a Narrator,
    usb_dir: PathBuf,
    rng: SplitMix64,
    next_scene: usize,
    moved: Option<Moved>,
}

impl<'a> Timeline<'a> {
    pub fn new(sites: &'a [Arc<Site>], clinics: Vec<Clinic>, parent: &'a Parent, narrator: &'a Narrator, usb_dir: PathBuf, seed: u64) -> Timeline<'a> {
        Timeline { sites, clinics, parent, narrator, usb_dir, rng: SplitMix64::new(seed), next_scene: 0, moved: None }
    }

    /// The facility patients come from (the second), the one they go to (the first), and the
    /// one that goes offline (the third, or the first of fewer).
    fn origin(&self) -> Option<usize> {
        (self.sites.len() >= 2).then_some(1)
    }
    fn destination(&self) -> usize {
        0
    }
    fn offline(&self) -> usize {
        2 % self.sites.len()
    }

    /// Ticks until `stop` turns true or `duration` has passed.
    pub async fn run(&mut self, speed: f64, duration: Option<Duration>, stop: &mut watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / speed));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let mut tick: u64 = 0;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
                _ = &mut deadline => return,
            }
            if *stop.borrow() {
                return;
            }
            tick += 1;
            if let Some(&(at, scene)) = SCENES.get(self.next_scene)
                && tick >= at
            {
                match self.play(scene).await {
                    Ok(Played::Done) => {
                        self.next_scene += 1;
                        continue;
                    }
                    Ok(Played::NotYet) => {}
                    Err(e) => {
                        self.narrator.scene(&format!("the scene could not finish: {e:#}"));
                        self.next_scene += 1;
                        continue;
                    }
                }
            }
            self.clinic_step().await;
        }
    }

    /// One action at a facility the PRNG picks.
    async fn clinic_step(&mut self) {
        let i = self.rng.below(self.clinics.len() as u64) as usize;
        let name = self.sites[i].name();
        match self.clinics[i].step().await {
            Ok(happened) => self.narrator.say(name, &happened.text),
            Err(e) => self.narrator.say(name, &format!("could not save: {e}")),
        }
    }

    async fn play(&mut self, scene: Scene) -> anyhow::Result<Played> {
        match scene {
            Scene::PatientMoves => self.patient_moves().await,
            Scene::BothEditThePatient => self.both_edit_the_patient().await,
            Scene::GoesOffline => {
                let site = &self.sites[self.offline()];
                site.online.store(false, Ordering::SeqCst);
                // A round under way finishes first.
                drop(site.node.lock().await);
                self.narrator.scene(&format!(
                    "{} goes offline: its link to the parent is down. Its clinic keeps registering and seeing patients; nothing syncs",
                    site.name()
                ));
                Ok(Played::Done)
            }
            Scene::UsbTransfer => {
                let site = self.sites[self.offline()].clone();
                self.narrator.scene(&format!("{} is still offline: a USB stick carries its changes to the parent, and the parent's reply back", site.name()));
                usb_transfer(&site, self.parent, &self.usb_dir, self.narrator).await?;
                Ok(Played::Done)
            }
            Scene::BackOnline => {
                let site = &self.sites[self.offline()];
                site.online.store(true, Ordering::SeqCst);
                self.narrator.scene(&format!("{} is back online: its rounds resume from where the USB transfer left them", site.name()));
                Ok(Played::Done)
            }
        }
    }

    /// A patient registered at the origin turns up at the destination, which finds them at
    /// the parent, fetches the record, and sees them.
    async fn patient_moves(&mut self) -> anyhow::Result<Played> {
        let (Some(origin), destination) = (self.origin(), self.destination()) else {
            self.narrator.scene("(skipped: a patient moving to another facility needs two; run with --children 2 or more)");
            return Ok(Played::Done);
        };
        let Some(patient) = self.clinics[origin].patients().find(|p| p.registered_here).cloned() else { return Ok(Played::NotYet) };
        let (from, to) = (self.sites[origin].name(), self.sites[destination].name());
        self.narrator.scene(&format!("patient {} registered at {from} ({}) moves to {to}", patient.full_name(), patient.identifier));
        if let Some(happened) = self.clinics[origin].transfer_out(&patient.uuid).await? {
            self.narrator.say(from, &happened.text);
        }
        // The parent must have the registration: the origin syncs now rather than at its turn.
        {
            let node = self.sites[origin].node.lock().await;
            let report = node.round().await.with_context(|| format!("sync of {from}"))?;
            if let Some(line) = describe_round(&report) {
                self.narrator.say(from, &line);
            }
        }
        let query = search_query(&patient);
        let node = self.sites[destination].node.lock().await;
        let found = node.find_patients(&query, 5).await.with_context(|| format!("{to} searching the parent"))?;
        self.narrator.say(to, &format!("searches the parent for \"{query}\" (a slip in the family name): {}", describe_candidates(&found)));
        if !found.iter().any(|c| c.uuid == patient.uuid) {
            anyhow::bail!("the parent's search did not find {} ({})", patient.full_name(), patient.uuid);
        }
        let (applied, held) = node.fetch_patient(&patient.uuid, "transferred in: seen here today").await.with_context(|| format!("{to} fetching {}", patient.full_name()))?;
        let held = if held > 0 { format!(", {held} waiting for rows they reference") } else { String::new() };
        self.narrator.say(
            to,
            &format!(
                "fetches {}'s whole record from the parent ({applied} rows{held}); from now on {from} and {to} both receive changes to it",
                patient.full_name()
            ),
        );
        drop(node);
        self.clinics[destination].adopt(&patient.uuid).await?;
        let happened = self.clinics[destination].vital_signs_for(&patient.uuid).await?;
        self.narrator.say(to, &happened.text);
        self.moved = Some(Moved { origin, destination, uuid: patient.uuid });
        Ok(Played::Done)
    }

    /// Both facilities holding the moved patient write a different middle name before either
    /// syncs; the origin syncs first, so its value reaches the parent first and wins, and the
    /// parent keeps the destination's in a conflict record.
    async fn both_edit_the_patient(&mut self) -> anyhow::Result<Played> {
        let Some(moved) = &self.moved else {
            self.narrator.scene("(skipped: two facilities editing the same patient needs the patient who moved)");
            return Ok(Played::Done);
        };
        let (a, b, uuid) = (moved.origin, moved.destination, moved.uuid.clone());
        let (name_a, name_b) = (self.sites[a].name(), self.sites[b].name());
        // Locked in index order (the only place that holds two), so no round runs meanwhile.
        let (low, high) = (a.min(b), a.max(b));
        let lock_low = self.sites[low].node.lock().await;
        let lock_high = self.sites[high].node.lock().await;
        let (node_a, node_b) = if a < b { (&*lock_low, &*lock_high) } else { (&*lock_high, &*lock_low) };
        // Both start from the version the parent has: whatever is pending goes through first.
        for node in [node_a, node_b, node_a] {
            node.round().await.context("sync before the edits")?;
            self.parent.publish().await?;
        }
        let patient = self.clinics[a].refresh_name(&uuid).await?;
        self.clinics[b].refresh_name(&uuid).await?;
        let middle_a = self.clinics[a].pick_given_name(&patient.gender);
        let mut middle_b = self.clinics[b].pick_given_name(&patient.gender);
        for _ in 0..10 {
            if middle_b != middle_a {
                break;
            }
            middle_b = self.clinics[b].pick_given_name(&patient.gender);
        }
        self.narrator.scene(&format!(
            "{name_a} and {name_b} both edit {} before either syncs: {name_a} writes the middle name {middle_a}, {name_b} writes {middle_b}",
            patient.full_name()
        ));
        let happened = self.clinics[a].set_middle_name(&uuid, middle_a).await?;
        self.narrator.say(name_a, &happened.text);
        let happened = self.clinics[b].set_middle_name(&uuid, middle_b).await?;
        self.narrator.say(name_b, &happened.text);
        let report = node_a.round().await.with_context(|| format!("sync of {name_a}"))?;
        self.narrator.say(name_a, &format!("{} (first: the parent takes {middle_a})", describe_round(&report).unwrap_or_else(|| "sync".into())));
        self.parent.publish().await?;
        let report = node_b.round().await.with_context(|| format!("sync of {name_b}"))?;
        self.narrator.say(name_b, &describe_round(&report).unwrap_or_else(|| "sync".into()));
        let mut session = self.parent.app.database.session().await?;
        let conflict = exchange::list_conflicts(&mut session, false, 1_000)
            .await?
            .into_iter()
            .filter(|c| c.peer == name_b && c.fields.iter().any(|f| f == "middle_name"))
            .max_by_key(|c| c.id);
        match conflict {
            Some(c) => self.narrator.say(
                "parent",
                &format!(
                    "conflict #{}: {name_a} and {name_b} both changed middle_name since they last agreed. The value that arrived first ({middle_a}) \
                     stays everywhere; {middle_b} is kept in the conflict record until someone resolves it (feed-publisher conflicts list / resolve)",
                    c.id
                ),
            ),
            None => self.narrator.say("parent", "no conflict record was made (both sides agreed after all)"),
        }
        drop(session);
        drop(lock_high);
        drop(lock_low);
        self.clinics[a].refresh_name(&uuid).await?;
        self.clinics[b].refresh_name(&uuid).await?;
        Ok(Played::Done)
    }
}

/// The offline facility's USB round trip: export at the facility, import at the parent
/// (which writes the reply), import of the reply at the facility, with the files in
/// `usb_dir` as they would be on the stick. The facility's rounds are held meanwhile.
pub(crate) async fn usb_transfer(site: &Site, parent: &Parent, usb_dir: &Path, narrator: &Narrator) -> anyhow::Result<()> {
    std::fs::create_dir_all(usb_dir).with_context(|| format!("creating {}", usb_dir.display()))?;
    let node = site.node.lock().await;
    let export = usb::export(&node, &site.token).await.with_context(|| format!("USB export at {}", site.name()))?;
    let export_file = usb_dir.join(format!("{}-export.fsync", site.name()));
    feedsync_node::usb::write_file_atomically(&export_file, &export.bytes).with_context(|| format!("writing {}", export_file.display()))?;
    narrator.say(site.name(), &format!("{}\nwritten to {}", export.describe(), export_file.display()));
    parent.publish().await?;
    let imported = {
        let app = &parent.app;
        let mut session = app.database.session().await?;
        parent_usb::import(&mut session, &app.model, &app.config.network, &export.bytes).await.context("USB import at the parent")?
    };
    // The facility's changes get event numbers now, so they flow on to the other facilities.
    parent.publish().await?;
    let reply_file = usb_dir.join(format!("{}-reply.fsync", site.name()));
    feedsync_node::usb::write_file_atomically(&reply_file, &imported.reply).with_context(|| format!("writing {}", reply_file.display()))?;
    narrator.say("parent", &format!("{}\nreply written to {}", imported.describe(), reply_file.display()));
    let report = usb::import_reply(&node, &site.token, &imported.reply).await.with_context(|| format!("importing the reply at {}", site.name()))?;
    narrator.say(site.name(), &report.describe());
    Ok(())
}

/// What a clerk at the other facility types: given name, family name with one letter doubled
/// (the search forgives it), birth date and gender.
fn search_query(patient: &PatientInfo) -> String {
    let family: Vec<char> = patient.family_name.chars().collect();
    let i = family.len() / 2;
    let slipped: String = family[..=i].iter().chain(std::iter::once(&family[i])).chain(&family[i + 1..]).collect();
    format!("{} {slipped} {} {}", patient.given_name, patient.birthdate, patient.gender)
}

fn describe_candidates(found: &[Candidate]) -> String {
    if found.is_empty() {
        return "no candidate".into();
    }
    let shown: Vec<String> = found
        .iter()
        .take(3)
        .map(|c| {
            let name = [&c.given_name, &c.middle_name, &c.family_name].into_iter().flatten().cloned().collect::<Vec<_>>().join(" ");
            format!("{name} ({}, born {}, score {:.2})", c.identifiers.join(", "), c.birthdate.as_deref().unwrap_or("?"), c.score)
        })
        .collect();
    format!("{} candidate{}: {}", found.len(), if found.len() == 1 { "" } else { "s" }, shown.join("; "))
}
