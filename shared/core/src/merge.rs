//! Conflict detection and three-way merge for the parent/child sync: given the version of an
//! entity each side last exchanged with the other (the base), the parent's current version and
//! the child's, decide the version both sides end with and which fields were contested. Pure:
//! no IO, no clock, no randomness; the answer depends on the arguments only.
//!
//! # Model
//!
//! A [`Version`] is an entity's state: [`Version::Absent`] (deleted, or never existed on that
//! side) or [`Version::Present`] with its columns (the `columns` of a
//! [`Resource`](feedsync_wire::resource::Resource); references are `{"ref": {...}}` objects). Values
//! are compared with JSON equality. Inside a present version a missing column counts as the
//! value "none" (`None`), which differs from JSON `null`.
//!
//! # Rules, in the order they are applied
//!
//! 1. **Unchanged.** `parent == child` (including both Absent): outcome
//!    [`Outcome::Unchanged`], result = parent.
//! 2. **Fast-forward.** The base is known and `parent == base`: [`Outcome::TakeChild`], result =
//!    child. Otherwise `child == base`: [`Outcome::TakeParent`], result = parent. This includes
//!    a delete on one side of an entity the other side did not touch: the delete wins, no
//!    conflict. A base of `Some(Absent)` takes part here like any other base (so a creation on
//!    one side since an exchange that saw the entity absent is a fast-forward).
//! 3. **Creation on one side.** No base (`None`: the sides never exchanged this entity), one side
//!    Absent and the other Present: take the Present one ([`Outcome::TakeParent`] /
//!    [`Outcome::TakeChild`]).
//! 4. **Edit vs edit.** Both Present and both changed since the base: merge field by field over
//!    the union of the two sides' column names. For each field with parent value `p`, child
//!    value `c` and base value `b`:
//!    - `p == c`: `p` (both made the same change, or neither changed it);
//!    - `p == b`: `c` (only the child changed it);
//!    - `c == b`: `p` (only the parent changed it);
//!    - otherwise both changed it differently: a conflict, decided by the [`Policy`] of the
//!      entity's category; the result takes the winner's value, `None` included (the column is
//!      then left out of the result).
//!
//!    With no base (`None`, or `Some(Absent)`: the same identity created on both sides) there is
//!    no `b`, so every field whose values differ is a conflict.
//!
//!    Audit fields (`audit_fields`, by default [`OPENMRS_AUDIT_FIELDS`]) follow the same rules
//!    but a conflict on one is decided silently by the policy and not recorded: every edit
//!    stamps `date_changed`/`changed_by`, so without this two edits to different columns of a
//!    row would always conflict. The outcome is [`Outcome::Merged`] when no conflict was
//!    recorded, [`Outcome::Conflict`] otherwise; [`Merge::conflicts`] lists the recorded
//!    conflicts in field-name order.
//! 5. **Delete vs edit.** The base is Present, one side is Absent and the other is Present and
//!    changed since the base (it differs from the base, or rule 2 would have applied): an
//!    entity-level conflict. The policy's winner takes its whole version, Absent or Present,
//!    with no field-level mixing; [`Merge::entity_conflict`] is true and the outcome is
//!    [`Outcome::Conflict`]. [`Merge::conflicts`] lists the non-audit fields the edit changed
//!    from the base (fields the edit removed agree with the delete and are not listed), whoever
//!    won, with the deleted side's value as `None`; it is empty when the edit touched only audit
//!    fields, which is still an entity conflict. The caller keeps both full versions in its
//!    conflict record, so nothing is lost.
//!
//! # Voiding and retiring
//!
//! OpenMRS voids (retires, for metadata) instead of deleting: `voided`, `date_voided`,
//! `voided_by`, `void_reason` (`retired`, `date_retired`, `retired_by`, `retire_reason`). The
//! merge has no special case for them; they are fields, with the stamps among the default audit
//! fields. So:
//! - one side voids, the other edits other columns: both survive ([`Outcome::Merged`]), the
//!   entity ends voided with the edit kept;
//! - both void with the same reason: no conflict; `voided` agrees, and the stamps (who, when)
//!   are taken from the policy's winner silently;
//! - both void with different reasons: one conflict, on `void_reason`, decided by the policy;
//!   the stamps follow the same winner, so the result is one side's void, not a mix.
//!
//! A field-level merge does not know invariants between columns, so it can yield a combination
//! neither side had: if one side unvoids (clearing `void_reason`) while the other edits
//! `void_reason`, the reason conflicts and `voided` takes the unvoiding side's value; with the
//! editing side winning the result is unvoided but keeps a reason. The conflict is recorded, so
//! such a result is always reviewable.
//!
//! # Properties (tested on generated cases below)
//!
//! - Every field of the result is the parent's or the child's value: nothing is invented.
//! - With a Present base and no entity conflict, a field changed on one side only (a deleted
//!   side counting as every field `None`) has that side's value in the result.
//! - The recorded conflicts are exactly the non-audit fields changed differently on both sides
//!   (for delete vs edit: those the edit changed, see rule 5).
//! - Idempotence: `merge(Some(r), r, r)` is [`Outcome::Unchanged`] for any result `r`.
//! - Symmetry: `merge(base, p, c)` under [`Policy::ChildWins`] equals `merge(base, c, p)` under
//!   [`Policy::ParentWins`] with the sides' roles swapped back.
//! - Convergence: re-merging either side's old version against the result (as the other side),
//!   with the same base and policy, gives the result again.

