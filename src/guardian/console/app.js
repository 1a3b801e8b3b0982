// The web console of keyhold-guardian: plain modern JS, no framework, on
// the REST API of docs/GUARDIAN-API.md with the session cookie (HttpOnly:
// this code never sees it) and the CSRF token from the login answer, kept
// in memory only. Never stores or shows a password, a key component or a
// token; Remote Manage's secrets go sealed to the HSM through ./remote.js.

const POLL_MS = 3000;      // the device tree and the event log
const METRICS_MS = 5000;   // the plots
const HOUR_MS = 3600 * 1000;
const BUCKET_S = 10;       // res=10s

const state = {
  csrf: null,              // from the login answer; never written anywhere
  session: null,           // {role, logins, needed, authorized}
  groups: [],
  devices: [],
  treeSig: '',
  collapsed: new Set(),
  timers: {},
  plot: null,              // {kind: 'device'|'group', id}
  charts: null,
  events: { skip: 0 },
  rm: null,                // {session, deviceId, fp, pinned, parts}
};

// ---- small helpers ----------------------------------------------------

const $ = (id) => document.getElementById(id);

// An element from tag, attributes and children; text only through
// textContent, so nothing the API returns is ever parsed as HTML.
function h(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return e;
}

function announce(msg, bad = false) {
  const s = $('status');
  s.textContent = msg;
  s.classList.toggle('bad', bad);
}

