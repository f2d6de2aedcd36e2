// The chat page: one WebSocket to the server that served this page, speaking the JSON protocol
// documented at the top of examples/chat/chat.lua. No framework, no build step.
//
// Safety rule: text that came from a user (nicknames, room names, messages) only ever reaches
// the page through textContent, so HTML in a message is shown exactly as it was typed; and it
// carries dir="auto", so Arabic or Hebrew is laid out right to left, each line on its own.
'use strict';

const BACKOFF_BASE_MS = 500; // first retry after 0.25-0.5 s...
const BACKOFF_CAP_MS = 15000; // ...doubling up to 7.5-15 s
const TYPING_EVERY_MS = 1500; // how often we tell the room we are typing
const TYPING_SHOW_MS = 3000; // how long someone shows as typing after their last notice
const NICK_MAX = 24; // characters (the server's limit): counted as code points, not UTF-16 units
const OUTBOX_MAX = 20; // messages kept while the connection is down

const $ = (id) => document.getElementById(id);

// What the page knows; window.chat lets you (and the browser tests) look at it.
const chat = {
  state: 'connecting', // connecting | online | reconnecting
  connections: 0, // WebSockets opened so far: a hot reload of the server must not add one
  server: null, // the server's boot id, from welcome: it changes when the server restarts
  scope: null, // what message ids are unique in (welcome's scope): the server, or its Redis
  room: null, // the room we are in, as the server spelled it
  nick: null,
  wanted: null, // {room, nick} to join after (re)connecting
  outbox: [], // {text, li}: typed while not connected, sent once back in the room
  error: null, // the code of the error on the banner, or null
};
window.chat = chat;

let socket = null;
let attempt = 0; // reconnects since the last welcome
let lastTypingSent = 0;
const typers = new Map(); // nick -> timer that hides "nick is typing"
const shown = new Set(); // keys of the messages on screen (server + id), to skip repeats

// ---- connection ---------------------------------------------------------------------------

function setState(state) {
  chat.state = state;
  const status = $('status');
  status.dataset.state = state;
  status.textContent = { connecting: 'connecting…', online: 'online',
    reconnecting: 'reconnecting…' }[state];
  if (state === 'online') clearError('offline');
  else if (state === 'reconnecting' && chat.room) {
    showError('Connection lost. Reconnecting… what you send now goes out once it is back.',
      'offline');
  }
}

function connect() {
  const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
  socket = new WebSocket(scheme + location.host + '/');
  socket.onopen = () => {
    chat.connections += 1;
    document.body.dataset.connections = String(chat.connections);
    setState('online');
    if (chat.wanted) send({ type: 'join', room: chat.wanted.room, nick: chat.wanted.nick });
  };
  socket.onmessage = (event) => {
    let msg;
    try {
      msg = JSON.parse(event.data);
    } catch {
      return;
    }
    const handler = msg && Object.hasOwn(handlers, msg.type) ? handlers[msg.type] : null;
    if (handler) handler(msg);
  };
  socket.onclose = () => {
    socket = null;
    setState('reconnecting');
    clearTypers();
    // Exponential back-off with jitter: a restarted server is not hit by every page at once.
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
    attempt += 1;
    setTimeout(connect, ceiling / 2 + Math.random() * (ceiling / 2));
  };
}

function send(msg) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(msg));
}

// ---- what the server says -----------------------------------------------------------------

