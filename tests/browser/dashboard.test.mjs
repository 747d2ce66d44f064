// The parent's dashboard in headless Chromium against a running feedsync-demo (run.sh starts it
// and sets the environment lib.mjs reads). The tests run in this order on the same demo, each
// acting only through the page and checking the result in the demo's SQLite files:
//
// 1. the overview lists every child, refreshes by itself with numbers that move, and its
//    numbers are the parent database's;
// 2. the conflict the demo's editing scene leaves at the parent (two facilities changed the
//    same patient's middle name), resolved in the page by taking the child's version: both
//    facilities' databases hold that version after their next round;
// 3. a change the parent refuses (a child's encounter type whose unique name another
//    encounter type holds at the parent) is listed as held; after the cause is fixed at the
//    parent, Retry in the page applies it, and the next rounds bring it to the facilities.
//
// Each test saves screenshots of the pages it checked in SCREENSHOT_DIR.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import {
  ADMIN, adminGet, dbFile, demo, launch, newPage, quote, runBinary, screenshot, shownNumber, sleep, sql, sqlValue, testIdText, waitFor,
} from './lib.mjs';

let browser;

/** A text as a regular expression matching it literally. */
const escaped = (text) => String(text).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

before(async () => {
  browser = await launch();
});

after(async () => {
  await browser?.close();
});

// ---- 1. the overview ----

/** Everything the overview shows of the parent and each child, read in one go from the page. */
async function readOverview(page) {
  const raw = await page.evaluate((names) => {
    const text = (id) => {
      const el = document.querySelector(`[data-testid="${CSS.escape(id)}"]`);
      return el ? el.textContent.trim() : null;
    };
    const fields = ['waiting-to-child', 'pending-push', 'held-at-parent', 'held-at-child', 'conflicts-at-parent', 'conflicts-at-child', 'catchment', 'last-contact'];
    const children = {};
    for (const name of names) {
      children[name] = Object.fromEntries(fields.map((f) => [f, text(`child-${name}-${f}`)]));
      children[name].row = text(`child-${name}`) !== null;
    }
    return { lastEvent: text('parent-last-event'), updated: text('updated'), children };
  }, demo.children);
  const children = {};
  for (const [name, c] of Object.entries(raw.children)) {
    assert.ok(c.row, `the overview has no row for ${name}`);
    children[name] = {
      waiting_to_child: shownNumber(c['waiting-to-child']),
      pending_push: shownNumber(c['pending-push']),
      held_at_parent: shownNumber(c['held-at-parent']),
      held_at_child: shownNumber(c['held-at-child']),
      conflicts_at_parent: shownNumber(c['conflicts-at-parent']),
      conflicts_at_child: shownNumber(c['conflicts-at-child']),
      catchment_patients: shownNumber(c.catchment),
      last_contact: c['last-contact'],
    };
  }
  const seq = /^#([\d,]+)/.exec(raw.lastEvent || '');
  return {
    lastEvent: seq ? shownNumber(seq[1]) : 0,
    updated: raw.updated,
    catchmentTotal: Object.values(children).reduce((sum, c) => sum + (c.catchment_patients || 0), 0),
    children,
  };
}

/** The same numbers from the parent's database, in one statement (one consistent read). */
function parentNumbers() {
  const row = sql(dbFile('parent'), `SELECT
      (SELECT COALESCE(MAX(event_seq), 0) FROM feedsync_event) AS last_event,
      (SELECT json_group_object(child, n) FROM (SELECT child, COUNT(*) AS n FROM feedsync_catchment GROUP BY child)) AS catchment,
      (SELECT json_group_object(peer, n) FROM (SELECT peer, COUNT(*) AS n FROM feedsync_conflict WHERE status = 'open' AND site_side = 'parent' GROUP BY peer)) AS conflicts,
      (SELECT json_group_object(peer, n) FROM (SELECT peer, COUNT(*) AS n FROM feedsync_inbox GROUP BY peer)) AS held`)[0];
  const counts = (json) => (name) => JSON.parse(json || '{}')[name] || 0;
  return { lastEvent: row.last_event, catchment: counts(row.catchment), conflicts: counts(row.conflicts), held: counts(row.held) };
}