const pad = (n) => String(n).padStart(2, '0');
function fmtTime(ms) {
  if (!ms) return '—';
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
function fmtClock(ms) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}`;
}
function fmtAgo(ms) {
  if (!ms) return 'never';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return fmtTime(ms);
}
const devName = (d) => `${d.host}:${d.port}`;
const stateClass = (s) => 'st-' + String(s || 'unknown').toLowerCase().replace(/[^a-z]+/g, '-');
function badge(text, cls) {
  return h('span', { class: `badge ${cls}`, text });
}

// ---- the API ----------------------------------------------------------

export class ApiError extends Error {
  constructor(status, body) {
    const b = body || {};
    super(b.reason || b.error || `HTTP ${status}`);
    this.status = status;
    this.error = b.error || '';
    this.admit = b.admit || '';
  }
}

// api(method, path, body) -> parsed JSON (null for 204); throws ApiError.
// The same function is given to remote.js.
async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: 'same-origin', cache: 'no-store' };
  if (method !== 'GET' && state.csrf) opts.headers['X-CSRF-Token'] = state.csrf;
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, opts);
  } catch (e) {
    throw new ApiError(0, { error: 'CONNECT', reason: 'the guardian does not answer' });
  }
  let j = null;
  if (r.status !== 204) {
    try { j = await r.json(); } catch { j = null; }
  }
  if (!r.ok) {
    const err = new ApiError(r.status, j);
    if (r.status === 401 && path !== '/api/login' && state.session?.authorized) sessionEnded();
    throw err;
  }
  return j;
}

function why(e) {
  if (!(e instanceof ApiError)) return String(e?.message || e);
  const adm = e.admit ? ` (${e.admit})` : '';
  return `${e.error || 'HTTP ' + e.status}${adm}: ${e.message}`;
}

// ---- screens and navigation --------------------------------------------

const SCREENS = ['login', 'devices', 'events', 'remote'];

function show(screen) {
  for (const s of SCREENS) $(`screen-${s}`).hidden = s !== screen;
  for (const s of ['devices', 'events', 'remote']) {
    if (s === screen) $(`nav-${s}`).setAttribute('aria-current', 'page');
    else $(`nav-${s}`).removeAttribute('aria-current');
  }
  stopTimers();
  if (screen === 'devices') { loadDevices(); every('tree', POLL_MS, loadDevices); resumePlot(); }
  if (screen === 'events') { loadEventFilters(); loadEvents(); every('events', POLL_MS, followEvents); }
  if (screen === 'remote') loadRemoteDevices();
}

function route() {
  if (!state.session?.authorized) return show('login');
  const screen = (location.hash || '#devices').slice(1).split('/')[0];
  const s = SCREENS.includes(screen) && screen !== 'login' ? screen : 'devices';
  show(s);
  const first = $(`screen-${s}`).querySelector('h1');
  if (first) { first.tabIndex = -1; first.focus({ preventScroll: true }); }
}

function every(name, ms, fn) {
  clearInterval(state.timers[name]);
  state.timers[name] = setInterval(() => { fn().catch(() => {}); }, ms);
}
function stopTimers() {
  for (const t of Object.values(state.timers)) clearInterval(t);
  state.timers = {};
}

// ---- login (one or two users) -----------------------------------------

function loginScreen(note = '', second = false) {
  stopTimers();
  $('nav').hidden = true;
  $('who').hidden = true;
  $('logout').hidden = true;
  $('login-title').textContent = second ? 'Second login' : 'Log in';
  $('login-note').textContent = note;
  $('login-cancel').hidden = !second;
  $('login-submit').textContent = second ? 'Log in as the second user' : 'Log in';
  $('login-error').textContent = '';
  $('login-user').value = '';
  $('login-password').value = '';
  show('login');
  $('login-user').focus();
}

function sessionEnded() {
  state.csrf = null;
  state.session = null;
  closeRemote(false);
  for (const d of document.querySelectorAll('dialog[open]')) d.close();
  loginScreen('Your session has ended: log in again.');
  announce('Session ended', true);
}

async function onLogin(ev) {
  ev.preventDefault();
  const user = $('login-user').value.trim();
  const pw = $('login-password');
  const password = pw.value;
  pw.value = '';
  $('login-error').textContent = '';
  if (!user || !password) {
    $('login-error').textContent = 'Enter a user and a password.';
    return;
  }
  try {
    const a = await api('POST', '/api/login', { user, password });
    if (a.csrf) state.csrf = a.csrf;
    state.session = { role: a.role, logins: a.logins, needed: a.needed, authorized: a.authorized };
    if (!a.authorized) {
      loginScreen(`Role ${a.role} needs ${a.needed} logins: ${a.logins.join(', ')} is logged in. ` +
        `Another ${a.role} logs in now.`, true);
      announce(`${user} logged in; a second ${a.role} must log in`);
      return;
    }
    $('who').textContent = `${a.logins.join(' + ')} (${a.role})`;
    $('who').hidden = false;
    $('logout').hidden = false;
    $('nav').hidden = false;
    announce(`Logged in as ${a.logins.join(' and ')}`);
    if (!location.hash || location.hash === '#login') location.hash = '#devices';
    route();
  } catch (e) {
    $('login-error').textContent =
      e.status === 403 && e.error === 'PERMISSION_DENIED'
        ? 'A two-person login begun in this browser before a reload is still pending; ' +
          'it ends when its session expires.'
        : why(e);
    $('login-user').focus();
    $('login-user').select();
  }
}

async function onLogout() {
  try { await api('POST', '/api/logout'); } catch { /* ended anyway */ }
  state.csrf = null;
  state.session = null;
  closeRemote(false);
  location.hash = '';
  loginScreen('Logged out.');
  announce('Logged out');
}

// ---- dialogs ------------------------------------------------------------

// Native modal dialogs: the rest of the page is inert (focus stays inside)
// and Escape closes them; focus returns to what opened them.
function openDialog(dlg, focus) {
  const opener = document.activeElement;
  dlg.addEventListener('close', () => { if (opener && opener.isConnected) opener.focus(); },
    { once: true });
  dlg.showModal();
  (focus || dlg.querySelector('input, select, textarea, button'))?.focus();
}

function confirmDlg(text, yes = 'Yes') {
  const d = $('dlg-confirm');
  $('confirm-text').textContent = text;
  $('confirm-yes').textContent = yes;
  d.returnValue = 'no';
  return new Promise((resolve) => {
    d.addEventListener('close', () => resolve(d.returnValue === 'yes'), { once: true });
    openDialog(d, d.querySelector('[value=no]'));
  });
}

// ---- Encryption Devices: the tree -------------------------------------

async function loadDevices() {
  const [g, d] = await Promise.all([api('GET', '/api/groups'), api('GET', '/api/devices')]);
  state.groups = g.groups;
  state.devices = d.devices;
  renderTree();
}

function renderTree() {
  const now = Math.floor(Date.now() / 5000); // "12 s ago" refreshes with the data
  const sig = JSON.stringify([state.groups, state.devices.map((d) => ({ ...d, requests: 0 })),
    [...state.collapsed], now]);
  if (sig === state.treeSig) return;
  state.treeSig = sig;
  const focusId = document.activeElement?.id;
  const tree = $('tree');
  if (state.groups.length === 0) {
    tree.replaceChildren(h('p', { class: 'empty', text: 'No device group yet: choose Add Group.' }));
    return;
  }
  const ul = h('ul', { class: 'groups', 'aria-label': 'Device groups' });
  for (const g of state.groups) ul.append(groupNode(g));
  tree.replaceChildren(ul);
  if (focusId && $(focusId)) $(focusId).focus();
}

function groupNode(g) {
  const devs = state.devices.filter((d) => d.group_id === g.id);
  const open = !state.collapsed.has(g.id);
  const up = devs.filter((d) => d.state === 'up').length;
  const summary = devs.length === 0 ? badge('no devices', 'st-unknown')
    : badge(`${up} of ${devs.length} up`, up === devs.length ? 'st-up' : up ? 'st-degraded' : 'st-down');
  const listId = `g${g.id}-devices`;
  const head = h('div', { class: 'group-head' },
    h('button', {
      type: 'button', class: 'twisty', id: `g${g.id}-toggle`, 'aria-expanded': String(open),
      'aria-controls': listId, 'aria-label': `${open ? 'Collapse' : 'Expand'} group ${g.name}`,
      text: open ? '▾' : '▸', onclick: () => {
        if (open) state.collapsed.add(g.id); else state.collapsed.delete(g.id);
        renderTree();
      },
    }),
    h('h2', { text: g.name }),
    h('span', { class: 'meta', text: `port ${g.port} · ${g.type} · owner ${g.owner || '—'}` +
      (g.enabled ? '' : ' · disabled') + (g.description ? ` · ${g.description}` : '') }),
    summary,
    h('button', { type: 'button', class: 'quiet small', id: `g${g.id}-edit`, text: 'Edit group',
      onclick: () => groupDialog(g) }),
    h('button', { type: 'button', class: 'quiet small', id: `g${g.id}-add`, text: 'Add device',
      onclick: () => deviceDialog(g, null) }),
    h('button', { type: 'button', class: 'quiet small', id: `g${g.id}-plot`, text: 'Plot group',
      onclick: () => openPlot('group', g.id) }),
    h('button', { type: 'button', class: 'quiet small', id: `g${g.id}-remove`, text: 'Remove group',
      onclick: () => removeGroup(g) }));
  const body = h('div', { class: 'devices', id: listId, hidden: !open });
  if (devs.length === 0) {
    body.append(h('p', { class: 'empty', text: 'No devices: add the Primary first.' }));
  } else {
    const rows = devs.map(deviceRow);
    body.append(h('table', { class: 'grid' },
      h('caption', { text: `Devices of ${g.name}` }),
      h('thead', {}, h('tr', {}, ...['Device', 'Role', 'State', 'Serving', 'Version', 'Last ping',
        'Latency', 'Requests/s', 'Actions'].map((t) => h('th', { scope: 'col', text: t })))),
      h('tbody', {}, rows)));
  }
  return h('li', { class: 'group', 'data-group': g.id }, head, body);
}

function deviceRow(d) {
  const name = devName(d);
  const b = (key, text, fn, cls = 'quiet small') =>
    h('button', { type: 'button', class: cls, id: `d${d.id}-${key}`, 'aria-label': `${text} ${name}`,
      text, onclick: fn });
  const st = d.state || 'unknown';
  return h('tr', { 'data-device': d.id, 'data-state': st },
    h('td', {}, h('span', { class: 'mono', text: name }),
      h('div', { class: 'note', text: `admin port ${d.admin_port}` })),
    h('td', { text: d.role }),
    h('td', {}, badge(st, stateClass(st)),
      d.last_error ? h('div', { class: 'note', text: d.last_error }) : null),
    h('td', { text: d.serving ? 'yes' : 'no' }),
    h('td', { text: d.facts?.version || '—' }),
    h('td', { text: fmtAgo(d.last_ping_ms) }),
    h('td', { class: 'num', text: d.latency_ms === null || d.latency_ms === undefined ? '—'
      : `${Number(d.latency_ms).toFixed(1)} ms` }),
    h('td', { class: 'num', text: Number(d.requests_per_s || 0).toFixed(1) }),
    h('td', { class: 'acts' },
      b('edit', 'Edit', () => deviceDialog(state.groups.find((g) => g.id === d.group_id), d)),
      d.enabled ? b('disable', 'Disable', () => setEnabled(d, false))
        : b('enable', 'Enable', () => setEnabled(d, true)),
      b('diagnose', 'Diagnose', () => diagnose(d)),
      b('plot', 'Plot', () => openPlot('device', d.id)),
      b('remote', 'Remote Manage', () => { location.hash = `#remote/${d.id}`; }),
      b('remove', 'Remove', () => removeDevice(d))));
}

