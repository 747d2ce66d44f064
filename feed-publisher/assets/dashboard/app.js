// The parent's dashboard: plain JavaScript, no framework, nothing fetched from the internet.
// It reads the JSON routes under /ws/feedsync/admin/ and the Atom feeds of this server; pages
// are chosen by the part of the address after '#'. Elements a browser test checks carry
// data-testid attributes (child-<name>, retry-<id>, skip-<id>, resolve-<id>, ...); items held
// or conflicts found at a child use <child>-<id> as their id there, since ids are per server.
'use strict';

(function () {
  // The dashboard may sit below a path prefix (e.g. /openmrs/dashboard/).
  const PREFIX = location.pathname.replace(/\/dashboard(\/.*)?$/, '');
  const API = PREFIX + '/ws/feedsync/admin';
  const FEEDS = PREFIX + '/ws/atomfeed';
  const REFRESH_MS = 5000;
  // A login's CSRF token, sent with every action (empty when not logged in with a cookie).
  const CSRF = (document.querySelector('meta[name="feedsync-csrf"]') || {}).content || '';

  const view = document.getElementById('view');
  const statusBox = document.getElementById('status');
  const alertBox = document.getElementById('alert');
  let refreshTimer = null;
  let renderToken = 0;

  // ---- small helpers ----

  /** Creates an element: h('a', {href: '#', class: 'x'}, 'text', child...). Text is never parsed as HTML. */
  function h(tag, attrs) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const key of Object.keys(attrs)) {
        const value = attrs[key];
        if (value === null || value === undefined || value === false) continue;
        if (key === 'class') el.className = value;
        else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
        else el.setAttribute(key, value === true ? '' : String(value));
      }
    }
    for (let i = 2; i < arguments.length; i++) add(el, arguments[i]);
    return el;
  }

  function add(el, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) { child.forEach(function (c) { add(el, c); }); return; }
    el.append(child instanceof Node ? child : String(child));
  }

  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); }

  function num(n) { return n === null || n === undefined ? '—' : Number(n).toLocaleString('en'); }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return '—';
    const d = Math.floor(seconds / 86400), hr = Math.floor((seconds % 86400) / 3600), m = Math.floor((seconds % 3600) / 60);
    if (d > 0) return d + ' d ' + hr + ' h';
    if (hr > 0) return hr + ' h ' + m + ' min';
    if (m > 0) return m + ' min';
    return seconds + ' s';
  }

  function ago(seconds) { return seconds === null || seconds === undefined ? 'never' : age(seconds) + ' ago'; }

  function time(text) { return text ? String(text).replace('T', ' ').replace(/\.\d+Z?$/, '') : '—'; }

  /** A field value as text: references as table/key, null as "(empty)". */
  function valueText(value) {
    if (value === undefined) return '(absent)';
    if (value === null) return '(empty)';
    if (typeof value === 'object' && value.ref) return value.ref.table + '/' + value.ref.key;
    if (typeof value === 'object') return JSON.stringify(value);
    return String(value);
  }

  function short(key) { return key && key.length > 13 ? key.slice(0, 8) + '…' : key; }

  function say(message) { alertBox.textContent = ''; statusBox.textContent = message; }

  function fail(error) {
    statusBox.textContent = '';
    alertBox.textContent = '';
    alertBox.append(h('strong', null, 'Error: '), error.message || String(error));
    if (error.hint) alertBox.append(h('br'), 'What to do: ' + error.hint);
  }

  function ApiError(message, hint, status) { this.message = message; this.hint = hint; this.status = status; }

  /** GET (no body) or POST (body) a JSON route; errors carry the server's message and hint. */
  async function api(path, body) {
    const init = { credentials: 'same-origin', headers: { Accept: 'application/json' } };
    if (body !== undefined) {
      init.method = 'POST';
      init.headers['Content-Type'] = 'application/json';
      if (CSRF) init.headers['X-Feedsync-CSRF'] = CSRF;
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(API + path, init);
    } catch (e) {
      throw new ApiError('the parent did not answer (' + e.message + ')', 'check that feed-publisher serve is running and reachable', 0);
    }
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      throw new ApiError((data && data.error) || response.status + ' ' + response.statusText, (data && data.hint) || '', response.status);
    }
    return data;
  }

  function heading(text) { return h('h1', { tabindex: '-1', id: 'page-title' }, text); }

  function dl(pairs, attrs) {
    const list = h('dl', attrs || { class: 'stats' });
    pairs.forEach(function (p) {
      list.append(h('div', { class: 'stat' + (p.problem ? ' stat-problem' : '') }, h('dt', null, p.label), h('dd', { 'data-testid': p.testid || null, title: p.title || null }, p.value)));
    });
    return list;
  }

  /** A table that becomes a list of cards on a small screen (each cell labelled). */
  function table(columns, rows, attrs) {
    const t = h('table', Object.assign({ class: 'cards' }, attrs || {}));
    t.append(h('thead', null, h('tr', null, columns.map(function (c) { return h('th', { scope: 'col' }, c); }))));
    const body = h('tbody');
    rows.forEach(function (row) { body.append(row); });
    t.append(body);
    return t;
  }

  function row(columns, cells, attrs) {
    const tr = h('tr', attrs || null);
    // One element per cell, so the small-screen layout (label, then content) stays two columns.
    cells.forEach(function (cell, i) { tr.append(h('td', { 'data-label': columns[i] }, h('div', { class: 'cell' }, cell))); });
    return tr;
  }

  function problemList(problems, testid) {
    if (!problems || problems.length === 0) return h('p', { class: 'ok', 'data-testid': testid }, h('span', { 'aria-hidden': 'true' }, '✓ '), 'No problems');
    return h('ul', { class: 'problems', 'data-testid': testid }, problems.map(function (p) {
      return h('li', { 'data-kind': p.kind }, h('strong', null, 'Problem: '), p.text);
    }));
  }

  function empty(text) { return h('p', { class: 'empty' }, text); }

  // ---- routing ----

  const routes = [
    [/^#\/overview$/, overviewPage, 'overview'],
    [/^#\/child\/([A-Za-z0-9_-]+)$/, childPage, 'overview'],
    [/^#\/held$/, heldPage, 'held'],
    [/^#\/conflicts(\/all)?$/, conflictsPage, 'conflicts'],
    [/^#\/patients(?:\/(.*))?$/, patientsPage, 'patients'],
    [/^#\/feeds$/, feedsPage, 'feeds'],
    [/^#\/feeds\/([A-Za-z0-9_.-]+)\/(recent|\d+)$/, feedPage, 'feeds'],
    [/^#\/audit$/, auditPage, 'audit'],
  ];

  async function show(focus) {
    if (refreshTimer) { clearInterval(refreshTimer); refreshTimer = null; }
    const hash = location.hash || '#/overview';
    let match = null, page = null, nav = null;
    for (const r of routes) {
      match = hash.match(r[0]);
      if (match) { page = r[1]; nav = r[2]; break; }
    }
    document.querySelectorAll('[data-nav]').forEach(function (a) {
      if (a.getAttribute('data-nav') === nav) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
    });
    const token = ++renderToken;
    if (!page) {
      clear(view);
      view.append(heading('Not found'), h('p', null, 'There is no dashboard page ' + hash + '. ', h('a', { href: '#/overview' }, 'Go to the overview.')));
      return;
    }
    try {
      await page(match, token);
    } catch (e) {
      if (token !== renderToken) return;
      clear(view);
      view.append(heading('Could not load this page'));
      fail(e);
    }
    if (focus && token === renderToken) {
      const title = document.getElementById('page-title');
      if (title) title.focus();
    }
  }

  /** Replaces the page's content unless the user has moved on to another page meanwhile. */
  function render(token, nodes, title) {
    if (token !== renderToken) return false;
    clear(view);
    add(view, nodes);
    document.title = title + ' - feedsync dashboard';
    return true;
  }

  window.addEventListener('hashchange', function () { alertBox.textContent = ''; show(true); });

  // ---- overview ----

  async function overviewPage(match, token) {
    const auto = h('input', { type: 'checkbox', id: 'auto-refresh', checked: true, 'data-testid': 'auto-refresh' });
    const onlyProblems = h('input', { type: 'checkbox', id: 'only-problems', 'data-testid': 'only-problems' });
    const filter = h('input', { type: 'search', id: 'child-filter', autocomplete: 'off', 'data-testid': 'child-filter' });
    const updated = h('span', { id: 'updated', class: 'muted', 'data-testid': 'updated' });
    const parentBox = h('div', { id: 'overview-parent' });
    const body = h('div', { id: 'overview-children' });
    const refresh = h('button', { type: 'button', 'data-testid': 'refresh' }, 'Refresh now');
    let data = await api('/overview');
    const skeleton = [
      heading('Network overview'),
      h('div', { class: 'toolbar' },
        h('span', { class: 'check' }, auto, h('label', { for: 'auto-refresh' }, 'Refresh every 5 s')),
        refresh, updated),
      parentBox,
      h('section', { 'aria-labelledby': 'children-heading' },
        h('h2', { id: 'children-heading' }, 'Children'),
        h('div', { class: 'toolbar' },
          h('span', { class: 'field' }, h('label', { for: 'child-filter' }, 'Find a child'), filter),
          h('span', { class: 'check' }, onlyProblems, h('label', { for: 'only-problems' }, 'Only children with problems'))),
        body),
    ];
    if (!render(token, skeleton, 'Overview')) return;

    function draw() {
      // Keep keyboard focus where it was across a refresh.
      const focused = document.activeElement && view.contains(document.activeElement) ? document.activeElement.getAttribute('data-testid') : null;
      const parts = overviewBody(data, filter.value.trim().toLowerCase(), onlyProblems.checked);
      clear(parentBox);
      add(parentBox, parts[0]);
      clear(body);
      add(body, parts[1]);
      updated.textContent = 'Updated ' + time(data.now);
      if (focused) {
        const again = view.querySelector('[data-testid="' + CSS.escape(focused) + '"]');
        if (again) again.focus();
      }
    }
    async function reload() {
      if (document.hidden || token !== renderToken) return;
      try {
        data = await api('/overview');
        alertBox.textContent = '';
        if (token === renderToken) draw();
      } catch (e) { fail(e); }
    }
    draw();
    filter.addEventListener('input', draw);
    onlyProblems.addEventListener('change', draw);
    refresh.addEventListener('click', reload);
    auto.addEventListener('change', function () {
      if (refreshTimer) { clearInterval(refreshTimer); refreshTimer = null; }
      if (auto.checked) refreshTimer = setInterval(reload, REFRESH_MS);
    });
    refreshTimer = setInterval(reload, REFRESH_MS);
  }

  function overviewBody(data, filter, onlyProblems) {
    const p = data.parent, t = data.totals;
    const parent = h('section', { 'aria-labelledby': 'parent-heading', class: p.problems.length ? 'panel panel-problem' : 'panel' },
      h('h2', { id: 'parent-heading' }, 'This parent'),
      dl([
        { label: 'Journal backlog', value: num(p.journal_backlog), testid: 'parent-journal-backlog', problem: p.oldest_journal_age_s > 300 },
        { label: 'Last event', value: p.last_event_seq ? '#' + num(p.last_event_seq) + ', ' + ago(p.last_event_age_s) : 'none yet', testid: 'parent-last-event', title: time(p.last_event_at) },
        { label: 'Held at the parent', value: num(p.held), testid: 'parent-held', problem: p.held > 0 },
        { label: 'Open conflicts', value: num(p.open_conflicts), testid: 'parent-open-conflicts', problem: p.open_conflicts > 0 },
      ], { class: 'stats', 'aria-live': 'polite' }),
      problemList(p.problems, 'parent-problems'));
    const summary = h('p', { class: 'summary', 'aria-live': 'polite', 'data-testid': 'overview-summary' },
      h('span', { 'data-testid': 'overview-children' }, num(t.children)), ' children, ',
      h('span', { 'data-testid': 'overview-with-problems', class: t.with_problems ? 'problem-text' : null }, num(t.with_problems)), ' with problems; ',
      num(t.waiting_to_children), ' changes waiting for children, ', num(t.pending_push), ' waiting to be pushed, ',
      num(t.held_at_parent + t.held_at_children), ' held, ', num(t.catchment_patients), ' patients in catchments.',
      t.revoked ? ' ' + num(t.revoked) + ' revoked children are not counted.' : '');
    const columns = ['Child', 'Status', 'Last contact', 'Waiting parent → child', 'Waiting child → parent', 'Oldest waiting', 'Held (parent / child)', 'Conflicts (parent / child)', 'Catchment'];
    const shown = data.children
      .filter(function (c) { return !filter || c.name.toLowerCase().indexOf(filter) >= 0; })
      .filter(function (c) { return !onlyProblems || c.problems.length > 0; })
      .sort(function (a, b) { return (b.problems.length > 0) - (a.problems.length > 0) || a.name.localeCompare(b.name); });
    const rows = shown.map(function (c) { return childRow(c, columns); });
    const children = [summary,
      data.children.length === 0
        ? empty('No child is registered yet: `feed-publisher child add --name NAME` registers one.')
        : rows.length === 0 ? empty('No child matches.') : table(columns, rows, { 'data-testid': 'children-table' })];
    return [parent, children];
  }

  function childRow(c, columns) {
    const id = 'child-' + c.name;
    const problem = c.problems.length > 0;
    const status = c.revoked
      ? h('span', { class: 'muted' }, 'Revoked')
      : problem
        ? h('div', null, h('span', { class: 'badge badge-problem' }, h('span', { 'aria-hidden': 'true' }, '⚠ '), 'Problem'), h('ul', { class: 'problems compact' }, c.problems.map(function (p) { return h('li', { 'data-kind': p.kind }, p.text); })))
        : h('span', { class: 'badge badge-ok' }, h('span', { 'aria-hidden': 'true' }, '✓ '), 'OK');
    const held = [h('span', { 'data-testid': id + '-held-at-parent' }, num(c.held_at_parent)), ' / ', h('span', { 'data-testid': id + '-held-at-child' }, num(c.held_at_child))];
    const conflicts = [h('span', { 'data-testid': id + '-conflicts-at-parent' }, num(c.conflicts_at_parent)), ' / ', h('span', { 'data-testid': id + '-conflicts-at-child' }, num(c.conflicts_at_child))];
    return row(columns, [
      h('a', { href: '#/child/' + c.name, 'data-testid': id + '-link' }, c.name),
      status,
      h('span', { 'data-testid': id + '-last-contact', title: time(c.last_contact) }, ago(c.last_contact_age_s)),
      h('span', { 'data-testid': id + '-waiting-to-child' }, num(c.waiting_to_child)),
      h('span', { 'data-testid': id + '-pending-push', title: c.reported_at ? 'as of the child\'s report at ' + time(c.reported_at) : 'no report from the child yet' }, num(c.pending_push)),
      h('span', { 'data-testid': id + '-oldest-waiting' }, age(c.oldest_waiting_age_s)),
      c.held_at_parent + (c.held_at_child || 0) > 0 ? h('a', { href: '#/held' }, held) : held,
      c.conflicts_at_parent + (c.conflicts_at_child || 0) > 0 ? h('a', { href: '#/conflicts' }, conflicts) : conflicts,
      h('span', { 'data-testid': id + '-catchment' }, num(c.catchment_patients)),
    ], { 'data-testid': id, class: problem ? 'row-problem' : (c.revoked ? 'row-revoked' : null) });
  }

  // ---- a child ----

  async function childPage(match, token) {
    const name = match[1];
    const data = await api('/children/' + encodeURIComponent(name));
    const s = data.status, reg = data.registration, report = data.report;
    const rules = reg.rules || {};
    const ruleText = [].concat(
      (rules.locations || []).map(function (l) { return 'location ' + l; }),
      (rules.identifier_prefixes || []).map(function (p) { return 'identifier prefix ' + p; }),
      Object.keys(rules.address || {}).map(function (k) { return 'address ' + k + '=' + rules.address[k]; }));
    const roundColumns = ['Reported at', 'Pushed', 'Pulled', 'Conflicts', 'Duration', 'Error', 'Waiting parent → child', 'Waiting child → parent', 'Held (parent / child)'];
    const rounds = data.rounds.map(function (r) {
      return row(roundColumns, [time(r.reported_at), num(r.round.pushed), num(r.round.pulled), num(r.round.conflicts), num(r.round.duration_ms) + ' ms',
        r.round.error ? h('span', { class: 'problem-text' }, r.round.error) : '—', num(r.waiting_to_child), num(r.pending_push), num(r.held_at_parent) + ' / ' + num(r.held_at_child)]);
    });
    const usbColumns = ['At', 'Action', 'Detail'];
    const usb = data.usb.map(function (u) { return row(usbColumns, [time(u.at), u.action, u.detail]); });
    const commandColumns = ['Command', 'Action', 'Queued', 'By', 'Done', 'Result'];
    const commands = data.commands.map(function (c) {
      return row(commandColumns, ['#' + c.id, describeCommand(c.action), time(c.created_at), c.actor, c.done_at ? time(c.done_at) : 'waiting for the next round',
        c.done_at ? h('span', { class: c.ok ? 'ok' : 'problem-text' }, (c.ok ? 'done: ' : 'failed: ') + (c.message || '')) : '—'], { 'data-testid': 'command-' + c.id });
    });
    const nodes = [
      h('p', { class: 'crumbs' }, h('a', { href: '#/overview' }, '← Overview')),
      heading('Child ' + name + (s.revoked ? ' (revoked)' : '')),
      problemList(s.problems, 'child-problems'),
      h('section', { 'aria-labelledby': 'now-heading' }, h('h2', { id: 'now-heading' }, 'Now'),
        dl([
          { label: 'Last contact', value: ago(s.last_contact_age_s), title: time(s.last_contact), testid: 'child-last-contact' },
          { label: 'Waiting parent → child', value: num(s.waiting_to_child), testid: 'child-waiting-to-child' },
          { label: 'Waiting child → parent', value: num(s.pending_push), testid: 'child-pending-push' },
          { label: 'Oldest waiting', value: age(s.oldest_waiting_age_s), testid: 'child-oldest-waiting' },
          { label: 'Held at the parent', value: num(s.held_at_parent), testid: 'child-held-at-parent', problem: s.held_at_parent > 0 },
          { label: 'Held at the child', value: num(s.held_at_child), testid: 'child-held-at-child', problem: s.held_at_child > 0 },
          { label: 'Conflicts at the parent', value: num(s.conflicts_at_parent), testid: 'child-conflicts-at-parent', problem: s.conflicts_at_parent > 0 },
          { label: 'Conflicts at the child', value: num(s.conflicts_at_child), testid: 'child-conflicts-at-child', problem: s.conflicts_at_child > 0 },
          { label: 'Catchment', value: reg.all_patients ? 'every patient' : num(s.catchment_patients) + ' patients', testid: 'child-catchment' },
        ], { class: 'stats', 'aria-live': 'polite' })),
      h('section', { 'aria-labelledby': 'reg-heading' }, h('h2', { id: 'reg-heading' }, 'Registration'),
        dl([
          { label: 'Registered', value: time(reg.created_at) },
          { label: 'May write', value: reg.categories.join(', ') === '*' ? 'every category' : reg.categories.join(', ') },
          { label: 'Catchment rules', value: reg.all_patients ? 'all patients' : (ruleText.length ? ruleText.join('; ') : 'none (patients registered, written or fetched there)') },
          { label: 'Acknowledged through event', value: num(reg.acked_seq) },
          { label: 'Revoked', value: reg.revoked_at ? time(reg.revoked_at) : 'no' },
        ], { class: 'stats plain' })),
      h('section', { 'aria-labelledby': 'round-heading' }, h('h2', { id: 'round-heading' }, 'Latest round'),
        report ? dl([
          { label: 'Reported at', value: time(data.reported_at) },
          { label: 'Pushed', value: num(report.round.pushed) },
          { label: 'Pulled', value: num(report.round.pulled) },
          { label: 'Conflicts', value: num(report.round.conflicts) },
          { label: 'Duration', value: num(report.round.duration_ms) + ' ms' },
          { label: 'Error', value: report.round.error || 'none', problem: !!report.round.error },
          { label: 'Last parent event applied there', value: num(report.pull_after) },
        ], { class: 'stats plain' }) : empty('No report from this child yet: it sends one after each round.')),
      heldSections(data.held),
      conflictSections(data.conflicts),
      h('section', { 'aria-labelledby': 'rounds-heading' }, h('h2', { id: 'rounds-heading' }, 'Rounds'),
        h('p', { class: 'muted' }, 'Newest first; the rounds this dashboard saw (the last ' + 200 + ' are kept).'),
        rounds.length ? table(roundColumns, rounds, { 'data-testid': 'rounds-table' }) : empty('No round seen yet.')),
      h('section', { 'aria-labelledby': 'usb-heading' }, h('h2', { id: 'usb-heading' }, 'USB transfers'),
        usb.length ? table(usbColumns, usb, { 'data-testid': 'usb-table' }) : empty('No USB transfer imported from this child.')),
      h('section', { 'aria-labelledby': 'commands-heading' }, h('h2', { id: 'commands-heading' }, 'Commands sent to this child'),
        commands.length ? table(commandColumns, commands, { 'data-testid': 'commands-table' }) : empty('None.')),
    ];
    render(token, nodes, 'Child ' + name);
  }

  function describeCommand(action) {
    if (!action) return '?';
    if (action.kind === 'retry_held') return 'retry held #' + action.held_id;
    if (action.kind === 'skip_held') return 'skip held #' + action.held_id + ': ' + action.reason;
    if (action.kind === 'resolve_conflict') return 'resolve conflict #' + action.conflict_id + ': ' + action.take + (action.fields && action.fields.length ? ' ' + action.fields.join(', ') : '');
    return JSON.stringify(action);
  }

  // ---- held changes ----

  async function heldPage(match, token) {
    const data = await api('/held');
    render(token, [
      heading('Held changes (failed events)'),
      h('p', { class: 'intro' }, 'A held change could not be applied yet: a row it refers to has not arrived, or the database refused it. ' +
        'Later changes of the same record wait behind it. Retry tries again now; Skip drops it, with a reason kept in the audit log. ' +
        'Changes held at a child are retried or skipped by that child at its next round.'),
      heldSections(data),
    ], 'Held');
  }

  function heldSections(data) {
    const sections = [];
    const here = data.parent;
    sections.push(h('section', { 'aria-labelledby': 'held-parent-heading' },
      h('h2', { id: 'held-parent-heading' }, 'Held at this parent (', h('span', { 'data-testid': 'held-parent-total' }, num(here.held_total)), ')'),
      here.items.length ? heldTable(here.items, null) : empty('Nothing is held here.'),
      here.held_total > here.items.length ? h('p', { class: 'muted' }, 'The first ' + here.items.length + ' are listed.') : null));
    data.children.forEach(function (c) {
      const hid = 'held-' + c.child + '-heading';
      sections.push(h('section', { 'aria-labelledby': hid },
        h('h2', { id: hid }, 'Held at child ' + c.child + ' (' + num(c.held_total) + ')'),
        h('p', { class: 'muted' }, 'As of its report at ' + time(c.reported_at) + '.'),
        c.items.length ? heldTable(c.items, c.child) : empty('Nothing was held there at its last report.')));
    });
    return sections;
  }

  function heldTable(items, child) {
    const columns = ['Held', child ? 'From' : 'From child', 'Change', 'Reason', 'Attempts', 'Received', 'Waiting behind it', 'Actions'];
    return table(columns, items.map(function (item) { return heldRow(item, child, columns); }), { 'data-testid': child ? 'held-table-' + child : 'held-table-parent' });
  }

  function heldRow(item, child, columns) {
    const tid = child ? child + '-' + item.id : String(item.id);
    const base = child ? '/children/' + encodeURIComponent(child) + '/held/' + item.id : '/held/' + item.id;
    const behind = item.behind.length
      ? h('ul', { class: 'compact' }, item.behind.map(function (b) {
        return h('li', null, '#' + b.id + ' ' + b.table + ' ' + short(b.key) + (b.why === 'same_entity' ? ' (a later version of it)' : ' (needs this row)'));
      }))
      : 'nothing';
    const reason = h('input', { type: 'text', id: 'skip-reason-' + tid, required: true, maxlength: '1000', 'data-testid': 'skip-reason-' + tid, autocomplete: 'off' });
    const skipForm = h('form', { class: 'inline-form', hidden: true, 'data-testid': 'skip-form-' + tid },
      h('label', { for: 'skip-reason-' + tid }, 'Why may held #' + item.id + ' be dropped? (kept in the audit log)'), reason,
      h('span', { class: 'buttons' },
        h('button', { type: 'submit', class: 'danger', 'data-testid': 'confirm-skip-' + tid }, 'Skip #' + item.id),
        h('button', { type: 'button', 'data-testid': 'cancel-skip-' + tid, onclick: function () { skipForm.hidden = true; skipButton.focus(); } }, 'Cancel')));
    skipForm.addEventListener('submit', async function (event) {
      event.preventDefault();
      const text = reason.value.trim();
      if (!text) { fail({ message: 'a skip needs a reason', hint: 'say why this change may be dropped' }); reason.focus(); return; }
      await act(base + '/skip', { reason: text }, child ? 'Skip of held #' + item.id + ' queued for ' + child : 'Held #' + item.id + ' skipped.');
    });
    const skipButton = h('button', { type: 'button', 'data-testid': 'skip-' + tid, 'aria-expanded': 'false', onclick: function () {
      skipForm.hidden = !skipForm.hidden;
      skipButton.setAttribute('aria-expanded', String(!skipForm.hidden));
      if (!skipForm.hidden) reason.focus();
    } }, 'Skip…');
    const retryButton = h('button', { type: 'button', 'data-testid': 'retry-' + tid, onclick: function () {
      act(base + '/retry', {}, child ? 'Retry of held #' + item.id + ' queued for ' + child : null);
    } }, 'Retry');
    const change = [h('strong', null, item.table), ' ', h('code', { title: item.key }, short(item.key)), item.deleted ? ' (deletion)' : '',
      item.columns ? h('details', null, h('summary', null, 'Show the change'), h('pre', null, JSON.stringify(item.columns, null, 2))) : null];
    return row(columns, [
      '#' + item.id,
      item.from,
      change,
      h('span', { class: 'reason' }, item.reason),
      num(item.attempts),
      h('span', { title: time(item.received_at) }, item.age_s !== null && item.age_s !== undefined ? ago(item.age_s) : time(item.received_at)),
      behind,
      h('div', { class: 'actions' },
        item.queued_command ? h('p', { class: 'muted' }, 'Command #' + item.queued_command + ' waits for the next round.') : null,
        h('span', { class: 'buttons' }, retryButton, skipButton), skipForm),
    ], { 'data-testid': 'held-' + tid });
  }

  /** Posts an action, says what happened, and shows the page again. */
  async function act(path, body, queuedMessage) {
    try {
      const answer = await api(path, body);
      say(queuedMessage && answer.command ? queuedMessage + ' as command #' + answer.command + '; the child carries it out at its next round.' : (answer.message || 'Done.'));
      await show(false);
    } catch (e) {
      fail(e);
    }
  }

  // ---- conflicts ----

  async function conflictsPage(match, token) {
    const all = !!match[1];
    const data = await api('/conflicts' + (all ? '?all=1' : ''));
    render(token, [
      heading(all ? 'Conflicts (open and resolved)' : 'Open conflicts'),
      h('p', { class: 'intro' }, 'Both sides changed the same record since they last agreed. The merge kept one value and the other is kept here. ' +
        '"Mine" is the version of the server where the conflict was found (this parent, or the child), "theirs" the other side\'s. ' +
        'A resolution is written as a new change and reaches every server at its next round.'),
      h('p', null, all ? h('a', { href: '#/conflicts' }, 'Show open conflicts only') : h('a', { href: '#/conflicts/all' }, 'Show resolved conflicts too')),
      conflictSections(data),
    ], 'Conflicts');
  }

  function conflictSections(data) {
    const sections = [];
    sections.push(h('section', { 'aria-labelledby': 'conflicts-parent-heading' },
      h('h2', { id: 'conflicts-parent-heading' }, 'Found at this parent (', h('span', { 'data-testid': 'conflicts-parent-open' }, num(data.parent.open_conflicts)), ' open)'),
      data.parent.items.length ? data.parent.items.map(function (c) { return conflictArticle(c, null); }) : empty('None.')));
    data.children.forEach(function (group) {
      const cid = 'conflicts-' + group.child + '-heading';
      sections.push(h('section', { 'aria-labelledby': cid },
        h('h2', { id: cid }, 'Found at child ' + group.child + ' (' + num(group.open_conflicts) + ' open)'),
        h('p', { class: 'muted' }, 'As of its report at ' + time(group.reported_at) + '.'),
        group.items.length ? group.items.map(function (c) { return conflictArticle(c, group.child); }) : empty('None at its last report.')));
    });
    return sections;
  }

  function sideName(side) { return side === 'parent' ? 'the parent' : 'child ' + side; }

  function conflictArticle(c, child) {
    const tid = child ? child + '-' + c.id : String(c.id);
    const open = c.status === 'open';
    const mineLabel = 'Mine: ' + sideName(c.mine_is);
    const theirsLabel = 'Theirs: ' + sideName(c.theirs_is);
    const showSame = h('input', { type: 'checkbox', id: 'same-' + tid, 'data-testid': 'show-same-' + tid });
    const columns = ['Field', mineLabel + (c.mine_present ? '' : ' (deleted)'), theirsLabel + (c.theirs_present ? '' : ' (deleted)'), 'Last agreed', 'Now'].concat(open ? ['Keep'] : []);
    const fieldByField = open && c.mine_present && c.theirs_present;
    const rows = c.rows.map(function (r) {
      const marker = r.conflicted ? h('span', { class: 'marker marker-conflict' }, 'both changed') : r.differs ? h('span', { class: 'marker marker-differs' }, 'differs') : null;
      const cells = [
        [h('code', null, r.field), marker ? ' ' : null, marker],
        valueCell(r.mine, c.mine_present), valueCell(r.theirs, c.theirs_present), valueCell(r.base, true), valueCell(r.result, true),
      ];
      if (open) {
        if (r.differs && fieldByField) {
          const name = 'field-' + tid + '-' + r.field;
          const winner = JSON.stringify(r.result) === JSON.stringify(r.theirs) && JSON.stringify(r.result) !== JSON.stringify(r.mine) ? 'theirs' : 'mine';
          cells.push(h('fieldset', { class: 'choice' }, h('legend', { class: 'visually-hidden' }, 'Keep which ' + r.field),
            ['mine', 'theirs'].map(function (side) {
              const id = name + '-' + side;
              return h('span', { class: 'check' }, h('input', { type: 'radio', name: name, id: id, value: side, checked: side === winner, 'data-field': r.field, 'data-testid': id }), h('label', { for: id }, side));
            })));
        } else {
          cells.push('—');
        }
      }
      return row(columns, cells, { class: r.conflicted ? 'field-conflict' : r.differs ? 'field-differs' : 'field-same', 'data-testid': 'field-' + tid + '-' + r.field });
    });
    const fieldTable = table(columns, rows, { class: 'cards conflict-table hide-same', 'data-testid': 'conflict-table-' + tid });
    showSame.addEventListener('change', function () { fieldTable.classList.toggle('hide-same', !showSame.checked); });
    const takeName = 'take-' + tid;
    const takeOptions = [['mine', 'Keep mine (' + sideName(c.mine_is) + '\'s version)'], ['theirs', 'Take theirs (' + sideName(c.theirs_is) + '\'s version)']];
    if (fieldByField) takeOptions.push(['fields', 'Field by field (choose in the table)']);
    const form = open ? h('form', { class: 'resolve-form', 'data-testid': 'resolve-form-' + tid },
      h('fieldset', null, h('legend', null, 'Resolve conflict #' + c.id),
        takeOptions.map(function (o) {
          const id = takeName + '-' + o[0];
          return h('span', { class: 'check' }, h('input', { type: 'radio', name: takeName, id: id, value: o[0], 'data-testid': id }), h('label', { for: id }, o[1]));
        })),
      h('button', { type: 'submit', 'data-testid': 'resolve-' + tid }, 'Resolve #' + c.id),
      c.queued_command ? h('p', { class: 'muted' }, 'Command #' + c.queued_command + ' waits for ' + child + '\'s next round.') : null) : null;
    if (form) {
      // Choosing a field's side means resolving field by field.
      fieldTable.addEventListener('change', function (event) {
        if (event.target.getAttribute('data-field')) { const f = form.querySelector('#' + CSS.escape(takeName + '-fields')); if (f) f.checked = true; }
      });
      form.addEventListener('submit', function (event) {
        event.preventDefault();
        const chosen = form.querySelector('input[name="' + takeName + '"]:checked');
        if (!chosen) { fail({ message: 'choose mine, theirs or field by field', hint: 'pick one of the options above the Resolve button' }); return; }
        const body = { take: chosen.value, fields: [] };
        if (chosen.value === 'fields') {
          fieldTable.querySelectorAll('input[type="radio"]:checked').forEach(function (radio) { body.fields.push(radio.getAttribute('data-field') + '=' + radio.value); });
        }
        const path = child ? '/children/' + encodeURIComponent(child) + '/conflicts/' + c.id + '/resolve' : '/conflicts/' + c.id + '/resolve';
        act(path, body, child ? 'Resolution of conflict #' + c.id + ' queued for ' + child : null);
      });
    }
    return h('article', { class: 'conflict' + (open ? ' conflict-open' : ''), 'data-testid': 'conflict-' + tid, 'aria-labelledby': 'conflict-heading-' + tid },
      h('h3', { id: 'conflict-heading-' + tid }, 'Conflict #' + c.id + ': ', h('code', null, c.table), ' ', h('code', { title: c.key }, short(c.key))),
      h('p', { class: 'meta' }, 'Found at ' + sideName(c.found_at) + (c.found_at === 'parent' ? ', pushed by child ' + c.peer : ', pulled from the parent') +
        '; detected ' + time(c.detected_at) + '. ' + (c.entity_conflict ? 'The whole record conflicts (one side deleted or created it). ' : '') +
        (c.fields.length ? 'Both changed: ' + c.fields.join(', ') + '. ' : '') + 'Kept for now: ' + (c.winner === (c.found_at === 'parent' ? 'parent' : 'child') ? 'mine' : 'theirs') + '.'),
      open ? null : h('p', { class: 'ok' }, 'Resolved: ' + (c.resolution || '')),
      h('span', { class: 'check' }, showSame, h('label', { for: 'same-' + tid }, 'Show fields that are the same')),
      fieldTable, form);
  }

  function valueCell(value, present) {
    if (!present) return h('span', { class: 'muted' }, '(deleted)');
    return h('span', { class: value === null || value === undefined ? 'muted value' : 'value' }, valueText(value));
  }

  // ---- patients ----

  async function patientsPage(match, token) {
    const q = match[1] ? decodeURIComponent(match[1]) : '';
    const input = h('input', { type: 'search', id: 'patient-query', name: 'q', value: q, required: true, autocomplete: 'off', 'data-testid': 'patient-query', 'aria-describedby': 'patient-help' });
    const form = h('form', { class: 'search-form', role: 'search', 'data-testid': 'patient-form' },
      h('label', { for: 'patient-query' }, 'Identifier, or name with birth date and gender'), input,
      h('button', { type: 'submit', 'data-testid': 'patient-search' }, 'Search'),
      h('p', { id: 'patient-help', class: 'muted' }, 'For example 100000-1, or Mary Uwimana 1990-04-12 F. Spelling slips are forgiven. Every search is kept in the audit log.'));
    form.addEventListener('submit', function (event) {
      event.preventDefault();
      const text = input.value.trim();
      if (text) location.hash = '#/patients/' + encodeURIComponent(text);
    });
    const results = h('div', { id: 'patient-results', 'aria-live': 'polite' });
    if (!render(token, [heading('Patients across the network'), form, results], 'Patients')) return;
    if (!q) return;
    const data = await api('/patients?q=' + encodeURIComponent(q));
    if (token !== renderToken) return;
    const columns = ['Name', 'Gender', 'Birth date', 'Identifiers', 'Match', 'Held at children'];
    const rows = data.candidates.map(function (c) {
      const name = [c.given_name, c.middle_name, c.family_name].filter(Boolean).join(' ');
      return row(columns, [
        [h('strong', null, name || '(no name)'), h('br'), h('code', { class: 'muted' }, c.uuid)],
        c.gender || '—', c.birthdate || '—', c.identifiers.join(', ') || '—',
        Math.round(c.score * 100) + '% by ' + c.matched_by,
        c.children.length ? h('ul', { class: 'compact' }, c.children.map(function (k) { return h('li', null, h('a', { href: '#/child/' + k.child }, k.child), ' (' + k.reason + ')'); })) : 'only here',
      ], { 'data-testid': 'patient-' + c.uuid });
    });
    add(results, [h('p', { 'data-testid': 'patient-count' }, num(rows.length) + ' found for "' + q + '".'), rows.length ? table(columns, rows, { 'data-testid': 'patients-table' }) : null]);
  }

  // ---- feeds ----

  async function feedsPage(match, token) {
    const response = await fetch(FEEDS, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
    if (!response.ok) throw new ApiError('the feed list did not load (' + response.status + ')', 'see the publisher\'s log', response.status);
    const data = await response.json();
    render(token, [
      heading('Feeds'),
      h('p', { class: 'intro' }, 'The Atom feeds this parent publishes, one per category; "all" holds every change in order. Subscribers read them at ', h('code', null, FEEDS + '/{category}/recent'), '.'),
      h('ul', { class: 'feed-list', 'data-testid': 'feed-list' }, data.feeds.map(function (f) {
        return h('li', null, h('a', { href: '#/feeds/' + f + '/recent', 'data-testid': 'feed-' + f }, f));
      })),
    ], 'Feeds');
  }

  function linkPage(href) {
    if (!href) return null;
    const m = href.match(/\/([^/]+)$/);
    return m ? m[1] : null;
  }

  async function feedPage(match, token) {
    const category = match[1], page = match[2];
    const response = await fetch(FEEDS + '/' + encodeURIComponent(category) + '/' + page, { credentials: 'same-origin', headers: { Accept: 'application/atom+xml' } });
    if (!response.ok) {
      let error = null;
      try { error = await response.json(); } catch (e) { error = null; }
      throw new ApiError((error && error.error) || 'the page did not load (' + response.status + ')', (error && error.hint) || '', response.status);
    }
    const xml = new DOMParser().parseFromString(await response.text(), 'application/xml');
    const links = {};
    xml.querySelectorAll('feed > link').forEach(function (l) { links[l.getAttribute('rel')] = l.getAttribute('href'); });
    const number = linkPage(links.via) || page;
    const nav = h('nav', { class: 'pager', 'aria-label': 'Pages of ' + category },
      links['prev-archive'] ? h('a', { href: '#/feeds/' + category + '/' + linkPage(links['prev-archive']), rel: 'prev', 'data-testid': 'feed-prev' }, '← Older page (' + linkPage(links['prev-archive']) + ')') : h('span', { class: 'muted' }, 'This is the first page'),
      links['next-archive'] ? h('a', { href: '#/feeds/' + category + '/' + linkPage(links['next-archive']), rel: 'next', 'data-testid': 'feed-next' }, 'Newer page (' + linkPage(links['next-archive']) + ') →') : h('span', { class: 'muted' }, 'This is the newest page'),
      page !== 'recent' ? h('a', { href: '#/feeds/' + category + '/recent', 'data-testid': 'feed-recent' }, 'Newest page') : null);
    const columns = ['Updated', 'Category', 'Action', 'Tags', 'Links'];
    const entries = Array.prototype.slice.call(xml.getElementsByTagName('entry')).map(function (entry) {
      const text = function (tag) { const el = entry.getElementsByTagName(tag)[0]; return el ? el.textContent : ''; };
      const terms = Array.prototype.map.call(entry.getElementsByTagName('category'), function (c) { return c.getAttribute('term'); });
      let content = null;
      try { content = JSON.parse(text('content')); } catch (e) { content = text('content'); }
      const linksCell = typeof content === 'object' && content
        ? Object.keys(content).map(function (k) { return resourceLink(k, content[k]); })
        : h('code', null, String(content));
      return row(columns, [time(text('updated')), text('title'), terms[1] || '', terms.slice(2).map(function (t) { return h('code', { class: 'tag' }, t); }), linksCell], { 'data-testid': 'entry-' + text('id').replace(/^.*:/, '') });
    });
    render(token, [
      h('p', { class: 'crumbs' }, h('a', { href: '#/feeds' }, '← Feeds')),
      heading('Feed ' + category + ', page ' + number + (page === 'recent' ? ' (newest)' : '')),
      nav,
      h('p', { class: 'muted' }, 'Entries in the feed\'s own order, oldest first; pages before the newest never change.'),
      entries.length ? table(columns, entries, { 'data-testid': 'feed-entries' }) : empty('No entries on this page.'),
      entries.length > 20 ? nav.cloneNode(true) : null,
    ], 'Feed ' + category);
  }

  function resourceLink(kind, link) {
    if (kind !== 'resource') return h('div', null, kind + ': ', h('code', null, String(link)));
    const out = h('pre', { hidden: true, class: 'resource' });
    const entity = String(link).split('/ws/feedsync/resource/')[1] || String(link);
    const button = h('button', { type: 'button', class: 'small', 'aria-expanded': 'false' }, 'Show the resource');
    button.addEventListener('click', async function () {
      if (!out.hidden) { out.hidden = true; button.setAttribute('aria-expanded', 'false'); return; }
      try {
        const path = String(link).replace(/^https?:\/\/[^/]+/, '');
        const response = await fetch(path.startsWith(PREFIX) ? path : PREFIX + path, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
        out.textContent = JSON.stringify(await response.json(), null, 2);
      } catch (e) {
        out.textContent = 'Could not load it: ' + e.message;
      }
      out.hidden = false;
      button.setAttribute('aria-expanded', 'true');
    });
    return h('div', null, h('code', { class: 'entity' }, decodeURIComponent(entity)), h('br'), button, out);
  }

  // ---- audit ----

  async function auditPage(match, token) {
    const actor = h('input', { type: 'text', id: 'audit-actor', autocomplete: 'off', 'data-testid': 'audit-actor' });
    const action = h('input', { type: 'text', id: 'audit-action', autocomplete: 'off', 'data-testid': 'audit-action' });
    const form = h('form', { class: 'toolbar', 'data-testid': 'audit-form' },
      h('span', { class: 'field' }, h('label', { for: 'audit-actor' }, 'Who (e.g. dashboard, a child)'), actor),
      h('span', { class: 'field' }, h('label', { for: 'audit-action' }, 'Action (e.g. skip-held, patient-find)'), action),
      h('button', { type: 'submit' }, 'Filter'));
    const list = h('div', { id: 'audit-list' });
    const more = h('button', { type: 'button', hidden: true, 'data-testid': 'audit-more' }, 'Older entries');
    const columns = ['#', 'At', 'Who', 'Action', 'Patient', 'Detail'];
    let tbody = null, oldest = null;
    async function load(reset) {
      const params = new URLSearchParams({ limit: '100' });
      if (actor.value.trim()) params.set('actor', actor.value.trim());
      if (action.value.trim()) params.set('action', action.value.trim());
      if (!reset && oldest) params.set('before', String(oldest));
      const data = await api('/audit?' + params.toString());
      if (reset) {
        clear(list);
        const t = table(columns, [], { 'data-testid': 'audit-table' });
        tbody = t.querySelector('tbody');
        list.append(data.entries.length ? t : empty('No entries.'));
      }
      data.entries.forEach(function (e) {
        tbody.append(row(columns, ['#' + e.id, time(e.at), e.actor, e.action, e.patient_uuid ? h('code', null, e.patient_uuid) : '—', e.detail || ''], { 'data-testid': 'audit-' + e.id }));
        oldest = e.id;
      });
      more.hidden = data.entries.length < 100;
    }
    form.addEventListener('submit', function (event) { event.preventDefault(); load(true).catch(fail); });
    more.addEventListener('click', function () { load(false).catch(fail); });
    if (!render(token, [heading('Audit log'), h('p', { class: 'intro' }, 'Newest first: operators\' actions, patient searches and fetches, USB imports, commands and their results.'), form, list, more], 'Audit')) return;
    await load(true);
  }

  show(false);
})();