/** `low <= value <= high`, for a number that only grows while it was read. */
function assertBetween(low, value, high, what) {
  assert.ok(low <= value && value <= high, `${what}: the page shows ${value}, the database had ${low} before and ${high} after`);
}

test('the overview lists every child with live numbers that are the databases\'', async () => {
  const page = await newPage(browser);
  const response = await page.goto(`${demo.url}/dashboard`);
  assert.equal(response.status(), 200);
  assert.equal(new URL(page.url()).pathname, '/dashboard/', '/dashboard sends the browser to /dashboard/');
  await page.getByTestId('children-table').waitFor();
  for (const name of demo.children) await page.getByTestId(`child-${name}`).waitFor();
  assert.equal(shownNumber(await testIdText(page, 'overview-children')), demo.children.length, 'the summary counts the children');

  // Live: the page refreshes itself every 5 s, and what it shows moves with the clinics: new
  // events at the parent, new patients in the facilities' catchments.
  const first = await readOverview(page);
  const later = await waitFor('the overview to show new numbers by itself', async () => {
    const now = await readOverview(page);
    return now.lastEvent > first.lastEvent && now.catchmentTotal > first.catchmentTotal ? now : undefined;
  }, 90_000, 1_000);
  assert.notEqual(later.updated, first.updated, 'the "Updated" time moved');

  // The numbers are the database's: with the page's own refresh stopped, "Refresh now" is
  // clicked between two reads of the parent database; each number the page shows lies between
  // them (it was read in between), and it is what the admin API answered the page.
  await page.getByTestId('auto-refresh').uncheck();
  await sleep(300);
  const before = parentNumbers();
  const [answer] = await Promise.all([
    page.waitForResponse((r) => new URL(r.url()).pathname === `${ADMIN}/overview` && r.request().method() === 'GET'),
    page.getByTestId('refresh').click(),
  ]);
  const data = await answer.json();
  const apiChild = (name) => data.children.find((c) => c.name === name);
  const shown = await waitFor('the page to draw the refreshed numbers', async () => {
    const s = await readOverview(page);
    const same = s.lastEvent === data.parent.last_event_seq && demo.children.every((name) => {
      const c = apiChild(name);
      const keys = ['waiting_to_child', 'pending_push', 'held_at_parent', 'held_at_child', 'conflicts_at_parent', 'conflicts_at_child', 'catchment_patients'];
      return keys.every((k) => s.children[name][k] === (c[k] ?? null));
    });
    return same ? s : undefined;
  }, 10_000, 200);
  const afterward = parentNumbers();
  assertBetween(before.lastEvent, shown.lastEvent, afterward.lastEvent, 'the parent\'s last event');
  for (const name of demo.children) {
    const c = shown.children[name];
    assertBetween(before.catchment(name), c.catchment_patients, afterward.catchment(name), `${name}'s catchment`);
    assertBetween(before.conflicts(name), c.conflicts_at_parent, afterward.conflicts(name), `${name}'s conflicts at the parent`);
    if (before.held(name) === afterward.held(name)) assert.equal(c.held_at_parent, before.held(name), `${name}'s changes held at the parent`);
    assert.ok(c.catchment_patients > 0, `${name} has registered patients by now`);
    // Each child syncs every round: its last contact is recent (a facility offline in the
    // demo's third scene is back within a minute).
    assert.ok(apiChild(name).last_contact_age_s < 120, `${name} was last heard from ${c.last_contact}`);
    assert.match(c.last_contact, /ago$/);
  }
  await screenshot(page, 'overview');
  assert.deepEqual(page.errors, [], 'no script error in the page');
  await page.context().close();
});

