#!/usr/bin/env node
'use strict';
/*
 * reconnect_storm.js - connect N sockets, drop them all at once, time the recovery.
 *
 *   node bench/reconnect_storm.js --url ws://127.0.0.1:PORT[,ws://...] --rooms 100 --members 50 \
 *     [--jwt-secret S --token bench-{i} --room-ids-file F --join-payload '{"conversation_id":"{room}"}' \
 *      --since-seq --http-url http://127.0.0.1:PORT --before 1 --missed 5] [--server-pid PID,..]
 *
 * Phases (one JSON line on stdout, a summary on stderr):
 *  1. connect: rooms x members sockets connect + auth + join (ack awaited), --connect-concurrency
 *     in flight (the harness loadgen's setup, measured the same way: connects/s).
 *  2. (with --http-url) --before messages per room are posted over HTTP as the room's first
 *     member; every socket must receive them (so each client knows its last seq).
 *  3. drop: every socket is destroyed in one loop (TCP close; the server sees it at once).
 *  4. (with --http-url) --missed messages per room are posted while nobody is connected
 *     (retried with the same client_msg_id on a timeout or error status).
 *  5. reconnect, timed from its start: every client reconnects + auths + joins again, with
 *     `since_seq` = the last seq it saw when --since-seq is given; --reconnect-concurrency in
 *     flight (0 = all at once). A failed or timed-out attempt is retried after a jittered
 *     0.5-1.5 s back-off, like a real client, until --deadline s after the storm began. A client counts as recovered when its
 *     join ack (ok) arrived; with --since-seq the ack's messages must be exactly the ones it
 *     missed (seq last+1 .. the room's last, no gap, no duplicate), else it is counted in
 *     `recovery_errors`.
 *
 * Loopback only: refuses non-127.0.0.1/localhost URLs. Bounded: at most --max-clients sockets
 * and --deadline seconds per phase. No dependencies (node:net, node:http, node:crypto): the
 * WebSocket client is the loadgen's minimal one (all-zero masking key, RFC 6455 5.3).
 */
const net = require('net');
const http = require('http');
const crypto = require('crypto');
const fs = require('fs');
const { performance } = require('perf_hooks');

const now = () => performance.timeOrigin + performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const round = (x, d) => { const m = 10 ** d; return Math.round(x * m) / m; };

// ----------------------------------------------------------------- options
const DEFAULTS = {
  url: 'ws://127.0.0.1:3000', path: '/socket.io/', rooms: 100, members: 50,
  token: 'tok-{i}', jwtSecret: '', roomIdsFile: '', room: 'room-{r}',
  joinEvent: 'join', joinPayload: '{"room":"{room}"}', sinceSeq: false,
  httpUrl: '', messagePath: '/api/v1/conversations/{room}/messages', before: 0, missed: 0,
  connectConcurrency: 200, reconnectConcurrency: 0, attemptTimeout: 30, deadline: 180,
  maxClients: 20000, serverPid: '', watch: '', label: '', out: '', quiet: false,
};

function parseArgs(argv) {
  const o = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    let [k, v] = a.slice(2).split(/=(.*)/s);
    const key = k.replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (v === undefined) {
      const next = argv[i + 1];
      if (next === undefined || next.startsWith('--')) { o[key] = true; continue; }
      v = next; i++;
    }
    o[key] = v;
  }
  return o;
}

function options() {
  const o = { ...DEFAULTS, ...parseArgs(process.argv.slice(2)) };
  for (const k of ['rooms', 'members', 'before', 'missed', 'connectConcurrency', 'reconnectConcurrency',
    'attemptTimeout', 'deadline', 'maxClients']) o[k] = Number(o[k]);
  o.sinceSeq = o.sinceSeq === true || o.sinceSeq === 'true';
  o.quiet = o.quiet === true || o.quiet === 'true';
  o.urls = String(o.url).split(',').map((s) => s.trim()).filter(Boolean);
  for (const u of [...o.urls, ...(o.httpUrl ? [o.httpUrl] : [])]) {
    const h = new URL(u).hostname;
    if (h !== '127.0.0.1' && h !== 'localhost') throw new Error(`loopback only, not ${u}`);
  }
  o.n = o.rooms * o.members;
  if (!(o.n > 0 && o.n <= o.maxClients)) throw new Error(`rooms x members = ${o.n} outside 1..${o.maxClients}`);
  o.roomIds = o.roomIdsFile ? fs.readFileSync(o.roomIdsFile, 'utf8').split(/\r?\n/).map((s) => s.trim()).filter(Boolean) : null;
  o.joinTpl = JSON.parse(o.joinPayload);
  return o;
}