async function setEnabled(d, on) {
  try {
    await api('POST', `/api/devices/${d.id}/${on ? 'enable' : 'disable'}`, {});
    announce(`Device ${devName(d)} ${on ? 'enabled' : 'disabled'}`);
    await loadDevices();
    $(`d${d.id}-${on ? 'disable' : 'enable'}`)?.focus();
  } catch (e) { announce(why(e), true); }
}

async function removeDevice(d) {
  if (!await confirmDlg(`Remove device ${devName(d)} (${d.role}) from its group?`, 'Remove')) return;
  try {
    await api('DELETE', `/api/devices/${d.id}`);
    announce(`Device ${devName(d)} removed`);
    if (state.plot?.kind === 'device' && state.plot.id === d.id) closePlot();
    await loadDevices();
  } catch (e) { announce(why(e), true); }
}

async function removeGroup(g) {
  if (!await confirmDlg(`Remove group ${g.name}? It must have no devices left.`, 'Remove')) return;
  try {
    await api('DELETE', `/api/groups/${g.id}`);
    announce(`Group ${g.name} removed`);
    await loadDevices();
    $('add-group').focus();
  } catch (e) { announce(why(e), true); }
}

// ---- the Encryption Device Group window --------------------------------

const PAIRS = [['excrypt', 'Excrypt/Standard'], ['http', 'HTTP'], ['international', 'International']];
const CONNS = ['Clear', 'SSL', 'Anonymous TLS'];
let editingGroup = null;

function buildPairRows() {
  $('g-pairs').replaceChildren(...PAIRS.map(([k, label]) => h('tr', {},
    h('th', { scope: 'row', text: label }),
    h('td', {}, h('input', { type: 'checkbox', id: `g-pair-${k}-allow` }),
      h('label', { for: `g-pair-${k}-allow`, class: 'sr', text: ` Allow ${label}` })),
    h('td', {}, h('label', { for: `g-pair-${k}-conn`, class: 'sr', text: `${label} connection type ` }),
      h('select', { id: `g-pair-${k}-conn` }, ...CONNS.map((c) => h('option', { value: c, text: c })))))));
}

function groupDialog(g) {
  editingGroup = g;
  $('dlg-group-title').textContent = g ? `Encryption Device Group: ${g.name}` : 'Add Group';
  $('g-name').value = g?.name || '';
  $('g-port').value = g?.port || '';
  $('g-description').value = g?.description || '';
  $('g-owner').value = g?.owner || '';
  $('g-owner').placeholder = g ? '' : (state.session?.logins?.[0] || '');
  $('g-type').value = 'Hardware Security Module';
  $('g-enabled').checked = g ? !!g.enabled : true;
  for (const o of ['configuration', 'monitoring', 'balancing'])
    $(`g-opt-${o}`).checked = g ? !!g.options?.[o] : true;
  for (const [k] of PAIRS) {
    const p = g?.pairs?.[k] || { allow: k === 'excrypt', conn: 'SSL' };
    $(`g-pair-${k}-allow`).checked = !!p.allow;
    const conn = CONNS.find((c) => c.toLowerCase() === String(p.conn).toLowerCase()) || 'SSL';
    $(`g-pair-${k}-conn`).value = conn;
  }
  $('g-warnings').replaceChildren();
  $('g-error').textContent = '';
  $('g-save').textContent = 'Save';
  $('dlg-group').querySelector('[data-close]').textContent = 'Cancel';
  openDialog($('dlg-group'), $('g-name'));
}