use std::collections::BTreeSet;

pub use feedsync_wire::network::Side;
use serde_json::Value;

use feedsync_wire::resource::Resource;

/// An entity's columns: column name to JSON value, as in a resource.
pub use feedsync_wire::network::{Policy, UnknownPolicy};
pub use feedsync_wire::resource::Fields;

/// One side's state of an entity.
#[derive(Debug, Clone, PartialEq)]
pub enum Version {
    /// Deleted, or never existed on that side.
    Absent,
    Present(Fields),
}

impl Version {
    /// The version a fetched resource describes; `None` (a tombstone or not found) is Absent.
    pub fn from_resource(resource: Option<&Resource>) -> Version {
        match resource {
            Some(resource) => Version::Present(resource.columns.clone()),
            None => Version::Absent,
        }
    }

    pub fn fields(&self) -> Option<&Fields> {
        match self {
            Version::Absent => None,
            Version::Present(fields) => Some(fields),
        }
    }

    pub fn is_absent(&self) -> bool {
        matches!(self, Version::Absent)
    }
}

/// The side a policy makes win when both sides changed the same field.
pub fn winner(policy: Policy) -> Side {
    match policy {
        Policy::ParentWins => Side::Parent,
        Policy::ChildWins => Side::Child,
    }
}

/// One field both sides changed to different values. `None` is "no such column" (or, for a
/// deleted side, no entity).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldConflict {
    pub field: String,
    pub base: Option<Value>,
    pub parent: Option<Value>,
    pub child: Option<Value>,
    /// The side whose value (or, for an entity conflict, whose whole version) the result took.
    pub winner: Side,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Both sides already agree.
    Unchanged,
    /// The result is the parent's version: the child has to apply it.
    TakeParent,
    /// The result is the child's version: the parent has to apply it.
    TakeChild,
    /// Both changed; the result combines them without a recorded conflict.
    Merged,
    /// At least one field conflict, or a delete-vs-edit entity conflict.
    Conflict,
}

/// The decision for one entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Merge {
    /// The version both sides end with.
    pub result: Version,
    pub outcome: Outcome,
    /// Recorded field conflicts in field-name order (audit fields never appear).
    pub conflicts: Vec<FieldConflict>,
    /// True when the conflict is delete-vs-edit at entity level.
    pub entity_conflict: bool,
}

impl Merge {
    fn whole(result: &Version, outcome: Outcome) -> Merge {
        Merge { result: result.clone(), outcome, conflicts: Vec::new(), entity_conflict: false }
    }
}

/// The default audit columns of OpenMRS tables, stamped by the API rather than chosen by a user,
/// so both sides changing them is not worth a conflict on its own:
/// - `date_changed`, `changed_by`: stamped by every edit;
/// - `date_created`, `creator`: never change after creation, so they only differ when the same
///   identity was created on both sides; identical content created at two moments is not a
///   conflict;
/// - `date_voided`, `voided_by`, `date_retired`, `retired_by`: stamped when voiding or retiring;
///   when both sides void, `voided` (and the reason, which is not an audit field) say whether
///   they agree, and the stamps follow the policy's winner.
pub const OPENMRS_AUDIT_FIELDS: &[&str] = &[
    "date_changed",
    "changed_by",
    "date_created",
    "creator",
    "date_voided",
    "voided_by",
    "date_retired",
    "retired_by",
];

/// Decides the version both sides end with; see the module documentation for the rules.
///
/// `base`: None when the two sides never exchanged this entity (two-way merge).
/// `audit_fields`: columns such as date_changed/changed_by that every edit touches: when both
/// sides changed them, the policy's side wins silently (no conflict recorded for them alone), so
/// edits to different fields of one row do not produce a conflict.
#[must_use]
pub fn merge(
    base: Option<&Version>,
    parent: &Version,
    child: &Version,
    policy: Policy,
    audit_fields: &[&str],
) -> Merge {
    // Rule 1.
    if parent == child {
        return Merge::whole(parent, Outcome::Unchanged);
    }
    // Rule 2.
    if let Some(base) = base {
        if parent == base {
            return Merge::whole(child, Outcome::TakeChild);
        }
        if child == base {
            return Merge::whole(parent, Outcome::TakeParent);
        }
    }
    // Both changed since the base (or there is none). A base that saw the entity absent has no
    // field values to compare with, so it counts as no base from here on.
    let base_fields = base.and_then(Version::fields);
    match (parent, child, base_fields) {
        (Version::Present(parent_fields), Version::Present(child_fields), _) => {
            merge_fields(base_fields, parent_fields, child_fields, policy, audit_fields)
        }
        // Rule 3.
        (Version::Present(_), Version::Absent, None) => Merge::whole(parent, Outcome::TakeParent),
        (Version::Absent, Version::Present(_), None) => Merge::whole(child, Outcome::TakeChild),
        // Rule 5.
        (Version::Present(edited), Version::Absent, Some(base_fields)) => {
            delete_versus_edit(base_fields, Side::Parent, edited, parent, child, policy, audit_fields)
        }
        (Version::Absent, Version::Present(edited), Some(base_fields)) => {
            delete_versus_edit(base_fields, Side::Child, edited, parent, child, policy, audit_fields)
        }
        (Version::Absent, Version::Absent, _) => unreachable!("equal versions are decided by rule 1"),
    }
}

