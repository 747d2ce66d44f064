//! USB transfer end to end on SQLite: a child that never goes online syncs by export, import
//! at the parent and reply; repeated, old, overtaken, damaged and misdirected files each give
//! a clear error or a harmless no-op; USB and online rounds mix in any order and converge; and
//! the command line does the round trip with files.

use std::path::{Path, PathBuf};
use std::process::Command;

use feedsync_node::parent as parent_network;
use feed_publisher::usb as parent_usb;
use feedsync_sim::network::{Network, assert_parent_holds, compare_dbs, exec, one_text, patient_uuids, run_workload};
use feed_subscriber::usb::{self, ReplyOutcome};
use feedsync_wire::bundle::{BundleError, Direction};
use feedsync_db::Database;
use feedsync_node::exchange;
use feedsync_sim::testdb::{Source, unique_name};

static SUBSCRIBER: std::sync::LazyLock<std::path::PathBuf> = std::sync::LazyLock::new(|| feedsync_tests::binary("feed-subscriber"));

fn token<'a>(net: &'a Network, name: &str) -> &'a str {
    &net.children.iter().find(|c| c.0 == name).unwrap().3
}

async fn export(net: &Network, name: &str) -> usb::Export {
    usb::export(net.child(name), token(net, name)).await.unwrap_or_else(|e| panic!("export at {name}: {e}"))
}

/// Imports at the parent with its sequencer run before and after, as the CLI does.
async fn parent_import(net: &Network, bytes: &[u8]) -> Result<parent_usb::Imported, parent_usb::UsbError> {
    net.publisher.publish().await;
    let mut session = net.db("parent").session().await.unwrap();
    let imported = parent_usb::import(&mut session, net.publisher.model(), &net.publisher.app.config.network, bytes).await;
    drop(session);
    net.publisher.publish().await;
    imported
}

async fn child_import(net: &Network, name: &str, bytes: &[u8]) -> Result<usb::ReplyReport, usb::UsbError> {
    usb::import_reply(net.child(name), token(net, name), bytes).await
}

/// Writes captured in a database so far (journaled or sequenced): unchanged means nothing was
/// written to any published table.
async fn writes(db: &Database) -> i64 {
    let sql = "SELECT (SELECT COUNT(*) FROM feedsync_journal) + (SELECT COALESCE(MAX(event_seq), 0) FROM feedsync_event)";
    one_text(db, sql, &[]).await.unwrap().parse().unwrap()
}

async fn held(db: &Database) -> usize {
    let mut s = db.session().await.unwrap();
    exchange::held_items(&mut s, None, 1_000).await.unwrap().len()
}

async fn conflicts(db: &Database) -> usize {
    let mut s = db.session().await.unwrap();
    exchange::list_conflicts(&mut s, true, 1_000).await.unwrap().len()
}

async fn middle_name(db: &Database, name_uuid: &str) -> Option<String> {
    one_text(db, "SELECT middle_name FROM person_name WHERE uuid = ?", &[name_uuid.into()]).await
}

/// The uuid of a patient's current name row.
async fn name_of(db: &Database, patient: &str) -> String {
    let sql = "SELECT pn.uuid FROM person_name pn JOIN person pe ON pe.person_id = pn.person_id WHERE pe.uuid = ? AND pn.voided = 0";
    one_text(db, sql, &[patient.into()]).await.unwrap()
}

fn flip_byte(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut changed = bytes.to_vec();
    changed[at] ^= 0x01;
    changed
}