async function onGroupSave(ev) {
  ev.preventDefault();
  const err = $('g-error');
  err.textContent = '';
  const name = $('g-name').value.trim();
  const port = Number($('g-port').value);
  if (!name) { err.textContent = 'Name: required.'; $('g-name').focus(); return; }
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    err.textContent = 'Endpoint port: a number from 1 to 65535.'; $('g-port').focus(); return;
  }
  const body = {
    name, port,
    description: $('g-description').value,
    type: $('g-type').value,
    enabled: $('g-enabled').checked,
    options: Object.fromEntries(['configuration', 'monitoring', 'balancing']
      .map((o) => [o, $(`g-opt-${o}`).checked])),
    pairs: Object.fromEntries(PAIRS.map(([k]) =>
      [k, { allow: $(`g-pair-${k}-allow`).checked, conn: $(`g-pair-${k}-conn`).value }])),
  };
  const owner = $('g-owner').value.trim();
  if (owner || editingGroup) body.owner = owner;
  try {
    const a = editingGroup ? await api('PUT', `/api/groups/${editingGroup.id}`, body)
      : await api('POST', '/api/groups', body);
    const warnings = a.warnings || [];
    announce(`Group ${a.name} ${editingGroup ? 'saved' : 'created'}` +
      (warnings.length ? ` with ${warnings.length} warning(s)` : ''));
    await loadDevices();
    if (warnings.length) {
      // the dialog stays open on the API's warnings until they are read
      editingGroup = a;
      $('g-warnings').replaceChildren(h('strong', { text: 'Saved, with warnings:' }),
        h('ul', {}, warnings.map((w) => h('li', { text: w }))));
      showNotice(`Group ${a.name}: ${warnings.join(' · ')}`);
      $('g-save').textContent = 'Save again';
      $('dlg-group-title').textContent = `Encryption Device Group: ${a.name}`;
      $('dlg-group').querySelector('[data-close]').textContent = 'Close';
      return;
    }
    $('dlg-group').close();
  } catch (e) {
    err.textContent = why(e);
  }
}

function showNotice(text) {
  const n = $('notice');
  n.replaceChildren(h('span', { text }), ' ',
    h('button', { type: 'button', class: 'quiet small', text: 'Dismiss',
      onclick: () => { n.hidden = true; } }));
  n.hidden = false;
}

// ---- add / edit a device ----------------------------------------------

let editingDevice = null;
let deviceGroup = null;

function deviceDialog(g, d) {
  editingDevice = d;
  deviceGroup = g;
  const first = state.devices.filter((x) => x.group_id === g.id).length === 0;
  $('dlg-device-title').textContent = d ? `Edit device ${devName(d)}` : `Add a device to ${g.name}`;
  $('d-group-note').textContent = d ? `Group ${g.name}.` : first
    ? 'The first device of a group is its Primary: the others must hold its major keys.'
    : 'The guardian probes the device before it joins (this may take a few seconds).';
  $('d-host').value = d?.host || '';
  $('d-host').disabled = false;
  $('d-port').value = d?.port || 9100;
  $('d-admin-port').value = d?.admin_port || 9101;
  const role = $('d-role');
  role.value = d?.role || (first ? 'Primary' : 'Production');
  // the role moves to or from Primary only through a promotion
  for (const o of role.options) o.disabled = !!d && (d.role === 'Primary' ? o.value !== 'Primary' : o.value === 'Primary');
  role.disabled = !!d && d.role === 'Primary';
  $('d-role-note').textContent = d && d.role !== 'Primary'
    ? 'To make this device the Primary, promote it.' : '';
  $('d-promote').hidden = !d || d.role === 'Primary';
  $('d-ping').value = d?.ping_timeout_ms || 2000;
  $('d-balancing').checked = d ? !!d.balancing : true;
  $('d-enabled').checked = d ? !!d.enabled : true;
  $('d-error').textContent = '';
  openDialog($('dlg-device'), $('d-host'));
}

function intField(id, lo, hi, what) {
  const v = Number($(id).value);
  if (!Number.isInteger(v) || v < lo || v > hi) throw new Error(`${what}: a number from ${lo} to ${hi}.`);
  return v;
}

async function onDeviceSave(ev) {
  ev.preventDefault();
  const err = $('d-error');
  err.textContent = '';
  let body;
  try {
    const host = $('d-host').value.trim();
    if (!host) throw new Error('Host: required.');
    body = {
      host,
      port: intField('d-port', 1, 65535, 'Port'),
      admin_port: intField('d-admin-port', 1, 65535, 'Admin port'),
      role: $('d-role').value,
      balancing: $('d-balancing').checked,
      ping_timeout_ms: intField('d-ping', 100, 60000, 'Ping timeout'),
      enabled: $('d-enabled').checked,
    };
  } catch (e) { err.textContent = e.message; return; }
  const save = $('d-save');
  save.disabled = true;
  try {
    if (editingDevice) {
      // only what changed: a PUT is partial
      const changed = Object.fromEntries(Object.entries(body)
        .filter(([k, v]) => editingDevice[k] !== v));
      if (Object.keys(changed).length) await api('PUT', `/api/devices/${editingDevice.id}`, changed);
      announce(`Device ${addr(body)} saved`);
    } else {
      announce(`Adding ${addr(body)}: the guardian probes the device…`);
      await api('POST', `/api/groups/${deviceGroup.id}/devices`, body);
      announce(`Device ${addr(body)} added to ${deviceGroup.name} as ${body.role}`);
    }
    $('dlg-device').close();
    await loadDevices();
  } catch (e) {
    err.textContent = e.admit ? `Refused (${e.admit}): ${e.message}` : why(e);
    announce('The device was not saved', true);
  } finally {
    save.disabled = false;
  }
}
const addr = (b) => `${b.host}:${b.port}`;