function jwtHS256(claims, secret) { // the loadgen's tokens: sub = the rendered --token, valid a day
  const b64 = (x) => Buffer.from(JSON.stringify(x)).toString('base64url');
  const head = b64({ alg: 'HS256', typ: 'JWT' }) + '.' + b64({ ...claims, exp: Math.floor(Date.now() / 1000) + 86400 });
  return head + '.' + crypto.createHmac('sha256', secret).update(head).digest('base64url');
}
function render(tpl, vars) {
  if (typeof tpl === 'string') {
    const m = /^\{(\w+)\}$/.exec(tpl);
    if (m && m[1] in vars) return vars[m[1]];
    return tpl.replace(/\{(\w+)\}/g, (s, k) => (k in vars ? String(vars[k]) : s));
  }
  if (Array.isArray(tpl)) return tpl.map((x) => render(x, vars));
  if (tpl && typeof tpl === 'object') return Object.fromEntries(Object.entries(tpl).map(([k, v]) => [k, render(v, vars)]));
  return tpl;
}

class Hist { // exact percentiles: at most a few tens of thousands of samples
  constructor() { this.v = []; }
  record(ms) { this.v.push(ms); }
  summary() {
    if (!this.v.length) return { n: 0 };
    const s = Float64Array.from(this.v).sort();
    const p = (q) => round(s[Math.min(s.length - 1, Math.ceil(s.length * q / 100) - 1)], 2);
    return { n: s.length, p50: p(50), p90: p(90), p99: p(99), max: round(s[s.length - 1], 2) };
  }
}

// ----------------------------------------------------------------- /proc
function procSample(pid) {
  try {
    const st = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
    const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return { cpu: (Number(f[11]) + Number(f[12])) / 100, rss: m ? Number(m[1]) : 0, t: now() };
  } catch (e) { return null; }
}
function hostSample() {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1, 9).map(Number);
  const total = f.reduce((x, y) => x + y, 0);
  return { total, busy: total - f[3] - f[4] };
}
class Watch { // server CPU % (100 = one core), RSS, host busy % between two samples
  constructor(o) {
    this.pids = String(o.serverPid).split(',').filter(Boolean).map((p) => Number(/^\d+$/.test(p) ? p : fs.readFileSync(p, 'utf8').trim()));
    this.ncpu = fs.readFileSync('/proc/stat', 'utf8').split('\n').filter((l) => /^cpu\d/.test(l)).length;
  }
  sample() { return { p: this.pids.map(procSample), host: hostSample(), lg: process.cpuUsage(), t: now() }; }
  report(a, b) {
    let cpu = 0; let rss = 0;
    this.pids.forEach((_, i) => {
      if (a.p[i] && b.p[i]) { cpu += 100 * (b.p[i].cpu - a.p[i].cpu) / ((b.p[i].t - a.p[i].t) / 1000); rss += b.p[i].rss; }
    });
    const lg = process.cpuUsage(a.lg);
    return { server_cpu_pct: round(cpu, 1), server_rss_kib: rss || null,
      loadgen_cpu_pct: round(100 * (lg.user + lg.system) / 1e6 / ((b.t - a.t) / 1000), 1),
      host_busy_pct: round(100 * this.ncpu * (b.host.busy - a.host.busy) / Math.max(1, b.host.total - a.host.total), 1) };
  }
}

// ----------------------------------------------------------------- one Socket.IO client over net.Socket
class Client {
  constructor(o, i) {
    this.o = o; this.i = i; this.r = Math.floor(i / o.members);
    this.url = new URL(o.urls[i % o.urls.length]);
    const sub = render(o.token, { i, r: this.r });
    this.token = o.jwtSecret ? jwtHS256({ sub: String(sub), name: `Bench ${i}` }, o.jwtSecret) : sub;
    this.room = o.roomIds ? o.roomIds[this.r % o.roomIds.length] : render(o.room, { i, r: this.r });
    this.lastSeq = 0; this.sock = null; this.acks = new Map(); this.ackSeq = 0;
  }

