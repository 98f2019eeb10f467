// One task, live (topics "task:<id>" and "grid:<id>"): its chunk grid, progress, bucket slots, assignments,
// money with a burn-down and finish estimate, and the owner's controls.

import * as api from './api.js';
import { ChunkGrid, decodeBase64, legend } from './grid.js';
import { LineChart, chartLegend } from './chart.js';
import { clock, duration, facts, h, money, num, parseMoney, pct, progress, stateBadge, throttle } from './dom.js';
import { field, showErrors } from './form.js';

const REFETCH_EVERY_MS = 1000; // the whole chunk-state array at most this often
const BUFFER_MAX = 2000; // live chunk updates kept while the array is being fetched
const TERMINAL = ['completed', 'failed', 'cancelled'];

export function mountTask(root, ctx, taskId) {
  let info = null;
  const title = h('h1', { text: taskId });
  const badge = h('span');
  const actions = h('div', { class: 'actions' });
  const bar = progress(0, 1, 'Task progress');
  const barText = h('span', { class: 'pct', id: 'progress-text', text: '0%' });
  const counts = h('div', { class: 'legend-box' });
  const needsFunds = h('p', { class: 'warn', role: 'status', hidden: true });

  // ---- the grid, fed by GET chunk-states and live "chunks" updates --------------------
  const grid = new ChunkGrid({
    label: 'Chunk grid: one cell per chunk, coloured by state. Focus it and use the arrow keys to read chunks.',
    describe: async (i) => {
      const d = await api.get(`/api/tasks/${taskId}/chunks/${i}`);
      const c = d.chunk;
      const history = d.history.map((a) => `failed on ${a.worker}: ${a.error}`);
      return [`attempts ${c.attempts}`, c.worker && `worker ${c.worker}`,
        c.lease_id && `lease ${c.lease_id}`, ...history,
        d.preview && `result: ${d.preview}`].filter(Boolean).join(' · ');
    },
  });
  const chunkSync = { seq: null, buffer: [], fetching: false, lastFetch: 0, timer: 0 };

  async function fetchStates() {
    chunkSync.timer = 0;
    chunkSync.fetching = true;
    chunkSync.lastFetch = performance.now();
    try {
      const resp = await api.get(`/api/tasks/${taskId}/chunk-states`, { raw: true });
      const seq = Number(resp.headers.get('X-TN-Chunk-Seq') || 0);
      const states = new Uint8Array(await resp.arrayBuffer());
      grid.setStates(states);
      chunkSync.seq = seq;
      for (const msg of chunkSync.buffer) applyChunks(msg);
    } catch (err) {
      api.toast(`Chunk states: ${err.message}`);
    } finally {
      chunkSync.buffer = [];
      chunkSync.fetching = false;
    }
  }

  function refetch() {
    chunkSync.seq = null;
    if (chunkSync.fetching || chunkSync.timer) return;
    const wait = chunkSync.lastFetch + REFETCH_EVERY_MS - performance.now();
    if (wait <= 0) fetchStates();
    else chunkSync.timer = setTimeout(fetchStates, wait);
  }

  function applyChunks(msg) {
    if (msg.seq <= chunkSync.seq) return;
    for (const [offset, b64] of msg.ranges) grid.apply(offset, decodeBase64(b64));
    chunkSync.seq = msg.seq;
  }

  function onChunks(msg) {
    if (msg.task_id !== taskId) return;
    if (msg.refetch) {
      refetch();
      return;
    }
    if (chunkSync.seq === null) {
      chunkSync.buffer.push(msg);
      if (chunkSync.buffer.length > BUFFER_MAX) chunkSync.buffer.shift();
    } else applyChunks(msg);
  }

  // ---- slots, money, controls ---------------------------------------------------------
  const slots = h('meter', { min: 0, max: 1, value: 0, 'aria-label': 'Bucket slots in use' });
  const slotsText = h('span', { id: 'slots-text' });
  const cap = field('Concurrency cap', h('input', { type: 'number', min: 1, max: 100000, name: 'cap', inputmode: 'numeric' }));
  const prio = field('Priority', h('select', { name: 'priority' },
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10].map((p) => h('option', { value: p, text: String(p) }))));
  const capForm = h('form', { class: 'inline', id: 'cap-form', novalidate: true }, cap.el,
    h('button', { type: 'submit', text: 'Set cap' }));
  const prioForm = h('form', { class: 'inline', id: 'priority-form', novalidate: true }, prio.el,
    h('button', { type: 'submit', text: 'Set priority' }));
  const topup = field('Top up (credits)', h('input', { name: 'topup', inputmode: 'decimal', placeholder: '5.00' }));
  const topupForm = h('form', { class: 'inline', id: 'topup-form', novalidate: true }, topup.el,
    h('button', { type: 'submit', text: 'Top up' }));
  const money1 = facts([
    ['Price per chunk', '', 'price'], ['Budget', '', 'budget'], ['Spent', '', 'spent'],
    ['Reserved', '', 'reserved'], ['Remaining', '', 'remaining'], ['Cost to finish', '', 'finish'],
    ['Burn per minute', '', 'burn'], ['Estimated finish', '', 'eta'],
  ]);
  const chart = new LineChart({ label: 'Burn-down: chunks left over time, dashed to the estimated finish', format: num });
  const history = [];
  const addPoint = throttle(() => {
    if (!info) return;
    history.push([Date.now(), info.chunks_total - info.chunks_done]);
    if (history.length > 600) history.splice(0, history.length - 600);
    drawChart();
  }, 1000);

  function drawChart() {
    if (!info) return;
    const last = history[history.length - 1];
    const proj = last && info.eta_ms && info.state === 'running' ? [last, [last[0] + info.eta_ms, 0]] : null;
    chart.set([{ name: 'chunks left', points: history }], proj);
  }

  const assignBody = h('tbody');
  const assignNote = h('p', { class: 'muted small' });
  const assignTable = h('table', { class: 'assignments', id: 'assignments' },
    h('caption', { class: 'sr-only', text: 'Active assignments' }),
    h('thead', null, h('tr', null, ['Chunk', 'Worker', 'Progress', 'Lease age', 'Lease'].map(
      (t) => h('th', { scope: 'col', text: t })))), assignBody);

  root.append(h('section', { class: 'task-page' },
    h('p', { class: 'crumbs' }, h('a', { href: '#/tasks', text: '← Tasks' })),
    h('div', { class: 'head' }, h('div', null, title, h('p', { class: 'muted small', text: taskId })), badge),
    actions,
    h('div', { class: 'card' }, h('h2', { text: 'Progress' }),
      h('div', { class: 'progress-row' }, bar, barText), counts, needsFunds),
    h('div', { class: 'card' }, h('h2', { text: 'Chunks' }), grid.el),
    h('div', { class: 'cols' },
      h('div', { class: 'card' }, h('h2', { text: 'Bucket slots' }),
        h('div', { class: 'progress-row' }, slots, slotsText), capForm, prioForm),
      h('div', { class: 'card' }, h('h2', { text: 'Money' }), money1.el, topupForm)),
    h('div', { class: 'card' }, h('h2', { text: 'Burn-down' }), chart.canvas, chartLegend(['chunks left', 'estimate'])),
    h('div', { class: 'card' }, h('h2', { text: 'Active assignments' }), assignNote,
      h('div', { class: 'scroll' }, assignTable))));

  function renderActions() {
    const els = [];
    if (info.state === 'running') els.push(h('button', { type: 'button', id: 'pause', text: 'Pause', onclick: () => steer('pause') }));
    if (info.state === 'paused') els.push(h('button', { type: 'button', id: 'resume', text: 'Resume', onclick: () => steer('resume') }));
    if (!TERMINAL.includes(info.state)) {
      const confirmBox = h('span', { class: 'confirm', hidden: true },
        'Cancel this task? Unfinished chunks are dropped and the escrow returns to your wallet. ',
        h('button', { type: 'button', class: 'danger', id: 'cancel-yes', text: 'Yes, cancel it', onclick: () => steer('cancel') }),
        h('button', { type: 'button', class: 'ghost', text: 'Keep it', onclick: () => { confirmBox.hidden = true; } }));
      els.push(h('button', { type: 'button', class: 'ghost', id: 'cancel', text: 'Cancel…', onclick: () => {
        confirmBox.hidden = false;
        confirmBox.querySelector('.ghost').focus();
      } }), confirmBox);
    }
    const partial = TERMINAL.includes(info.state) ? '' : '&partial=true';
    const what = partial ? 'partial results' : 'results';
    els.push(h('a', { class: 'button ghost', id: 'download', href: `/api/tasks/${taskId}/results?format=json${partial}`, download: `${taskId}.json`, text: `Download ${what} (JSON)` }),
      h('a', { class: 'button ghost', href: `/api/tasks/${taskId}/results?format=jsonl${partial}`, download: `${taskId}.jsonl`, text: 'JSON Lines' }));
    actions.replaceChildren(...els);
  }

  let lastActionsKey = '';
  function onTask(msg) {
    const t = msg.task;
    if (t.id !== taskId) return;
    const first = info === null;
    info = t;
    title.textContent = t.name || t.id;
    badge.replaceChildren(stateBadge(t.state));
    bar.max = t.chunks_total || 1;
    bar.value = t.chunks_done;
    barText.textContent = `${pct(t.chunks_done, t.chunks_total)}% · ${num(t.chunks_done)} of ${num(t.chunks_total)} chunks · ${num(t.items_done)} of ${num(t.items_total)} items`;
    counts.replaceChildren(legend({ pending: t.chunks_pending, leased: t.chunks_leased, done: t.chunks_done, failed: t.chunks_failed }),
      t.chunks_verifying ? h('p', { class: 'muted small', text: `${num(t.chunks_verifying)} chunks await verification (${t.verification})` }) : '');
    needsFunds.hidden = !t.needs_funds;
    needsFunds.textContent = t.needs_funds ? `Waiting for funds: the escrow cannot pay for the next chunk. Top up at least ${money(t.funds_needed)} to finish.` : '';
    slots.max = t.max_concurrency;
    slots.value = Math.min(t.chunks_leased, t.max_concurrency);
    slotsText.textContent = `${num(t.chunks_leased)} of ${num(t.max_concurrency)} slots in use`;
    // the task's values, unless the owner is editing them (until they are set)
    if (first || !cap.input.dataset.edited) cap.input.value = t.max_concurrency;
    if (first || !prio.input.dataset.edited) prio.input.value = String(t.priority);
    const d = money1.dd;
    d.price.textContent = t.price_per_chunk ? money(t.price_per_chunk) : 'free';
    d.budget.textContent = money(t.budget);
    d.spent.textContent = money(t.spent);
    d.reserved.textContent = money(t.reserved);
    d.remaining.textContent = money(t.remaining);
    d.finish.textContent = money(t.cost_to_finish);
    d.burn.textContent = `${money(t.burn_per_minute)} (${num(t.chunks_per_minute)} chunks)`;
    d.eta.textContent = t.state === 'running' && t.eta_ms !== null && t.eta_ms !== undefined
      ? `in ${duration(t.eta_ms)} (${clock(Date.now() + t.eta_ms)}), costing ${money(t.cost_to_finish)} more`
      : (t.finished_ms ? `finished ${clock(t.finished_ms)}` : '—');
    const key = t.state;
    if (key !== lastActionsKey) {
      lastActionsKey = key;
      renderActions();
    }
    for (const form of [capForm, prioForm, topupForm]) {
      for (const el of form.elements) el.disabled = TERMINAL.includes(t.state);
    }
    if (grid.states.length !== t.chunks_total && chunkSync.seq !== null && !chunkSync.fetching) refetch();
    addPoint();
  }

  function onDetail(msg) {
    if (msg.task_id !== taskId) return;
    if (msg.history) {
      const skew = Date.now() - msg.now_ms; // the coordinator's clock to this browser's
      history.splice(0, history.length, ...msg.history.map(([t, done]) => [t + skew, (info ? info.chunks_total : 0) - done]));
      drawChart();
    }
    assignBody.replaceChildren(...msg.assignments.map((a) => h('tr', null,
      h('td', { class: 'num', text: num(a.chunk) }), h('td', { text: a.worker_id }),
      h('td', null, progress(a.done, a.total || 1, `chunk ${a.chunk} progress`),
        h('span', { class: 'small', text: a.total ? ` ${a.done}/${a.total} items` : ' running' })),
      h('td', { text: duration(msg.now_ms - a.started_ms) }),
      h('td', { class: 'muted small', text: String(a.lease_id) }))));
    assignTable.hidden = msg.assignments.length === 0;
    assignNote.textContent = msg.assignments_total === 0 ? 'No chunk is running right now.'
      : (msg.assignments_total > msg.assignments.length
        ? `Showing ${msg.assignments.length} of ${num(msg.assignments_total)} running chunks.` : '');
  }

  async function steer(verb) {
    try {
      const t = await api.post(`/api/tasks/${taskId}/${verb}`);
      onTask({ task: t });
      if (verb === 'cancel') api.toast('Task cancelled; its escrow returned to your wallet.', 'ok');
    } catch (err) {
      api.toast(err.message);
    }
  }

  for (const input of [cap.input, prio.input]) {
    input.addEventListener('input', () => { input.dataset.edited = '1'; });
    input.addEventListener('change', () => { input.dataset.edited = '1'; });
  }
  capForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    const n = Number(cap.input.value);
    if (!Number.isInteger(n) || n < 1 || n > 100000) {
      showErrors({ cap }, { cap: 'A whole number from 1 to 100,000.' });
      return;
    }
    try {
      const t = await api.patch(`/api/tasks/${taskId}`, { max_concurrency: n });
      delete cap.input.dataset.edited;
      onTask({ task: t });
      showErrors({ cap }, {});
    } catch (err) {
      showErrors({ cap }, { cap: err.message });
    }
  });
  prioForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const t = await api.patch(`/api/tasks/${taskId}`, { priority: Number(prio.input.value) });
      delete prio.input.dataset.edited;
      onTask({ task: t });
      showErrors({ prio }, {});
    } catch (err) {
      showErrors({ prio }, { prio: err.message });
    }
  });
  topupForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    const amount = parseMoney(topup.input.value);
    if (!amount) {
      showErrors({ topup }, { topup: 'An amount above zero, like 5.00.' });
      return;
    }
    try {
      onTask({ task: await api.post(`/api/tasks/${taskId}/fund`, { amount }) });
      showErrors({ topup }, {});
      topup.input.value = '';
      api.toast(`Added ${money(amount)} credits to the task.`, 'ok');
    } catch (err) {
      showErrors({ topup }, { topup: err.message });
    }
  });

  const off = ctx.live.on({
    task: onTask, task_detail: onDetail, chunks: onChunks,
    resync: () => { chunkSync.seq = null; },
    error: (msg) => {
      if (msg.topic !== `task:${taskId}` && msg.topic !== `grid:${taskId}`) return;
      root.replaceChildren(h('section', null, h('h1', { text: 'No such task' }),
        h('p', { text: `Task ${taskId} is not among yours (${msg.reason}).` }),
        h('p', null, h('a', { href: '#/tasks', text: 'Back to your tasks' }))));
    },
  });
  const drop = ctx.live.want([`task:${taskId}`, `grid:${taskId}`]);
  return () => {
    off();
    drop();
    addPoint.cancel();
    clearTimeout(chunkSync.timer);
    grid.destroy();
    chart.destroy();
  };
}