async function onPromote() {
  const d = editingDevice;
  if (!d) return;
  if (!await confirmDlg(`Make ${devName(d)} the Primary of its group? The current Primary becomes Production.`,
    'Promote')) return;
  try {
    await api('POST', `/api/devices/${d.id}/promote`, { old_primary_role: 'Production' });
    announce(`${devName(d)} is the Primary`);
    $('dlg-device').close();
    await loadDevices();
  } catch (e) { $('d-error').textContent = why(e); }
}

// ---- diagnose -----------------------------------------------------------

async function diagnose(d) {
  const dlg = $('dlg-diagnose');
  $('dlg-diagnose-title').textContent = `Diagnose ${devName(d)}`;
  $('diag-summary').textContent = 'Running the diagnosis…';
  $('diag-steps').replaceChildren();
  openDialog(dlg, dlg.querySelector('[data-close]'));
  try {
    const a = await api('POST', `/api/devices/${d.id}/diagnose`, {});
    $('diag-summary').textContent = a.ok ? 'Every step passed.' : `Failed at the step “${a.failed}”.`;
    $('diag-steps').replaceChildren(...a.steps.map((s) => h('li', { 'data-step': s.step },
      h('strong', { text: s.step }), ' ', badge(s.state, stateClass(s.state)),
      h('span', { class: 'msg', text: s.message || '' }))));
    announce(`Diagnosis of ${devName(d)}: ${a.ok ? 'ok' : 'failed at ' + a.failed}`, !a.ok);
  } catch (e) {
    $('diag-summary').textContent = why(e);
  }
}

// ---- plots ----------------------------------------------------------------

function chartOpts(yTitle) {
  return {
    animation: false,
    responsive: true,
    maintainAspectRatio: false,
    parsing: false,
    normalized: true,
    interaction: { mode: 'nearest', intersect: false },
    scales: {
      x: { type: 'linear', ticks: { callback: (v) => fmtClock(v), maxTicksLimit: 7, color: '#333' },
        grid: { color: '#e3e6ea' } },
      y: { beginAtZero: true, title: { display: true, text: yTitle, color: '#333' },
        ticks: { color: '#333' }, grid: { color: '#e3e6ea' } },
    },
    plugins: { legend: { labels: { color: '#222' } },
      tooltip: { callbacks: { title: (items) => items.length ? fmtTime(items[0].parsed.x) : '' } } },
  };
}

function makeCharts() {
  if (state.charts) return state.charts;
  const Chart = window.Chart;
  if (!Chart) { announce('Chart.js did not load: no plots', true); return null; }
  const line = (label, color) => ({ label, data: [], borderColor: color, backgroundColor: color,
    borderWidth: 2, pointRadius: 0, stepped: false, tension: 0 });
  state.charts = {
    rps: new Chart($('chart-rps'), { type: 'line', data: { datasets: [line('requests/s', '#0b5cad')] },
      options: chartOpts('requests/s') }),
    lat: new Chart($('chart-lat'), { type: 'line',
      data: { datasets: [line('average ms', '#1e7a34'), line('maximum ms', '#b3541e')] },
      options: chartOpts('ms') }),
    err: new Chart($('chart-err'), { type: 'bar',
      data: { datasets: [{ label: 'errors', data: [], backgroundColor: '#a4161a', barThickness: 3 }] },
      options: chartOpts('errors per 10 s') }),
  };
  return state.charts;
}

function openPlot(kind, id) {
  state.plot = { kind, id };
  $('plot').hidden = false;
  const title = kind === 'device'
    ? `Device ${devName(state.devices.find((d) => d.id === id) || { host: '#' + id, port: '' })}`
    : `Group ${(state.groups.find((g) => g.id === id) || { name: '#' + id }).name} (sum of its devices)`;
  $('plot-title').textContent = `Plot: ${title}`;
  $('plot').dataset.kind = kind;
  $('plot').dataset.id = id;
  $('plot-summary').textContent = 'Loading…';
  makeCharts();
  refreshPlot().catch((e) => announce(why(e), true));
  every('plot', METRICS_MS, refreshPlot);
  $('plot-title').tabIndex = -1;
  $('plot-title').focus();
}

function resumePlot() {
  if (state.plot) every('plot', METRICS_MS, refreshPlot);
}

function closePlot() {
  state.plot = null;
  clearInterval(state.timers.plot);
  $('plot').hidden = true;
}

// Buckets of one or several devices summed per time: requests and errors
// add up, the average latency is weighted by requests, the maximum is the max.
function sumBuckets(lists) {
  const by = new Map();
  for (const list of lists)
    for (const b of list) {
      const s = by.get(b.t_ms) || { t_ms: b.t_ms, requests: 0, errors: 0, lat_w: 0, lat_max_ms: 0 };
      s.requests += b.requests;
      s.errors += b.errors;
      s.lat_w += b.lat_avg_ms * b.requests;
      s.lat_max_ms = Math.max(s.lat_max_ms, b.lat_max_ms);
      by.set(b.t_ms, s);
    }
  return [...by.values()].sort((a, b) => a.t_ms - b.t_ms)
    .map((s) => ({ ...s, lat_avg_ms: s.requests ? s.lat_w / s.requests : 0 }));
}

