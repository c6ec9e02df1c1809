// runfleet's dashboard: one ES module, no dependencies. It reads the HTTP API with the key the
// person entered (kept in this tab's sessionStorage, sent in the Authorization header, never in
// a URL) and updates live from the event stream, read with fetch because EventSource cannot
// send that header. Every text from the API goes into the page as text, never as HTML.

const KEY_SLOT = 'runfleet.key';
const REFRESH_MS = 5000;
const STATUSES = ['queued', 'running', 'crashed', 'stopped', 'failed'];

const state = {
  key: sessionStorage.getItem(KEY_SLOT),
  me: null,
  events: [], // newest last, at most 50
  lastEventId: null,
  stream: null, // AbortController of the event stream
  timer: null,
  pending: null,
};

// ---- small DOM helpers ------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    // The page's policy forbids style attributes; a style given here goes through the CSSOM.
    else if (k === 'style') Object.assign(el.style, v);
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const $ = (id) => document.getElementById(id);

// Money is an exact decimal string; it is shown as written, with thousands grouped and its
// currency, and coloured by its sign.
function money(value, currency, signed = true) {
  if (value === null || value === undefined || value === '') return h('span', {}, '—');
  const s = String(value);
  const neg = s.startsWith('-');
  const [int, frac] = s.replace(/^[-+]/, '').split('.');
  const grouped = int.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  const text = `${neg ? '−' : ''}${grouped}${frac ? '.' + frac : ''}${currency ? ' ' + currency : ''}`;
  const zero = /^[-+]?0*(\.0*)?$/.test(s);
  return h('span', { class: signed && !zero ? (neg ? 'neg' : 'pos') : null }, text);
}

function when(ms) {
  if (!ms) return '—';
  const d = new Date(Number(ms));
  return d.toLocaleString(undefined, { hour12: false });
}

function ago(ms) {
  if (!ms) return '—';
  const s = Math.max(0, Math.round((Date.now() - Number(ms)) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return `${Math.floor(s / 3600)} h ago`;
}

// A node id is long; its first 8 hex digits tell nodes apart (the full id is in the tooltip).
const short = (id) => (id ? id.slice(0, 13) + '…' : '—');

const badge = (status) => h('span', { class: `badge ${status}` }, status);

// ---- the API ----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code;
    this.field = e.field;
  }
}

async function api(path, { method = 'GET', body } = {}) {
  const headers = { authorization: `Bearer ${state.key}` };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
  });
  let json = null;
  try { json = await res.json(); } catch { /* not JSON */ }
  if (res.status === 401) { signOut('Your key was refused; sign in again.'); }
  if (!res.ok && res.status !== 202) throw new ApiError(res.status, json);
  return { status: res.status, body: json };
}

// ---- sign in / out ----------------------------------------------------------------------------

async function signIn(key) {
  state.key = key;
  const { body } = await api('/v1/me');
  state.me = body;
  sessionStorage.setItem(KEY_SLOT, key);
  $('login').hidden = true;
  $('view').hidden = false;
  $('nav').hidden = false;
  $('signout').hidden = false;
  for (const a of document.querySelectorAll('#nav [data-admin]')) a.hidden = !isAdmin();
  $('who').textContent = isAdmin() ? 'admin' : `user ${body.userId}`;
  // The stream starts with the last minute's events, so the latest events are not empty.
  state.lastEventId = `${Date.now() - 60_000}-0`;
  follow();
  if (!location.hash || (!isAdmin() && location.hash === '#/overview')) {
    location.hash = isAdmin() ? '#/overview' : '#/runners';
  }
  route();
}

function signOut(message = '') {
  sessionStorage.removeItem(KEY_SLOT);
  if (state.stream) state.stream.abort();
  clearInterval(state.timer);
  Object.assign(state, { key: null, me: null, events: [], lastEventId: null, stream: null });
  $('view').replaceChildren();
  $('view').hidden = true;
  $('nav').hidden = true;
  $('signout').hidden = true;
  $('who').textContent = '';
  $('live').textContent = '';
  $('login').hidden = false;
  $('login-error').textContent = message;
  $('key').value = '';
  $('key').focus();
}

const isAdmin = () => state.me && state.me.role === 'admin';

// ---- the event stream -------------------------------------------------------------------------