  // connect + auth + join (with since_seq if asked); resolves with the join ack object
  attempt(sinceSeq) {
    return new Promise((resolve, reject) => {
      let settled = false; let upgraded = false; let buf = null; let frag = null;
      const done = (err, val) => {
        if (settled) return; settled = true; clearTimeout(timer);
        if (err) { this.close(); reject(err); } else resolve(val);
      };
      const timer = setTimeout(() => done(new Error('attempt timeout')), this.o.attemptTimeout * 1000);
      const sock = net.connect({ host: this.url.hostname, port: Number(this.url.port) || 80 });
      this.sock = sock; this.acks = new Map();
      sock.setNoDelay(true);
      sock.on('error', (e) => done(e));
      sock.on('close', () => done(new Error('closed')));
      sock.on('connect', () => sock.write(`GET ${this.o.path}?EIO=4&transport=websocket HTTP/1.1\r\nHost: ${this.url.host}\r\n` +
        `Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${crypto.randomBytes(16).toString('base64')}\r\n` +
        'Sec-WebSocket-Version: 13\r\n\r\n'));
      const onText = (s) => {
        const c0 = s[0];
        if (c0 === '2') { this.send('3'); return; }
        if (c0 === '0') { this.send(`40${JSON.stringify({ token: this.token })}`); return; }
        if (c0 !== '4') return;
        const c1 = s[1];
        if (c1 === '0') { // connected: join
          const payload = render(this.o.joinTpl, { room: this.room, i: this.i, r: this.r });
          if (sinceSeq !== null) payload.since_seq = sinceSeq;
          this.emit(this.o.joinEvent, payload, (ack) => {
            if (ack && ack.ok === false) done(new Error(`join refused: ${JSON.stringify(ack.error || ack).slice(0, 120)}`));
            else done(null, ack || {});
          });
        } else if (c1 === '4') done(new Error(`connect_error ${s.slice(2, 120)}`));
        else if (c1 === '3') this.onAck(s);
        else if (c1 === '2') this.onEvent(s);
      };
      sock.on('data', (chunk) => {
        let b = buf ? Buffer.concat([buf, chunk]) : chunk; buf = null;
        if (!upgraded) {
          const e = b.indexOf('\r\n\r\n');
          if (e < 0) { buf = b; return; }
          const head = b.toString('latin1', 0, e);
          if (!/^HTTP\/1\.1 101/.test(head)) { done(new Error(`upgrade failed: ${head.split('\r\n')[0]}`)); return; }
          upgraded = true; b = b.subarray(e + 4);
        }
        let off = 0; const n = b.length;
        while (n - off >= 2) {
          const b0 = b[off]; let len = b[off + 1] & 127; let h = 2;
          if (len === 126) { if (n - off < 4) break; len = b.readUInt16BE(off + 2); h = 4; } else if (len === 127) { if (n - off < 10) break; len = Number(b.readBigUInt64BE(off + 2)); h = 10; }
          if (n - off < h + len) break;
          const op = b0 & 15; const fin = b0 & 128; const st = off + h; off = st + len;
          if (op === 1 || op === 0) {
            let s = b.toString('utf8', st, off);
            if (!fin) { frag = (frag || '') + s; continue; }
            if (frag !== null) { s = frag + s; frag = null; }
            onText(s);
          } else if (op === 8) sock.end();
        }
        if (off < n) buf = b.subarray(off);
      });
    });
  }

  send(s) {
    const p = Buffer.from(s); const len = p.length;
    const h = len < 126 ? 6 : len < 65536 ? 8 : 14;
    const f = Buffer.allocUnsafe(h + len);
    f[0] = 129;
    if (len < 126) f[1] = 128 | len; else if (len < 65536) { f[1] = 254; f.writeUInt16BE(len, 2); } else { f[1] = 255; f.writeBigUInt64BE(BigInt(len), 2); }
    f.writeUInt32BE(0, h - 4);
    p.copy(f, h);
    this.sock.write(f);
  }
  emit(event, data, cb) { const id = ++this.ackSeq; this.acks.set(id, cb); this.send(`42${id}${JSON.stringify([event, data])}`); }
  onAck(s) {
    const m = /^43(\d+)/.exec(s); if (!m) return;
    const cb = this.acks.get(Number(m[1])); if (!cb) return;
    this.acks.delete(Number(m[1]));
    let v = null; try { v = JSON.parse(s.slice(m[0].length))[0]; } catch (e) { /* not JSON: treat as ok */ }
    cb(v);
  }
  onEvent(s) { // track the highest message seq seen (Backstage's `message` events carry "seq")
    if (!s.startsWith('42["message",')) return;
    const m = /"seq":(\d+)/.exec(s);
    if (m) this.lastSeq = Math.max(this.lastSeq, Number(m[1]));
  }
  close() { if (this.sock) { this.sock.destroy(); this.sock = null; } }
}