async function refreshPlot() {
  const p = state.plot;
  if (!p) return;
  const to = Date.now();
  const ids = p.kind === 'device' ? [p.id]
    : state.devices.filter((d) => d.group_id === p.id).map((d) => d.id);
  const lists = await Promise.all(ids.map((id) =>
    api('GET', `/api/devices/${id}/metrics?res=10s&from=${to - HOUR_MS}&to=${to}`)
      .then((m) => m.buckets)));
  if (state.plot !== p) return;
  const buckets = sumBuckets(lists);
  // the bucket still filling is divided by the seconds it has had so far
  const rate = (b) => b.requests / Math.min(BUCKET_S, Math.max(1, (to - b.t_ms) / 1000));
  const c = makeCharts();
  if (c) {
    for (const ch of Object.values(c)) { ch.options.scales.x.min = to - HOUR_MS; ch.options.scales.x.max = to; }
    c.rps.data.datasets[0].data = buckets.map((b) => ({ x: b.t_ms, y: rate(b) }));
    c.lat.data.datasets[0].data = buckets.map((b) => ({ x: b.t_ms, y: b.lat_avg_ms }));
    c.lat.data.datasets[1].data = buckets.map((b) => ({ x: b.t_ms, y: b.lat_max_ms }));
    c.err.data.datasets[0].data = buckets.map((b) => ({ x: b.t_ms, y: b.errors }));
    for (const ch of Object.values(c)) ch.update('none');
  }
  const last = buckets[buckets.length - 1];
  const plot = $('plot');
  plot.dataset.points = String(buckets.length);
  plot.dataset.lastRps = last ? rate(last).toFixed(2) : '';
  plot.dataset.lastT = last ? String(last.t_ms) : '';
  plot.dataset.requests = String(buckets.reduce((n, b) => n + b.requests, 0));
  plot.dataset.errors = String(buckets.reduce((n, b) => n + b.errors, 0));
  $('plot-summary').textContent = last
    ? `Latest 10 s (${fmtClock(last.t_ms)}): ${rate(last).toFixed(1)} requests/s, ` +
      `latency ${last.lat_avg_ms.toFixed(1)} ms average, ${last.lat_max_ms.toFixed(1)} ms maximum, ` +
      `${last.errors} errors. ${buckets.length} samples in the last hour.`
    : 'No samples in the last hour yet.';
}

// ---- the event log ----------------------------------------------------------

async function loadEventFilters() {
  try {
    const [g, d] = await Promise.all([api('GET', '/api/groups'), api('GET', '/api/devices')]);
    state.groups = g.groups;
    state.devices = d.devices;
  } catch { return; }
  const fill = (sel, items) => {
    const v = sel.value;
    sel.replaceChildren(h('option', { value: '', text: 'All' }), ...items);
    sel.value = [...sel.options].some((o) => o.value === v) ? v : '';
  };
  fill($('ev-group'), state.groups.map((g) => h('option', { value: g.id, text: g.name })));
  fill($('ev-device'), state.devices.map((d) => h('option', { value: d.id, text: `${devName(d)} (${d.role})` })));
}

async function loadEvents() {
  const q = new URLSearchParams({ max: $('ev-max').value, skip: String(state.events.skip) });
  if ($('ev-group').value) q.set('group', $('ev-group').value);
  if ($('ev-device').value) q.set('device', $('ev-device').value);
  let a;
  try { a = await api('GET', `/api/events?${q}`); } catch (e) { announce(why(e), true); return; }
  const gname = (id) => state.groups.find((g) => g.id === id)?.name || (id ? `#${id}` : '—');
  const dname = (id) => { const d = state.devices.find((x) => x.id === id); return d ? devName(d) : id ? `#${id}` : '—'; };
  const rows = a.events.map((e) => h('tr', { 'data-kind': e.kind },
    h('td', { text: fmtTime(e.t_ms) }), h('td', { text: e.kind }), h('td', { text: gname(e.group_id) }),
    h('td', { text: dname(e.device_id) }), h('td', { text: e.text })));
  $('ev-rows').replaceChildren(...(rows.length ? rows
    : [h('tr', {}, h('td', { colspan: 5, text: 'No events.' }))]));
  $('ev-caption').textContent = `Events ${state.events.skip + 1}–${state.events.skip + a.events.length}, newest first`;
  $('ev-newer').disabled = state.events.skip === 0;
  $('ev-older').disabled = a.events.length < Number($('ev-max').value);
}

async function followEvents() {
  if ($('ev-follow').checked && state.events.skip === 0) await loadEvents();
}

// ---- Remote Manage ------------------------------------------------------------

const PIN_PREFIX = 'keyhold.console.pin.';
let remoteMod = null;

async function remoteModule() {
  // loaded when needed: the rest of the console works without it
  if (!remoteMod) remoteMod = await import('./remote.js');
  return remoteMod;
}

async function loadRemoteDevices() {
  try {
    const [g, d] = await Promise.all([api('GET', '/api/groups'), api('GET', '/api/devices')]);
    state.groups = g.groups;
    state.devices = d.devices;
  } catch (e) { announce(why(e), true); return; }
  const sel = $('rm-device');
  const want = location.hash.split('/')[1] || sel.value;
  sel.replaceChildren(...state.devices.map((d) => {
    const g = state.groups.find((x) => x.id === d.group_id);
    return h('option', { value: d.id, text: `${g ? g.name : 'group ' + d.group_id}: ${devName(d)} (${d.role}, ${d.state})` });
  }));
  if (want && [...sel.options].some((o) => o.value === want)) sel.value = want;
  $('rm-open-btn').disabled = state.devices.length === 0 || !!state.rm;
}

function pinKey(id) { return `${PIN_PREFIX}${location.host}.${id}`; }
function readPin(id) {
  try { return JSON.parse(localStorage.getItem(pinKey(id)) || 'null'); } catch { return null; }
}
const groupHex = (fp) => fp.toUpperCase().match(/.{1,4}/g).join(' ');

