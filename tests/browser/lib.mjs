// Helpers for the browser tests: the running demo (its address, folder and binaries, from the
// environment run.sh sets), headless Chromium through playwright-core, the demo's SQLite files
// through the sqlite3 command-line tool, screenshots, and waiting with a deadline.

import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run these tests through tests/browser/run.sh, which starts the demo`);
  return value;
}

/** Where the demo runs and what the tests may use. */
export const demo = {
  /** The parent's address, e.g. http://127.0.0.1:41234 */
  url: required('DEMO_URL').replace(/\/+$/, ''),
  /** The demo's --dir: parent.sqlite, kigali-hc.sqlite, ... */
  dir: required('DEMO_DIR'),
  /** The demo's facilities, as it printed them. */
  children: required('DEMO_CHILDREN').split(',').filter(Boolean),
  /** Folder of the built feed-publisher and feed-subscriber binaries. */
  binDir: required('FEEDSYNC_BIN_DIR'),
  repo: required('REPO_ROOT'),
  screenshots: required('SCREENSHOT_DIR'),
};

export const ADMIN = '/ws/feedsync/admin';
/** Longest wait for anything the demo does by itself (a round, a scene). */
export const DEMO_WAIT_MS = Number(process.env.DEMO_WAIT_MS || 120_000);
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

/** The SQLite file of a node of the demo ('parent' or a child's name). */
export function dbFile(node) {
  return path.join(demo.dir, `${node}.sqlite`);
}

/**
 * Runs SQL on a SQLite file with the sqlite3 tool and returns the rows as objects. The demo
 * writes the same files meanwhile: a busy database is waited for, up to 20 s.
 */
export function sql(file, statement) {
  const out = execFileSync('sqlite3', ['-bail', '-json', '-cmd', '.timeout 20000', file, statement], { encoding: 'utf8', maxBuffer: 64 << 20 });
  return out.trim() ? JSON.parse(out) : [];
}

/** The first column of the first row, or undefined. */
export function sqlValue(file, statement) {
  const rows = sql(file, statement);
  return rows.length ? Object.values(rows[0])[0] : undefined;
}

/** Quotes a text for SQL. */
export function quote(text) {
  return `'${String(text).replaceAll("'", "''")}'`;
}

/** GET a route of the admin API (reading only: every action in the tests goes through the page). */
export async function adminGet(route) {
  const response = await fetch(demo.url + ADMIN + route, { headers: { accept: 'application/json' } });
  if (!response.ok) throw new Error(`GET ${ADMIN}${route}: ${response.status} ${await response.text()}`);
  return response.json();
}

/** Calls `probe` until it returns something other than undefined/false, or fails after `ms`. */
export async function waitFor(what, probe, ms = DEMO_WAIT_MS, everyMs = 500) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined && value !== false && value !== null) return value;
      last = value;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`waited ${ms / 1000} s for ${what}; last seen: ${last instanceof Error ? last.stack : JSON.stringify(last)}`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Debian's Chromium, headless. Without the background-networking flags it keeps trying to
 * reach Google's hosts, which this machine's closed network refuses.
 */
export async function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
}

/** A page 1280 px wide that collects the dashboard's script errors and failed requests in `page.errors`. */
export async function newPage(browser) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(e));
  // A failed request names its address (the browser's own /favicon.ico, which the dashboard
  // does not serve, is not the page's).
  page.on('response', (r) => {
    if (r.status() >= 400 && new URL(r.url()).pathname !== '/favicon.ico') page.errors.push(new Error(`${r.request().method()} ${r.url()}: ${r.status()}`));
  });
  page.setDefaultTimeout(30_000);
  return page;
}

/** Saves a screenshot of the whole page as SCREENSHOT_DIR/NAME.png and returns its path. */
export async function screenshot(page, name) {
  mkdirSync(demo.screenshots, { recursive: true });
  const file = path.join(demo.screenshots, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`screenshot: ${file}`);
  return file;
}

/** A number as the dashboard shows it ("1,234", "—" for none) back to a number (or null). */
export function shownNumber(text) {
  const t = String(text).trim();
  if (t === '—' || t === '') return null;
  const n = Number(t.replaceAll(',', ''));
  if (Number.isNaN(n)) throw new Error(`not a number on the page: ${JSON.stringify(text)}`);
  return n;
}

/** The text of the element with this data-testid. */
export async function testIdText(page, testid) {
  return (await page.getByTestId(testid).innerText()).trim();
}

/** Runs one of the toolkit's binaries (feed-publisher, feed-subscriber); returns stdout. Its
 * log (stderr) is shown only when it fails. */
export function runBinary(name, args, timeoutMs = 600_000) {
  try {
    return execFileSync(path.join(demo.binDir, name), args, {
      encoding: 'utf8', timeout: timeoutMs, stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 << 20, env: { ...process.env, NO_COLOR: '1' },
    });
  } catch (e) {
    throw new Error(`${name} ${args.join(' ')} failed (${e.status ?? e.signal}):\n${e.stdout || ''}${e.stderr || ''}`);
  }
}
