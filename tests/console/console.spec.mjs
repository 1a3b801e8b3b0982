// The web console in headless Chromium (Debian's /usr/bin/chromium through
// playwright-core; never a downloaded browser), against the real guardian
// and HSMs that tests/integration/test_console.sh starts. Plain node: each
// step throws on failure; screenshots go to $KH_ARTIFACTS.
//
// Environment (from test_console.sh):
//   KH_CONSOLE_URL        https://127.0.0.1:<port>/
//   KH_CONSOLE_CA         the guardian's test CA (PEM): Chromium trusts it
//                         through the NSS db in $HOME/.pki/nssdb
//   KH_CONSOLE_USER, KH_CONSOLE_PASSWORD_FILE
//   KH_ARTIFACTS          where the screenshots go
//   KH_GROUP_PORT         the group's endpoint port
//   KH_HSMS               JSON [{name, port, admin_port, role, pid}] (absent: only
//                         the screens that need no HSM are checked)
//   KH_STOP               the name of the HSM to stop (SIGKILL) mid-test
import { chromium } from 'playwright-core';
import { readFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import tls from 'node:tls';
import path from 'node:path';

const require = createRequire(import.meta.url);
const env = process.env;
const URL_ = env.KH_CONSOLE_URL;
const ART = env.KH_ARTIFACTS || 'artifacts/console';
const USER = env.KH_CONSOLE_USER || 'admin';
const PASSWORD = readFileSync(env.KH_CONSOLE_PASSWORD_FILE, 'utf8').split('\n')[0];
const HSMS = env.KH_HSMS ? JSON.parse(env.KH_HSMS) : [];
const GROUP_PORT = Number(env.KH_GROUP_PORT || 0);
const AXE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
const T0 = Date.now();

mkdirSync(ART, { recursive: true });
const log = (...a) => console.log(`[${((Date.now() - T0) / 1000).toFixed(1)}s]`, ...a);
function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  log('ok:', what);
}

// The server certificate chains to the test CA for 127.0.0.1 (Node's own
// verification, before the browser relies on the NSS db for the same).
async function checkServerCert() {
  const u = new URL(URL_);
  await new Promise((resolve, reject) => {
    const s = tls.connect({ host: u.hostname, port: Number(u.port), ca: readFileSync(env.KH_CONSOLE_CA),
      servername: undefined, checkServerIdentity: tls.checkServerIdentity }, () => {
      if (!s.authorized) reject(new Error(`guardian certificate: ${s.authorizationError}`));
      const c = s.getPeerCertificate();
      log('guardian certificate', c.subject?.CN, 'SHA-256', c.fingerprint256);
      s.end();
      resolve();
    });
    s.on('error', reject);
  });
}

async function shot(page, name) {
  const file = path.join(ART, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  log('screenshot', file);
}

// axe-core in the page (evaluate is not subject to the page's CSP, which
// stays in force for the console's own code); the rules the issue names.
async function axe(page, where) {
  if (!(await page.evaluate(() => typeof window.axe !== 'undefined'))) await page.evaluate(AXE);
  const res = await page.evaluate(() => window.axe.run(document, {
    runOnly: { type: 'rule', values: ['label', 'color-contrast', 'button-name', 'link-name',
      'aria-allowed-attr', 'aria-required-attr', 'duplicate-id-aria', 'document-title',
      'html-has-lang', 'select-name', 'input-button-name'] },
  }));
  const bad = res.violations.map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
  if (bad.length) throw new Error(`axe on ${where}:\n  ${bad.join('\n  ')}`);
  log(`ok: axe on ${where}: no violations (${res.passes.length} rules passed)`);
}

const text = (page, sel) => page.locator(sel).innerText();

async function waitFor(fn, what, ms = 60000, every = 500) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try { last = await fn(); if (last) { log('ok:', what); return last; } } catch (e) { last = e; }
    await new Promise((r) => setTimeout(r, every));
  }
  throw new Error(`timed out (${ms} ms): ${what} (last: ${last})`);
}