const handlers = {
  welcome(msg) {
    attempt = 0;
    chat.server = msg.server;
    chat.scope = msg.scope || msg.server;
    renderRooms(msg.rooms);
  },

  joined(msg) {
    const rejoin = chat.room === msg.room;
    if (!rejoin) {
      failOutbox(); // typed for another room
      $('messages').replaceChildren();
      shown.clear();
    }
    clearError('bad_room', 'bad_nick', 'nick_taken', 'too_many_rooms', 'not_in_room', 'join');
    chat.room = msg.room;
    chat.nick = msg.nick;
    chat.wanted = { room: msg.room, nick: msg.nick };
    localStorage.setItem('chat.nick', msg.nick);
    for (const m of msg.history) addMessage(m);
    addNotice(rejoin ? 'reconnected to ' + msg.room : 'you joined ' + msg.room + ' as ' + msg.nick);
    renderMembers(msg.members);
    $('room-title').textContent = '# ' + msg.room;
    $('room').value = msg.room;
    $('nick').value = msg.nick;
    $('composer').hidden = false;
    $('text').focus();
    markCurrentRoom();
    flushOutbox();
  },

  left() {
    failOutbox();
    chat.room = null;
    chat.wanted = null;
    $('room-title').textContent = '';
    $('composer').hidden = true;
    $('members-box').hidden = true;
    clearTypers();
    addNotice('you left the room');
    markCurrentRoom();
  },

  presence(msg) {
    if (msg.room !== chat.room) return;
    addNotice(msg.nick + (msg.event === 'join' ? ' joined' : ' left'));
    renderMembers(msg.members);
    stopTyping(msg.nick);
  },

  message(msg) {
    if (msg.room !== chat.room) return;
    if (msg.nick === chat.nick) {
      // ours came through: whatever was wrong with sending is over
      clearError('rate_limited', 'too_long', 'bad_text', 'not_in_room');
      confirmSent(msg.text);
    }
    addMessage(msg);
    stopTyping(msg.nick);
  },

  typing(msg) {
    if (msg.room !== chat.room) return;
    clearTimeout(typers.get(msg.nick));
    typers.set(msg.nick, setTimeout(() => stopTyping(msg.nick), TYPING_SHOW_MS));
    renderTyping();
  },

  rooms(msg) {
    renderRooms(msg.rooms);
  },

  error(msg) {
    // A refused join (nickname taken, bad name): stay where we were.
    if (['bad_room', 'bad_nick', 'nick_taken', 'too_many_rooms'].includes(msg.code)) {
      chat.wanted = chat.room ? { room: chat.room, nick: chat.nick } : null;
      if (!chat.room) failOutbox();
    }
    if (['rate_limited', 'too_long', 'bad_text', 'not_in_room'].includes(msg.code)) {
      failSent(); // the oldest message still waiting for its echo was refused
    }
    showError(msg.message, msg.code);
  },
};

// ---- rendering (textContent only) ---------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) {
    node.textContent = text;
    node.dir = 'auto'; // user text: its own direction
  }
  return node;
}

// The message list follows the newest line while the reader is at the bottom, also when the
// list itself gets shorter (the error banner or the composer appears, the window shrinks).
// Only the reader turns following off, by scrolling up: a scroll event that comes after the list
// got shorter (its position unchanged, no longer at the bottom) must not.
let followBottom = true;
let lastTop = 0;
const messagesList = $('messages');
messagesList.addEventListener('scroll', () => {
  const top = messagesList.scrollTop;
  if (messagesList.scrollHeight - top - messagesList.clientHeight < 40) followBottom = true;
  else if (top < lastTop - 2) followBottom = false;
  lastTop = top;
});
function toBottom() {
  if (!followBottom) return;
  messagesList.scrollTop = messagesList.scrollHeight;
  lastTop = messagesList.scrollTop;
}
new ResizeObserver(toBottom).observe(messagesList);

// Adds li to the message list, keeping the view at the bottom if it was there.
function append(li) {
  messagesList.append(li);
  toBottom();
}

function addMessage(m) {
  const key = chat.scope + ':' + m.id; // history replayed after a reconnect is shown once
  if (shown.has(key)) return;
  shown.add(key);
  const li = el('li', m.nick === chat.nick ? 'msg mine' : 'msg');
  li.dataset.id = String(m.id);
  const head = el('div', 'head');
  head.append(el('span', 'nick', m.nick));
  const when = new Date(m.ts);
  const clock = when.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  const time = el('time', 'time', clock);
  time.dateTime = when.toISOString();
  head.append(time);
  li.append(head, el('p', 'text', m.text));
  append(li);
}

function addNotice(text) {
  append(el('li', 'notice', text));
}

function renderRooms(rooms) {
  const list = $('rooms');
  list.replaceChildren();
  if (!rooms.length) list.append(el('li', 'empty', 'no one is chatting yet'));
  for (const r of rooms) {
    const li = el('li');
    const button = el('button', 'room', r.name);
    button.type = 'button';
    button.dataset.room = r.name;
    button.append(el('span', 'count', String(r.members)));
    button.onclick = () => join(r.name, chat.nick || $('nick').value);
    li.append(button);
    list.append(li);
  }
  markCurrentRoom();
}

