// Drive examples/web/ in headless Chromium (the system's, through puppeteer-core: nothing is
// downloaded) and print one JSON line: the page's final state and status, window.lmexport
// (load, turns), the URL paths it requested, its console, and whether the tab crashed.
//   node browser.mjs URL STEPS_JSON
// STEPS_JSON: [{"mode": "chat"|"complete", "prompt": "...", "max_new_tokens": N} | {"reset": true}, ...]
// Environment: LMEXPORT_CHROMIUM (default /usr/bin/chromium), LMEXPORT_BROWSER_TIMEOUT_S
// (default 120: each wait; the whole run gets twice that times the steps plus one).
import puppeteer from 'puppeteer-core';

const [url, stepsJson = '[]'] = process.argv.slice(2);
const steps = JSON.parse(stepsJson);
const executablePath = process.env.LMEXPORT_CHROMIUM ?? '/usr/bin/chromium';
const timeout = 1000 * Number(process.env.LMEXPORT_BROWSER_TIMEOUT_S ?? 120);
const log = [], requests = [];
let browser = null, crashed = false;

async function finish(result, code) {
    clearTimeout(watchdog);
    console.log(JSON.stringify({ ...result, requests, log, crashed }));
    try { await browser?.close(); } catch { /* already gone */ }
    process.exit(code);
}
const watchdog = setTimeout(() => finish({ state: 'timeout', status: 'the run took too long' }, 3),
    2 * timeout * (steps.length + 1));

const settled = (previous) => {
    const state = document.body.dataset.state;
    return state === 'error' || (state === 'ready' && window.lmexport.turns.length > previous);
};

try {
    browser = await puppeteer.launch({
        executablePath,
        headless: true,
        timeout: 30000,
        // --no-sandbox: CI containers run as root, where Chromium's sandbox cannot start
        args: ['--no-sandbox', '--disable-dev-shm-usage', '--no-first-run', '--disable-extensions'],
    });
    const page = await browser.newPage();
    page.setDefaultTimeout(timeout);
    page.on('console', (m) => log.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => log.push(`pageerror: ${e.message}`));
    page.on('error', (e) => { crashed = true; log.push(`crash: ${e.message}`); });
    page.on('request', (r) => requests.push(new URL(r.url()).pathname));
    await page.goto(url, { waitUntil: 'domcontentloaded' });
    await page.waitForFunction(() => ['ready', 'error'].includes(document.body.dataset.state));
    for (const step of steps) {
        if (await page.evaluate(() => document.body.dataset.state) === 'error') break;
        if (step.reset) { await page.click('#reset'); continue; }
        const before = await page.evaluate(() => window.lmexport.turns.length);
        await page.$eval('#prompt', (el, value) => { el.value = value; }, step.prompt);
        await page.$eval('#max-new', (el, value) => { el.value = String(value); }, step.max_new_tokens);
        await page.click(`input[name=mode][value=${step.mode}]`);
        await page.click('#send');
        await page.waitForFunction(settled, {}, before);
    }
    const result = await page.evaluate(() => ({
        state: document.body.dataset.state,
        status: document.getElementById('status').textContent,
        load: window.lmexport.load,
        turns: window.lmexport.turns,
        error: window.lmexport.error,
    }));
    await finish(result, 0);
} catch (error) {
    await finish({ state: 'driver-error', status: String(error?.stack ?? error) }, 1);
}
