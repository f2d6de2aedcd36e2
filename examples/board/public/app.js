// The board page: one WebSocket to the page's own host; the server sends a snapshot on connect
// and every change (anyone's, ours included) afterwards, so the list shown is always the
// database's. Reconnects with back-off; what is typed while offline stays in the input.
'use strict';

const $ = (sel) => document.querySelector(sel);
const board = { items: new Map(), state: 'connecting', viewers: 0, connections: 0 };
window.board = board;

let ws = null;
let retry = 0;

function setStatus(state, text) {
  board.state = state;
  const el = $('#status');
  el.dataset.state = state;
  el.textContent = text;
  $('#add button').disabled = state !== 'online';
}

function showError(text) {
  const el = $('#error');
  el.textContent = text || '';
  el.hidden = !text;
}

function render() {
  const list = $('#items');
  const ids = [...board.items.keys()].sort((a, b) => a - b);
  list.replaceChildren(...ids.map((id) => {
    const item = board.items.get(id);
    const li = document.createElement('li');
    li.className = item.done ? 'item done' : 'item';
    li.dataset.id = String(id);
    const box = document.createElement('input');
    box.type = 'checkbox';
    box.checked = item.done;
    box.setAttribute('aria-label', 'done');
    box.addEventListener('change', () => send({ type: 'toggle', id, done: box.checked }));
    const text = document.createElement('span');
    text.className = 'text';
    text.dir = 'auto';
    text.textContent = item.text; // never HTML
    const del = document.createElement('button');
    del.className = 'delete';
    del.title = 'delete';
    del.textContent = '✕';
    del.addEventListener('click', () => send({ type: 'delete', id }));
    li.append(box, text, del);
    return li;
  }));
  $('#empty').hidden = ids.length > 0;
}

function send(msg) {
  if (!ws || ws.readyState !== WebSocket.OPEN) {
    showError('Not connected: the change was not sent.');
    return false;
  }
  ws.send(JSON.stringify(msg));
  return true;
}

function onMessage(ev) {
  let msg;
  try { msg = JSON.parse(ev.data); } catch { return; }
  switch (msg.type) {
    case 'snapshot':
      board.items = new Map((msg.items || []).map((it) => [it.id, it]));
      board.viewers = msg.viewers;
      break;
    case 'added':
    case 'updated':
      board.items.set(msg.item.id, msg.item);
      break;
    case 'deleted':
      board.items.delete(msg.id);
      break;
    case 'viewers':
      board.viewers = msg.count;
      break;
    case 'error':
      showError(msg.message);
      return;
    default:
      return;
  }
  if (msg.type !== 'viewers') showError('');
  $('#viewers').textContent = `${board.viewers} viewing`;
  render();
}

function connect() {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  ws = new WebSocket(`${proto}//${location.host}/`);
  setStatus('connecting', 'connecting…');
  ws.onopen = () => {
    retry = 0;
    board.connections++;
    setStatus('online', 'online');
  };
  ws.onmessage = onMessage;
  ws.onclose = () => {
    setStatus('offline', 'offline: reconnecting…');
    const delay = Math.min(5000, 250 * 2 ** retry++);
    setTimeout(connect, delay);
  };
}

$('#add').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const input = $('#text');
  const text = input.value.trim();
  if (text && send({ type: 'add', text })) input.value = '';
});

render();
connect();
