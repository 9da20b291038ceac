// ringpost chat page. Talks to the broker with the bundled client over ws(s)://<this host>/ws.
//
// What the page keeps in localStorage, per user (key "ringpost:v1:<user>"):
//   lastSeq        highest seq processed: the next login resumes after it (no replay on reload)
//   seen           keys (sender/client_msg_id) of messages shown, so a message delivered twice
//                  (a sender's re-send after a broker crash) is still shown once
//   conversations  history and unread counts; own messages with their client_msg_id and state
//                  (queued → sent → acked, or failed); unacked ones are re-sent after a reload
//                  with the same client_msg_id, which the broker's dedup makes safe
// The token lives in sessionStorage (survives reloads of this tab), or in localStorage when
// "keep me signed in" is ticked. It travels only in the Login frame, never in a URL.

import { createClient } from './ringpost-client.js';

const MAX_MESSAGES = 500; // per conversation
const MAX_SEEN = 5000;
const $ = (id) => document.getElementById(id);
const ui = {
  body: document.body, state: $('connection-state'), user: $('current-user'), logout: $('logout'),
  loginView: $('login-view'), loginForm: $('login-form'), token: $('token'), remember: $('remember'),
  loginError: $('login-error'), connect: $('connect'), chatView: $('chat-view'), newChat: $('new-chat'),
  newChatInput: $('new-chat-input'), conversations: $('conversations'), noConversations: $('no-conversations'),
  groups: $('groups'), noGroups: $('no-groups'), banner: $('banner'), empty: $('empty-conversation'),
  head: $('conv-head'), back: $('back'), avatar: $('conv-avatar'), title: $('conversation-title'),
  messages: $('messages'), composer: $('composer'), input: $('composer-input'),
};

const STATE_TEXT = {
  'signed-out': 'Signed out', idle: 'Connecting…', connecting: 'Connecting…', online: 'Online',
  reconnecting: 'Reconnecting…', closed: 'Offline',
};

let client = null;
let store = null; // { user, lastSeq, seen: string[], conversations: { [id]: Conversation } }
let seen = new Set();
let active = null; // conversation id shown
let me = '';

// ---- storage ----------------------------------------------------------------------------------

function tokenSub(token) {
  try {
    const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const json = JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(payload), (c) => c.charCodeAt(0))));
    return typeof json.sub === 'string' ? json.sub : '';
  } catch {
    return '';
  }
}

function load(user) {
  const empty = { user, lastSeq: 0, seen: [], conversations: {} };
  if (!user) return empty;
  try {
    return { ...empty, ...JSON.parse(localStorage.getItem(`ringpost:v1:${user}`) ?? '{}') };
  } catch {
    return empty;
  }
}

function save() {
  if (!store?.user) return;
  store.seen = [...seen].slice(-MAX_SEEN);
  try {
    localStorage.setItem(`ringpost:v1:${store.user}`, JSON.stringify(store));
  } catch (e) {
    console.warn('ringpost: could not save history', e);
  }
}

function deviceId(user) {
  const key = `ringpost:device:${user || 'anonymous'}`;
  let id = localStorage.getItem(key);
  if (!id) {
    id = `web-${crypto.getRandomValues(new Uint32Array(2)).join('')}`.slice(0, 40);
    localStorage.setItem(key, id);
  }
  return id;
}

function savedToken() {
  return sessionStorage.getItem('ringpost:token') ?? localStorage.getItem('ringpost:token');
}

function rememberToken(token, persist) {
  sessionStorage.setItem('ringpost:token', token);
  if (persist) localStorage.setItem('ringpost:token', token);
  else localStorage.removeItem('ringpost:token');
}

function forgetToken() {
  sessionStorage.removeItem('ringpost:token');
  localStorage.removeItem('ringpost:token');
}

// ---- conversations ----------------------------------------------------------------------------

/** Which conversation a delivery belongs to. Groups: Deliver will carry group_id → `group:<id>`. */
function conversationIdFor(delivery) {
  return `user:${delivery.from}`;
}

