// The customer's tasks: state and progress of each, live (topic "tasks").

import { h, money, num, pct, progress, stateBadge, when } from './dom.js';

export function mountTaskList(root, ctx) {
  const rows = new Map(); // task id -> {tr, cells}
  const tbody = h('tbody');
  const empty = h('p', { class: 'muted empty', text: 'No tasks yet. ' },
    h('a', { href: '#/new', text: 'Create one.' }));
  const table = h('table', { class: 'tasks', id: 'task-table' },
    h('caption', { class: 'sr-only', text: 'Your tasks' }),
    h('thead', null, h('tr', null,
      h('th', { scope: 'col', text: 'Task' }), h('th', { scope: 'col', text: 'State' }),
      h('th', { scope: 'col', text: 'Progress' }), h('th', { scope: 'col', class: 'num', text: 'Chunks' }),
      h('th', { scope: 'col', class: 'num hide-narrow', text: 'Spent / budget' }),
      h('th', { scope: 'col', class: 'hide-narrow', text: 'Created' }))),
    tbody);
  root.append(h('section', null,
    h('div', { class: 'head' }, h('h1', { text: 'Tasks' }),
      h('a', { class: 'button', href: '#/new', text: 'New task' })),
    empty, h('div', { class: 'scroll' }, table)));
  table.hidden = true;

  function row(task) {
    let r = rows.get(task.id);
    if (!r) {
      const link = h('a', { href: `#/tasks/${task.id}` });
      const cells = {
        name: link, state: h('td'), bar: h('td', { class: 'bar' }), chunks: h('td', { class: 'num' }),
        money: h('td', { class: 'num hide-narrow' }), created: h('td', { class: 'hide-narrow' }),
      };
      const tr = h('tr', { 'data-task': task.id },
        h('td', null, link, h('div', { class: 'muted small', text: task.id })),
        cells.state, cells.bar, cells.chunks, cells.money, cells.created);
      r = { tr, cells, created: task.created_ms };
      rows.set(task.id, r);
      // newest first
      const after = [...rows.values()].filter((o) => o !== r && o.created < task.created_ms)
        .sort((a, b) => b.created - a.created)[0];
      tbody.insertBefore(tr, after ? after.tr : null);
    }
    const c = r.cells;
    c.name.textContent = task.name || task.id;
    c.state.replaceChildren(stateBadge(task.needs_funds ? 'needs funds' : task.state));
    const p = pct(task.chunks_done, task.chunks_total);
    c.bar.replaceChildren(progress(task.chunks_done, task.chunks_total, `${task.name || task.id} progress`),
      h('span', { class: 'pct', text: `${p}%` }));
    c.chunks.textContent = `${num(task.chunks_done)} / ${num(task.chunks_total)}`;
    c.money.textContent = task.price_per_chunk ? `${money(task.spent)} / ${money(task.budget)}` : 'free';
    c.created.textContent = when(task.created_ms);
    table.hidden = false;
    empty.hidden = true;
  }

  const more = h('p', { class: 'muted small', hidden: true,
    text: 'Showing your running tasks and the latest finished ones; `tn task list` has them all.' });
  root.append(more);
  const off = ctx.live.on({ task: (msg) => { row(msg.task); more.hidden = rows.size < 200; } });
  const drop = ctx.live.want(['tasks']);
  return () => {
    off();
    drop();
  };
}