/// Rule 4: both Present, both changed. `base` None means no base values (two-way merge).
fn merge_fields(
    base: Option<&Fields>,
    parent: &Fields,
    child: &Fields,
    policy: Policy,
    audit_fields: &[&str],
) -> Merge {
    let winner = winner(policy);
    let names: BTreeSet<&String> = parent.keys().chain(child.keys()).collect();
    let mut result = Fields::new();
    let mut conflicts = Vec::new();
    for name in names {
        let parent_value = parent.get(name);
        let child_value = child.get(name);
        // `Some(b)` when there is a base, `b` being None when the base lacks the column.
        let base_value = base.map(|base| base.get(name));
        let chosen = if parent_value == child_value {
            parent_value
        } else if base_value == Some(parent_value) {
            child_value
        } else if base_value == Some(child_value) {
            parent_value
        } else {
            if !audit_fields.contains(&name.as_str()) {
                conflicts.push(FieldConflict {
                    field: name.clone(),
                    base: base_value.flatten().cloned(),
                    parent: parent_value.cloned(),
                    child: child_value.cloned(),
                    winner,
                });
            }
            winner.pick(parent_value, child_value)
        };
        if let Some(value) = chosen {
            result.insert(name.clone(), value.clone());
        }
    }
    let outcome = if conflicts.is_empty() { Outcome::Merged } else { Outcome::Conflict };
    Merge { result: Version::Present(result), outcome, conflicts, entity_conflict: false }
}