function conversation(id) {
  const [kind, ...rest] = id.split(':');
  const name = rest.join(':');
  store.conversations[id] ??= { id, kind, peer: name, messages: [], unread: 0, updatedAt: 0 };
  return store.conversations[id];
}

function addMessage(conv, msg) {
  conv.messages.push(msg);
  if (conv.messages.length > MAX_MESSAGES) conv.messages.splice(0, conv.messages.length - MAX_MESSAGES);
  conv.updatedAt = Math.max(conv.updatedAt, msg.at);
}

function findOwn(id) {
  for (const conv of Object.values(store.conversations)) {
    const m = conv.messages.find((x) => x.dir === 'out' && x.id === id);
    if (m) return m;
  }
  return null;
}

// ---- the session -------------------------------------------------------------------------------

function wsUrl() {
  const override = new URLSearchParams(location.search).get('ws');
  if (override) return override;
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
}

function start(token, resuming = false) {
  const sub = tokenSub(token);
  store = load(sub);
  seen = new Set(store.seen);
  me = sub;
  showLoginError('');
  ui.connect.disabled = true;
  setState('connecting');
  client = createClient({ url: wsUrl(), token, deviceId: deviceId(sub), lastSeq: store.lastSeq });
  const c = client;
  c.on('state', (s) => c === client && onState(c, s));
  c.on('login', (info) => c === client && onLogin(info));
  c.on('deliver', (d) => c === client && onDeliver(d));
  c.on('sent', (s) => c === client && onSent(s));
  c.on('error', (e) => console.debug('ringpost:', e.message));
  // A reload with a saved token shows the history at once, with the connection state above it.
  if (resuming && sub) showChat();
  c.connect().then(
    () => {
      rememberToken(token, ui.remember.checked || localStorage.getItem('ringpost:token') === token);
      showChat();
      resendPending();
    },
    (e) => {
      if (c !== client) return;
      client = null;
      ui.connect.disabled = false;
      showLogin();
      showLoginError(describe(e));
      setState('signed-out');
    },
  );
}

function describe(e) {
  if (e?.codeName) return `${e.codeName} (${e.code})${e.detail ? `: ${e.detail}` : ''}`;
  return e?.message ?? String(e);
}

function onState(c, { state, error }) {
  setState(state);
  if (state === 'reconnecting') showBanner('Connection lost — reconnecting…', 'warn');
  else if (state === 'online') showBanner('');
  else if (state === 'closed' && error && c.login) {
    // (A refusal of the first login is reported by connect()'s rejection instead.)
    // A permanent refusal after login: another tab took this device over, the token expired...
    const why = error.codeName === 'SESSION_REPLACED' ? 'This account was opened in another tab or window.' : describe(error);
    client = null;
    showLogin();
    ui.connect.disabled = false;
    showLoginError(`${why} Connect again to continue here.`);
  }
}

function onLogin(info) {
  me = info.userId;
  if (store.user !== me) {
    // The token's `sub` could not be read before login: adopt the stored history now.
    store = load(me);
    seen = new Set(store.seen);
  }
  ui.user.textContent = me;
  if (info.gap) showBanner('Some older messages were removed by the broker\'s retention before this device got them.', 'warn');
  if (info.reset) {
    store.lastSeq = info.headSeq;
    save();
  }
}

function onDeliver(d) {
  // Runs before the client counts the delivery as processed (autoAck), so lastSeq is stored
  // together with the message: a reload resumes exactly after it.
  if (!seen.has(d.key)) {
    seen.add(d.key);
    const conv = conversation(conversationIdFor(d));
    addMessage(conv, { key: d.key, dir: 'in', from: d.from, text: d.text, at: d.sentAtMs || Date.now(), seq: d.seq });
    if (conv.id !== active || document.hidden) conv.unread += 1;
  }
  store.lastSeq = d.seq;
  save();
  render();
}

