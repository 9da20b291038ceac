// ringpost chat page. Talks to the broker with the bundled client over ws(s)://<this host>/ws.
//
// What the page keeps in localStorage, per user (key "ringpost:v1:<user>"):
//   lastSeq        highest seq processed: the next login resumes after it (no replay on reload
//                  but of copies of this page's own latest sends, which it never got live)
//   seen           keys of stream entries shown (messages: sender/client_msg_id, group events:
//                  group#group_seq), so an entry delivered twice is still shown once
//   conversations  1:1 ("user:<id>") and group ("group:<id>") conversations: history, unread
//                  counts, group members; own messages with their client_msg_id and state
//                  (queued → sent → acked, or failed); unacked ones are re-sent after a reload
//                  with the same client_msg_id, which the broker's dedup makes safe
// The token lives in sessionStorage (survives reloads of this tab), or in localStorage when
// "keep me signed in" is ticked. It travels only in the Login frame, never in a URL.
//
// Each message once (own-send sync): the page shows what it sends at once, keyed
// `<me>/<client_msg_id>`, and the SendAck confirms it ("acked"; its ownSeq is the message's
// place in the stream). The broker does not send this connection the stream entry of a 1:1
// send; it comes only when a reconnect resumes from before it, as an 'echo' (this page's
// client sent it), and a group send's entry always comes back as one: an echo only confirms
// the message already shown. Outgoing entries that are not echoes were sent from the user's
// other devices, or from this page before a reload (replayed because the page resumes from
// its stored lastSeq, which never moves past a copy on the SendAck alone): they are added as
// sent messages unless their key is already shown.

import { createClient } from './ringpost-client.js';

