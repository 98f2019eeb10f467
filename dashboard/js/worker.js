// The worker's view: the account's live sessions (topic "workers") with what each runs,
// trust and, when idle, why; earnings per task and over time (REST, refreshed when the
// wallet changes, topic "wallet").

import * as api from './api.js';
import { LineChart } from './chart.js';
import { duration, h, money, num, progress, throttle, when } from './dom.js';

export function mountWorker(root, ctx) {
  const sessionsEl = h('div', { class: 'sessions', id: 'sessions' }, h('p', { class: 'muted', text: 'Waiting for your sessions…' }));
  const total = h('strong', { id: 'earned-total', text: '—' });
  const chunks = h('span', { id: 'earned-chunks' });
  const perTask = h('tbody');
  const latest = h('tbody');
  const chart = new LineChart({ label: 'Earnings over time (credits earned, total)', format: money });
  const points = [];
  root.append(h('section', null, h('h1', { text: 'Worker' }),
    h('div', { class: 'card' }, h('h2', { text: 'Live sessions' }), sessionsEl),
    h('div', { class: 'cols' },
      h('div', { class: 'card' }, h('h2', { text: 'Earnings' }),
        h('p', { class: 'big-number' }, total, ' credits ', chunks),
        h('div', { class: 'scroll' }, h('table', { id: 'earnings' },
          h('caption', { class: 'sr-only', text: 'Earnings per task' }),
          h('thead', null, h('tr', null, ['Task', 'Chunks paid', 'Credited'].map((t) => h('th', { scope: 'col', text: t })))),
          perTask))),
      h('div', { class: 'card' }, h('h2', { text: 'Earnings over time' }), chart.canvas)),
    h('div', { class: 'card' }, h('h2', { text: 'Latest results paid' }),
      h('div', { class: 'scroll' }, h('table', { id: 'latest' },
        h('caption', { class: 'sr-only', text: 'Latest payouts' }),
        h('thead', null, h('tr', null, ['When', 'Task', 'Chunk', 'Worker', 'Credited'].map((t) => h('th', { scope: 'col', text: t })))),
        latest)))));

  function renderSessions(view) {
    if (!view.sessions.length) {
      sessionsEl.replaceChildren(h('p', { class: 'muted', text: 'No worker of this account is connected. Start one with `tn-worker connect`.' }));
      return;
    }
    const cards = view.sessions.map((s) => {
      const t = s.trust;
      const trust = t.limited ? h('span', { class: 'badge state-failed', text: 'limited' })
        : h('span', { class: `badge ${t.trusted ? 'state-completed' : 'state-paused'}`, text: t.trusted ? 'trusted' : 'building trust' });
      const body = s.running.length
        ? h('table', { class: 'running' }, h('caption', { class: 'sr-only', text: `${s.worker_id}: running chunks` }),
          h('thead', null, h('tr', null, ['Task', 'Chunk', 'Progress', 'For'].map((x) => h('th', { scope: 'col', text: x })))),
          h('tbody', null, s.running.map((a) => h('tr', null,
            h('td', null, h('span', { class: 'small', text: a.task_id })), h('td', { class: 'num', text: num(a.chunk) }),
            h('td', null, progress(a.done, a.total || 1, `chunk ${a.chunk} progress`)),
            h('td', { text: duration(view.now_ms - a.started_ms) })))))
        : h('div', { class: 'idle' }, h('p', { text: 'Idle. Why:' }),
          h('ul', null, s.idle_reasons.map((r) => h('li', { text: r }))));
      return h('article', { class: 'session', 'data-worker': s.worker_id },
        h('header', null, h('h3', { text: s.worker_id }), trust),
        h('p', { class: 'muted small', text: `${s.slots} slots${s.prefetch ? ` + ${s.prefetch} prefetch` : ''} · running ${s.running.length}`
          + (s.capabilities.length ? ` · ${s.capabilities.join(', ')}` : '') }),
        h('p', { class: 'muted small', text: `Trust: ${t.valid} results validated, ${t.invalid} invalid, streak ${t.streak}${t.limited ? ` · ${t.limited}` : ''}` }),
        s.sandbox.length ? h('details', null,
          h('summary', { text: `Sandbox: ${s.sandbox.map((l) => l.split(':')[0]).join(', ')}` }),
          h('ul', null, s.sandbox.map((l) => h('li', { text: l })))) : '',
        body);
    });
    if (view.sessions_total > view.sessions.length) {
      cards.push(h('p', { class: 'muted', text: `and ${num(view.sessions_total - view.sessions.length)} more sessions` }));
    }
    sessionsEl.replaceChildren(...cards);
  }

  async function loadEarnings() {
    let e;
    let page;
    try {
      [e, page] = await Promise.all([api.get('/api/wallet/earnings'),
        api.get('/api/wallet/transactions?offset=0&limit=40')]);
    } catch (err) {
      api.toast(err.message);
      return;
    }
    total.textContent = money(e.total);
    chunks.textContent = `for ${num(e.chunks)} chunks`;
    perTask.replaceChildren(...(e.tasks.length ? e.tasks.map((t) => h('tr', null,
      h('td', { class: 'small', text: t.task_id }), h('td', { class: 'num', text: num(t.chunks) }),
      h('td', { class: 'num', text: money(t.credited) })))
      : [h('tr', null, h('td', { colspan: 3, class: 'muted', text: 'Nothing earned yet.' }))]));
    const payouts = page.transactions.filter((t) => t.kind === 'payout').slice(0, 10);
    latest.replaceChildren(...(payouts.length ? payouts.map((t) => h('tr', null,
      h('td', { text: when(t.at_ms) }), h('td', { class: 'small', text: t.task_id || '' }),
      h('td', { class: 'num', text: t.chunk === null ? '' : num(t.chunk) }),
      h('td', { class: 'small', text: (t.memo || '').replace(/^worker /, '') }),
      h('td', { class: 'num pos', text: `+${money(t.amount)}` })))
      : [h('tr', null, h('td', { colspan: 5, class: 'muted', text: 'No results paid yet.' }))]));
    const last = points[points.length - 1];
    if (!last || last[1] !== e.total) points.push([Date.now(), e.total]);
    if (points.length === 1) points.push([Date.now() + 1, e.total]);
    chart.set([{ name: 'earned', points }]);
  }

  const refresh = throttle(loadEarnings, 1000);
  loadEarnings();
  const off = ctx.live.on({ workers: renderSessions, wallet: () => refresh(), resync: refresh });
  const drop = ctx.live.want(['workers', 'wallet']);
  return () => {
    off();
    drop();
    refresh.cancel();
    chart.destroy();
  };
}
