// A person in the MLflow UI: create a registered model, set the quicktune request tags on it, then
// keep reloading its page until the watcher reports the search's end and the champion version shows.
// Usage: node request_search.js CONFIG.json
//   {"url": MLFLOW_URL, "model": NAME, "tags": [[k, v], ...], "shots": DIR, "timeout_s": 400,
//    "progress_file": PATH}   (progress_file: JSON lines of every status seen, read by the pytest side)
// Prints one JSON line per status change; exit 0 when status=succeeded and '@ champion' is shown.
// The MLflow UI polls forever: we wait for selectors, never for network idle.
const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const shot = async (page, name) => page.screenshot({ path: path.join(cfg.shots, `${name}.png`), fullPage: true });
const note = (obj) => {
  const line = JSON.stringify({ t: Date.now() / 1000, ...obj });
  console.log(line);
  if (cfg.progress_file) fs.appendFileSync(cfg.progress_file, line + '\n');
};


async function openTags(page) {
  const nameInput = page.getByTestId('tags-form-input-name');
  if (!(await nameInput.isVisible())) {
    await page.getByTestId('tags-section').getByText('Tags', { exact: true }).click();
  }
  await nameInput.waitFor({ state: 'visible', timeout: 30000 });
}

async function tagValue(page, key) {
  const row = page.getByTestId('tags-section').locator('tr', { hasText: key });
  if ((await row.count()) === 0) return null;
  const cells = await row.first().locator('td').allInnerTexts();
  const i = cells.findIndex((c) => c.trim() === key);
  return i >= 0 && i + 1 < cells.length ? cells[i + 1].trim() : null;
}

(async () => {
  const browser = await chromium.launch({
    executablePath: cfg.chromium || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
      '--disable-background-networking', '--disable-component-update', '--no-first-run'],
  });
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  page.setDefaultTimeout(30000);
  // MLflow 3.17 shows a one-time "new Model Registry UI" dialog over the models pages, at some
  // point after they load: dismiss it whenever it blocks an action.
  await page.addLocatorHandler(page.getByRole('button', { name: 'Try it now' }), async (b) => b.click());
  try {
    // 1. Models -> Create model
    await page.goto(`${cfg.url}/#/models`);
    await page.getByTestId('create-model-button').click();
    await page.locator('#modelName').fill(cfg.model);
    await shot(page, '01-create-model');
    await page.getByRole('button', { name: 'Create', exact: true }).click();
    await page.waitForURL(`**/#/models/${encodeURIComponent(cfg.model)}`);
    note({ event: 'model created' });

    // 2. the model page's tags editor: one tag at a time, the request last
    await openTags(page);
    for (const [key, value] of cfg.tags) {
      await page.getByTestId('tags-form-input-name').fill(key);
      await page.getByTestId('tags-form-input-value').fill(value);
      await page.getByTestId('add-tag-button').click();
      await page.getByTestId('tags-section').locator('tr', { hasText: key }).first().waitFor();
    }
    await shot(page, '02-request-tags');
    note({ event: 'request tagged' });

    // 3. follow the status where the person looks: reload the model page until the end
    const deadline = Date.now() + 1000 * (cfg.timeout_s || 400);
    let last = null;
    while (Date.now() < deadline) {
      await page.reload();
      await page.getByTestId('model-version-table').waitFor();
      await openTags(page);
      const status = await tagValue(page, 'quicktune.status');
      if (status !== last) {
        last = status;
        note({ event: 'status', status, incumbent: await tagValue(page, 'quicktune.incumbent'),
          parent_run: await tagValue(page, 'quicktune.parent_run') });
        // the tags table scrolls inside the page: bring the status row into the screenshot
        await page.getByTestId('tags-section').locator('tr', { hasText: 'quicktune.status' }).first()
          .scrollIntoViewIfNeeded().catch(() => {});
        await shot(page, `03-status-${(status || 'none').replace(/[^a-z]+/gi, '-').slice(0, 40)}`);
      }
      if (status && /^(failed|cancelled|rejected)/.test(status)) throw new Error(`the search ended: ${status}`);
      if (status === 'succeeded') {
        const table = page.getByTestId('model-version-table');
        const alias = table.getByText(/champion/).first();
        await alias.waitFor({ timeout: 30000 });
        const text = await table.innerText();
        note({ event: 'champion shown', alias: (await alias.innerText()).trim(),
          versions: text.replace(/\s+/g, ' ').slice(0, 2000) });
        await alias.scrollIntoViewIfNeeded();
        await shot(page, '04-champion');
        await browser.close();
        return;
      }
      await page.waitForTimeout(2000);
    }
    throw new Error(`no final status within ${cfg.timeout_s} s (last: ${last})`);
  } catch (err) {
    await shot(page, '99-error').catch(() => {});
    note({ event: 'error', message: String(err && err.message || err) });
    await browser.close();
    process.exit(1);
  }
})();