const MAX_MESSAGES = 500; // per conversation
const MAX_SEEN = 5000;
const KIND = { Message: 0, GroupCreated: 1, MembersAdded: 2, MembersRemoved: 3, MemberLeft: 4 };
const $ = (id) => document.getElementById(id);
const ui = {
  body: document.body, state: $('connection-state'), user: $('current-user'), logout: $('logout'),
  loginView: $('login-view'), loginForm: $('login-form'), token: $('token'), remember: $('remember'),
  loginError: $('login-error'), connect: $('connect'), chatView: $('chat-view'), newChat: $('new-chat'),
  newChatInput: $('new-chat-input'), conversations: $('conversations'), noConversations: $('no-conversations'),
  groups: $('groups'), noGroups: $('no-groups'), newGroupToggle: $('new-group-toggle'), newGroup: $('new-group'),
  groupName: $('group-name'), groupMembers: $('group-members'), groupError: $('group-error'),
  newGroupCancel: $('new-group-cancel'), banner: $('banner'), empty: $('empty-conversation'),
  head: $('conv-head'), back: $('back'), avatar: $('conv-avatar'), title: $('conversation-title'),
  sub: $('conversation-sub'), groupActions: $('group-actions'), addToggle: $('add-people-toggle'),
  leave: $('leave-group'), addPeople: $('add-people'), addInput: $('add-people-input'), convError: $('conv-error'),
  messages: $('messages'), composer: $('composer'), input: $('composer-input'), leftNote: $('left-note'),
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

/** Which conversation a stream entry belongs to: its group, or the other user of a 1:1 message. */
function conversationIdFor(d) {
  return d.isGroup ? `group:${d.groupId}` : `user:${d.peer}`;
}

function conversation(id) {
  const [kind, ...rest] = id.split(':');
  const name = rest.join(':');
  store.conversations[id] ??= { id, kind, peer: name, messages: [], unread: 0, updatedAt: 0 };
  const conv = store.conversations[id];
  if (kind === 'group') conv.members ??= [];
  return conv;
}

function addMessage(conv, msg) {
  conv.messages.push(msg);
  if (conv.messages.length > MAX_MESSAGES) conv.messages.splice(0, conv.messages.length - MAX_MESSAGES);
  conv.updatedAt = Math.max(conv.updatedAt, msg.at);
}

function findOwn(key) {
  for (const conv of Object.values(store.conversations)) {
    const m = conv.messages.find((x) => x.dir === 'out' && x.key === key);
    if (m) return m;
  }
  return null;
}

const display = (user) => (user === me ? 'You' : user);
const list = (users) => users.map(display).join(', ');

/** The line a group event shows in its conversation. */
function eventText(d) {
  switch (d.kind) {
    case KIND.GroupCreated:
      return `${display(d.from)} created the group with ${list(d.members.filter((u) => u !== d.from)) || 'nobody else yet'}`;
    case KIND.MembersAdded:
      return `${display(d.from)} added ${list(d.members)}`;
    case KIND.MembersRemoved:
      return `${display(d.from)} removed ${list(d.members)}`;
    case KIND.MemberLeft:
      return `${display(d.from)} left`;
    default:
      return `${display(d.from)} changed the group`;
  }
}

/** Keeps a group conversation's member list (and whether this user is in it) with its events. */
function applyMembership(conv, d) {
  const members = new Set(conv.members);
  if (d.kind === KIND.GroupCreated || d.kind === KIND.MembersAdded) for (const u of d.members) members.add(u);
  if (d.kind === KIND.MembersRemoved) for (const u of d.members) members.delete(u);
  if (d.kind === KIND.MemberLeft) members.delete(d.from);
  conv.members = [...members].sort();
  conv.left = !members.has(me);
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
  c.on('echo', (d) => c === client && onEcho(d));
  c.on('sent', (s) => c === client && onSent(s));
  c.on('error', (e) => console.debug('ringpost:', e.message));
  // A reload with a saved token shows the history at once, with the connection state above it.
  if (resuming && sub) showChat();
  c.connect().then(
    () => {
      rememberToken(token, ui.remember.checked || localStorage.getItem('ringpost:token') === token);
      showChat();
      resendPending();
      syncGroups(c);
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

/** Groups this user is in that the page has no history for (e.g. retention removed their start). */
async function syncGroups(c) {
  try {
    const groups = await c.listGroups();
    if (c !== client) return;
    for (const g of groups) {
      if (store.conversations[`group:${g}`]) continue;
      const members = (await c.groupMembers(g)).map((m) => m.userId);
      if (c !== client) return;
      const conv = conversation(`group:${g}`);
      if (!conv.members.length) conv.members = members;
      conv.left = false;
      save();
      render();
    }
  } catch (e) {
    console.debug('ringpost: could not list groups', e.message);
  }
}

function onDeliver(d) {
  // Runs before the client counts the delivery as processed (autoAck), so lastSeq is stored
  // together with the entry: a reload resumes exactly after it.
  const own = d.outgoing && d.isMessage ? findOwn(d.key) : null;
  if (own) {
    confirm(own, d); // shown already: sent from this page (before a reload)
  } else if (!seen.has(d.key)) {
    seen.add(d.key);
    const conv = conversation(conversationIdFor(d));
    const at = d.sentAtMs || Date.now();
    if (!d.isMessage) {
      applyMembership(conv, d);
      addMessage(conv, { key: d.key, dir: 'event', kind: d.kindName, from: d.from, text: eventText(d), at, seq: d.seq });
    } else if (d.outgoing) {
      // Sent from another device of this user: shown as sent.
      addMessage(conv, { key: d.key, id: String(d.clientMsgId), dir: 'out', from: me, to: d.to, group: d.groupId,
        text: d.text, at, seq: d.seq, state: 'acked', origin: 'elsewhere' });
    } else {
      addMessage(conv, { key: d.key, dir: 'in', from: d.from, text: d.text, at, seq: d.seq });
    }
    if (d.from !== me && (conv.id !== active || document.hidden)) conv.unread += 1;
  }
  store.lastSeq = d.seq;
  save();
  render();
}

/**
 * The stream entry of a message this page's client sent (a group send, or a 1:1 send's copy
 * replayed after a reconnect): it confirms what is shown.
 */
function onEcho(d) {
  const own = findOwn(d.key);
  if (own) confirm(own, d);
  else onDeliver(d); // history trimmed meanwhile: show it once, as sent
  store.lastSeq = d.seq;
  save();
  render();
}

function confirm(msg, d) {
  msg.seq = d.seq;
  if (msg.state !== 'acked') {
    msg.state = 'acked';
    delete msg.error;
  }
}

function onSent({ clientMsgId }) {
  const m = findOwn(`${me}/${clientMsgId}`);
  if (m && m.state === 'queued') {
    m.state = 'sent';
    save();
    render();
  }
}

function send(conv, text) {
  const id = client.newClientMsgId();
  const key = `${me}/${id}`;
  const msg = { key, id: String(id), dir: 'out', from: me, text, at: Date.now(), state: 'queued' };
  if (conv.kind === 'group') msg.group = conv.peer;
  else msg.to = conv.peer;
  seen.add(key);
  addMessage(conv, msg);
  save();
  track(msg);
  render();
}

/** Sends (or re-sends, same client_msg_id) one own message and records its outcome. */
function track(msg) {
  if (!client) return;
  const options = { clientMsgId: BigInt(msg.id) };
  const sending = msg.group ? client.sendToGroup(msg.group, msg.text, options) : client.send(msg.to, msg.text, options);
  sending.then(
    (r) => {
      // The confirmation of a 1:1 send: no stream entry of it comes to this connection.
      msg.state = 'acked';
      delete msg.error;
      if (r.ownSeq) msg.seq = r.ownSeq;
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

/** User ids from a comma- or space-separated list, without this user and duplicates. */
function parseUsers(text) {
  return [...new Set(text.split(/[\s,]+/).map((u) => u.trim()).filter((u) => u && u !== me))];
}

async function createGroup(name, members) {
  const c = client;
  if (!c) return;
  const id = `group:${name}`;
  await c.createGroup(name, members);
  // The GroupCreated entry (with the members) may come before or after this reply.
  const conv = conversation(id);
  if (!conv.members.length) conv.members = [me, ...members].sort();
  conv.left = false;
  save();
  open(id);
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

function showError(el, text) {
  el.hidden = !text;
  el.textContent = text;
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

function avatar(el, name, group = false) {
  el.textContent = group ? '#' : [...name][0] ?? '?';
  el.classList.toggle('group', group);
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

function preview(conv, last) {
  if (!last) return 'No messages yet';
  if (last.dir === 'event') return last.text;
  if (last.dir === 'out') return `You: ${last.text}`;
  return conv.kind === 'group' ? `${last.from}: ${last.text}` : last.text;
}

function renderList() {
  const convs = Object.values(store.conversations).sort((a, b) => b.updatedAt - a.updatedAt);
  const item = (conv) => {
    const last = conv.messages[conv.messages.length - 1];
    const av = el('span', { class: 'avatar' });
    avatar(av, conv.peer, conv.kind === 'group');
    const name = el('span', { class: 'name' }, conv.peer);
    if (conv.kind === 'group' && conv.left) name.append(el('span', { class: 'tag' }, 'left'));
    const li = el('li', { class: 'conv', 'data-testid': 'conversation', dataset: { peer: conv.peer, id: conv.id, kind: conv.kind }, 'aria-current': String(conv.id === active) },
      av, name, el('span', { class: 'time' }, last ? shortTime(last.at) : ''),
      el('span', { class: 'preview' }, preview(conv, last)));
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

const TICK = {
  queued: 'waiting to send', sent: 'sent', acked: 'delivered', failed: 'not delivered',
};

function renderConversation() {
  const conv = active ? store.conversations[active] : null;
  const group = conv?.kind === 'group';
  ui.empty.hidden = !!conv;
  ui.head.hidden = !conv;
  ui.composer.hidden = !conv || (group && conv.left);
  ui.leftNote.hidden = !(group && conv.left);
  ui.groupActions.hidden = !group || conv.left;
  if (!group || conv.left) ui.addPeople.hidden = true;
  if (!conv) {
    ui.messages.replaceChildren();
    return;
  }
  ui.title.textContent = conv.peer;
  ui.sub.textContent = group ? `${conv.members.length} member${conv.members.length === 1 ? '' : 's'}: ${list(conv.members)}` : '';
  ui.sub.hidden = !group;
  avatar(ui.avatar, conv.peer, group);
  const atBottom = ui.messages.scrollHeight - ui.messages.scrollTop - ui.messages.clientHeight < 40;
  const items = [];
  let day = '';
  let lastFrom = '';
  for (const m of conv.messages) {
    const d = new Date(m.at).toDateString();
    if (d !== day) {
      day = d;
      lastFrom = '';
      items.push(el('li', { class: 'day' }, new Date(m.at).toLocaleDateString([], { weekday: 'short', month: 'short', day: 'numeric' })));
    }
    if (m.dir === 'event') {
      lastFrom = '';
      items.push(el('li', { class: 'event', 'data-testid': 'group-event', dataset: { key: m.key, kind: m.kind } }, m.text));
      continue;
    }
    const meta = el('span', { class: 'meta' }, el('time', {}, shortTime(m.at)));
    if (m.dir === 'out') {
      const label = m.origin === 'elsewhere' ? 'sent from another device' : (m.state === 'failed' ? `${m.error} · tap to retry` : TICK[m.state]);
      meta.append(el('span', { class: 'tick', 'data-testid': 'message-state', title: label,
        dataset: { state: m.state, origin: m.origin ?? 'here', error: m.error ?? '' } }));
    }
    const li = el('li', { class: 'msg', 'data-testid': 'message', dataset: { key: m.key, direction: m.dir, state: m.state ?? 'received', from: m.from } });
    if (group && m.dir === 'in' && m.from !== lastFrom) {
      const who = el('span', { class: 'sender' }, m.from);
      who.style.setProperty('--hue', hue(m.from));
      li.append(who);
    }
    li.append(el('div', { class: 'bubble', 'data-testid': 'message-text' }, m.text), meta);
    lastFrom = m.from;
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
  showError(ui.convError, '');
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

ui.newGroupToggle.addEventListener('click', () => {
  ui.newGroup.hidden = !ui.newGroup.hidden;
  showError(ui.groupError, '');
  if (!ui.newGroup.hidden) ui.groupName.focus();
});

ui.newGroupCancel.addEventListener('click', () => {
  ui.newGroup.hidden = true;
});

ui.newGroup.addEventListener('submit', async (e) => {
  e.preventDefault();
  const name = ui.groupName.value.trim();
  if (!name || !client) return;
  const button = ui.newGroup.querySelector('button[type=submit]');
  button.disabled = true;
  showError(ui.groupError, '');
  try {
    await createGroup(name, parseUsers(ui.groupMembers.value));
    ui.groupName.value = '';
    ui.groupMembers.value = '';
    ui.newGroup.hidden = true;
  } catch (err) {
    showError(ui.groupError, err.codeName === 'GROUP_EXISTS' ? `A group called "${name}" already exists: pick another name.` : describe(err));
  } finally {
    button.disabled = false;
  }
});

ui.addToggle.addEventListener('click', () => {
  ui.addPeople.hidden = !ui.addPeople.hidden;
  if (!ui.addPeople.hidden) ui.addInput.focus();
});

ui.addPeople.addEventListener('submit', async (e) => {
  e.preventDefault();
  const conv = active && store.conversations[active];
  const users = parseUsers(ui.addInput.value);
  if (!conv || conv.kind !== 'group' || !users.length || !client) return;
  showError(ui.convError, '');
  try {
    await client.addMembers(conv.peer, users);
    ui.addInput.value = '';
    ui.addPeople.hidden = true;
  } catch (err) {
    showError(ui.convError, err.codeName === 'NOT_GROUP_ADMIN' ? 'Only the group\'s admins can add people.' : describe(err));
  }
});

ui.leave.addEventListener('click', async () => {
  const conv = active && store.conversations[active];
  if (!conv || conv.kind !== 'group' || !client) return;
  showError(ui.convError, '');
  try {
    await client.leaveGroup(conv.peer);
    conv.left = true; // the MemberLeft entry confirms it in the stream too
    save();
    render();
  } catch (err) {
    showError(ui.convError, describe(err));
  }
});

ui.composer.addEventListener('submit', (e) => {
  e.preventDefault();
  const text = ui.input.value.trim();
  const conv = active && store.conversations[active];
  if (!text || !conv || !client || (conv.kind === 'group' && conv.left)) return;
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