async function main() {
  await checkServerCert();
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    // HOME holds the NSS db that trusts the guardian's test CA: no
    // certificate error is ignored
    env: { ...process.env },
  });
  const ctx = await browser.newContext({ viewport: { width: 1360, height: 900 } });
  const page = await ctx.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/the server responded with a status of (401|403|404|409|422|502)/.test(m.text()))
      problems.push(`console error: ${m.text()}`);
  });
  page.on('dialog', (d) => d.accept());

  try {
    // ---- login, keyboard only ----
    const resp = await page.goto(URL_);
    check(resp.status() === 200, 'GET / answers 200 over HTTPS with the test CA trusted');
    const h = resp.headers();
    check(h['content-security-policy']?.includes("script-src 'self'"), 'the page has its CSP');
    await page.waitForSelector('#login-form');
    await axe(page, 'the login screen');
    await shot(page, '01-login');
    await page.evaluate(() => document.activeElement?.blur());
    let reached = false;
    for (let i = 0; i < 12 && !reached; i++) {
      await page.keyboard.press('Tab');
      reached = await page.evaluate(() => document.activeElement?.id === 'login-user');
    }
    check(reached, 'Tab reaches the login form');
    await page.keyboard.type('nobody');
    await page.keyboard.press('Tab');
    await page.keyboard.type('wrong-password-1');
    await page.keyboard.press('Enter');
    await waitFor(async () => (await text(page, '#login-error')).includes('AUTH_FAILED'), 'a wrong password is refused');
    check(await page.inputValue('#login-password') === '', 'the password field is cleared after use');
    check(await page.evaluate(() => document.activeElement?.id) === 'login-user', 'focus returns to the user field');
    await page.keyboard.type(USER); // replaces the selected name
    await page.keyboard.press('Tab');
    await page.keyboard.type(PASSWORD);
    await page.keyboard.press('Enter');
    await page.waitForSelector('#screen-devices:not([hidden])');
    check(await page.inputValue('#login-password') === '', 'the password field is cleared after login');
    check((await text(page, '#who')).includes(USER), 'the header names the user');
    const stored = await page.evaluate(() => JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }) + document.cookie);
    check(!stored.includes(PASSWORD) && !/[0-9a-f]{64}/.test(stored),
      'no password, session or CSRF token in storage or document.cookie (HttpOnly)');
    const cookies = await ctx.cookies();
    const kc = cookies.find((c) => c.name === 'kh_session');
    check(kc && kc.httpOnly && kc.secure && kc.sameSite === 'Strict', 'the session cookie is Secure, HttpOnly, SameSite=Strict');
    await axe(page, 'Encryption Devices (empty)');

    // ---- the Encryption Device Group window ----
    await page.click('#add-group');
    await page.waitForSelector('#dlg-group[open]');
    await page.fill('#g-name', 'Payments');
    await page.fill('#g-port', String(GROUP_PORT || 19999));
    await page.fill('#g-description', 'PKCS #11 applications');
    await page.check('#g-pair-http-allow');
    await page.selectOption('#g-pair-excrypt-conn', 'SSL');
    await axe(page, 'the Encryption Device Group window');
    await page.click('#g-save');
    await waitFor(async () => (await text(page, '#g-warnings')).includes('no HTTP service'),
      "the API's warning for the HTTP pair is shown");
    await shot(page, '02-group-window');
    await page.keyboard.press('Escape');
    await waitFor(async () => !(await page.locator('#dlg-group').evaluate((d) => d.open)), 'Escape closes the dialog');
    // edit: the HTTP pair off again, no warnings, the dialog closes
    const gid = await page.locator('li.group').first().getAttribute('data-group');
    await page.click(`#g${gid}-edit`);
    check(await page.inputValue('#g-name') === 'Payments', 'the group window opens with the group');
    await page.uncheck('#g-pair-http-allow');
    await page.click('#g-save');
    await waitFor(async () => !(await page.locator('#dlg-group').evaluate((d) => d.open)), 'an edit without warnings closes the window');

    if (HSMS.length === 0) {
      log('no HSMs given: the device steps are skipped');
    } else {
      // ---- three devices ----
      for (const d of HSMS) {
        await page.click(`#g${gid}-add`);
        await page.waitForSelector('#dlg-device[open]');
        await page.fill('#d-host', '127.0.0.1');
        await page.fill('#d-port', String(d.port));
        await page.fill('#d-admin-port', String(d.admin_port));
        await page.selectOption('#d-role', d.role);
        await page.fill('#d-ping', '2000');
        if (d.role === 'Primary') await shot(page, '03-add-device');
        await page.click('#d-save');
        await waitFor(async () => !(await page.locator('#dlg-device').evaluate((x) => x.open)),
          `device ${d.name} (${d.role}) added`, 90000);
      }
      const rowOf = (d) => page.locator(`tr[data-device]`, { hasText: `127.0.0.1:${d.port}` });
      for (const d of HSMS)
        await waitFor(async () => (await rowOf(d).getAttribute('data-state')) === 'up', `${d.name} is up`, 60000);
      const ids = {};
      for (const d of HSMS) ids[d.name] = Number(await rowOf(d).getAttribute('data-device'));
      const stopped = HSMS.find((d) => d.name === env.KH_STOP) || HSMS[1];
      await axe(page, 'Encryption Devices with three devices');

      // ---- the plot of the device to be stopped, with traffic ----
      await page.click(`#d${ids[stopped.name]}-plot`);
      const plot = page.locator('#plot');
      await waitFor(async () => Number(await plot.getAttribute('data-last-rps')) >= 1,
        `the plot of ${stopped.name} shows its share of the traffic`, 90000);
      await shot(page, '04-devices-up-plot');
      const before = { t: Number(await plot.getAttribute('data-last-t')), summary: await text(page, '#plot-summary') };

      // ---- stop one: its state changes, its plot moves ----
      log(`stopping ${stopped.name} (pid ${stopped.pid})`);
      const tKill = Date.now();
      process.kill(stopped.pid, 'SIGKILL');
      await waitFor(async () => (await rowOf(stopped).getAttribute('data-state')) === 'down',
        `${stopped.name}'s state turns down`, 60000);
      const badge = await rowOf(stopped).locator('.badge').innerText();
      check(badge.includes('down'), 'the state is shown as text too');
      await waitFor(async () => Number(await plot.getAttribute('data-last-t')) > tKill - 1000 &&
          Number(await plot.getAttribute('data-last-t')) > before.t &&
          Number(await plot.getAttribute('data-last-rps')) === 0,
        `${stopped.name}'s plot moves: a new sample with no requests`, 60000);
      check((await text(page, '#plot-summary')) !== before.summary, 'the plot summary changed');
      await shot(page, '05-device-down-plot');
      // the group's plot sums its devices: the others still serve
      await page.click(`#g${gid}-plot`);
      await waitFor(async () => (await text(page, '#plot-title')).includes('Group Payments') &&
        Number(await plot.getAttribute('data-requests')) > 0, "the group's plot sums its devices", 30000);
      await shot(page, '06-group-plot');

      // ---- diagnose: the stopped one fails, the Primary passes ----
      await page.click(`#d${ids[stopped.name]}-diagnose`);
      await waitFor(async () => (await page.locator('#diag-steps li').count()) > 0, 'the diagnose result has steps', 60000);
      const failed = await page.locator('#diag-steps .badge', { hasText: 'failed' }).count();
      check(failed >= 1, 'a failed step is shown for the stopped device');
      await axe(page, 'the diagnose result');
      await shot(page, '07-diagnose-down');
      await page.keyboard.press('Escape');
      const primary = HSMS.find((d) => d.role === 'Primary');
      await page.click(`#d${ids[primary.name]}-diagnose`);
      await waitFor(async () => (await text(page, '#diag-summary')).includes('Every step passed'), 'the Primary passes every step', 60000);
      await shot(page, '08-diagnose-ok');
      await page.keyboard.press('Escape');

      // ---- the event log ----
      await page.click('#nav-events');
      await page.waitForSelector('#screen-events:not([hidden])');
      await waitFor(async () => (await text(page, '#ev-rows')).toLowerCase().includes('down'),
        'the event log shows the device going down', 30000);
      await axe(page, 'the event log');
      await shot(page, '09-events');

      // ---- Remote Manage (when remote.js is built in) ----
      await page.click('#nav-remote');
      await page.waitForSelector('#screen-remote:not([hidden])');
      const hasRemote = await page.evaluate(async () => (await fetch('/console/remote.js')).ok);
      if (hasRemote) {
        await page.selectOption('#rm-device', String(ids[primary.name]));
        await page.click('#rm-open-btn');
        await waitFor(async () => (await text(page, '#rm-fp')).length > 20, 'the HSM key fingerprint is shown', 30000);
        check((await text(page, '#rm-pin')).includes('First contact'), 'a first contact asks to pin the key');
        await page.click('#rm-trust');
        check((await text(page, '#rm-pin')).includes('Matches'), 'the pinned key matches');
        // the HSM's two administrators log in through the sealed channel
        await page.fill('#rm-pw1', readFileSync(env.KH_HSM_ADMIN1_FILE, 'utf8'));
        await page.fill('#rm-pw2', readFileSync(env.KH_HSM_ADMIN2_FILE, 'utf8'));
        await page.click('#rm-login button[type=submit]');
        await waitFor(async () => (await text(page, '#rm-login-out')).includes('active yes'),
          'both HSM administrators logged in through the sealed channel', 30000);
        check((await page.inputValue('#rm-pw1')) === '' && (await page.inputValue('#rm-pw2')) === '',
          'the HSM passwords are cleared after use');
        await page.click('#rm-mkst');
        await waitFor(async () => (await text(page, '#rm-mk-rows')).includes('loaded'), 'MKST through the sealed channel', 30000);
        await axe(page, 'Remote Manage');
        await shot(page, '10-remote-manage');
        await page.click('#rm-close');
      } else {
        log('remote.js is not built in yet: Remote Manage is only shown');
        await axe(page, 'Remote Manage');
        await shot(page, '10-remote-manage');
      }
    }

    // ---- a session that ends brings back the login screen ----
    await page.click('#nav-devices');
    await ctx.clearCookies();
    await page.waitForSelector('#screen-login:not([hidden])', { timeout: 15000 });
    check((await text(page, '#login-note')).includes('session has ended'), 'an ended session brings back the login screen');
    await shot(page, '11-session-ended');

    const csp = problems.filter((p) => /Content Security Policy/i.test(p));
    check(csp.length === 0, `no Content-Security-Policy violation${csp.length ? ': ' + csp.join('; ') : ''}`);
    check(problems.length === 0, `no script error in the page${problems.length ? ': ' + problems.join('; ') : ''}`);
  } catch (e) {
    await shot(page, 'failure').catch(() => {});
    throw e;
  } finally {
    await browser.close();
  }
  log('PASS');
}

main().catch((e) => { console.error('FAIL:', e.message); process.exit(1); });
