// The platform (admins, topic "platform"): connected workers, chunks per second over time,
// queue depth per task, revenue, and pending withdrawals to approve or reject.

import * as api from './api.js';
import { LineChart } from './chart.js';
import { facts, h, money, num, when } from './dom.js';

export function mountPlatform(root, ctx) {
  const stats = facts([
    ['Workers connected', '—', 'workers'], ['Slots', '—', 'slots'], ['Chunks running', '—', 'leases'],
    ['Tasks running', '—', 'tasks'], ['Chunks per second', '—', 'rate'], ['Revenue (fees)', '—', 'revenue'],
    ['Deposited', '—', 'deposited'], ['Withdrawn', '—', 'withdrawn'],
  ], 'facts big');
  const chart = new LineChart({ label: 'Chunks accepted per second over the last minutes', format: num });
  const queue = h('tbody');
  const workers = h('tbody');
  const withdrawals = h('tbody');
  const wNote = h('p', { class: 'muted small' });
  const table = (id, caption, heads, body) => h('div', { class: 'scroll' }, h('table', { id },
    h('caption', { class: 'sr-only', text: caption }),
    h('thead', null, h('tr', null, heads.map((t) => h('th', { scope: 'col', text: t })))), body));
  root.append(h('section', null, h('h1', { text: 'Platform' }),
    h('div', { class: 'card' }, stats.el),
    h('div', { class: 'card' }, h('h2', { text: 'Chunks per second' }), chart.canvas),
    h('div', { class: 'cols' },
      h('div', { class: 'card' }, h('h2', { text: 'Queue depth per task' }),
        table('queue', 'Queue depth per task', ['Task', 'Owner', 'Pending', 'Running / cap'], queue)),
      h('div', { class: 'card' }, h('h2', { text: 'Pending withdrawals' }), wNote,
        table('withdrawals', 'Pending withdrawals', ['Requested', 'Account', 'Amount', ''], withdrawals))),
    h('div', { class: 'card' }, h('h2', { text: 'Connected workers' }),
      table('workers', 'Connected workers', ['Worker', 'Account', 'Slots', 'Running'], workers))));

  async function decide(id, verb) {
    try {
      await api.post(`/api/admin/withdrawals/${id}/${verb}`);
      api.toast(`Withdrawal ${id} ${verb === 'approve' ? 'approved' : 'rejected'}.`, 'ok');
    } catch (err) {
      api.toast(err.message);
    }
  }

  function render(v) {
    const d = stats.dd;
    d.workers.textContent = num(v.workers_total);
    d.slots.textContent = num(v.slots_total);
    d.leases.textContent = num(v.leases_active);
    d.tasks.textContent = num(v.tasks_running);
    d.rate.textContent = v.rate.length ? num(v.rate[v.rate.length - 1][1]) : '—';
    d.revenue.textContent = money(v.revenue);
    d.deposited.textContent = money(v.deposited);
    d.withdrawn.textContent = money(v.withdrawn);
    chart.set([{ name: 'chunks/s', points: v.rate }]);
    queue.replaceChildren(...(v.queue.length ? v.queue.map((q) => h('tr', null,
      h('td', null, h('a', { href: `#/tasks/${q.task_id}`, text: q.name || q.task_id })),
      h('td', { class: 'small', text: q.owner }), h('td', { class: 'num', text: num(q.pending) }),
      h('td', { class: 'num', text: `${num(q.leased)} / ${num(q.max_concurrency)}` })))
      : [h('tr', null, h('td', { colspan: 4, class: 'muted', text: 'No queued work.' }))]));
    workers.replaceChildren(...(v.workers.length ? v.workers.map((w) => h('tr', null,
      h('td', { text: w.worker_id }), h('td', { class: 'small', text: w.account_id }),
      h('td', { class: 'num', text: num(w.slots) }), h('td', { class: 'num', text: num(w.running) })))
      : [h('tr', null, h('td', { colspan: 4, class: 'muted', text: 'No worker is connected.' }))]));
    withdrawals.replaceChildren(...(v.withdrawals.length ? v.withdrawals.map((w) => h('tr', null,
      h('td', { text: when(w.created_ms) }), h('td', { class: 'small', text: w.account_id }),
      h('td', { class: 'num', text: money(w.amount) }),
      h('td', { class: 'row-actions' },
        h('button', { type: 'button', text: 'Approve', 'aria-label': `Approve withdrawal ${w.id}`, onclick: () => decide(w.id, 'approve') }),
        h('button', { type: 'button', class: 'ghost', text: 'Reject', 'aria-label': `Reject withdrawal ${w.id}`, onclick: () => decide(w.id, 'reject') }))))
      : [h('tr', null, h('td', { colspan: 4, class: 'muted', text: 'None waiting.' }))]));
    wNote.textContent = v.withdrawals_total > v.withdrawals.length
      ? `Showing ${v.withdrawals.length} of ${num(v.withdrawals_total)}.` : '';
  }

  const off = ctx.live.on({ platform: render });
  const drop = ctx.live.want(['platform']);
  return () => {
    off();
    drop();
    chart.destroy();
  };
}
