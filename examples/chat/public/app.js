// The chat page: one WebSocket to the server that served this page, speaking the JSON protocol
// documented at the top of examples/chat/chat.lua. No framework, no build step.
//
// Safety rule: text that came from a user (nicknames, room names, messages) only ever reaches
// the page through textContent, so HTML in a message is shown exactly as it was typed.
'use strict';

const BACKOFF_BASE_MS = 500; // first retry after 0.25-0.5 s...
const BACKOFF_CAP_MS = 15000; // ...doubling up to 7.5-15 s
const TYPING_EVERY_MS = 1500; // how often we tell the room we are typing
const TYPING_SHOW_MS = 3000; // how long someone shows as typing after their last notice

const $ = (id) => document.getElementById(id);

// What the page knows; window.chat lets you (and the browser tests) look at it.
const chat = {
  state: 'connecting', // connecting | online | reconnecting
  connections: 0, // WebSockets opened so far: a hot reload of the server must not add one
  server: null, // the server's boot id, from welcome: it changes when the server restarts
  room: null, // the room we are in, as the server spelled it
  nick: null,
  wanted: null, // {room, nick} to join after (re)connecting
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
    renderRooms(msg.rooms);
  },

  joined(msg) {
    const rejoin = chat.room === msg.room;
    if (!rejoin) {
      $('messages').replaceChildren();
      shown.clear();
    }
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
  },

  left() {
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
    }
    showError(msg.message);
  },
};

// ---- rendering (textContent only) ---------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Adds li to the message list, keeping the view at the bottom if it was there.
function append(li) {
  const list = $('messages');
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.append(li);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function addMessage(m) {
  const key = chat.server + ':' + m.id;
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

let errorTimer = null;
function showError(text) {
  const box = $('error');
  box.textContent = text;
  box.hidden = false;
  clearTimeout(errorTimer);
  errorTimer = setTimeout(() => { box.hidden = true; }, 6000);
}

// ---- what the user does -------------------------------------------------------------------

function join(room, nick) {
  if (!room || !nick) return showError('Pick a nickname and a room first.');
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
  send({ type: 'say', text: input.value });
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