// ---- 2. a conflict resolved in the page ----

test('resolving a conflict in the page changes the children\'s databases after the next round', async () => {
  // The demo's second scene: two facilities write different middle names for the patient
  // who moved between them before either syncs; the parent keeps the first and records the
  // conflict with the other.
  const conflict = await waitFor('the demo\'s editing scene to leave a conflict at the parent', async () => {
    const data = await adminGet('/conflicts');
    return data.parent.items.find((c) => c.table === 'person_name' && c.fields.includes('middle_name') && c.status === 'open');
  });
  const field = conflict.rows.find((r) => r.field === 'middle_name');
  const kept = field.mine; // the parent's, everywhere now
  const chosen = field.theirs; // the child's, kept only in the conflict record
  assert.notEqual(kept, chosen);
  const middleName = (node) => sql(dbFile(node), `SELECT middle_name FROM person_name WHERE uuid = ${quote(conflict.key)}`);
  const holders = demo.children.filter((name) => middleName(name).length > 0);
  assert.ok(holders.includes(conflict.peer) && holders.length >= 2, `the patient's name is at two facilities: ${holders}`);
  await waitFor(`every facility to hold the kept middle name ${kept}`, () => holders.every((name) => middleName(name)[0].middle_name === kept));

  const page = await newPage(browser);
  await page.goto(`${demo.url}/dashboard/#/conflicts`);
  const id = conflict.id;
  const article = page.getByTestId(`conflict-${id}`);
  await article.waitFor();
  const row = page.getByTestId(`field-${id}-middle_name`);
  assert.match(await row.innerText(), new RegExp(`${escaped(kept)}[\\s\\S]*${escaped(chosen)}`), 'the field shows mine (the parent\'s) and theirs (the child\'s) side by side');
  assert.match(await article.innerText(), new RegExp(`pushed by child ${conflict.peer}`));
  await page.getByTestId(`take-${id}-theirs`).check();
  await screenshot(page, 'conflict-before-resolve');
  await page.getByTestId(`resolve-${id}`).click();
  await page.getByTestId('status').filter({ hasText: `conflict #${id} resolved` }).waitFor();
  await article.waitFor({ state: 'detached' });
  assert.equal(await page.getByTestId('alert').innerText(), '', 'no error shown');

  // The resolution is a new change at the parent; each facility gets it at its next round.
  assert.equal(middleName('parent')[0].middle_name, chosen, 'the parent holds the chosen version at once');
  await waitFor(`both facilities to hold the chosen middle name ${chosen}`, () => holders.every((name) => middleName(name)[0].middle_name === chosen));
  assert.equal(sqlValue(dbFile('parent'), `SELECT status FROM feedsync_conflict WHERE conflict_id = ${Number(id)}`), 'resolved');

  await page.goto(`${demo.url}/dashboard/#/conflicts/all`);
  await page.getByTestId(`conflict-${id}`).filter({ hasText: 'Resolved' }).waitFor();
  await screenshot(page, 'conflict-resolved');
  assert.deepEqual(page.errors, [], 'no script error in the page');
  await page.context().close();
});

// ---- 3. a held change retried in the page ----

