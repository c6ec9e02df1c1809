// The dashboard in a real browser (Debian's chromium, driven by playwright-core), against a
// real fleet that tests/tests/fleet/dashboard.rs started. Environment: BASE (the orchestrator's
// URL), ADMIN_KEY, ALICE_KEY, BOB_KEY, START_BODY (a start request for alice, JSON), SHOTS (a
// folder for screenshots), CHROMIUM (the browser, default /usr/bin/chromium).
// Exits 0 when every step passed; on a failure it saves a screenshot of every open page under
// SHOTS and exits 1.

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';

const AXE = createRequire(import.meta.url).resolve('axe-core/axe.min.js');

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const BASE = env('BASE');
const SHOTS = env('SHOTS');
mkdirSync(SHOTS, { recursive: true });
const keys = { admin: env('ADMIN_KEY'), alice: env('ALICE_KEY'), bob: env('BOB_KEY') };
const TIMEOUT = 30_000;

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
  console.log(`ok - ${what}`);
}

async function api(key, path, body) {
  const res = await fetch(BASE + path, {
    method: body ? 'POST' : 'GET',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: res.status, body: await res.json() };
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const pages = {};
const requests = [];

async function signedIn(who, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1366, height: 900 }, ...options });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on('request', (r) => requests.push(r.url()));
  page.on('pageerror', (e) => console.log(`page error (${who}): ${e.message}`));
  pages[options.name || who] = page;
  await page.goto(`${BASE}/ui`);
  // By keyboard only: the key field has the focus, Enter signs in.
  await page.waitForFunction(() => document.activeElement && document.activeElement.id === 'key');
  await page.keyboard.type(keys[who]);
  await page.keyboard.press('Enter');
  await page.getByRole('navigation', { name: 'Sections' }).waitFor();
  return page;
}