async function onRemoteOpen(ev) {
  ev.preventDefault();
  const id = Number($('rm-device').value);
  if (!id) return;
  await closeRemote(true);
  announce('Opening a sealed channel to the HSM…');
  $('rm-open-btn').disabled = true;
  let session;
  try {
    const { RemoteSession } = await remoteModule();
    session = await RemoteSession.open(api, id);
  } catch (e) {
    $('rm-open-btn').disabled = false;
    announce(`Remote Manage: ${why(e)}`, true);
    return;
  }
  const fp = session.fingerprint;
  state.rm = { session, deviceId: id, fp, parts: 0, needed: 0 };
  $('rm-session').hidden = false;
  $('rm-close').hidden = false;
  $('rm-fp').textContent = groupHex(fp);
  $('rm-mk-rows').replaceChildren(h('tr', {}, h('td', { colspan: 4, text: 'Not read yet' })));
  $('rm-login-out').textContent = '';
  $('rm-ftk-out').textContent = '';
  $('rm-parts').replaceChildren();
  showPin();
}

// Trust on first use: the fingerprint is pinned per device; a changed key
// stops everything until someone decides, loudly.
function showPin() {
  const rm = state.rm;
  const pin = readPin(rm.deviceId);
  const el = $('rm-pin');
  el.className = 'pin';
  el.removeAttribute('role');
  $('rm-trust').hidden = true;
  $('rm-replace').hidden = true;
  let trusted = false;
  if (!pin) {
    el.classList.add('new');
    el.textContent = 'First contact with this HSM from this browser: compare the fingerprint with the ' +
      'one the HSM shows on its own console (tls show) before you trust it.';
    $('rm-trust').hidden = false;
  } else if (pin.fp === rm.fp) {
    el.classList.add('match');
    el.textContent = `✓ Matches the key pinned on ${fmtTime(pin.at)}.`;
    trusted = true;
  } else {
    el.classList.add('changed');
    el.setAttribute('role', 'alert');
    el.textContent = `⚠ WARNING: THIS HSM'S KEY HAS CHANGED since it was pinned on ${fmtTime(pin.at)} ` +
      `(pinned: ${groupHex(pin.fp)}). Someone may be between you and the HSM. Do not enter any ` +
      'password or component unless you know why the key changed (a new server certificate on the HSM).';
    $('rm-replace').hidden = false;
    announce('The HSM key fingerprint has changed', true);
  }
  $('rm-steps').disabled = !trusted;
  if (trusted) announce('Secure session open; the HSM key matches its pin');
}

function pinNow() {
  const rm = state.rm;
  localStorage.setItem(pinKey(rm.deviceId), JSON.stringify({ fp: rm.fp, at: Date.now() }));
  showPin();
  $('rm-id1').focus();
}

async function onReplacePin() {
  if (!await confirmDlg('Replace the pinned key with the new one? Only do this if you know the HSM ' +
    'has a new server certificate.', 'Replace the pin')) return;
  pinNow();
}

async function closeRemote(quiet) {
  const rm = state.rm;
  state.rm = null;
  for (const id of ['rm-pw1', 'rm-pw2', 'rm-comp', 'rm-cv']) if ($(id)) $(id).value = '';
  if ($('rm-session')) {
    $('rm-session').hidden = true;
    $('rm-close').hidden = true;
    $('rm-steps').disabled = true;
    $('rm-open-btn').disabled = false;
    ceremonyControls(false);
  }
  if (rm) {
    try { await rm.session.close(); } catch { /* the guardian ends it anyway */ }
    if (!quiet) announce('Remote Manage session closed');
  }
}

// One sealed request; the inner answer, or an Error with the HSM's text.
async function hsm(frame) {
  const { field } = await remoteModule();
  const ans = await state.rm.session.call(frame);
  if (ans.startsWith('[AOERRO;')) {
    const e = new Error(`${field(ans, 'ET') || 'error'} (code ${field(ans, 'EC') || '?'})`);
    e.frame = ans;
    throw e;
  }
  return ans;
}

// Excrypt values may not hold ; [ ] or control characters
const plain = (s) => /^[\x20-\x7e]+$/.test(s) && !/[;[\]]/.test(s);

async function onRemoteLogin(ev) {
  ev.preventDefault();
  const { hexText, field } = await remoteModule();
  const out = $('rm-login-out');
  const who = [['rm-id1', 'rm-pw1'], ['rm-id2', 'rm-pw2']];
  const lines = [];
  for (const [idf, pwf] of who) {
    const id = $(idf).value.trim();
    const pw = $(pwf).value;
    $(pwf).value = '';
    if (!id && !pw) continue;
    if (!plain(id) || !pw) { lines.push(`${id || '?'}: enter an identity name and its password`); continue; }
    try {
      const a = await hsm(`[AOLOGN;ID${id};PW${hexText(pw)};]`);
      lines.push(`${id}: logged in (role ${field(a, 'RO')}, ${field(a, 'LC')} of ${field(a, 'LQ')} logins, ` +
        `active ${field(a, 'AC') === 'Y' ? 'yes' : 'no'})`);
    } catch (e) { lines.push(`${id}: refused: ${e.message}`); }
  }
  out.textContent = lines.join('\n') || 'Nothing entered.';
}

function parseKey(v) {
  if (!v || v === 'N') return { state: 'not loaded', alg: '—', kcv: '—' };
  const [, alg, kcv] = v.split('/');
  return { state: 'loaded', alg: alg || '—', kcv: kcv || '—' };
}

async function onMkst() {
  const { field } = await remoteModule();
  try {
    const a = await hsm('[AOMKST;]');
    const rows = [['FTK', 'FT', 'FR'], ['PMK', 'PM', 'PR'], ['BEK', 'BK', null]].map(([name, tag, old]) => {
      const k = parseKey(field(a, tag));
      const grace = old && field(a, old) ? ` (replaced key ${field(a, old).split('/')[0]} until ${field(a, old).split('/')[1]})` : '';
      return h('tr', {}, h('th', { scope: 'row', text: name }),
        h('td', {}, badge(k.state, k.state === 'loaded' ? 'st-up' : 'st-down'), grace),
        h('td', { text: k.alg }), h('td', { class: 'mono', text: k.kcv }));
    });
    $('rm-mk-rows').replaceChildren(...rows);
    announce('Major-key status read');
  } catch (e) { announce(`MKST: ${e.message}`, true); }
}