async function follow() {
  if (state.stream) state.stream.abort();
  const control = new AbortController();
  state.stream = control;
  let wait = 500;
  while (!control.signal.aborted && state.key) {
    try {
      const headers = { authorization: `Bearer ${state.key}`, accept: 'text/event-stream' };
      if (state.lastEventId) headers['last-event-id'] = state.lastEventId;
      const res = await fetch('/v1/events', { headers, signal: control.signal, cache: 'no-store' });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      setLive(true);
      wait = 500;
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value.replace(/\r\n?/g, '\n');
        let end;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          onBlock(buf.slice(0, end));
          buf = buf.slice(end + 2);
        }
      }
    } catch (e) {
      if (control.signal.aborted) return;
    }
    setLive(false);
    await new Promise((r) => setTimeout(r, wait));
    wait = Math.min(wait * 2, 10000);
  }
}

function setLive(up) {
  const el = $('live');
  el.textContent = up ? '● live' : '○ reconnecting…';
  el.classList.toggle('down', !up);
}

function onBlock(block) {
  let id = null, kind = 'message', data = '';
  for (const line of block.split('\n')) {
    if (line.startsWith(':')) continue;
    const i = line.indexOf(':');
    const field = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
    if (field === 'id') id = value;
    else if (field === 'event') kind = value;
    else if (field === 'data') data += (data ? '\n' : '') + value;
  }
  if (id) state.lastEventId = id;
  if (!data) return;
  let event;
  try { event = JSON.parse(data); } catch { return; }
  if (kind === 'gap') {
    schedule();
    return;
  }
  state.events.push(event);
  if (state.events.length > 50) state.events.shift();
  if (current.onEvent) current.onEvent(event);
  schedule();
}

// A burst of events refreshes the view once.
function schedule() {
  clearTimeout(state.pending);
  state.pending = setTimeout(() => current.refresh && current.refresh(), 250);
}

// ---- views ------------------------------------------------------------------------------------

let current = {};

function route() {
  if (!state.me) return;
  const hash = location.hash || '#/runners';
  for (const a of document.querySelectorAll('#nav a')) {
    if (hash.startsWith(a.getAttribute('href'))) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const [, name, arg] = hash.split('/');
  const views = { overview, runners, runner, entitlements };
  const view = views[name] && (isAdmin() || !['overview', 'entitlements'].includes(name))
    ? views[name] : runners;
  clearInterval(state.timer);
  current = view(arg ? decodeURIComponent(arg) : undefined);
  state.timer = setInterval(() => current.refresh && current.refresh(), REFRESH_MS);
  current.refresh();
}

function show(...children) {
  $('view').replaceChildren(...children);
}

function failure(e) {
  return h('p', { class: 'error', role: 'alert' }, e.message || String(e));
}

// Overview (admin): counts, the last hour's load, the nodes, the latest events.
function overview() {
  const cards = h('div', { class: 'cards', 'aria-label': 'Fleet counts' });
  const chart = h('div');
  const nodes = h('div');
  const events = h('ol', { class: 'events', 'aria-label': 'Latest events' });
  show(
    h('h1', {}, 'Fleet overview'),
    cards,
    h('div', { class: 'grid' },
      h('section', { class: 'panel', 'aria-labelledby': 'load-t' },
        h('h2', { id: 'load-t' }, 'Queue depth and runners, last hour'), chart),
      h('section', { class: 'panel', 'aria-labelledby': 'nodes-t' },
        h('h2', { id: 'nodes-t' }, 'Worker nodes'), nodes)),
    h('section', { class: 'panel', 'aria-labelledby': 'ev-t' },
      h('h2', { id: 'ev-t' }, 'Latest events'), events),
  );
  return {
    async refresh() {
      try {
        const [fleet, list, hist] = await Promise.all([
          api('/v1/users/system/runners'), api('/v1/nodes'), api('/v1/fleet/history'),
        ]);
        const q = fleet.body.queueStats, n = fleet.body.nodes;
        const card = (label, value) => h('div', { class: 'card' },
          h('div', { class: 'n', 'data-count': label }, value), h('div', { class: 'l' }, label));
        cards.replaceChildren(
          card('queued', q.queuedJobs), card('running', q.runningWorkers),
          card('holding a slot', q.totalWorkers), card('restarting', q.restartingJobs),
          card('nodes alive', n.alive), card('capacity in use', `${n.runners} / ${n.capacity}`));
        const samples = hist.body.samples.slice();
        samples.push({ at: Date.now(), queued: q.queuedJobs, running: q.runningWorkers,
          restarting: q.restartingJobs });
        // The last hour, or since the first sample when the fleet is younger.
        const from = Math.max(Date.now() - 3600_000, samples[0].at);
        const pts = (f) => samples.filter((s) => s.at >= from).map((s) => [s.at, s[f]]);
        chart.replaceChildren(lineChart([
          { name: 'queued', color: '#1f5fbf', points: pts('queued') },
          { name: 'running', color: '#11743b', points: pts('running') },
          { name: 'restarting', color: '#9a5b00', points: pts('restarting') },
        ], { from, to: Date.now(), label: 'Queue depth and runners over the last hour' }));
        nodes.replaceChildren(list.body.nodes.length === 0
          ? h('p', { class: 'note' }, 'No worker node is alive.')
          : h('table', {},
            h('caption', {}, `${list.body.nodes.length} live nodes; ${list.body.queuedJobs} jobs queued`),
            h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'node'),
              h('th', { scope: 'col' }, 'capacity in use'), h('th', { scope: 'col', class: 'num' }, 'runners'),
              h('th', { scope: 'col' }, 'last heartbeat'))),
            h('tbody', {}, list.body.nodes.map((node) => {
              const pct = node.capacity ? Math.round((100 * node.runners) / node.capacity) : 0;
              return h('tr', { 'data-node': node.nodeId },
                h('td', { class: 'mono', title: node.nodeId }, short(node.nodeId)),
                h('td', {}, h('div', { class: 'bar', role: 'meter', 'aria-valuemin': 0,
                  'aria-valuemax': node.capacity, 'aria-valuenow': node.runners,
                  'aria-label': `${node.nodeId}: ${node.runners} of ${node.capacity}` },
                h('span', { style: { width: `${pct}%` } }))),
                h('td', { class: 'num' }, `${node.runners} / ${node.capacity}`),
                h('td', {}, ago(node.lastHeartbeatAt)));
            }))));
        events.replaceChildren(...eventItems(state.events.slice().reverse()));
      } catch (e) {
        cards.replaceChildren(failure(e));
      }
    },
  };
}

