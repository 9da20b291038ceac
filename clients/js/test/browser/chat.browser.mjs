// The chat page in a real browser: Debian's Chromium (/usr/bin/chromium, or $CHROMIUM) driven
// headless by playwright-core, against a real broker (target/debug/ringpost, or $RINGPOST_BIN)
// that serves the page itself on its WebSocket port. Two users in two browser contexts (their
// own storage, so their own devices) sign in by pasting tokens, talk 1:1 and in a group, one
// page is reloaded after messages arrived for it offline, the other after sending messages whose
// stream copies its connection was never sent (replayed then, still shown once), the broker is
// killed (the pages show "reconnecting…"), a message is written meanwhile, and the broker comes
// back on the same data directory and ports: the pages reconnect and deliver it; a message from
// alice's other device (the Node client) shows on her page as sent. Every wait is on page
// state, never a fixed sleep. Screenshots of the main steps are saved under $RINGPOST_BROWSER_OUT
// (`make test-browser` sets target/browser/), else in the test's temp dir, which is removed
// after a clean run and kept (its path printed) when a step failed.
//
//   make test-browser      (or: RINGPOST_BIN=... node --test --test-reporter=spec test/browser/)
//
// RINGPOST_WEB_DIR=/path/to/src/web serves the page's scripts and style sheet from that
// directory instead of the copies embedded in the broker binary, for checking changes to them
// against a prebuilt broker (index.html still comes from the broker: a routed document would
// lose its local origin, and Chromium then blocks its WebSocket to 127.0.0.1). `make
// test-browser` leaves it unset and tests what the broker serves.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { extname, join } from 'node:path';

import { chromium } from 'playwright-core';

import { connect } from '../../dist/index.js';
import { Broker, mintToken, uniqueUser } from '../support/broker.mjs';
import { nameOn, owner } from '../support/routing.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
// These machines need every one of them (no sandbox for root, no GPU, no network besides ours).
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
/** Upper bound for one expected page change on a loaded 2-core CI box. */
const WAIT = 20_000;

const dir = mkdtempSync(join(tmpdir(), 'ringpost-browser-'));
const shots = process.env.RINGPOST_BROWSER_OUT ?? dir;
mkdirSync(shots, { recursive: true });

/** One screenshot per step worth looking at (`make test-browser` puts them in target/browser/). */
const snap = (page, name) => page.screenshot({ path: join(shots, `${name}.png`) });
const WEB_DIR = process.env.RINGPOST_WEB_DIR;
const WEB_TYPES = { '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8' };

/** RINGPOST_WEB_DIR: the page's scripts and styles (not the document) come from that directory. */
async function serveWebDir(context) {
  const name = (url) => url.pathname.slice(1);
  const ours = (url) => url.host === broker.wsAddr && WEB_TYPES[extname(url.pathname)] !== undefined
    && existsSync(join(WEB_DIR, name(url)));
  await context.route(ours, (route) => {
    const file = name(new URL(route.request().url()));
    return route.fulfill({ path: join(WEB_DIR, file), contentType: WEB_TYPES[extname(file)] });
  });
}
let failed = false;
let broker;
let browser;
const users = {};
const pages = {};
const group = uniqueUser('team');

before(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`no Chromium at ${CHROMIUM}: apt-get install -y chromium (.ci/run does), or set CHROMIUM`);
  }
  // Alice and bob on different shards: their messages cross the mesh.
  users.alice = nameOn(uniqueUser('alice'), 0, (n) => owner(n, 2));
  users.bob = nameOn(uniqueUser('bob'), 1, (n) => owner(n, 2));
  broker = await Broker.start({ shards: 2 });
  // Playwright gives the browser a fresh profile (--user-data-dir) under the temp dir: ours.
  process.env.TMPDIR = join(dir, 'tmp');
  mkdirSync(process.env.TMPDIR);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: WAIT });
  for (const who of ['alice', 'bob']) {
    const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
    context.setDefaultTimeout(WAIT);
    if (WEB_DIR) await serveWebDir(context);
    pages[who] = await context.newPage();
    pages[who].on('pageerror', (e) => console.error(`${who}'s page: ${e.message}`));
  }
});