/// Rule 5: `edited_side` holds `edited` (changed since `base`), the other side deleted.
fn delete_versus_edit(
    base: &Fields,
    edited_side: Side,
    edited: &Fields,
    parent: &Version,
    child: &Version,
    policy: Policy,
    audit_fields: &[&str],
) -> Merge {
    let winner = winner(policy);
    let conflicts = edited
        .iter()
        .filter(|(name, value)| !audit_fields.contains(&name.as_str()) && base.get(*name) != Some(*value))
        .map(|(name, value)| FieldConflict {
            field: name.clone(),
            base: base.get(name).cloned(),
            parent: edited_side.pick(Some(value.clone()), None),
            child: edited_side.pick(None, Some(value.clone())),
            winner,
        })
        .collect();
    Merge { result: winner.pick(parent, child).clone(), outcome: Outcome::Conflict, conflicts, entity_conflict: true }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use std::collections::BTreeMap;

    const DEFAULT_AUDIT: &[&str] = OPENMRS_AUDIT_FIELDS;

    fn row(fields: &[(&str, Value)]) -> Version {
        Version::Present(fields.iter().map(|(name, value)| (name.to_string(), value.clone())).collect())
    }

    fn concept_ref(key: &str) -> Value {
        feedsync_wire::resource::reference_json("concept", Some(key))
    }

    fn obs_base() -> Version {
        row(&[
            ("uuid", json!("obs-1")),
            ("concept", concept_ref("c-weight")),
            ("value_numeric", json!(70)),
            ("comments", json!(null)),
            ("voided", json!(false)),
            ("date_voided", json!(null)),
            ("voided_by", json!(null)),
            ("void_reason", json!(null)),
            ("date_changed", json!(null)),
            ("changed_by", json!(null)),
        ])
    }

    /// `version` with `changes` applied (`None` removes the column).
    fn edit(version: &Version, changes: &[(&str, Option<Value>)]) -> Version {
        let mut fields = version.fields().expect("edit a present version").clone();
        for (name, value) in changes {
            match value {
                Some(value) => fields.insert(name.to_string(), value.clone()),
                None => fields.remove(*name),
            };
        }
        Version::Present(fields)
    }

    fn stamped(version: &Version, who: &str, when: &str, changes: &[(&str, Option<Value>)]) -> Version {
        let mut all = changes.to_vec();
        all.push(("changed_by", Some(json!({"ref": {"table": "users", "key": who}}))));
        all.push(("date_changed", Some(json!(when))));
        edit(version, &all)
    }

    fn voided(version: &Version, who: &str, when: &str, reason: &str) -> Version {
        edit(
            version,
            &[
                ("voided", Some(json!(true))),
                ("voided_by", Some(json!({"ref": {"table": "users", "key": who}}))),
                ("date_voided", Some(json!(when))),
                ("void_reason", Some(json!(reason))),
            ],
        )
    }

    fn field<'a>(version: &'a Version, name: &str) -> Option<&'a Value> {
        version.fields().and_then(|fields| fields.get(name))
    }

    fn conflict_fields(merge: &Merge) -> Vec<&str> {
        merge.conflicts.iter().map(|conflict| conflict.field.as_str()).collect()
    }

    #[test]
    fn unchanged_when_both_sides_agree() {
        let base = obs_base();
        let same = stamped(&base, "admin", "2024-01-02", &[("value_numeric", Some(json!(71)))]);
        for base in [None, Some(&base), Some(&Version::Absent)] {
            let merged = merge(base, &same, &same.clone(), Policy::ChildWins, DEFAULT_AUDIT);
            assert_eq!(merged, Merge::whole(&same, Outcome::Unchanged));
            let gone = merge(base, &Version::Absent, &Version::Absent, Policy::ParentWins, DEFAULT_AUDIT);
            assert_eq!(gone, Merge::whole(&Version::Absent, Outcome::Unchanged));
        }
    }

    #[test]
    fn fast_forward_both_ways() {
        let base = obs_base();
        let changed = stamped(&base, "nurse", "2024-01-02", &[("value_numeric", Some(json!(72)))]);
        for policy in Policy::ALL {
            let to_child = merge(Some(&base), &base, &changed, policy, DEFAULT_AUDIT);
            assert_eq!(to_child, Merge::whole(&changed, Outcome::TakeChild));
            let to_parent = merge(Some(&base), &changed, &base, policy, DEFAULT_AUDIT);
            assert_eq!(to_parent, Merge::whole(&changed, Outcome::TakeParent));
        }
    }

    #[test]
    fn delete_of_an_untouched_entity_wins_without_conflict() {
        let base = obs_base();
        for policy in Policy::ALL {
            let parent_deleted = merge(Some(&base), &Version::Absent, &base, policy, DEFAULT_AUDIT);
            assert_eq!(parent_deleted, Merge::whole(&Version::Absent, Outcome::TakeParent));
            let child_deleted = merge(Some(&base), &base, &Version::Absent, policy, DEFAULT_AUDIT);
            assert_eq!(child_deleted, Merge::whole(&Version::Absent, Outcome::TakeChild));
        }
    }

    #[test]
    fn creation_on_one_side_is_taken() {
        let created = obs_base();
        for base in [None, Some(&Version::Absent)] {
            for policy in Policy::ALL {
                assert_eq!(
                    merge(base, &created, &Version::Absent, policy, DEFAULT_AUDIT),
                    Merge::whole(&created, Outcome::TakeParent)
                );
                assert_eq!(
                    merge(base, &Version::Absent, &created, policy, DEFAULT_AUDIT),
                    Merge::whole(&created, Outcome::TakeChild)
                );
            }
        }
    }

    #[test]
    fn edits_to_different_fields_both_survive() {
        let base = obs_base();
        let parent = stamped(&base, "doctor", "2024-01-02", &[("value_numeric", Some(json!(72)))]);
        let child = stamped(&base, "nurse", "2024-01-03", &[("comments", Some(json!("after meal")))]);
        for policy in Policy::ALL {
            let merged = merge(Some(&base), &parent, &child, policy, DEFAULT_AUDIT);
            assert_eq!(merged.outcome, Outcome::Merged);
            assert!(merged.conflicts.is_empty() && !merged.entity_conflict);
            assert_eq!(field(&merged.result, "value_numeric"), Some(&json!(72)));
            assert_eq!(field(&merged.result, "comments"), Some(&json!("after meal")));
            let stamp_from = winner(policy).pick(&parent, &child);
            assert_eq!(field(&merged.result, "date_changed"), field(stamp_from, "date_changed"));
            assert_eq!(field(&merged.result, "changed_by"), field(stamp_from, "changed_by"));
        }
    }

    #[test]
    fn audit_fields_alone_are_not_a_conflict() {
        let base = obs_base();
        let parent = stamped(&base, "doctor", "2024-01-02", &[]);
        let child = stamped(&base, "nurse", "2024-01-03", &[]);
        let merged = merge(Some(&base), &parent, &child, Policy::ParentWins, DEFAULT_AUDIT);
        assert_eq!(
            merged,
            Merge { result: parent.clone(), outcome: Outcome::Merged, conflicts: vec![], entity_conflict: false }
        );
        let merged = merge(Some(&base), &parent, &child, Policy::ChildWins, &["date_changed", "changed_by"]);
        assert_eq!(merged.result, child);
        assert_eq!(merged.outcome, Outcome::Merged);
        // Without the audit list the same stamps are ordinary conflicting fields.
        let strict = merge(Some(&base), &parent, &child, Policy::ParentWins, &[]);
        assert_eq!(strict.outcome, Outcome::Conflict);
        assert_eq!(conflict_fields(&strict), ["changed_by", "date_changed"]);
    }

    #[test]
    fn same_field_changed_differently_is_decided_by_policy() {
        let base = obs_base();
        let parent = stamped(&base, "doctor", "2024-01-02", &[("value_numeric", Some(json!(72)))]);
        let child = stamped(
            &base,
            "nurse",
            "2024-01-03",
            &[("value_numeric", Some(json!(69))), ("comments", Some(json!("x")))],
        );
        for (policy, expected) in [(Policy::ParentWins, json!(72)), (Policy::ChildWins, json!(69))] {
            let merged = merge(Some(&base), &parent, &child, policy, DEFAULT_AUDIT);
            assert_eq!(merged.outcome, Outcome::Conflict);
            assert!(!merged.entity_conflict);
            assert_eq!(
                merged.conflicts,
                vec![FieldConflict {
                    field: "value_numeric".into(),
                    base: Some(json!(70)),
                    parent: Some(json!(72)),
                    child: Some(json!(69)),
                    winner: winner(policy),
                }]
            );
            assert_eq!(field(&merged.result, "value_numeric"), Some(&expected));
            assert_eq!(field(&merged.result, "comments"), Some(&json!("x")), "a one-sided change survives a conflict");
        }
    }

    #[test]
    fn reference_changes_compare_as_json() {
        let base = obs_base();
        let parent = edit(&base, &[("concept", Some(concept_ref("c-height")))]);
        let child = edit(&base, &[("concept", Some(concept_ref("c-height")))]);
        let other = edit(&base, &[("concept", Some(concept_ref("c-pulse"))), ("comments", Some(json!("x")))]);
        assert_eq!(merge(Some(&base), &parent, &child, Policy::ParentWins, DEFAULT_AUDIT).outcome, Outcome::Unchanged);
        let merged = merge(Some(&base), &parent, &other, Policy::ChildWins, DEFAULT_AUDIT);
        assert_eq!(conflict_fields(&merged), ["concept"]);
        assert_eq!(field(&merged.result, "concept"), Some(&concept_ref("c-pulse")));
    }

    #[test]
    fn edit_versus_void_keeps_both() {
        let base = obs_base();
        let parent = stamped(&base, "doctor", "2024-01-02", &[("value_numeric", Some(json!(72)))]);
        let child = voided(&base, "nurse", "2024-01-03", "entered in error");
        for policy in Policy::ALL {
            let merged = merge(Some(&base), &parent, &child, policy, DEFAULT_AUDIT);
            assert_eq!(merged.outcome, Outcome::Merged);
            assert_eq!(
                merged.result,
                edit(
                    &child,
                    &[
                        ("value_numeric", Some(json!(72))),
                        ("changed_by", field(&parent, "changed_by").cloned()),
                        ("date_changed", field(&parent, "date_changed").cloned()),
                    ]
                )
            );
        }
    }

    #[test]
    fn void_versus_void() {
        let base = obs_base();
        let parent = voided(&base, "doctor", "2024-01-02", "duplicate");
        let same_reason = voided(&base, "nurse", "2024-01-03", "duplicate");
        let other_reason = voided(&base, "nurse", "2024-01-03", "wrong patient");
        for policy in Policy::ALL {
            let winner = |child: &Version| winner(policy).pick(&parent, child).clone();
            // Same reason: agreement, the stamps follow the policy silently.
            let merged = merge(Some(&base), &parent, &same_reason, policy, DEFAULT_AUDIT);
            assert_eq!(
                merged,
                Merge {
                    result: winner(&same_reason),
                    outcome: Outcome::Merged,
                    conflicts: vec![],
                    entity_conflict: false
                }
            );
            // Different reasons: one conflict, and the result is one side's whole void.
            let merged = merge(Some(&base), &parent, &other_reason, policy, DEFAULT_AUDIT);
            assert_eq!(merged.outcome, Outcome::Conflict);
            assert_eq!(conflict_fields(&merged), ["void_reason"]);
            assert_eq!(merged.result, winner(&other_reason));
        }
    }

    #[test]
    fn edit_versus_delete_under_both_policies() {
        let base = obs_base();
        let edited = stamped(
            &base,
            "doctor",
            "2024-01-02",
            &[("value_numeric", Some(json!(72))), ("comments", Some(json!("x")))],
        );
        let lost_edits = |edited_side: Side| -> Vec<FieldConflict> {
            [("comments", json!(null), json!("x")), ("value_numeric", json!(70), json!(72))]
                .into_iter()
                .map(|(name, before, after)| FieldConflict {
                    field: name.into(),
                    base: Some(before),
                    parent: edited_side.pick(Some(after.clone()), None),
                    child: edited_side.pick(None, Some(after)),
                    winner: Side::Parent,
                })
                .collect()
        };
        for (policy, edit_wins) in [(Policy::ParentWins, true), (Policy::ChildWins, false)] {
            // The parent edits, the child deletes.
            let merged = merge(Some(&base), &edited, &Version::Absent, policy, DEFAULT_AUDIT);
            let expected_result = if edit_wins { edited.clone() } else { Version::Absent };
            let mut expected_conflicts = lost_edits(Side::Parent);
            expected_conflicts.iter_mut().for_each(|conflict| conflict.winner = winner(policy));
            assert_eq!(
                merged,
                Merge {
                    result: expected_result,
                    outcome: Outcome::Conflict,
                    conflicts: expected_conflicts,
                    entity_conflict: true
                }
            );
        }
        for (policy, edit_wins) in [(Policy::ParentWins, false), (Policy::ChildWins, true)] {
            // The parent deletes, the child edits.
            let merged = merge(Some(&base), &Version::Absent, &edited, policy, DEFAULT_AUDIT);
            let expected_result = if edit_wins { edited.clone() } else { Version::Absent };
            let mut expected_conflicts = lost_edits(Side::Child);
            expected_conflicts.iter_mut().for_each(|conflict| conflict.winner = winner(policy));
            assert_eq!(
                merged,
                Merge {
                    result: expected_result,
                    outcome: Outcome::Conflict,
                    conflicts: expected_conflicts,
                    entity_conflict: true
                }
            );
        }
        // An edit touching only audit fields still contests the delete, with no field listed.
        let touched = stamped(&base, "doctor", "2024-01-02", &[]);
        let merged = merge(Some(&base), &touched, &Version::Absent, Policy::ChildWins, DEFAULT_AUDIT);
        assert_eq!(
            merged,
            Merge { result: Version::Absent, outcome: Outcome::Conflict, conflicts: vec![], entity_conflict: true }
        );
    }

    #[test]
    fn same_identity_created_on_both_sides() {
        let parent = row(&[
            ("uuid", json!("p-1")),
            ("given_name", json!("Ama")),
            ("gender", json!("F")),
            ("creator", json!({"ref": {"table": "users", "key": "clerk-a"}})),
            ("date_created", json!("2024-01-01")),
        ]);
        let identical = edit(
            &parent,
            &[
                ("creator", Some(json!({"ref": {"table": "users", "key": "clerk-b"}}))),
                ("date_created", Some(json!("2024-01-05"))),
            ],
        );
        let different =
            edit(&identical, &[("given_name", Some(json!("Amma"))), ("birthdate", Some(json!("1990-02-03")))]);
        for base in [None, Some(&Version::Absent)] {
            for policy in Policy::ALL {
                let merged = merge(base, &parent, &identical, policy, DEFAULT_AUDIT);
                assert_eq!(merged.outcome, Outcome::Merged, "only creation stamps differ");
                assert_eq!(merged.result, winner(policy).pick(&parent, &identical).clone());

                let merged = merge(base, &parent, &different, policy, DEFAULT_AUDIT);
                assert_eq!(merged.outcome, Outcome::Conflict);
                assert_eq!(
                    conflict_fields(&merged),
                    ["birthdate", "given_name"],
                    "with no base every difference conflicts"
                );
                assert_eq!(merged.result, winner(policy).pick(&parent, &different).clone());
            }
        }
    }

    #[test]
    fn policy_names_parse_print_and_serialize() {
        for policy in Policy::ALL {
            assert_eq!(policy.to_string().parse::<Policy>(), Ok(policy));
            assert_eq!(serde_json::to_value(policy).unwrap(), json!(policy.to_string()));
            assert_eq!(serde_json::from_value::<Policy>(json!(policy.to_string())).unwrap(), policy);
        }
        assert_eq!(Policy::default(), Policy::ParentWins);
        assert_eq!(winner(Policy::ParentWins), Side::Parent);
        assert_eq!(winner(Policy::ChildWins), Side::Child);
        let error = "parent-wins".parse::<Policy>().unwrap_err();
        let message = error.to_string();
        assert!(message.contains("`parent-wins`"), "{message}");
        for policy in Policy::ALL {
            assert!(message.contains(policy.as_str()), "{message} lists {policy}");
        }
        assert_eq!(serde_json::to_value(Side::Child).unwrap(), json!("child"));
    }

    #[test]
    fn version_from_resource() {
        let resource = Resource {
            table: "obs".into(),
            category: "patient".into(),
            key: "obs-1".into(),
            columns: obs_base().fields().unwrap().clone(),
            hash: String::new(),
        };
        assert_eq!(Version::from_resource(Some(&resource)), obs_base());
        assert!(Version::from_resource(None).is_absent());
    }

    // ---- Generated cases ----------------------------------------------------------------------

    /// Cases per property; the seeds are `0..CASES_PER_PROPERTY`. Set `MERGE_PROPERTY_SEED` to
    /// rerun one seed.
    const CASES_PER_PROPERTY: u64 = 10_000;

    use crate::rng::SplitMix64 as Prng;

    /// Few names and values, so that coincidences (both sides making the same change, a change
    /// back to the base value) happen often.
    const NAMES: &[&str] = &["name", "concept", "voided", "void_reason", "date_changed", "changed_by", "date_voided"];

    fn random_value(prng: &mut Prng) -> Value {
        match prng.below_usize(8) {
            0 => json!(null),
            1 => json!(true),
            2 => json!(false),
            3 => json!(1),
            4 => json!("a"),
            5 => json!("b"),
            6 => concept_ref("k1"),
            _ => concept_ref("k2"),
        }
    }

    fn random_fields(prng: &mut Prng) -> Fields {
        let mut fields = Fields::new();
        for name in NAMES {
            if prng.percent(85) {
                fields.insert(name.to_string(), random_value(prng));
            }
        }
        fields
    }

    fn mutated(prng: &mut Prng, origin: &Fields) -> Fields {
        let mut fields = origin.clone();
        for name in NAMES {
            if prng.percent(30) {
                if prng.percent(10) {
                    fields.remove(*name);
                } else {
                    fields.insert(name.to_string(), random_value(prng));
                }
            }
        }
        fields
    }

    fn side_version(prng: &mut Prng, origin: &Fields) -> Version {
        match prng.below_usize(10) {
            0 => Version::Absent,
            1..=3 => Version::Present(origin.clone()),
            _ => Version::Present(mutated(prng, origin)),
        }
    }

    #[derive(Debug)]
    struct Case {
        seed: u64,
        base: Option<Version>,
        parent: Version,
        child: Version,
        policy: Policy,
        audit_fields: &'static [&'static str],
    }

    impl Case {
        fn generate(seed: u64) -> Case {
            let mut prng = Prng::new(seed);
            let origin = random_fields(&mut prng);
            let base = match prng.below_usize(10) {
                0 | 1 => None,
                2 => Some(Version::Absent),
                _ => Some(Version::Present(origin.clone())),
            };
            let parent = side_version(&mut prng, &origin);
            let child = side_version(&mut prng, &origin);
            let policy = Policy::ALL[prng.below_usize(2)];
            let audit_fields: &'static [&'static str] =
                [OPENMRS_AUDIT_FIELDS, &["date_changed", "changed_by"], &[]][prng.below_usize(3)];
            Case { seed, base, parent, child, policy, audit_fields }
        }

        fn merge(&self) -> Merge {
            merge(self.base.as_ref(), &self.parent, &self.child, self.policy, self.audit_fields)
        }

        fn base_fields(&self) -> Option<&Fields> {
            self.base.as_ref().and_then(Version::fields)
        }

        /// Every column name any of the versions has.
        fn names<'a>(&'a self, result: &'a Version) -> BTreeSet<&'a str> {
            [self.base_fields(), self.parent.fields(), self.child.fields(), result.fields()]
                .into_iter()
                .flatten()
                .flat_map(|fields| fields.keys().map(String::as_str))
                .collect()
        }
    }

    /// Checks `property` on every generated case; a failure names the seed that reproduces it.
    fn check_property(property: &str, check: impl Fn(&Case) -> Result<(), String>) {
        let seeds: Vec<u64> = match std::env::var("MERGE_PROPERTY_SEED") {
            Ok(seed) => vec![seed.parse().expect("MERGE_PROPERTY_SEED is a u64")],
            Err(_) => (0..CASES_PER_PROPERTY).collect(),
        };
        for seed in seeds {
            let case = Case::generate(seed);
            if let Err(why) = check(&case) {
                panic!(
                    "property `{property}` fails for seed {seed} (rerun: MERGE_PROPERTY_SEED={seed} cargo test -p feedsync-core --lib merge): {why}\n{case:#?}\nmerge: {:#?}",
                    case.merge()
                );
            }
        }
    }

    fn swap_outcome(outcome: Outcome) -> Outcome {
        match outcome {
            Outcome::TakeParent => Outcome::TakeChild,
            Outcome::TakeChild => Outcome::TakeParent,
            other => other,
        }
    }

    fn swap_sides(merge: Merge) -> Merge {
        Merge {
            outcome: swap_outcome(merge.outcome),
            conflicts: merge
                .conflicts
                .into_iter()
                .map(|conflict| FieldConflict {
                    parent: conflict.child,
                    child: conflict.parent,
                    winner: conflict.winner.other(),
                    ..conflict
                })
                .collect(),
            ..merge
        }
    }

    fn other_policy(policy: Policy) -> Policy {
        match policy {
            Policy::ParentWins => Policy::ChildWins,
            Policy::ChildWins => Policy::ParentWins,
        }
    }

    #[test]
    fn generated_cases_reach_every_outcome() {
        let mut seen = BTreeMap::new();
        let mut entity_conflicts = 0;
        for seed in 0..CASES_PER_PROPERTY {
            let merged = Case::generate(seed).merge();
            *seen.entry(format!("{:?}", merged.outcome)).or_insert(0) += 1;
            entity_conflicts += usize::from(merged.entity_conflict);
        }
        assert_eq!(seen.len(), 5, "{seen:?}");
        assert!(seen.values().all(|&count| count >= 200), "{seen:?}");
        assert!(entity_conflicts >= 200, "{entity_conflicts} entity conflicts");
    }

    #[test]
    fn property_result_fields_come_from_a_side() {
        check_property("result fields come from a side", |case| {
            let merged = case.merge();
            if merged.result.is_absent() {
                return if case.parent.is_absent() || case.child.is_absent() {
                    Ok(())
                } else {
                    Err("absent result from two present sides".into())
                };
            }
            for name in case.names(&merged.result) {
                let value = field(&merged.result, name);
                if value != field(&case.parent, name) && value != field(&case.child, name) {
                    return Err(format!("field {name} = {value:?} is neither side's value"));
                }
            }
            Ok(())
        });
    }

    #[test]
    fn property_one_sided_changes_survive() {
        check_property("one-sided changes survive", |case| {
            let merged = case.merge();
            let Some(base) = case.base_fields() else { return Ok(()) };
            if merged.entity_conflict {
                return Ok(()); // The winner's whole version is taken; see rule 5.
            }
            for name in case.names(&merged.result) {
                let (base_value, parent_value, child_value) =
                    (base.get(name), field(&case.parent, name), field(&case.child, name));
                let value = field(&merged.result, name);
                if parent_value == base_value && child_value != base_value && value != child_value {
                    return Err(format!("only the child changed {name}, result has {value:?}"));
                }
                if child_value == base_value && parent_value != base_value && value != parent_value {
                    return Err(format!("only the parent changed {name}, result has {value:?}"));
                }
            }
            Ok(())
        });
    }

    #[test]
    fn property_conflicts_are_exactly_the_fields_changed_differently() {
        check_property("conflicts are exactly the fields changed differently on both sides", |case| {
            let merged = case.merge();
            let audit = |name: &str| case.audit_fields.contains(&name);
            let base = case.base_fields();
            let both_changed_since_base = match &case.base {
                Some(base) => case.parent != *base && case.child != *base,
                None => true,
            };
            let deleted_versus_edited = case.parent.is_absent() != case.child.is_absent() && base.is_some();
            let expected_entity_conflict =
                case.parent != case.child && both_changed_since_base && deleted_versus_edited;
            let expected: Vec<&str> = if case.parent == case.child || !both_changed_since_base {
                vec![]
            } else if let (Some(parent), Some(child)) = (case.parent.fields(), case.child.fields()) {
                let names: BTreeSet<&String> = parent.keys().chain(child.keys()).collect();
                names
                    .into_iter()
                    .map(String::as_str)
                    .filter(|name| !audit(name))
                    .filter(|name| {
                        let (parent_value, child_value) = (parent.get(*name), child.get(*name));
                        parent_value != child_value
                            && base.is_none_or(|base| base.get(*name) != parent_value && base.get(*name) != child_value)
                    })
                    .collect()
            } else if let (true, Some(base)) = (expected_entity_conflict, base) {
                // A delete changes every field to none; the edit conflicts where it set a value.
                let edited = case.parent.fields().or(case.child.fields()).expect("one side is present");
                edited
                    .iter()
                    .filter(|(name, value)| !audit(name) && base.get(*name) != Some(*value))
                    .map(|(name, _)| name.as_str())
                    .collect()
            } else {
                vec![]
            };
            if conflict_fields(&merged) != expected {
                return Err(format!("conflicts {:?}, expected {expected:?}", conflict_fields(&merged)));
            }
            if merged.entity_conflict != expected_entity_conflict {
                return Err(format!("entity_conflict {}, expected {expected_entity_conflict}", merged.entity_conflict));
            }
            if (merged.outcome == Outcome::Conflict) != (merged.entity_conflict || !merged.conflicts.is_empty()) {
                return Err(format!("outcome {:?} disagrees with the conflicts recorded", merged.outcome));
            }
            let winner = winner(case.policy);
            for conflict in &merged.conflicts {
                let name = conflict.field.as_str();
                let recorded = (conflict.base.as_ref(), conflict.parent.as_ref(), conflict.child.as_ref());
                let actual =
                    (base.and_then(|base| base.get(name)), field(&case.parent, name), field(&case.child, name));
                if recorded != actual || conflict.winner != winner {
                    return Err(format!(
                        "conflict {conflict:?} does not match the inputs {actual:?} / winner {winner:?}"
                    ));
                }
                let won = winner.pick(&case.parent, &case.child);
                if field(&merged.result, name) != field(won, name) {
                    return Err(format!("{name} in the result is not the winner's"));
                }
            }
            if merged.entity_conflict && merged.result != *winner.pick(&case.parent, &case.child) {
                return Err("entity conflict result is not the winner's version".into());
            }
            Ok(())
        });
    }

    #[test]
    fn property_merging_the_result_again_is_unchanged() {
        check_property("idempotence", |case| {
            let result = case.merge().result;
            for base in [Some(&result), None] {
                let again = merge(base, &result, &result, case.policy, case.audit_fields);
                if again != Merge::whole(&result, Outcome::Unchanged) {
                    return Err(format!("merge(base {base:?}, result, result) = {again:?}"));
                }
            }
            Ok(())
        });
    }

    #[test]
    fn property_child_wins_is_parent_wins_with_sides_swapped() {
        check_property("symmetry", |case| {
            let direct = case.merge();
            let swapped =
                merge(case.base.as_ref(), &case.child, &case.parent, other_policy(case.policy), case.audit_fields);
            let swapped_back = swap_sides(swapped);
            if direct != swapped_back {
                return Err(format!("swapped roles give {swapped_back:#?}"));
            }
            Ok(())
        });
    }

    #[test]
    fn property_re_merging_against_the_result_changes_nothing() {
        check_property("convergence", |case| {
            let result = case.merge().result;
            // The parent applied the result; the child's old version arrives again (and the
            // same with the roles exchanged).
            let parent_applied = merge(case.base.as_ref(), &result, &case.child, case.policy, case.audit_fields);
            if parent_applied.result != result {
                return Err(format!("parent applied the result, re-merge gives {parent_applied:#?}"));
            }
            let child_applied = merge(case.base.as_ref(), &case.parent, &result, case.policy, case.audit_fields);
            if child_applied.result != result {
                return Err(format!("child applied the result, re-merge gives {child_applied:#?}"));
            }
            // Both applied it and it became the base of the next exchange: a further edit on one
            // side fast-forwards.
            let mut prng = Prng::new(case.seed ^ 0xA5A5_A5A5);
            if let Version::Present(fields) = &result {
                let later = Version::Present(mutated(&mut prng, fields));
                let next = merge(Some(&result), &result, &later, case.policy, case.audit_fields);
                let expected = if later == result { Outcome::Unchanged } else { Outcome::TakeChild };
                if next != Merge::whole(&later, expected) {
                    return Err(format!("a later child edit does not fast-forward: {next:#?}"));
                }
            }
            Ok(())
        });
    }
}