try {
  // A wrong key is refused on the sign-in form.
  {
    const context = await browser.newContext();
    const page = await context.newPage();
    pages.stranger = page;
    await page.goto(`${BASE}/ui`);
    await page.getByLabel('API key').fill('rfk_nope_nope');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('alert').filter({ hasText: 'refused' }).waitFor();
    check(true, 'a wrong key is refused at sign-in');
    await context.close();
    delete pages.stranger;
  }

  const alice = await signedIn('alice');
  await alice.getByRole('heading', { name: 'Runners' }).waitFor();
  check(await alice.getByRole('link', { name: 'Overview' }).isHidden(), 'a user key sees no admin sections');
  await alice.evaluate(() => { window.notReloaded = true; });

  const started = await api(keys.alice, '/v1/runners', JSON.parse(env('START_BODY')));
  check(started.status === 202, `alice's runner is admitted (${started.status})`);
  const job = started.body.jobId;
  const row = alice.locator(`tr[data-job="${job}"]`);
  await row.waitFor();
  check(true, 'the new runner appears in the list without a reload');
  await row.locator('td[data-status="running"]').waitFor();
  check(await alice.evaluate(() => window.notReloaded === true), 'it turned running without a reload');

  await row.getByRole('link', { name: job }).click();
  await alice.getByRole('heading', { name: /running/ }).waitFor();
  const title = await alice.getByRole('heading', { level: 1 }).textContent();
  check(title.includes('<img src=x') && await alice.evaluate(() => window.pwned === undefined)
    && await alice.locator('main img').count() === 0, `a hostile runner name is shown as text (${title})`);
  await alice.locator('#stats').waitFor();
  // Positions and stats come with the heartbeats; the PnL chart fills in as they do.
  await alice.locator('figure.chart svg').waitFor();
  check(true, "the runner's page shows its status, stats and PnL chart");
  await alice.getByText('claimed').first().waitFor();
  check(true, 'its history lists the claim');

  await alice.getByLabel(/close every position/).check();
  await alice.getByRole('button', { name: 'Stop' }).click();
  const result = alice.locator('#stop-result');
  await result.waitFor();
  const said = await result.textContent();
  check(/Stopped: \d+ positions closed/.test(said), `stopped with flatten: "${said}"`);
  await alice.getByRole('heading', { name: /stopped/ }).waitFor();
  await alice.locator('#no-positions').waitFor();
  const trades = await alice.locator('[data-stat="totalTrades"]').textContent();
  check(/^\d+$/.test(trades.trim()), `the final stats are shown (${trades} trades)`);
  const pnl = await alice.locator('[data-stat="totalPnL"]').textContent();
  check(/^−?[\d,]+(\.\d+)? [A-Z]{3}$/.test(pnl.trim()), `the PnL is shown as money (${pnl})`);

  // Another user sees none of it.
  const bob = await signedIn('bob');
  await bob.getByText('No runner matches.').waitFor();
  check(true, "a second user's list does not show alice's runner");
  await bob.goto(`${BASE}/ui#/runner/${job}`);
  await bob.getByRole('alert').waitFor();
  check(await bob.locator('#stats').count() === 0, "nor can it open alice's runner");

  // The admin's overview, with the runners the fleet test keeps running on two nodes.
  const admin = await signedIn('admin');
  await admin.getByRole('heading', { name: 'Fleet overview' }).waitFor();
  await admin.waitForFunction(() => document.querySelectorAll('tr[data-node]').length >= 2);
  check(true, 'the admin sees both nodes with their capacity');
  await admin.locator('figure.chart svg polyline').first().waitFor({ state: 'attached' });
  await admin.screenshot({ path: `${SHOTS}/dashboard-overview.png`, fullPage: true });
  await admin.getByRole('link', { name: 'Runners' }).click();
  await admin.locator('tr[data-job]').first().waitFor();
  await admin.screenshot({ path: `${SHOTS}/dashboard-runners.png`, fullPage: true });
  await alice.screenshot({ path: `${SHOTS}/dashboard-runner.png`, fullPage: true });

  // Accessibility: axe-core's WCAG 2 A/AA rules on every view; a serious or critical finding
  // fails. (axe is injected, so this context lets scripts past the page's CSP.)
  const audit = await signedIn('admin', { bypassCSP: true, name: 'axe' });
  for (const [view, ready] of [['#/overview', 'tr[data-node]'], ['#/runners', 'tr[data-job]'],
    [`#/runner/${job}`, '#stats'], ['#/entitlements', '#e-user']]) {
    await audit.goto(`${BASE}/ui${view}`);
    await audit.locator(ready).first().waitFor();
    await audit.addScriptTag({ path: AXE });
    const found = await audit.evaluate(async () => (await window.axe.run(document,
      { runOnly: ['wcag2a', 'wcag2aa'] })).violations
      .filter((v) => ['serious', 'critical'].includes(v.impact))
      .map((v) => `${v.id}: ${v.help} (${v.nodes.length}× e.g. ${v.nodes[0].target})`));
    check(found.length === 0, `no serious accessibility finding on ${view}${found.length ? ': ' + found.join('; ') : ''}`);
  }

  // A key revoked while signed in: the next call is refused and the page signs out.
  const bobKeyId = (await api(keys.bob, '/v1/me')).body.keyId;
  const revoked = await fetch(`${BASE}/v1/users/bob/keys/${bobKeyId}`,
    { method: 'DELETE', headers: { authorization: `Bearer ${keys.admin}` } });
  check(revoked.status === 200, 'the admin revokes bob\'s key');
  await bob.goto(`${BASE}/ui#/runners`);
  await bob.getByRole('heading', { name: 'Sign in' }).waitFor();
  check(await bob.evaluate(() => sessionStorage.length === 0), 'a revoked key signs the page out and is forgotten');

  const leaked = requests.filter((u) => Object.values(keys).some((k) => u.includes(k)));
  check(leaked.length === 0, 'no key ever appears in a URL the pages asked for');
  console.log('all checks passed');
  await browser.close();
} catch (e) {
  console.log(`FAILED: ${e.stack || e}`);
  for (const [who, page] of Object.entries(pages)) {
    try {
      await page.screenshot({ path: `${SHOTS}/failure-${who}.png`, fullPage: true });
      console.log(`screenshot: ${SHOTS}/failure-${who}.png`);
    } catch { /* the page is gone */ }
  }
  await browser.close();
  process.exit(1);
}