after(async () => {
  await browser?.close();
  await broker?.stop();
  if (failed) console.log(`browser test: screenshot (if taken) and browser profile kept in ${dir}`);
  else rmSync(dir, { recursive: true, force: true });
});

/** Runs one step; a failed step marks the run failed (later steps depend on it and are skipped). */
function step(name, fn) {
  test(name, async (t) => {
    if (failed) return t.skip('an earlier step failed');
    try {
      await fn();
    } catch (e) {
      failed = true;
      throw e;
    }
  });
}

const sel = {
  state: (s) => `[data-testid=connection-state][data-state="${s}"]`,
  conv: (kind, peer) => `[data-testid=conversation][data-kind="${kind}"][data-peer="${peer}"]`,
};

/** The messages of the open conversation as the page shows them. */
function shown(page) {
  return page.$$eval('[data-testid=message-list] > li', (items) => items
    .filter((li) => li.dataset.testid === 'message' || li.dataset.testid === 'group-event')
    .map((li) => (li.dataset.testid === 'group-event'
      ? `event: ${li.textContent}`
      : `${li.dataset.direction} ${li.dataset.state}: ${li.querySelector('[data-testid=message-text]').textContent}`)));
}

/** Waits until the open conversation shows exactly `expected` (in order). */
async function expectShown(page, expected) {
  try {
    await page.waitForFunction((want) => {
      const got = [...document.querySelectorAll('[data-testid=message-list] > li')]
        .filter((li) => li.dataset.testid === 'message' || li.dataset.testid === 'group-event')
        .map((li) => (li.dataset.testid === 'group-event'
          ? `event: ${li.textContent}`
          : `${li.dataset.direction} ${li.dataset.state}: ${li.querySelector('[data-testid=message-text]').textContent}`));
      return JSON.stringify(got) === JSON.stringify(want);
    }, expected, { timeout: WAIT });
  } catch (e) {
    assert.deepEqual(await shown(page), expected, `${e.message}`);
  }
}

async function write(page, text) {
  await page.fill('[data-testid=composer-input]', text);
  await page.press('[data-testid=composer-input]', 'Enter');
}

async function unread(page, kind, peer) {
  const badge = page.locator(`${sel.conv(kind, peer)} [data-testid=unread-count]`);
  return (await badge.count()) ? Number(await badge.textContent()) : 0;
}

step('two users sign in by pasting their tokens, on the page the broker serves', async () => {
  for (const who of ['alice', 'bob']) {
    const page = pages[who];
    await page.goto(broker.pageUrl);
    assert.equal(await page.title(), 'ringpost');
    await page.locator(sel.state('signed-out')).waitFor();
    await page.fill('[data-testid=token-input]', mintToken(users[who]));
    await page.click('[data-testid=connect-button]');
    await page.locator(sel.state('online')).waitFor();
    assert.equal(await page.textContent('[data-testid=current-user]'), users[who]);
    assert.equal(await page.isVisible('[data-testid=chat-view]'), true);
  }
});

step('1:1: sent messages turn acked, the other side gets them once with an unread count', async () => {
  const { alice, bob } = pages;
  await alice.fill('[data-testid=new-chat-input]', users.bob);
  await alice.press('[data-testid=new-chat-input]', 'Enter');
  assert.equal(await alice.textContent('[data-testid=conversation-title]'), users.bob);
  await write(alice, 'hello bob');
  // Shown at once; the SendAck makes it "acked"; its echo only confirms it (still one bubble).
  await expectShown(alice, ['out acked: hello bob']);
  await bob.locator(`${sel.conv('user', users.alice)} [data-testid=unread-count]`).waitFor();
  assert.equal(await unread(bob, 'user', users.alice), 1);
  await bob.click(sel.conv('user', users.alice));
  await expectShown(bob, ['in received: hello bob']);
  assert.equal(await unread(bob, 'user', users.alice), 0, 'opening the conversation reads it');
  await write(bob, 'hi alice');
  await expectShown(bob, ['in received: hello bob', 'out acked: hi alice']);
  await expectShown(alice, ['out acked: hello bob', 'in received: hi alice']);
  assert.equal(await unread(alice, 'user', users.bob), 0, 'open conversation: nothing unread');
  await snap(bob, '1-one-to-one');
});