function onSent({ clientMsgId }) {
  const m = findOwn(String(clientMsgId));
  if (m && m.state === 'queued') {
    m.state = 'sent';
    save();
    render();
  }
}

function send(conv, text) {
  const id = client.newClientMsgId();
  const msg = { key: `${me}/${id}`, id: String(id), dir: 'out', from: me, to: conv.peer, text, at: Date.now(), state: 'queued' };
  addMessage(conv, msg);
  save();
  track(msg);
  render();
}

/** Sends (or re-sends, same client_msg_id) one own message and records its outcome. */
function track(msg) {
  if (!client) return;
  client.send(msg.to, msg.text, { clientMsgId: BigInt(msg.id) }).then(
    () => {
      msg.state = 'acked';
      delete msg.error;
    },
    (e) => {
      if (e.name === 'ClosedError') return; // stays queued/sent: re-sent after the next sign-in
      msg.state = 'failed';
      msg.error = e.codeName ?? e.message;
    },
  ).finally(() => {
    save();
    render();
  });
}

function resendPending() {
  for (const conv of Object.values(store.conversations)) {
    for (const m of conv.messages) if (m.dir === 'out' && (m.state === 'queued' || m.state === 'sent')) track(m);
  }
}

// ---- rendering -----------------------------------------------------------------------------------

function setState(state) {
  ui.state.dataset.state = state;
  ui.state.textContent = STATE_TEXT[state] ?? state;
}

function showBanner(text, kind = 'warn') {
  ui.banner.hidden = !text;
  ui.banner.textContent = text;
  ui.banner.dataset.kind = kind;
}

function showLoginError(text) {
  ui.loginError.hidden = !text;
  ui.loginError.textContent = text;
}

function showLogin() {
  ui.body.dataset.view = 'login';
  ui.loginView.hidden = false;
  ui.chatView.hidden = true;
  ui.logout.hidden = true;
}

function showChat() {
  ui.body.dataset.view = 'chat';
  ui.body.dataset.pane = active ? 'conversation' : 'list';
  ui.loginView.hidden = true;
  ui.chatView.hidden = false;
  ui.logout.hidden = false;
  ui.user.textContent = me;
  render();
}

function hue(name) {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

function avatar(el, name) {
  el.textContent = [...name][0] ?? '?';
  el.style.setProperty('--hue', hue(name));
}

function shortTime(ms) {
  const d = new Date(ms);
  const now = new Date();
  return d.toDateString() === now.toDateString()
    ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : d.toLocaleDateString([], { month: 'short', day: 'numeric' });
}

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k === 'class') e.className = v;
    else e.setAttribute(k, v);
  }
  e.append(...children);
  return e;
}

function renderList() {
  const convs = Object.values(store.conversations).sort((a, b) => b.updatedAt - a.updatedAt);
  const item = (conv) => {
    const last = conv.messages[conv.messages.length - 1];
    const av = el('span', { class: 'avatar' });
    avatar(av, conv.peer);
    const li = el('li', { class: 'conv', 'data-testid': 'conversation', dataset: { peer: conv.peer, id: conv.id }, 'aria-current': String(conv.id === active) },
      av, el('span', { class: 'name' }, conv.peer), el('span', { class: 'time' }, last ? shortTime(last.at) : ''),
      el('span', { class: 'preview' }, last ? `${last.dir === 'out' ? 'You: ' : ''}${last.text}` : 'No messages yet'));
    if (conv.unread > 0) li.append(el('span', { class: 'badge', 'data-testid': 'unread-count' }, String(conv.unread)));
    else li.append(el('span'));
    li.addEventListener('click', () => open(conv.id));
    return li;
  };
  const users = convs.filter((c) => c.kind === 'user');
  const groups = convs.filter((c) => c.kind === 'group');
  ui.conversations.replaceChildren(...users.map(item));
  ui.groups.replaceChildren(...groups.map(item));
  ui.noConversations.hidden = users.length > 0;
  ui.noGroups.hidden = groups.length > 0;
  const unread = convs.reduce((n, c) => n + c.unread, 0);
  document.title = unread ? `(${unread}) ringpost` : 'ringpost';
}