// ----------------------------------------------------------------- phases
async function pool(items, concurrency, fn) {
  let next = 0;
  const worker = async () => { while (next < items.length) { const x = items[next++]; await fn(x); } };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency || items.length, items.length)) }, worker));
}

function seqsOf(ack) { return Array.isArray(ack && ack.messages) ? ack.messages.map((m) => Number(m.seq)) : []; }

async function connectAll(o, clients) {
  const h = new Hist(); let errors = 0; const samples = [];
  const t0 = now();
  await pool(clients, o.connectConcurrency, async (c) => {
    const ts = now();
    try {
      const ack = await c.attempt(null);
      for (const s of seqsOf(ack)) c.lastSeq = Math.max(c.lastSeq, s);
      h.record(now() - ts); c.ok = true;
    } catch (e) { errors++; if (samples.length < 3) samples.push(String(e.message || e)); }
  });
  const secs = (now() - t0) / 1000;
  const ok = clients.length - errors;
  return { sockets: ok, errors, error_samples: samples, seconds: round(secs, 3), connects_per_s: round(ok / secs, 1), connect_ms: h.summary() };
}

function postOnce(o, c, tag) { // POST one message as client c (the room's first member); resolves with its seq
  const u = new URL(o.httpUrl);
  const body = JSON.stringify({ body: `storm ${tag}`, client_msg_id: `storm-${tag}` });
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, method: 'POST', path: render(o.messagePath, { room: c.room }),
      headers: { Authorization: `Bearer ${c.token}`, 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) } }, (res) => {
      let data = '';
      res.on('data', (d) => { data += d; });
      res.on('end', () => {
        if (res.statusCode !== 201) { reject(new Error(`POST ${res.statusCode} ${data.slice(0, 160)}`)); return; }
        resolve(Number(JSON.parse(data).message.seq));
      });
    });
    req.on('error', reject);
    req.setTimeout(60000, () => req.destroy(new Error('POST timeout')));
    req.end(body);
  });
}

// A server busy with a disconnect storm may time out or answer 429/503: retry with the same
// client_msg_id (idempotent: a POST that timed out but committed answers with the stored message).
async function postMessage(o, c, tag, errors) {
  for (let attempt = 0; ; attempt++) {
    try { return await postOnce(o, c, tag); } catch (e) {
      errors.push(String(e.message || e));
      if (attempt >= 4) throw e;
      await sleep(500 * 2 ** attempt);
    }
  }
}

async function postRound(o, clients, k, label, roomLast) { // k messages per room, one room's posts in order
  const firsts = []; for (let r = 0; r < o.rooms; r++) firsts.push(clients[r * o.members]);
  const t0 = now(); const errors = []; let failed = 0;
  await pool(firsts, 20, async (c) => {
    for (let j = 0; j < k; j++) {
      try {
        roomLast[c.r] = Math.max(roomLast[c.r] || 0, await postMessage(o, c, `${label}-${c.r}-${j}-${crypto.randomBytes(4).toString('hex')}`, errors));
      } catch (e) { failed++; }
    }
  });
  return { seconds: round((now() - t0) / 1000, 3), retried: errors.length, failed, error_samples: errors.slice(0, 3) };
}