function ceremonyControls(on) {
  for (const id of ['rm-comp', 'rm-cv', 'rm-mklc', 'rm-mkla']) $(id).disabled = !on;
  for (const id of ['rm-mklb', 'rm-kl', 'rm-np']) $(id).disabled = on;
  if (!on) { $('rm-comp').value = ''; $('rm-cv').value = ''; }
}

function compLabel() {
  const rm = state.rm;
  const digits = Number($('rm-kl').value) / 4;
  $('rm-comp-label').textContent = `Component ${rm.parts + 1} of ${rm.needed} (${digits} hex digits)`;
}

async function onMklb() {
  const kl = Number($('rm-kl').value);
  const np = Number($('rm-np').value);
  if (!Number.isInteger(np) || np < 2 || np > 9) { $('rm-ftk-out').textContent = 'Components: 2 to 9.'; return; }
  try {
    await hsm(`[AOMKLB;KNFTK;MOC;ALAES;KL${kl};NP${np};]`);
    state.rm.parts = 0;
    state.rm.needed = np;
    $('rm-parts').replaceChildren();
    $('rm-ftk-out').textContent = `Ceremony begun: FTK, AES-${kl}, ${np} components.`;
    ceremonyControls(true);
    compLabel();
    $('rm-comp').focus();
  } catch (e) { $('rm-ftk-out').textContent = `MKLB refused: ${e.message}`; }
}

async function onMklc(ev) {
  ev.preventDefault();
  const { field } = await remoteModule();
  const comp = $('rm-comp').value.replace(/\s+/g, '').toUpperCase();
  const cv = $('rm-cv').value.trim().toUpperCase();
  $('rm-comp').value = '';
  $('rm-cv').value = '';
  const digits = Number($('rm-kl').value) / 4;
  if (!/^[0-9A-F]+$/.test(comp) || comp.length !== digits) {
    $('rm-ftk-out').textContent = `A component is ${digits} hex digits.`;
    $('rm-comp').focus();
    return;
  }
  if (cv && !/^[0-9A-F]{4,16}$/.test(cv)) { $('rm-ftk-out').textContent = 'Check value: hex digits.'; return; }
  try {
    const a = await hsm(`[AOMKLC;CM${comp};${cv ? `CV${cv};` : ''}]`);
    state.rm.parts += 1;
    $('rm-parts').append(h('li', { text: `Component ${state.rm.parts}: check value ${field(a, 'AE') || '—'}` }));
    const kv = field(a, 'KV');
    if (kv) {
      $('rm-ftk-out').textContent = `FTK loaded. Final key check value: ${kv}`;
      announce(`FTK loaded, KCV ${kv}`);
      ceremonyControls(false);
    } else {
      $('rm-ftk-out').textContent = `${field(a, 'LD')} of ${field(a, 'LN')} components entered.`;
      compLabel();
      $('rm-comp').focus();
    }
  } catch (e) {
    // the ceremony ends after a refused last part; MKLA is harmless otherwise
    $('rm-ftk-out').textContent = `MKLC refused: ${e.message}`;
  }
}

async function onMkla() {
  try { await hsm('[AOMKLA;]'); } catch { /* ended already */ }
  ceremonyControls(false);
  $('rm-ftk-out').textContent = 'Ceremony aborted; the parts entered were wiped on the HSM.';
}

// ---- start ------------------------------------------------------------------

function init() {
  buildPairRows();
  $('login-form').addEventListener('submit', onLogin);
  $('login-cancel').addEventListener('click', onLogout);
  $('logout').addEventListener('click', onLogout);
  $('add-group').addEventListener('click', () => groupDialog(null));
  $('group-form').addEventListener('submit', onGroupSave);
  $('device-form').addEventListener('submit', onDeviceSave);
  $('d-promote').addEventListener('click', onPromote);
  $('plot-close').addEventListener('click', () => { closePlot(); $('add-group').focus(); });
  for (const b of document.querySelectorAll('dialog [data-close]'))
    b.addEventListener('click', () => b.closest('dialog').close());
  $('events-filter').addEventListener('submit', (e) => { e.preventDefault(); state.events.skip = 0; loadEvents(); });
  for (const id of ['ev-group', 'ev-device', 'ev-max'])
    $(id).addEventListener('change', () => { state.events.skip = 0; loadEvents(); });
  $('ev-older').addEventListener('click', () => { state.events.skip += Number($('ev-max').value); loadEvents(); });
  $('ev-newer').addEventListener('click', () => {
    state.events.skip = Math.max(0, state.events.skip - Number($('ev-max').value)); loadEvents();
  });
  $('rm-open').addEventListener('submit', onRemoteOpen);
  $('rm-close').addEventListener('click', () => closeRemote(false));
  $('rm-trust').addEventListener('click', pinNow);
  $('rm-replace').addEventListener('click', onReplacePin);
  $('rm-login').addEventListener('submit', onRemoteLogin);
  $('rm-mkst').addEventListener('click', onMkst);
  $('rm-mklb').addEventListener('click', onMklb);
  $('rm-mkla').addEventListener('click', onMkla);
  $('rm-ftk').addEventListener('submit', onMklc);
  window.addEventListener('hashchange', () => {
    if (!location.hash.startsWith('#remote')) closeRemote(true);
    route();
  });
  // a session needs the CSRF token only this page's memory holds: a
  // reload always logs in again
  loginScreen();
}

init();