function eventItems(events) {
  if (events.length === 0) return [h('li', { class: 'note' }, 'No event in the last minute.')];
  return events.map((e) => h('li', {},
    h('time', { datetime: new Date(e.at).toISOString() }, when(e.at)), ' ',
    badge(e.type), ' ', h('a', { href: `#/runner/${encodeURIComponent(e.job)}`, class: 'mono' }, e.job),
    ` user ${e.user}`, e.node ? ` on ${e.node}` : '', e.reason ? ` — ${e.reason}` : ''));
}

// Runners: filters, the list, live.
function runners() {
  const filters = { user: '', status: '', strategy: '' };
  const table = h('div');
  const form = h('form', { class: 'inline', role: 'search', onsubmit: (e) => { e.preventDefault(); view.refresh(); } },
    isAdmin() ? h('div', {}, h('label', { for: 'f-user' }, 'User'),
      h('input', { id: 'f-user', placeholder: 'all (holding a slot)', oninput: (e) => { filters.user = e.target.value.trim(); } }))
      : null,
    h('div', {}, h('label', { for: 'f-status' }, 'Status'),
      h('select', { id: 'f-status', onchange: (e) => { filters.status = e.target.value; view.refresh(); } },
        h('option', { value: '' }, 'any'), STATUSES.map((s) => h('option', { value: s }, s)))),
    h('div', {}, h('label', { for: 'f-strategy' }, 'Strategy id'),
      h('input', { id: 'f-strategy', oninput: (e) => { filters.strategy = e.target.value.trim(); } })),
    h('button', { type: 'submit' }, 'Filter'));
  show(h('h1', {}, 'Runners'), h('section', { class: 'panel' }, form, table));
  const view = {
    async refresh() {
      const q = new URLSearchParams();
      if (filters.user) q.set('userId', filters.user);
      if (filters.status) q.set('status', filters.status);
      if (filters.strategy) q.set('strategyId', filters.strategy);
      try {
        const { body } = await api(`/v1/runners?${q}`);
        table.replaceChildren(runnerTable(body.workers, body.truncated));
      } catch (e) {
        table.replaceChildren(failure(e));
      }
    },
  };
  return view;
}