test('retrying a held change in the page applies it once its cause is fixed', async () => {
  // A fourth facility, run by this test with `feed-subscriber run --parent --once`, so that
  // nothing pushes from it meanwhile: the parent also retries a child's held changes whenever
  // that child pushes, and the demo's own facilities push every round, so with one of them the
  // fix would apply before the button could be clicked.
  const child = 'browser-laptop';
  const token = runBinary('feed-publisher', ['child', 'add', '--db', `sqlite://${dbFile('parent')}`, '--name', child]).trim();
  assert.match(token, /^\S+$/, 'child add prints the token');
  const laptop = dbFile(child);
  execFileSync('sqlite3', ['-bail', laptop], { input: readFileSync(path.join(demo.repo, 'shared/sim/schema/openmrs-2.5.sqlite.sql')) });

  // The same encounter type name, created at the parent and at the laptop with different
  // uuids: the parent's unique index refuses the laptop's.
  const name = `Browser check ${randomUUID().slice(0, 8)}`;
  const atParent = randomUUID();
  const atLaptop = randomUUID();
  const insert = (uuid, where) => `INSERT INTO encounter_type (name, description, creator, date_created, retired, uuid) VALUES (${quote(name)}, ${quote(`made at ${where} by the browser test`)}, 1, datetime('now'), 0, ${quote(uuid)})`;
  sql(dbFile('parent'), insert(atParent, 'the parent'));
  sql(laptop, insert(atLaptop, child));
  runBinary('feed-subscriber', ['run', '--parent', demo.url, '--token', token, '--db', `sqlite://${laptop}`, '--once']);
  const held = sql(dbFile('parent'), `SELECT inbox_id, reason, attempts FROM feedsync_inbox WHERE peer = ${quote(child)} AND entity_key = ${quote(atLaptop)}`);
  assert.equal(held.length, 1, 'the parent holds the laptop\'s encounter type');
  assert.match(held[0].reason, /UNIQUE/i);
  const id = held[0].inbox_id;

  const page = await newPage(browser);
  await page.goto(`${demo.url}/dashboard/#/held`);
  const row = page.getByTestId(`held-${id}`);
  await row.waitFor();
  const text = await row.innerText();
  assert.match(text, new RegExp(`${child}[\\s\\S]*encounter_type[\\s\\S]*UNIQUE`, 'i'), `the row names the child, the table and the database's refusal: ${text}`);
  assert.equal(await row.locator(`code[title="${atLaptop}"]`).count(), 1, 'the row shows the change\'s uuid');

  // Retry before the cause is fixed: still held.
  await page.getByTestId(`retry-${id}`).click();
  await page.getByTestId('status').filter({ hasText: `held #${id} is still held` }).waitFor();
  // The list is shown again with the attempt counted.
  await page.getByTestId(`held-${id}`).locator('td[data-label="Attempts"]').filter({ hasText: String(held[0].attempts + 1) }).waitFor();
  await screenshot(page, 'held-before-fix');

  // The fix: the parent's encounter type gets another name. Then Retry applies the laptop's.
  sql(dbFile('parent'), `UPDATE encounter_type SET name = ${quote(`${name} (parent)`)}, changed_by = 1, date_changed = datetime('now') WHERE uuid = ${quote(atParent)}`);
  await page.getByTestId(`retry-${id}`).click();
  await page.getByTestId('status').filter({ hasText: `held #${id} applied` }).waitFor();
  await page.getByTestId(`held-${id}`).waitFor({ state: 'detached' });
  assert.equal(await page.getByTestId('alert').innerText(), '', 'no error shown');
  await screenshot(page, 'held-retried');

  const typeName = (node, uuid) => sqlValue(dbFile(node), `SELECT name FROM encounter_type WHERE uuid = ${quote(uuid)}`);
  assert.equal(typeName('parent', atLaptop), name, 'the laptop\'s encounter type is at the parent');
  assert.equal(sqlValue(dbFile('parent'), `SELECT COUNT(*) FROM feedsync_inbox WHERE inbox_id = ${Number(id)}`), 0, 'and no longer held');
  // Metadata goes to every facility: both encounter types reach them at their next rounds.
  await waitFor('every facility to receive both encounter types', () =>
    demo.children.every((node) => typeName(node, atLaptop) === name && typeName(node, atParent) === `${name} (parent)`));
  const audit = sqlValue(dbFile('parent'), `SELECT detail FROM feedsync_audit WHERE actor = 'dashboard' AND action = 'retry-held' ORDER BY audit_id DESC LIMIT 1`);
  assert.match(audit, new RegExp(`held #${id} applied`));
  assert.deepEqual(page.errors, [], 'no script error in the page');
  await page.context().close();
});