function markCurrentRoom() {
  for (const b of $('rooms').querySelectorAll('button.room')) {
    b.classList.toggle('current', b.dataset.room === chat.room);
  }
}

function renderMembers(members) {
  const list = $('members');
  list.replaceChildren(...members.map((nick) =>
    el('li', nick === chat.nick ? 'me' : '', nick)));
  $('member-count').textContent = String(members.length);
  $('members-box').hidden = false;
}

function renderTyping() {
  const names = [...typers.keys()];
  $('typing').textContent = names.length === 0 ? ''
    : names.length === 1 ? names[0] + ' is typing…'
      : names.slice(0, 3).join(', ') + ' are typing…';
}

function stopTyping(nick) {
  clearTimeout(typers.get(nick));
  if (typers.delete(nick)) renderTyping();
}

function clearTypers() {
  for (const nick of [...typers.keys()]) stopTyping(nick);
}

// The banner shows the latest problem until it is fixed (clearError with its code) or, for one
// the page cannot see the end of, for a while.
let errorTimer = null;
function showError(text, code = 'other') {
  const box = $('error');
  box.textContent = text;
  box.hidden = false;
  chat.error = code;
  clearTimeout(errorTimer);
  if (code !== 'offline') errorTimer = setTimeout(() => clearError(code), 8000);
  toBottom();
}

function clearError(...codes) {
  if (chat.error === null || !codes.includes(chat.error)) return;
  clearTimeout(errorTimer);
  chat.error = null;
  $('error').hidden = true;
}

// ---- the outbox: what is typed while the connection is down --------------------------------

const sent = []; // {text, li}: sent while connected, waiting for the server's copy

function pending(text, label) {
  const li = el('li', 'msg mine pending');
  const head = el('div', 'head');
  head.append(el('span', 'nick', chat.nick || ''), el('span', 'state', label));
  li.append(head, el('p', 'text', text));
  append(li);
  return li;
}

function flushOutbox() {
  while (chat.outbox.length && socket && socket.readyState === WebSocket.OPEN) {
    const item = chat.outbox.shift();
    socket.send(JSON.stringify({ type: 'say', text: item.text }));
    item.li.querySelector('.state').textContent = 'sending…';
    sent.push(item);
  }
}

// The server's copy of one of ours arrived: the pending line (if any) gives way to it.
function confirmSent(text) {
  const i = sent.findIndex((item) => item.text === text);
  if (i >= 0) sent.splice(i, 1)[0].li.remove();
}

function markFailed(item) {
  item.li.classList.add('failed');
  item.li.querySelector('.state').textContent = 'not sent';
}

function failSent() {
  const item = sent.shift();
  if (item) markFailed(item);
}

function failOutbox() {
  for (const item of chat.outbox.splice(0)) markFailed(item);
}

// ---- what the user does -------------------------------------------------------------------

function join(room, nick) {
  if (!room || !nick) return showError('Pick a nickname and a room first.', 'join');
  if ([...nick].length > NICK_MAX) {
    return showError(`Nicknames are limited to ${NICK_MAX} characters.`, 'join');
  }
  chat.wanted = { room, nick };
  if (chat.state === 'online') send({ type: 'join', room, nick });
}

$('join').addEventListener('submit', (event) => {
  event.preventDefault();
  join($('room').value.trim(), $('nick').value.trim());
});

$('composer').addEventListener('submit', (event) => {
  event.preventDefault();
  const input = $('text');
  if (!input.value.trim()) return;
  if (socket && socket.readyState === WebSocket.OPEN && !chat.outbox.length) {
    send({ type: 'say', text: input.value });
  } else if (chat.outbox.length >= OUTBOX_MAX) {
    return showError('Still offline: wait for the connection before sending more.', 'offline');
  } else {
    // offline: kept, shown as waiting, and sent once back in the room
    chat.outbox.push({ text: input.value, li: pending(input.value, 'waiting for connection…') });
  }
  input.value = '';
  lastTypingSent = 0;
});

$('text').addEventListener('input', () => {
  const now = Date.now();
  if (now - lastTypingSent > TYPING_EVERY_MS) {
    lastTypingSent = now;
    send({ type: 'typing' });
  }
});

$('leave').addEventListener('click', () => send({ type: 'leave' }));

$('nick').value = localStorage.getItem('chat.nick') || '';
connect();