function runnerTable(workers, truncated) {
  if (workers.length === 0) return h('p', { class: 'note' }, 'No runner matches.');
  return h('table', { id: 'runners' },
    h('caption', {}, `${workers.length} runners${truncated ? ' (more match: narrow the filters)' : ''}`),
    h('thead', {}, h('tr', {}, ['runner', 'user', 'strategy', 'type', 'status', 'node', 'trades']
      .map((c) => h('th', { scope: 'col' }, c)), h('th', { scope: 'col', class: 'num' }, 'PnL'),
    h('th', { scope: 'col' }, 'started'))),
    h('tbody', {}, workers.map(({ worker: w, stats }) => h('tr', { 'data-job': w.jobId },
      h('td', {}, h('a', { class: 'mono', href: `#/runner/${encodeURIComponent(w.jobId)}` }, w.jobId)),
      h('td', {}, w.userId), h('td', {}, w.strategyId), h('td', {}, w.config.type),
      h('td', { 'data-status': w.status }, badge(w.status)), h('td', { class: 'mono', title: w.nodeId || '' }, short(w.nodeId)),
      h('td', { class: 'num' }, stats.totalTrades),
      h('td', { class: 'num' }, money(stats.totalPnL, stats.currency)),
      h('td', {}, when(w.startedAt))))));
}