fn replace_once(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = bytes.windows(from.len()).position(|w| w == from).expect("pattern in the file");
    [&bytes[..at], to, &bytes[at + from.len()..]].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_without_network_syncs_by_usb_files_and_refuses_bad_ones() {
    let Some(net) = Network::start(Source::Sqlite25, &["north", "south"]).await else { return };
    let loaded = patient_uuids(net.db("parent")).await;
    // Metadata (encounter type, concepts, clinicians) is created centrally, with a patient of
    // the parent's own that no child should receive.
    run_workload(net.db("parent"), 7, 1).await;
    let parent_own = patient_uuids(net.db("parent")).await.difference(&loaded).cloned().collect::<Vec<_>>();
    net.publisher.publish().await;

    // North never goes online. Its first export offers its snapshot; the reply brings the
    // parent's metadata.
    let first = export(&net, "north").await;
    assert_eq!((first.header.child.as_str(), first.header.direction, first.header.from_seq), ("north", Direction::ToParent, 1));
    assert!(first.items > 0 && first.header.to_seq > 1 && first.pull_after == 0 && !first.more, "{}", first.describe());
    let imported = parent_import(&net, &first.bytes).await.unwrap();
    assert_eq!((imported.held, imported.previously_imported_at.as_deref()), (0, None), "{}", imported.describe());
    assert_eq!(imported.reply_header.answers_to_seq, Some(first.header.to_seq));
    assert_eq!(imported.reply_header.direction, Direction::ToChild);
    let report = child_import(&net, "north", &imported.reply).await.unwrap();
    assert_eq!(report.outcome, ReplyOutcome::Applied, "{}", report.describe());
    assert!(report.round.pulled > 0 && report.pages_applied > 0 && report.pushes_applied > 0, "{report:?}");
    assert_eq!(one_text(net.db("north"), "SELECT COUNT(*) FROM encounter_type WHERE name = 'Consultation'", &[]).await.as_deref(), Some("1"));

    // North registers patients offline; one round trip brings them to the parent.
    let before = patient_uuids(net.db("north")).await;
    run_workload(net.db("north"), 101, 3).await;
    let north_patients: Vec<String> = patient_uuids(net.db("north")).await.difference(&before).cloned().collect();
    assert_eq!(north_patients.len(), 3);
    let second = export(&net, "north").await;
    assert_eq!(second.header.from_seq, first.header.to_seq + 1, "the acknowledged events are not sent again");
    assert_eq!(second.unanswered, 0);
    let second_import = parent_import(&net, &second.bytes).await.unwrap();
    assert!(second_import.applied > 0 && second_import.held == 0 && second_import.not_allowed == 0, "{}", second_import.describe());
    let pulled_after = "SELECT pulled_after FROM feedsync_child WHERE name = 'north'";
    assert_eq!(one_text(net.db("parent"), pulled_after, &[]).await, Some(second.pull_after.to_string()), "the reply's pages are not confirmed yet");
    let report = child_import(&net, "north", &second_import.reply).await.unwrap();
    assert_eq!(report.outcome, ReplyOutcome::Applied, "{}", report.describe());
    let at_parent = patient_uuids(net.db("parent")).await;
    assert!(north_patients.iter().all(|p| at_parent.contains(p)), "the parent holds north's patients");
    assert_eq!((held(net.db("parent")).await, held(net.db("north")).await), (0, 0));
    assert_parent_holds(&compare_dbs(net.db("north"), net.db("parent")).await, "north");
    let north_now = patient_uuids(net.db("north")).await;
    assert!(parent_own.iter().all(|p| !north_now.contains(p)), "the parent's own patient stays out of north's catchment");

    // The parent edits a north patient's name: the next round trip brings it to north.
    let name_uuid = name_of(net.db("north"), &north_patients[0]).await;
    exec(net.db("parent"), "UPDATE person_name SET middle_name = 'Chikondi' WHERE uuid = ?", &[name_uuid.as_str().into()]).await;
    let third = export(&net, "north").await;
    let third_import = parent_import(&net, &third.bytes).await.unwrap();
    assert!(third_import.changes_items >= 1, "{}", third_import.describe());
    let report = child_import(&net, "north", &third_import.reply).await.unwrap();
    assert_eq!(report.outcome, ReplyOutcome::Applied, "{}", report.describe());
    assert_eq!(middle_name(net.db("north"), &name_uuid).await.as_deref(), Some("Chikondi"));
    let audit = one_text(net.db("parent"), "SELECT COUNT(*) FROM feedsync_audit WHERE actor = 'north' AND action = 'usb-import'", &[]).await;
    assert_eq!(audit.as_deref(), Some("3"));

    // Replays are harmless: the same export again applies nothing (and says so), the same
    // reply again, an older reply, and the reply to the replayed export change nothing.
    let (parent_writes, north_writes) = (writes(net.db("parent")).await, writes(net.db("north")).await);
    let parent_patients = patient_uuids(net.db("parent")).await;
    let again = parent_import(&net, &second.bytes).await.unwrap();
    assert_eq!(again.applied, 0, "{}", again.describe());
    assert!(again.already > 0 && again.previously_imported_at.is_some(), "{}", again.describe());
    assert!(again.describe().contains("imported before"), "{}", again.describe());
    let report = child_import(&net, "north", &third_import.reply).await.unwrap();
    assert_eq!(report.outcome, ReplyOutcome::AlreadyImported, "{}", report.describe());
    assert!(report.describe().contains("already imported"), "{}", report.describe());
    for (what, reply) in [("an older reply", &second_import.reply), ("the reply to a replayed export", &again.reply)] {
        let report = child_import(&net, "north", reply).await.unwrap();
        assert_eq!(report.outcome, ReplyOutcome::Overtaken, "{what}: {}", report.describe());
        assert!(report.describe().contains("nothing went back in time"), "{}", report.describe());
    }
    assert_eq!(patient_uuids(net.db("parent")).await, parent_patients, "no duplicates");
    assert_eq!(middle_name(net.db("north"), &name_uuid).await.as_deref(), Some("Chikondi"), "nothing went back in time");

    // Bad files: each refused before anything applies, with a message that says what to do.
    let reply = &third_import.reply;
    let tampered = flip_byte(&second.bytes, second.bytes.len() - 40);
    let e = parent_import(&net, &tampered).await.unwrap_err();
    assert!(matches!(e, parent_usb::UsbError::Bundle(BundleError::Tampered)), "{e}");
    assert!(e.to_string().contains("copy it again"), "{e}");
    let e = child_import(&net, "north", &flip_byte(reply, reply.len() - 40)).await.unwrap_err();
    assert!(matches!(e, usb::UsbError::Bundle(BundleError::Tampered)), "{e}");
    // The readable header is authenticated too: a file made to claim south is opened with
    // south's key and fails.
    let claims_south = replace_once(&second.bytes, b"\"child\":\"north\"", b"\"child\":\"south\"");
    let e = parent_import(&net, &claims_south).await.unwrap_err();
    assert!(matches!(e, parent_usb::UsbError::Bundle(BundleError::Tampered)), "{e}");
    let e = parent_import(&net, &second.bytes[..second.bytes.len() - 100]).await.unwrap_err();
    assert!(matches!(e, parent_usb::UsbError::Bundle(BundleError::Truncated { .. })), "{e}");
    assert!(e.to_string().contains("incomplete"), "{e}");
    let e = child_import(&net, "north", &reply[..reply.len() / 2]).await.unwrap_err();
    assert!(matches!(e, usb::UsbError::Bundle(BundleError::Truncated { .. })), "{e}");
    let e = parent_import(&net, b"PK\x03\x04 a zip file, not a bundle").await.unwrap_err();
    assert!(matches!(e, parent_usb::UsbError::Bundle(BundleError::NotABundle)), "{e}");
    // Files going the wrong way.
    let e = parent_import(&net, reply).await.unwrap_err();
    assert!(matches!(e, parent_usb::UsbError::Bundle(BundleError::WrongDirection { .. })), "{e}");
    assert!(e.to_string().contains("import it at the child"), "{e}");
    let e = child_import(&net, "north", &second.bytes).await.unwrap_err();
    assert!(matches!(e, usb::UsbError::Bundle(BundleError::WrongDirection { .. })), "{e}");
    // North's reply at south, with south's token: another child's file.
    let e = child_import(&net, "south", reply).await.unwrap_err();
    assert!(matches!(e, usb::UsbError::Bundle(BundleError::WrongChild { .. })), "{e}");
    assert!(e.to_string().contains("'north'"), "{e}");
    // North's reply at south's database with north's token: it answers no export made there.
    let e = usb::import_reply(net.child("south"), token(&net, "north"), reply).await.unwrap_err();
    assert!(matches!(e, usb::UsbError::NotOurExport { .. }), "{e}");
    assert!(e.to_string().contains("did not make"), "{e}");
    let e = usb::import_reply(net.child("north"), "no-token-here", reply).await.unwrap_err();
    assert!(matches!(e, usb::UsbError::InvalidToken), "{e}");
    // A child the parent does not know, and a revoked one.
    let ghost = usb::export(net.child("south"), "ghost.0123456789abcdef").await.unwrap();
    let e = parent_import(&net, &ghost.bytes).await.unwrap_err();
    assert!(matches!(&e, parent_usb::UsbError::UnknownChild(name) if name == "ghost"), "{e}");
    assert!(e.to_string().contains("child add --name ghost"), "{e}");
    let south = export(&net, "south").await;
    let mut s = net.db("parent").session().await.unwrap();
    parent_network::revoke_child(&mut s, "south").await.unwrap();
    drop(s);
    let e = parent_import(&net, &south.bytes).await.unwrap_err();
    assert!(matches!(e, parent_usb::UsbError::Revoked { .. }), "{e}");
    // None of it wrote anything.
    assert_eq!((writes(net.db("parent")).await, writes(net.db("north")).await), (parent_writes, north_writes));
    assert_eq!(patient_uuids(net.db("parent")).await, parent_patients);
    assert_eq!((conflicts(net.db("parent")).await, conflicts(net.db("north")).await), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usb_and_online_sync_mix_in_any_order() {
    let Some(net) = Network::start(Source::Sqlite25, &["north"]).await else { return };
    run_workload(net.db("parent"), 7, 1).await;
    net.settle().await;
    let before = patient_uuids(net.db("north")).await;
    run_workload(net.db("north"), 101, 2).await;
    net.settle().await;
    let patient = patient_uuids(net.db("north")).await.difference(&before).next().unwrap().clone();
    let name_uuid = name_of(net.db("north"), &patient).await;
    let set_middle = |site: &'static str, value: &'static str| {
        let name_uuid = name_uuid.clone();
        let net = &net;
        async move { exec(net.db(site), "UPDATE person_name SET middle_name = ? WHERE uuid = ?", &[value.into(), name_uuid.as_str().into()]).await }
    };

    // An old export imported after newer online sync: nothing goes back in time.
    set_middle("north", "Old").await;
    let old = export(&net, "north").await;
    set_middle("north", "Newer").await;
    net.settle().await;
    assert_eq!(middle_name(net.db("parent"), &name_uuid).await.as_deref(), Some("Newer"));
    let (parent_writes, north_writes) = (writes(net.db("parent")).await, writes(net.db("north")).await);
    let imported = parent_import(&net, &old.bytes).await.unwrap();
    assert_eq!((imported.applied, imported.already), (0, old.items), "{}", imported.describe());
    assert_eq!(middle_name(net.db("parent"), &name_uuid).await.as_deref(), Some("Newer"));
    let report = child_import(&net, "north", &imported.reply).await.unwrap();
    assert_eq!(report.outcome, ReplyOutcome::Overtaken, "{}", report.describe());
    assert_eq!((writes(net.db("parent")).await, writes(net.db("north")).await), (parent_writes, north_writes));

    // An old reply imported after online sync overtook it.
    set_middle("north", "ViaUsb").await;
    let via_usb = export(&net, "north").await;
    let imported = parent_import(&net, &via_usb.bytes).await.unwrap();
    assert!(imported.applied >= 1, "{}", imported.describe());
    assert_eq!(middle_name(net.db("parent"), &name_uuid).await.as_deref(), Some("ViaUsb"));
    exec(net.db("parent"), "UPDATE person_name SET degree = 'MD' WHERE uuid = ?", &[name_uuid.as_str().into()]).await;
    net.settle().await;
    let north_writes = writes(net.db("north")).await;
    let report = child_import(&net, "north", &imported.reply).await.unwrap();
    assert_eq!(report.outcome, ReplyOutcome::Overtaken, "{}", report.describe());
    assert_eq!(writes(net.db("north")).await, north_writes);
    let name_row = "SELECT middle_name || '|' || COALESCE(degree, '') FROM person_name WHERE uuid = ?";
    assert_eq!(one_text(net.db("north"), name_row, &[name_uuid.as_str().into()]).await.as_deref(), Some("ViaUsb|MD"));

    // Two exports before a reply, the row edited in between: the parent takes the first and
    // refuses the second (its base is older than what the parent now has), saying what to do;
    // after the first reply, a new export brings the newest edit, with no false conflict.
    set_middle("north", "First").await;
    let first = export(&net, "north").await;
    set_middle("north", "Second").await;
    let second = export(&net, "north").await;
    assert_eq!(second.unanswered, 1, "{}", second.describe());
    assert!(second.describe().contains("earlier exports have no reply"), "{}", second.describe());
    let first_import = parent_import(&net, &first.bytes).await.unwrap();
    assert_eq!(middle_name(net.db("parent"), &name_uuid).await.as_deref(), Some("First"));
    let parent_writes = writes(net.db("parent")).await;
    let e = parent_import(&net, &second.bytes).await.unwrap_err();
    assert!(matches!(e, parent_usb::UsbError::StaleExport { rows: 1, .. }), "{e}");
    assert!(e.to_string().contains("import that reply first"), "{e}");
    assert_eq!(writes(net.db("parent")).await, parent_writes);
    let report = child_import(&net, "north", &first_import.reply).await.unwrap();
    assert_eq!(report.outcome, ReplyOutcome::Applied, "{}", report.describe());
    assert_eq!(middle_name(net.db("north"), &name_uuid).await.as_deref(), Some("Second"), "the child's newer edit stays");
    let third = export(&net, "north").await;
    assert_eq!(third.unanswered, 0, "{}", third.describe());
    let third_import = parent_import(&net, &third.bytes).await.unwrap();
    assert_eq!(middle_name(net.db("parent"), &name_uuid).await.as_deref(), Some("Second"), "{}", third_import.describe());
    child_import(&net, "north", &third_import.reply).await.unwrap();

    // Two exports imported newest first: the older one applies nothing; its reply, made
    // later, applies harmlessly, and the newest export's reply is then older and skipped.
    set_middle("north", "Third").await;
    let older = export(&net, "north").await;
    set_middle("north", "Fourth").await;
    let newer = export(&net, "north").await;
    let newer_import = parent_import(&net, &newer.bytes).await.unwrap();
    let older_import = parent_import(&net, &older.bytes).await.unwrap();
    assert_eq!(older_import.applied, 0, "{}", older_import.describe());
    assert_eq!(middle_name(net.db("parent"), &name_uuid).await.as_deref(), Some("Fourth"));
    let report = child_import(&net, "north", &older_import.reply).await.unwrap();
    assert_eq!(report.outcome, ReplyOutcome::Applied, "{}", report.describe());
    let report = child_import(&net, "north", &newer_import.reply).await.unwrap();
    assert_eq!(report.outcome, ReplyOutcome::Overtaken, "{}", report.describe());
    assert_eq!(middle_name(net.db("north"), &name_uuid).await.as_deref(), Some("Fourth"));

    // More work on both sides, a USB round trip, then online again: all converge.
    run_workload(net.db("north"), 303, 1).await;
    exec(net.db("parent"), "UPDATE person_name SET degree = 'PhD' WHERE uuid = ?", &[name_uuid.as_str().into()]).await;
    let last = export(&net, "north").await;
    let last_import = parent_import(&net, &last.bytes).await.unwrap();
    assert!(last_import.applied > 0 && last_import.held == 0, "{}", last_import.describe());
    let report = child_import(&net, "north", &last_import.reply).await.unwrap();
    assert_eq!(report.outcome, ReplyOutcome::Applied, "{}", report.describe());
    assert_eq!(one_text(net.db("north"), name_row, &[name_uuid.as_str().into()]).await.as_deref(), Some("Fourth|PhD"));
    net.settle().await;
    assert_parent_holds(&compare_dbs(net.db("north"), net.db("parent")).await, "north");
    assert_eq!((held(net.db("parent")).await, held(net.db("north")).await), (0, 0));
    assert_eq!((conflicts(net.db("parent")).await, conflicts(net.db("north")).await), (0, 0), "no false conflicts");
    let mut s = net.db("north").session().await.unwrap();
    let status = feed_subscriber::network::exchange_position(&mut s).await.unwrap();
    assert_eq!(status.push_through, status.last_event, "online sync acknowledged everything: {status:?}");
}

/// The `feed-publisher` binary when it is built with the `usb` command (a workspace build);
/// `cargo test -p feedsync-tests` alone may not have built it.
fn publisher_binary() -> Option<PathBuf> {
    let path = SUBSCRIBER.as_path().with_file_name(format!("feed-publisher{}", std::env::consts::EXE_SUFFIX));
    let works = Command::new(&path).args(["usb", "--help"]).output().is_ok_and(|o| o.status.success());
    works.then_some(path)
}

fn run(program: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(program).args(args).env("RUST_LOG", "error").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_does_the_round_trip_with_files() {
    let Some(net) = Network::start(Source::Sqlite25, &["north"]).await else { return };
    run_workload(net.db("parent"), 7, 1).await;
    net.publisher.publish().await;
    let dir = std::env::temp_dir().join(unique_name("feedsync_usb_cli"));
    std::fs::create_dir_all(&dir).unwrap();
    let (export_file, reply_file) = (dir.join("north.fsync"), dir.join("north-reply.fsync"));
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    let child_db = net.children[0].1.url.clone();
    let token = token(&net, "north").to_owned();
    let subscriber = SUBSCRIBER.as_path();

    // A file that cannot be written leaves no trace: the next export does not repeat it.
    let (ok, _, err) = run(subscriber, &["usb", "export", "--db", &child_db, "--token", &token, "--out", &path(&dir.join("unmounted").join("north.fsync"))]);
    assert!(!ok && err.lines().count() == 1 && err.contains("cannot write") && err.contains("export again"), "{err}");
    let (ok, out, err) = run(subscriber, &["usb", "export", "--db", &child_db, "--token", &token, "--out", &path(&export_file)]);
    assert!(ok, "{err}");
    assert!(out.contains("exported north") && out.contains("feed-publisher usb import"), "{out}");
    assert!(!out.contains("earlier exports"), "{out}");
    let (ok, out, err) = run(subscriber, &["usb", "inspect", "--in", &path(&export_file)]);
    assert!(ok, "{err}");
    assert!(out.contains("child:      north") && out.contains("to_parent") && out.contains("created_at:"), "{out}");

    match publisher_binary() {
        Some(publisher) => {
            let parent_db = net.parent_db.url.clone();
            let (ok, out, err) = run(&publisher, &["usb", "import", "--db", &parent_db, "--in", &path(&export_file), "--reply-out", &path(&reply_file)]);
            assert!(ok, "{err}");
            assert!(out.contains("imported north's export") && out.contains("reply written to"), "{out}");
            let (ok, out, _) = run(&publisher, &["usb", "inspect", "--in", &path(&reply_file)]);
            assert!(ok && out.contains("to_child") && out.contains("answers:"), "{out}");
            let (ok, _, err) = run(&publisher, &["usb", "import", "--db", &parent_db, "--in", &path(&reply_file), "--reply-out", &path(&dir.join("x"))]);
            assert!(!ok && err.lines().count() == 1 && err.contains("import it at the child"), "{err}");
        }
        None => {
            eprintln!("feed-publisher is not built with `usb` next to feed-subscriber: the parent's side runs through the library");
            let imported = parent_import(&net, &std::fs::read(&export_file).unwrap()).await.unwrap();
            feedsync_node::usb::write_file_atomically(&reply_file, &imported.reply).unwrap();
        }
    }

    let import = |file: &Path| run(subscriber, &["usb", "import", "--db", &child_db, "--token", &token, "--in", &path(file)]);
    let (ok, out, err) = import(&reply_file);
    assert!(ok, "{err}");
    assert!(out.contains("reply applied"), "{out}");
    let (ok, out, err) = import(&reply_file);
    assert!(ok && out.contains("already imported"), "{out} {err}");
    assert_eq!(one_text(net.db("north"), "SELECT COUNT(*) FROM encounter_type WHERE name = 'Consultation'", &[]).await.as_deref(), Some("1"));
    assert_parent_holds(&compare_dbs(net.db("north"), net.db("parent")).await, "north");

    // Errors are one line with what to do, and exit 1.
    let tampered = dir.join("tampered.fsync");
    let bytes = std::fs::read(&reply_file).unwrap();
    std::fs::write(&tampered, flip_byte(&bytes, bytes.len() - 20)).unwrap();
    let (ok, _, err) = import(&tampered);
    assert!(!ok && err.lines().count() == 1 && err.starts_with("error: ") && err.contains("failed authentication"), "{err}");
    let (ok, _, err) = run(subscriber, &["usb", "import", "--db", &child_db, "--token", "not-a-token", "--in", &path(&reply_file)]);
    assert!(!ok && err.contains("NAME.SECRET"), "{err}");
    let (ok, _, err) = import(&dir.join("missing.fsync"));
    assert!(!ok && err.contains("is the stick mounted"), "{err}");
    let mut names: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["north-reply.fsync", "north.fsync", "tampered.fsync"], "no temporary files left");
    std::fs::remove_dir_all(&dir).unwrap();
}