step('a group: created with a member, messages both ways, membership events in the conversation', async () => {
  const { alice, bob } = pages;
  await alice.click('[data-testid=new-group-button]');
  await alice.fill('[data-testid=group-name-input]', group);
  await alice.fill('[data-testid=group-members-input]', users.bob);
  await alice.click('[data-testid=create-group-button]');
  await alice.locator(sel.conv('group', group)).waitFor();
  assert.equal(await alice.textContent('[data-testid=conversation-title]'), group);
  await expectShown(alice, [`event: You created the group with ${users.bob}`]);
  await write(alice, 'hello team');
  await expectShown(alice, [`event: You created the group with ${users.bob}`, 'out acked: hello team']);
  const members = [users.alice, users.bob].sort().map((u) => (u === users.alice ? 'You' : u)).join(', ');
  assert.equal(await alice.textContent('[data-testid=conversation-members]'), `2 members: ${members}`);

  await bob.locator(`${sel.conv('group', group)} [data-testid=unread-count]`).waitFor();
  await bob.waitForFunction((s) => document.querySelector(s)?.textContent === '2', `${sel.conv('group', group)} [data-testid=unread-count]`);
  await bob.click(sel.conv('group', group));
  await expectShown(bob, [`event: ${users.alice} created the group with You`, 'in received: hello team']);
  assert.equal(await bob.textContent('[data-testid=message-list] .sender'), users.alice, 'group messages name their sender');
  await write(bob, 'hi team');
  await expectShown(bob, [`event: ${users.alice} created the group with You`, 'in received: hello team', 'out acked: hi team']);
  await expectShown(alice, [`event: You created the group with ${users.bob}`, 'out acked: hello team', 'in received: hi team']);
  await snap(alice, '2-group');
});

step('reload: messages that arrived while the page was away show once, with nothing repeated', async () => {
  const { alice, bob } = pages;
  await bob.goto('about:blank'); // the page and its connection go away; sessionStorage stays
  await alice.click(sel.conv('user', users.bob));
  await write(alice, 'while you were away 1');
  await write(alice, 'while you were away 2');
  await expectShown(alice, ['out acked: hello bob', 'in received: hi alice', 'out acked: while you were away 1', 'out acked: while you were away 2']);
  await bob.goto(broker.pageUrl); // signs in again with the saved token, resumes after its last seq
  await bob.locator(sel.state('online')).waitFor();
  await bob.locator(`${sel.conv('user', users.alice)} [data-testid=unread-count]`).waitFor();
  assert.equal(await unread(bob, 'user', users.alice), 2);
  await bob.click(sel.conv('user', users.alice));
  await expectShown(bob, ['in received: hello bob', 'out acked: hi alice', 'in received: while you were away 1', 'in received: while you were away 2']);
  await bob.click(sel.conv('group', group));
  await expectShown(bob, [`event: ${users.alice} created the group with You`, 'in received: hello team', 'out acked: hi team']);
  await snap(bob, '3-after-reload');
});

step('alice reloads: the copies of her own sends, replayed from her stored lastSeq, show once, as hers', async () => {
  const { alice } = pages;
  const stored = () => alice.evaluate((u) => JSON.parse(localStorage.getItem(`ringpost:v1:${u}`)), users.alice);
  const before = await stored();
  const last = before.conversations[`user:${users.bob}`].messages.find((m) => m.text === 'while you were away 2');
  // Her SendAck named the copy's seq; her connection was never sent it, so lastSeq is before it.
  assert.ok(last.seq > before.lastSeq, `copy at ${last.seq}, lastSeq ${before.lastSeq}`);
  await alice.reload();
  await alice.locator(sel.state('online')).waitFor();
  await alice.waitForFunction(([u, seq]) => JSON.parse(localStorage.getItem(`ringpost:v1:${u}`)).lastSeq >= seq,
    [users.alice, last.seq], { timeout: WAIT });
  await alice.click(sel.conv('user', users.bob));
  await expectShown(alice, ['out acked: hello bob', 'in received: hi alice', 'out acked: while you were away 1', 'out acked: while you were away 2']);
  const tick = alice.locator('[data-testid=message]:last-child [data-testid=message-state]');
  assert.equal(await tick.getAttribute('data-origin'), 'here', 'recognised as sent from this page');
  assert.equal(await unread(alice, 'user', users.bob), 0);
});