// One runner: its record, positions, stats, PnL over time, history, and stop.
function runner(job) {
  const path = `/v1/runners/${encodeURIComponent(job)}`;
  const head = h('div');
  const body = h('div', { class: 'grid' });
  const chart = h('div');
  const history = h('ol', { class: 'events', 'aria-label': 'Runner history' });
  const result = h('div', { role: 'status', 'aria-live': 'polite' });
  const stopForm = h('form', { class: 'inline', onsubmit: stop },
    h('fieldset', {}, h('legend', {}, 'Stop this runner'),
      h('label', {}, h('input', { type: 'radio', name: 'mode', value: 'flatten', checked: true }),
        ' close every position (flatten)'), ' ',
      h('label', {}, h('input', { type: 'radio', name: 'mode', value: 'hold' }), ' keep positions open (hold)'), ' ',
      h('button', { type: 'submit', class: 'danger', id: 'stop' }, 'Stop')));
  show(h('p', {}, h('a', { href: '#/runners' }, '← Runners')), head,
    h('section', { class: 'panel', 'aria-labelledby': 'pnl-t' },
      h('h2', { id: 'pnl-t' }, 'PnL over time'), chart),
    body,
    h('section', { class: 'panel', 'aria-labelledby': 'hist-t' }, h('h2', { id: 'hist-t' }, 'History'), history),
    h('section', { class: 'panel' }, stopForm, result));

  async function stop(e) {
    e.preventDefault();
    const mode = new FormData(stopForm).get('mode');
    const button = $('stop');
    button.disabled = true;
    result.replaceChildren(h('p', {}, mode === 'flatten' ? 'Stopping and closing positions…' : 'Stopping…'));
    try {
      const { status, body } = await api(`${path}/stop`, { method: 'POST', body: { mode } });
      result.replaceChildren(h('p', { id: 'stop-result' }, status === 202
        ? 'The stop was sent; the node has not confirmed yet.'
        : `Stopped: ${body.flattenedPositions ?? 0} positions closed.`));
    } catch (err) {
      result.replaceChildren(failure(err));
    }
    button.disabled = false;
    view.refresh();
  }

  const view = {
    async refresh() {
      try {
        const [{ body: r }, { body: ev }, { body: pnl }] = await Promise.all([
          api(path), api(`${path}/events`), api(`${path}/pnl`)]);
        const w = r.worker, s = r.stats;
        // Closed trades over time from the fleet, then now with the open positions' PnL.
        const unrealized = r.positions.reduce((a, p) => a + Number(p.unrealizedPnL || 0), 0);
        const series = pnl.points.map((p) => [p.at, Number(p.totalPnL)]);
        if (w.status === 'running') series.push([Date.now(), Number(s.totalPnL) + unrealized]);
        head.replaceChildren(h('h1', {}, `${w.config.name} `, badge(w.status)),
          h('dl', { class: 'kv' },
            h('dt', {}, 'runner'), h('dd', { class: 'mono' }, w.jobId),
            h('dt', {}, 'user'), h('dd', {}, w.userId),
            h('dt', {}, 'strategy'), h('dd', {}, `${w.strategyId} (${w.config.type})`),
            h('dt', {}, 'node'), h('dd', { class: 'mono' }, w.nodeId || '—'),
            h('dt', {}, 'restarts'), h('dd', {}, w.restarts),
            h('dt', {}, 'started'), h('dd', {}, when(w.startedAt)),
            h('dt', {}, 'last heartbeat'), h('dd', {}, ago(w.lastHeartbeatAt)),
            w.error ? [h('dt', {}, 'error'), h('dd', { class: 'error' }, w.error)] : null));
        body.replaceChildren(
          h('section', { class: 'panel', 'aria-labelledby': 'pos-t' }, h('h2', { id: 'pos-t' }, 'Positions'),
            r.positions.length === 0 ? h('p', { class: 'note', id: 'no-positions' }, 'No open position.')
              : h('table', { id: 'positions' }, h('thead', {}, h('tr', {}, ['instrument', 'side']
                .map((c) => h('th', { scope: 'col' }, c)), ['amount', 'entry', 'mark', 'unrealized', 'realized']
                .map((c) => h('th', { scope: 'col', class: 'num' }, c)))),
              h('tbody', {}, r.positions.map((p) => h('tr', {},
                h('td', {}, p.instrumentName), h('td', {}, p.side), h('td', { class: 'num' }, p.amount),
                h('td', { class: 'num' }, money(p.entryPrice, '', false)),
                h('td', { class: 'num' }, money(p.markPrice, '', false)),
                h('td', { class: 'num' }, money(p.unrealizedPnL, p.currency)),
                h('td', { class: 'num' }, money(p.realizedPnL, p.currency))))))),
          h('section', { class: 'panel', 'aria-labelledby': 'stats-t' }, h('h2', { id: 'stats-t' }, 'Stats'),
            h('dl', { class: 'kv', id: 'stats' },
              h('dt', {}, 'trades'), h('dd', { 'data-stat': 'totalTrades' }, s.totalTrades),
              h('dt', {}, 'won / lost'), h('dd', {}, `${s.winningTrades} / ${s.losingTrades}`),
              h('dt', {}, 'win rate'), h('dd', {}, `${s.winRate} %`),
              h('dt', {}, 'total PnL'), h('dd', { 'data-stat': 'totalPnL' }, money(s.totalPnL, s.currency)),
              h('dt', {}, 'fees'), h('dd', {}, money(s.fees, s.currency, false)),
              h('dt', {}, 'max drawdown'), h('dd', {}, money(s.maxDrawdown, s.currency, false)),
              h('dt', {}, 'profit factor'), h('dd', {}, s.profitFactor ?? '—'))));
        chart.replaceChildren(series.length === 0
          ? h('p', { class: 'note' }, 'No PnL reported yet: points come with the heartbeats.')
          : lineChart([{ name: `PnL, closed trades net of fees (${pnl.currency}); the last point includes open positions`,
            color: '#1f5fbf', points: series }],
          { from: series[0][0], to: Math.max(series[series.length - 1][0], series[0][0] + 1000), label: 'PnL over time' }));
        history.replaceChildren(...eventItems(ev.events.slice().reverse()));
        stopForm.hidden = ['stopped', 'failed'].includes(w.status);
      } catch (e) {
        head.replaceChildren(failure(e));
      }
    },
    onEvent(e) { if (e.job === job) schedule(); },
  };
  return view;
}

