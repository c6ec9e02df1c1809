import { chromium } from 'playwright-core';
const BASE = process.env.BASE, KEY = process.env.KEY, OUT = process.env.OUT;
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run'] });
const page = await (await browser.newContext({ viewport: { width: 1366, height: 860 } })).newPage();
await page.goto(`${BASE}/ui`);
await page.getByLabel('API key').fill(KEY);
await page.keyboard.press('Enter');
await page.getByRole('heading', { name: 'Fleet overview' }).waitFor();
await page.waitForTimeout(4000);
await page.screenshot({ path: `${OUT}/overview.png`, fullPage: true });
await page.getByRole('link', { name: 'Runners' }).click();
await page.locator('tr[data-job]').first().waitFor();
await page.screenshot({ path: `${OUT}/runners.png`, fullPage: true });
await page.locator('tr[data-job] a').first().click();
await page.locator('#stats').waitFor();
await page.waitForTimeout(1500);
await page.screenshot({ path: `${OUT}/runner.png`, fullPage: true });
await browser.close();
