// The PouchDB peer of subscriber-bench: the closest "feed, fetch, apply" replicator to
// feedsync. A source PouchDB is served over HTTP by express-pouchdb; a second Node process
// replicates it into its own, empty, on-disk PouchDB (the `_changes` feed, `_revs_diff`,
// `_bulk_get`, local writes, checkpoints). subscriber-bench starts these commands, puts its
// counting proxy between the two processes, and reads one JSON line from each.
//
//   node pouchdb-peer.js load <dir>                    NDJSON docs on stdin -> PouchDB at <dir>
//   node pouchdb-peer.js serve <dir>                   serves the databases under <dir> on 127.0.0.1
//   node pouchdb-peer.js replicate <url> <dir> <batch_size> <batches_limit>
//
// Every command prints one JSON object on its last line of standard output; errors go to
// standard error with a non-zero exit. Loopback only: `serve` listens on 127.0.0.1, and
// `replicate` refuses a source that is not on this machine.

'use strict';

const path = require('path');
const PouchDB = require('pouchdb');

// Docs written per bulkDocs call while loading the source.
const LOAD_BULK_DOCS_MAX = 1000;
// Longest NDJSON line accepted while loading (a resource is about 1 KB).
const LOAD_LINE_BYTES_MAX = 1 << 20;

function print(object) {
  process.stdout.write(JSON.stringify(object) + '\n');
}

function fail(message) {
  process.stderr.write(`pouchdb-peer: ${message}\n`);
  process.exit(1);
}

function seconds(since) {
  return Number(process.hrtime.bigint() - since) / 1e9;
}

async function writeAll(db, docs) {
  const results = await db.bulkDocs(docs);
  for (const r of results) {
    if (r.error) throw new Error(`bulkDocs refused ${r.id}: ${r.error} ${r.reason || ''}`);
  }
}

// Reads stdin with backpressure (one chunk at a time, awaited), so memory stays bounded
// whatever the number of docs.
async function load(dir) {
  const db = new PouchDB(dir);
  const start = process.hrtime.bigint();
  let pending = '';
  let batch = [];
  let docs = 0;
  let deleted = 0;
  for await (const chunk of process.stdin) {
    pending += chunk.toString('utf8');
    let newline;
    while ((newline = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, newline);
      pending = pending.slice(newline + 1);
      if (line.length === 0) continue;
      const doc = JSON.parse(line);
      if (doc._deleted) deleted += 1;
      batch.push(doc);
      if (batch.length >= LOAD_BULK_DOCS_MAX) {
        await writeAll(db, batch);
        docs += batch.length;
        batch = [];
      }
    }
    if (pending.length > LOAD_LINE_BYTES_MAX) fail(`an input line is over ${LOAD_LINE_BYTES_MAX} bytes`);
  }
  if (pending.trim().length > 0) fail('the input does not end with a newline');
  if (batch.length > 0) {
    await writeAll(db, batch);
    docs += batch.length;
  }
  const info = await db.info();
  await db.close();
  print({ docs, deleted, seconds: seconds(start), doc_count: info.doc_count, update_seq: info.update_seq });
}

async function serve(dir) {
  const express = require('express');
  const expressPouchDB = require('express-pouchdb');
  const ServerPouchDB = PouchDB.defaults({ prefix: path.resolve(dir) + path.sep });
  const app = express();
  // The minimum CouchDB API PouchDB replication needs, with its configuration kept in memory
  // so nothing is written beside the databases.
  app.use(expressPouchDB(ServerPouchDB, {
    mode: 'minimumForPouchDB',
    inMemoryConfig: true,
    logPath: path.join(dir, 'express-pouchdb.log'),
  }));
  const server = app.listen(0, '127.0.0.1', () => print({ port: server.address().port }));
  const stop = () => server.close(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

async function replicate(sourceUrl, dir, batchSize, batchesLimit) {
  const host = new URL(sourceUrl).hostname;
  if (!['127.0.0.1', 'localhost', '[::1]'].includes(host)) fail(`only loopback sources, not ${host}`);
  const target = new PouchDB(dir);
  const cpuBefore = process.cpuUsage();
  const start = process.hrtime.bigint();
  const result = await PouchDB.replicate(sourceUrl, target, {
    batch_size: batchSize,
    batches_limit: batchesLimit,
  });
  const elapsed = seconds(start);
  const cpu = process.cpuUsage(cpuBefore);
  const info = await target.info();
  await target.close();
  print({
    ok: result.ok,
    status: result.status,
    seconds: elapsed,
    cpu_seconds: (cpu.user + cpu.system) / 1e6,
    docs_read: result.docs_read,
    docs_written: result.docs_written,
    doc_write_failures: result.doc_write_failures,
    errors: (result.errors || []).slice(0, 5).map(String),
    doc_count: info.doc_count,
    update_seq: info.update_seq,
  });
}

async function main() {
  const [command, ...args] = process.argv.slice(2);
  switch (command) {
    case 'load':
      if (args.length !== 1) fail('usage: load <dir>');
      return load(args[0]);
    case 'serve':
      if (args.length !== 1) fail('usage: serve <dir>');
      return serve(args[0]);
    case 'replicate': {
      if (args.length !== 4) fail('usage: replicate <source url> <dir> <batch_size> <batches_limit>');
      const batchSize = Number(args[2]);
      const batchesLimit = Number(args[3]);
      if (!(batchSize >= 1 && batchesLimit >= 1)) fail('batch_size and batches_limit must be positive');
      return replicate(args[0], args[1], batchSize, batchesLimit);
    }
    default:
      fail('usage: pouchdb-peer.js load|serve|replicate ...');
  }
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));