// Entitlements (admin): read and set a user's tier.
function entitlements() {
  const out = h('div', { role: 'status', 'aria-live': 'polite' });
  let user = '';
  const read = async () => {
    if (!user) return;
    try {
      const { body: b } = await api(`/v1/users/${encodeURIComponent(user)}/entitlement`);
      out.replaceChildren(h('dl', { class: 'kv', id: 'entitlement' },
        h('dt', {}, 'user'), h('dd', {}, b.userId), h('dt', {}, 'tier'), h('dd', {}, b.tier),
        h('dt', {}, 'runners'), h('dd', {}, `${b.currentWorkers} of ${b.maxWorkers}`),
        h('dt', {}, 'expires'), h('dd', {}, b.expiresAt ? when(b.expiresAt) : 'never')));
    } catch (e) { out.replaceChildren(failure(e)); }
  };
  const lookup = h('form', { class: 'inline', onsubmit: (e) => { e.preventDefault(); user = $('e-user').value.trim(); read(); } },
    h('div', {}, h('label', { for: 'e-user' }, 'User id'), h('input', { id: 'e-user', required: true })),
    h('button', { type: 'submit' }, 'Look up'));
  const grant = h('form', { class: 'inline', onsubmit: async (e) => {
    e.preventDefault();
    user = $('e-user').value.trim();
    try {
      await api(`/v1/users/${encodeURIComponent(user)}/entitlement`, { method: 'PUT',
        body: { tier: $('e-tier').value, days: Number($('e-days').value) } });
      await read();
    } catch (err) { out.replaceChildren(failure(err)); }
  } },
  h('div', {}, h('label', { for: 'e-tier' }, 'Tier'), h('select', { id: 'e-tier' },
    ['free', 'basic', 'pro', 'enterprise'].map((t) => h('option', { value: t }, t)))),
  h('div', {}, h('label', { for: 'e-days' }, 'Days'), h('input', { id: 'e-days', type: 'number', min: 1, max: 3650, value: 30 })),
  h('button', { type: 'submit' }, 'Set tier'));
  show(h('h1', {}, 'Entitlements'), h('section', { class: 'panel' }, lookup, grant, out));
  return { refresh: read };
}

// ---- a line chart in SVG ----------------------------------------------------------------------

function lineChart(series, { from, to, label }) {
  const W = 640, H = 200, L = 44, B = 22, T = 8, R = 8;
  const ns = 'http://www.w3.org/2000/svg';
  const el = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const values = series.flatMap((s) => s.points.map((p) => p[1]));
  let lo = Math.min(0, ...values), hi = Math.max(0, ...values);
  if (hi === lo) hi = lo + 1;
  const span = Math.max(1, to - from);
  const x = (t) => L + ((t - from) / span) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  const svg = el('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': label });
  svg.append(el('line', { class: 'axis', x1: L, y1: y(lo), x2: W - R, y2: y(lo) }));
  svg.append(el('line', { class: 'axis', x1: L, y1: T, x2: L, y2: H - B }));
  const fmt = (v) => (Math.abs(v) >= 1000 || Number.isInteger(v) ? Math.round(v) : v.toPrecision(3));
  svg.append(el('text', { x: 2, y: T + 10 }, fmt(hi)));
  svg.append(el('text', { x: 2, y: H - B }, fmt(lo)));
  const time = (t) => new Date(t).toLocaleTimeString(undefined, { hour12: false, hour: '2-digit', minute: '2-digit' });
  svg.append(el('text', { x: L, y: H - 6 }, time(from)));
  svg.append(el('text', { x: W - R - 34, y: H - 6 }, time(to)));
  for (const s of series) {
    if (s.points.length === 0) continue;
    const d = s.points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
    svg.append(el('polyline', { points: d, fill: 'none', stroke: s.color, 'stroke-width': 2,
      'vector-effect': 'non-scaling-stroke' }));
  }
  const legend = h('div', { class: 'legend' }, series.map((s) => {
    const last = s.points.length ? s.points[s.points.length - 1][1] : '—';
    const swatch = h('i', { style: { background: s.color } });
    return h('span', {}, swatch, `${s.name}: ${typeof last === 'number' ? fmt(last) : last}`);
  }));
  return h('figure', { class: 'chart' }, svg, legend);
}

// ---- start ------------------------------------------------------------------------------------

document.addEventListener('DOMContentLoaded', () => {
  $('login-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    $('login-error').textContent = '';
    try {
      await signIn($('key').value.trim());
    } catch (err) {
      state.key = null;
      $('login-error').textContent = err.status === 401 ? 'That key was refused.' : err.message;
    }
  });
  $('signout').addEventListener('click', () => signOut());
  window.addEventListener('hashchange', route);
  if (state.key) signIn(state.key).catch(() => signOut('Sign in again.'));
  else $('key').focus();
});
