// The console's sealed channel (src/guardian/console/remote.js) end to end
// under Node 20's WebCrypto and fetch: log in to the guardian's REST API
// (cookie + X-CSRF-Token, as the console does), open a RemoteSession to a
// device, log in its two administrators through it, read MKST, erase the
// FTK and load it again from its two components, and check that the check
// value is the one it had. Run by tests/integration/test_console_channel.sh.
//
// usage: node remote_node.mjs REMOTE_JS BASE_URL USER PASSWORD_FILE DEVICE_ID
//          ADMIN1_PW_FILE ADMIN2_PW_FILE FTK_COMPONENTS_FILE SP_FINGERPRINT
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

const [remoteJs, base, user, pwFile, deviceId, a1File, a2File, compFile, wantFp] =
  process.argv.slice(2);
if (!wantFp) {
  console.error('usage: node remote_node.mjs REMOTE_JS BASE_URL USER PASSWORD_FILE DEVICE_ID ' +
    'ADMIN1_PW ADMIN2_PW FTK_COMPONENTS SP_FINGERPRINT');
  process.exit(2);
}
const { RemoteSession, field, hexText, hex, unhex } = await import(pathToFileURL(remoteJs).href);

const secret = (f) => readFileSync(f, 'utf8').replace(/\r?\n$/, '');
function check(ok, what) {
  if (!ok) throw new Error(`FAIL: ${what}`);
  console.log(`ok: ${what}`);
}

// ---- the REST API, as the console calls it ----------------------------------

let cookie = null, csrf = null;

async function http(method, path, body) {
  const headers = { 'Accept': 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (cookie) headers['Cookie'] = `kh_session=${cookie}`;
  if (csrf && method !== 'GET') headers['X-CSRF-Token'] = csrf;
  const r = await fetch(base + path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  const json = text ? JSON.parse(text) : null;
  return { status: r.status, json, headers: r.headers };
}

// api(method, path, bodyObject) -> parsed JSON; throws on an HTTP error
async function api(method, path, body) {
  const r = await http(method, path, body);
  if (r.status >= 400) {
    const e = new Error(`${method} ${path}: ${r.status} ${r.json && r.json.error}: ` +
      `${r.json && r.json.reason}`);
    e.status = r.status;
    throw e;
  }
  return r.json;
}

const login = await http('POST', '/api/login', { user, password: secret(pwFile) });
check(login.status === 200 && login.json.authorized, `guardian login as ${user}`);
cookie = login.json.session;
csrf = login.json.csrf;
check(/kh_session=/.test(login.headers.get('set-cookie') || ''), 'the session cookie is set');

// the relay refuses anything but RMKX and RMSG
const refused = await http('POST', `/api/devices/${deviceId}/admin`, { frame: '[AOMKST;]' });
check(refused.status === 400 && /only RMKX and RMSG/.test(refused.json.reason),
  'the relay refuses a plain MKST');
const noChannel = await http('POST', `/api/devices/${deviceId}/admin`, { frame: '[AORMSG;CT00;]' });
check(noChannel.status === 409, 'RMSG before RMKX: 409');
// CSRF: the cookie alone does not carry a change
{
  const saved = csrf;
  csrf = null;
  const r = await http('POST', `/api/devices/${deviceId}/admin`, { frame: '[AORMKX;PK04;]' });
  csrf = saved;
  check(r.status === 403, 'a cookie request without X-CSRF-Token: 403');
}

// ---- the channel -----------------------------------------------------------

const rs = await RemoteSession.open(api, deviceId);
check(rs.fingerprint === wantFp.toUpperCase(),
  `the fingerprint is the SHA-256 of the Admin port's server key (${rs.fingerprint.slice(0, 16)}...)`);
check(rs.certificate instanceof Uint8Array && rs.certificate.length > 100, 'the certificate (DER)');

async function ok(frame, cmd) {
  const ans = await rs.call(frame);
  if (!ans.startsWith(`[AO${cmd};`)) throw new Error(`FAIL: ${cmd}: ${ans}`);
  return ans;
}

// an inner refusal comes back sealed and the channel carries on
const early = await rs.call('[AOMKST;]');
check(early.startsWith('[AOERRO;CMMKST;'), 'MKST before login: the HSM\'s sealed ERRO');

let a = await ok(`[AOLOGN;IDAdmin1;PW${hexText(secret(a1File))};]`, 'LOGN');
check(field(a, 'BB') === 'Y' && field(a, 'AC') === 'N', 'Admin1 logged in through the channel');
a = await ok(`[AOLOGN;IDAdmin2;PW${hexText(secret(a2File))};]`, 'LOGN');
check(field(a, 'AC') === 'Y', 'Admin2 logged in: the Administrator role is active');

const st = await ok('[AOMKST;]', 'MKST');
const ft = field(st, 'FT');
check(/^Y\/AES-256\/[0-9A-F]{6}$/.test(ft), `MKST: FTK ${ft}`);
const kcv = ft.split('/')[2];

await ok('[AOMKER;KNFTK;]', 'MKER');
check(field(await ok('[AOMKST;]', 'MKST'), 'FT') === 'N', 'the FTK is erased');

await ok('[AOMKLB;KNFTK;MOC;ALAES;KL256;NP2;]', 'MKLB');
const comps = readFileSync(compFile, 'utf8').split('\n').map((l) => l.trim()).filter(Boolean);
check(comps.length === 2, 'two FTK components');
let kv = null;
for (let i = 0; i < comps.length; i++) {
  // a component travels as hex inside the sealed frame
  const ans = await ok(`[AOMKLC;CM${hex(unhex(comps[i]))};]`, 'MKLC');
  check(/^[0-9A-F]{6}$/.test(field(ans, 'AE')), `component ${i + 1}: check value ${field(ans, 'AE')}`);
  kv = field(ans, 'KV');
}
check(kv === kcv, `the FTK loaded again: KCV ${kv}, as before`);
check(field(await ok('[AOMKST;]', 'MKST'), 'FT') === `Y/AES-256/${kcv}`, 'MKST agrees');

await ok('[AOLOGO;]', 'LOGO');
await rs.close();
const after = await http('POST', `/api/devices/${deviceId}/admin`, { frame: '[AORMSG;CT00;]' });
check(after.status === 409, 'closed: the connection is gone');

// a tampered frame closes the HSM's channel
const rs2 = await RemoteSession.open(api, deviceId);
const echo = await rs2.call('[AOECHO;AGsealed;]');
check(field(echo, 'AG') === 'sealed', 'a second session: ECHO through the channel');
const forged = await api('POST', `/api/devices/${deviceId}/admin`, { frame: '[AORMSG;CT' + '00'.repeat(40) + ';]' });
check(forged.frame.startsWith('[AOERRO;CMRMSG;'), 'a forged CT: DECRYPT_FAILED from the HSM');
let threw = false;
try { await rs2.call('[AOECHO;]'); } catch { threw = true; }
check(threw, 'the channel is closed after it');
await rs2.close();

const events = await api('GET', `/api/events?device=${deviceId}&max=50`);
check(events.events.some((e) => /console remote manage of device \d+ by /.test(e.text)),
  'the guardian recorded the console\'s remote manage');
await api('POST', '/api/logout', {});
console.log('remote_node: all checks passed');