step('the broker is killed: both pages show "reconnecting…"; a message written meanwhile waits', async () => {
  const { alice, bob } = pages;
  await bob.click(sel.conv('user', users.alice));
  await broker.kill(); // SIGKILL
  for (const page of [alice, bob]) {
    await page.locator(sel.state('reconnecting')).waitFor();
    assert.equal(await page.textContent('[data-testid=connection-state]'), 'Reconnecting…');
    assert.match(await page.textContent('[data-testid=banner]'), /reconnecting/);
  }
  await write(alice, 'sent while the broker was down');
  await expectShown(alice, ['out acked: hello bob', 'in received: hi alice', 'out acked: while you were away 1',
    'out acked: while you were away 2', 'out queued: sent while the broker was down']);
  await snap(alice, '4-reconnecting');
});

step('the broker restarts on the same data and ports: the pages reconnect and deliver the waiting message', async () => {
  const { alice, bob } = pages;
  await broker.restart();
  for (const page of [alice, bob]) await page.locator(sel.state('online')).waitFor();
  await expectShown(alice, ['out acked: hello bob', 'in received: hi alice', 'out acked: while you were away 1',
    'out acked: while you were away 2', 'out acked: sent while the broker was down']);
  await expectShown(bob, ['in received: hello bob', 'out acked: hi alice', 'in received: while you were away 1',
    'in received: while you were away 2', 'in received: sent while the broker was down']);
  assert.equal(await bob.isVisible('[data-testid=banner]'), false);
  await snap(bob, '5-reconnected');
});

step('what alice sends from another device shows on her page as sent, once, and reaches bob', async () => {
  const { alice, bob } = pages;
  await alice.click(sel.conv('user', users.bob));
  const phone = await connect({ url: broker.url, token: mintToken(users.alice), deviceId: 'phone' });
  try {
    await phone.send(users.bob, 'from my phone');
  } finally {
    phone.close();
  }
  await expectShown(alice, ['out acked: hello bob', 'in received: hi alice', 'out acked: while you were away 1',
    'out acked: while you were away 2', 'out acked: sent while the broker was down', 'out acked: from my phone']);
  const tick = alice.locator('[data-testid=message]:last-child [data-testid=message-state]');
  assert.equal(await tick.getAttribute('data-origin'), 'elsewhere');
  assert.equal(await tick.getAttribute('title'), 'sent from another device');
  await expectShown(bob, ['in received: hello bob', 'out acked: hi alice', 'in received: while you were away 1',
    'in received: while you were away 2', 'in received: sent while the broker was down', 'in received: from my phone']);
});

step('leaving the group: the page shows it and stops offering to write; the other member sees the event', async () => {
  const { alice, bob } = pages;
  await bob.click(sel.conv('group', group));
  await bob.click('[data-testid=leave-group-button]');
  await expectShown(bob, [`event: ${users.alice} created the group with You`, 'in received: hello team', 'out acked: hi team', 'event: You left']);
  await bob.locator('[data-testid=left-note]').waitFor();
  assert.equal(await bob.isVisible('[data-testid=composer-input]'), false);
  await alice.click(sel.conv('group', group));
  await expectShown(alice, [`event: You created the group with ${users.bob}`, 'out acked: hello team', 'in received: hi team', `event: ${users.bob} left`]);
  assert.equal(await alice.textContent('[data-testid=conversation-members]'), '1 member: You');
});