async function main() {
  const o = options();
  const w = new Watch(o);
  const clients = Array.from({ length: o.n }, (_, i) => new Client(o, i));
  const log = (s) => { if (!o.quiet) process.stderr.write(`${s}\n`); };
  const rss0 = w.pids.reduce((s, p) => s + ((procSample(p) || {}).rss || 0), 0);
  const wc0 = w.sample();
  const setup = await connectAll(o, clients);
  const wc1 = w.sample();
  Object.assign(setup, w.report(wc0, wc1));
  log(`connect: ${setup.sockets}/${o.n} in ${setup.seconds}s = ${setup.connects_per_s}/s, errors ${setup.errors} ${setup.error_samples.join('; ')}`);
  const roomLast = {};
  const res = { ts: new Date().toISOString(), label: o.label, scenario: 'reconnect', urls: o.urls, rooms: o.rooms, members: o.members,
    since_seq: o.sinceSeq, before: o.before, missed: o.missed, reconnect_concurrency: o.reconnectConcurrency, setup,
    server_rss_kib_before: rss0 || null };
  if (o.httpUrl && o.before > 0) { // messages every socket sees live, so since_seq is a real position
    res.before_posts = await postRound(o, clients, o.before, 'b', roomLast);
    const end = now() + o.deadline * 1000;
    const behind = () => clients.filter((c) => c.ok && c.lastSeq < (roomLast[c.r] || 0)).length;
    while (behind() > 0 && now() < end) await sleep(50);
    res.before_behind = behind();
    log(`before: ${o.before}/room posted ${JSON.stringify(res.before_posts)}; sockets behind: ${res.before_behind}`);
  }
  await sleep(500);
  const live = clients.filter((c) => c.ok);
  // the drop: every socket closed in one synchronous loop; then the messages they miss
  const tDrop = now();
  for (const c of live) c.close();
  if (o.httpUrl && o.missed > 0) res.missed_posts = await postRound(o, clients, o.missed, 'm', roomLast);
  res.outage_seconds = round((now() - tDrop) / 1000, 3);
  // the storm: everyone back at once; recovery times count from here
  const wd0 = w.sample();
  const tStorm = now();
  const rec = new Hist(); let attempts = 0; let failedAttempts = 0; let recoveryErrors = 0; let recoveredMessages = 0;
  let expectedMessages = 0; // what the recovered sockets missed
  const errSamples = []; let recovered = 0;
  const deadline = tStorm + o.deadline * 1000;
  const limit = o.reconnectConcurrency > 0 ? o.reconnectConcurrency : Infinity;
  let inFlight = 0; const waiters = [];
  const acquire = async () => { while (inFlight >= limit) await new Promise((r) => waiters.push(r)); inFlight++; };
  const release = () => { inFlight--; const r = waiters.shift(); if (r) r(); };
  await Promise.all(live.map(async (c) => {
    while (now() < deadline) {
      await acquire();
      attempts++;
      let ack = null;
      try { ack = await c.attempt(o.sinceSeq ? c.lastSeq : null); } catch (e) {
        failedAttempts++; if (errSamples.length < 3) errSamples.push(String(e.message || e));
      } finally { release(); }
      if (ack) {
        rec.record(now() - tStorm); recovered++;
        if (o.sinceSeq) {
          const seqs = seqsOf(ack); const want = (roomLast[c.r] || 0) - c.lastSeq;
          const ok = seqs.length === want && seqs.every((s, j) => s === c.lastSeq + 1 + j);
          if (!ok) recoveryErrors++;
          expectedMessages += want;
          recoveredMessages += seqs.length;
          for (const s of seqs) c.lastSeq = Math.max(c.lastSeq, s);
        }
        return;
      }
      await sleep(500 + Math.random() * 1000);
    }
  }));
  const tAll = now();
  const wd1 = w.sample();
  Object.assign(res, {
    sockets: live.length, recovered, not_recovered: live.length - recovered,
    recover_seconds: round((tAll - tStorm) / 1000, 3),
    recovered_per_s: round(recovered / ((tAll - tStorm) / 1000), 1),
    recover_ms: rec.summary(), attempts, failed_attempts: failedAttempts, error_samples: errSamples,
    recovered_messages: recoveredMessages, expected_messages: o.sinceSeq ? expectedMessages : null,
    recovery_errors: o.sinceSeq ? recoveryErrors : null,
    ...w.report(wd0, wd1),
  });
  for (const c of clients) c.close();
  const line = JSON.stringify(res);
  process.stdout.write(line + '\n');
  if (o.out) fs.appendFileSync(o.out, line + '\n');
  log(`reconnect: ${recovered}/${live.length} recovered in ${res.recover_seconds}s (${res.recovered_per_s}/s), per client p50 ${res.recover_ms.p50} p99 ${res.recover_ms.p99} ms; ` +
    `attempts ${attempts} (${failedAttempts} failed: ${errSamples.join('; ')}); messages recovered ${recoveredMessages}, errors ${res.recovery_errors}; ` +
    `server ${res.server_cpu_pct}% driver ${res.loadgen_cpu_pct}% host ${res.host_busy_pct}%`);
  setTimeout(() => process.exit(0), 100);
}

main().catch((e) => { process.stderr.write(`reconnect_storm error: ${e.stack || e}\n`); process.exit(1); });