function renderConversation() {
  const conv = active ? store.conversations[active] : null;
  ui.empty.hidden = !!conv;
  ui.head.hidden = ui.composer.hidden = !conv;
  if (!conv) {
    ui.messages.replaceChildren();
    return;
  }
  ui.title.textContent = conv.peer;
  avatar(ui.avatar, conv.peer);
  const atBottom = ui.messages.scrollHeight - ui.messages.scrollTop - ui.messages.clientHeight < 40;
  const items = [];
  let day = '';
  for (const m of conv.messages) {
    const d = new Date(m.at).toDateString();
    if (d !== day) {
      day = d;
      items.push(el('li', { class: 'day' }, new Date(m.at).toLocaleDateString([], { weekday: 'short', month: 'short', day: 'numeric' })));
    }
    const meta = el('span', { class: 'meta' }, el('time', {}, shortTime(m.at)));
    if (m.dir === 'out') meta.append(el('span', { class: 'tick', 'data-testid': 'message-state', dataset: { state: m.state, error: m.error ?? '' } }));
    const li = el('li', { class: 'msg', 'data-testid': 'message', dataset: { key: m.key, direction: m.dir, state: m.state ?? 'received' } },
      el('div', { class: 'bubble', 'data-testid': 'message-text' }, m.text), meta);
    if (m.state === 'failed') li.addEventListener('click', () => {
      m.state = 'queued';
      track(m);
      render();
    });
    items.push(li);
  }
  ui.messages.replaceChildren(...items);
  if (atBottom || conv.justOpened) ui.messages.scrollTop = ui.messages.scrollHeight;
  delete conv.justOpened;
}

function render() {
  if (!store) return;
  renderList();
  renderConversation();
}

function open(id) {
  active = id;
  const conv = conversation(id);
  conv.unread = 0;
  conv.justOpened = true;
  ui.body.dataset.pane = 'conversation';
  save();
  render();
  ui.input.focus();
}

// ---- wiring ----------------------------------------------------------------------------------------

ui.loginForm.addEventListener('submit', (e) => {
  e.preventDefault();
  const token = ui.token.value.trim();
  if (token) start(token);
});

ui.logout.addEventListener('click', async () => {
  const c = client;
  client = null;
  forgetToken();
  await c?.logout().catch(() => {});
  store = null;
  active = null;
  ui.token.value = '';
  setState('signed-out');
  showBanner('');
  ui.connect.disabled = false;
  showLogin();
});

ui.newChat.addEventListener('submit', (e) => {
  e.preventDefault();
  const peer = ui.newChatInput.value.trim();
  if (!peer) return;
  ui.newChatInput.value = '';
  open(`user:${peer}`);
});

ui.composer.addEventListener('submit', (e) => {
  e.preventDefault();
  const text = ui.input.value.trim();
  const conv = active && store.conversations[active];
  if (!text || !conv || !client) return;
  ui.input.value = '';
  autosize();
  send(conv, text);
});

ui.input.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    ui.composer.requestSubmit();
  }
});

function autosize() {
  ui.input.style.height = 'auto';
  ui.input.style.height = `${Math.min(ui.input.scrollHeight, 144)}px`;
}
ui.input.addEventListener('input', autosize);

ui.back.addEventListener('click', () => {
  active = null;
  ui.body.dataset.pane = 'list';
  render();
});

document.addEventListener('visibilitychange', () => {
  if (!document.hidden && active && store?.conversations[active]?.unread) {
    store.conversations[active].unread = 0;
    save();
    render();
  }
});

const token = savedToken();
if (token) {
  ui.token.value = token;
  ui.remember.checked = localStorage.getItem('ringpost:token') === token;
  start(token, true);
} else {
  showLogin();
}
