// Create a task: upload code and data, set chunking, money, cap, priority, requirements and
// verification. Mistakes are shown next to their fields, from the page's own checks and
// from the coordinator's answer.

import * as api from './api.js';
import { h, money, parseMoney } from './dom.js';
import { field, formError, showErrors } from './form.js';

const CODE_TYPES = ['.py', '.zip'];
const DATA_TYPES = ['.json', '.jsonl', '.ndjson', '.csv', '.tsv'];

function intIn(text, lo, hi) {
  if (!/^\s*\d+\s*$/.test(text)) return null;
  const n = Number(text);
  return n >= lo && n <= hi ? n : null;
}

export function mountNewTask(root, ctx) {
  const f = {
    name: field('Name', h('input', { name: 'name', maxlength: 200, placeholder: 'e.g. hash the words' }),
      'Optional; shown in your task list.'),
    code: field('Code', h('input', { name: 'code', type: 'file', accept: CODE_TYPES.join(','), required: true }),
      'A .py file defining process(item), or a .zip with main.py at its root.'),
    data: field('Data', h('input', { name: 'data', type: 'file', accept: DATA_TYPES.join(','), required: true }),
      'A JSON array, JSON Lines or CSV file: one item per element, line or row.'),
    chunk_size: field('Items per chunk', h('input', { name: 'chunk_size', type: 'number', min: 1, max: 1000000, value: 100, inputmode: 'numeric', required: true })),
    budget: field('Budget (credits)', h('input', { name: 'budget', inputmode: 'decimal', value: '0.00' }),
      'Moved from your wallet into the task now; what is left returns when it ends.'),
    price: field('Price per chunk (credits)', h('input', { name: 'price', inputmode: 'decimal', value: '0.00' }),
      'Paid to the worker for each accepted chunk (minus the platform fee). 0 is a free task.'),
    cap: field('Concurrency cap (bucket slots)', h('input', { name: 'cap', type: 'number', min: 1, max: 100000, value: 8, inputmode: 'numeric', required: true }),
      'At most this many chunks run at once.'),
    priority: field('Priority', h('select', { name: 'priority' },
      [1, 2, 3, 4, 5, 6, 7, 8, 9, 10].map((p) => h('option', { value: p, selected: p === 5, text: String(p) }))),
    'Weight among your own tasks (10 is the most).'),
    requirements: field('Requirements', h('textarea', { name: 'requirements', rows: 2, placeholder: 'gpu>=1\npython>=3.11' }),
      'One per line; only workers that declare them run this task.'),
    verification: field('Verification', h('select', { name: 'verification' },
      h('option', { value: 'none', text: 'None: trust each result' }),
      h('option', { value: 'spot', text: 'Spot checks: some chunks run twice' }),
      h('option', { value: 'quorum', text: 'Quorum: every chunk runs on several accounts' }))),
    spot: field('Spot checks per 1000 chunks', h('input', { name: 'spot', type: 'number', min: 0, max: 1000, value: 100 })),
    quorum_k: field('Replicas per chunk', h('input', { name: 'quorum_k', type: 'number', min: 2, max: 10, value: 3 })),
    quorum_m: field('Replicas that must agree', h('input', { name: 'quorum_m', type: 'number', min: 1, max: 10, value: 2 })),
  };
  const walletNote = h('p', { class: 'hint', id: 'wallet-note' });
  const formErr = h('p', { class: 'form-error', role: 'alert', hidden: true });
  const submitBtn = h('button', { type: 'submit', text: 'Create task' });
  const form = h('form', { class: 'card form-grid', id: 'new-task', novalidate: true },
    h('fieldset', null, h('legend', { text: 'What to run' }), f.name.el, f.code.el, f.data.el, f.chunk_size.el),
    h('fieldset', null, h('legend', { text: 'Money' }), f.budget.el, f.price.el, walletNote),
    h('fieldset', null, h('legend', { text: 'Scheduling' }), f.cap.el, f.priority.el, f.requirements.el),
    h('fieldset', null, h('legend', { text: 'Verification' }), f.verification.el, f.spot.el, f.quorum_k.el, f.quorum_m.el),
    h('div', { class: 'actions' }, formErr, submitBtn));
  root.append(h('section', null, h('h1', { text: 'New task' }), form));

  function showVerification() {
    const mode = f.verification.input.value;
    f.spot.el.hidden = mode !== 'spot';
    f.quorum_k.el.hidden = mode !== 'quorum';
    f.quorum_m.el.hidden = mode !== 'quorum';
  }
  f.verification.input.addEventListener('change', showVerification);
  showVerification();

  let balance = null;
  api.get('/api/wallet').then((w) => {
    balance = w.balance;
    walletNote.textContent = `Your wallet holds ${money(w.balance)} credits.`;
  }).catch(() => {});

  function check() {
    const errors = {};
    const v = (name) => f[name].input.value;
    const suffix = (file) => (file ? file.name.slice(file.name.lastIndexOf('.')).toLowerCase() : '');
    const code = f.code.input.files[0];
    const data = f.data.input.files[0];
    if (!code) errors.code = 'Choose the code file.';
    else if (!CODE_TYPES.includes(suffix(code))) errors.code = 'Upload a .py file or a .zip.';
    if (!data) errors.data = 'Choose the data file.';
    else if (!DATA_TYPES.includes(suffix(data))) errors.data = `Upload ${DATA_TYPES.join(', ')}.`;
    if (intIn(v('chunk_size'), 1, 1000000) === null) errors.chunk_size = 'A whole number from 1 to 1,000,000.';
    const budget = parseMoney(v('budget'));
    const price = parseMoney(v('price'));
    if (budget === null) errors.budget = 'An amount like 12.50 (at most two decimals).';
    if (price === null) errors.price = 'An amount like 0.10 (at most two decimals).';
    if (budget !== null && price !== null) {
      if (price > 0 && budget < price) errors.budget = 'A paid task needs a budget of at least one chunk’s price.';
      else if (balance !== null && budget > balance) errors.budget = `Your wallet holds ${money(balance)}; deposit more or lower the budget.`;
    }
    if (intIn(v('cap'), 1, 100000) === null) errors.cap = 'A whole number from 1 to 100,000.';
    const reqs = v('requirements').split('\n').map((s) => s.trim()).filter(Boolean);
    if (reqs.length > 32) errors.requirements = 'At most 32 requirements.';
    else if (reqs.some((r) => r.length > 200)) errors.requirements = 'Each requirement has at most 200 characters.';
    const mode = v('verification');
    let k = 1;
    let m = 1;
    let spot = 0;
    if (mode === 'quorum') {
      k = intIn(v('quorum_k'), 2, 10);
      m = intIn(v('quorum_m'), 1, 10);
      if (k === null) errors.quorum_k = 'From 2 to 10.';
      else if (m === null || m <= Math.floor(k / 2) || m > k) errors.quorum_m = `A majority: more than ${Math.floor(k / 2)}, at most ${k}.`;
    }
    if (mode === 'spot') {
      spot = intIn(v('spot'), 0, 1000);
      if (spot === null) errors.spot = 'From 0 to 1000.';
    }
    const spec = {
      name: v('name').trim(), chunk_size: Number(v('chunk_size')), budget, price_per_chunk: price,
      max_concurrency: Number(v('cap')), priority: Number(v('priority')), requirements: reqs,
      verification: mode,
    };
    if (mode === 'quorum') Object.assign(spec, { quorum_k: k, quorum_m: m });
    if (mode === 'spot') spec.spot_per_mille = spot;
    return { errors, spec };
  }

  // The coordinator names "code", "data" or "spec" (with the spec's field in its message).
  const SPEC_FIELDS = {
    chunk_size: 'chunk_size', budget: 'budget', price_per_chunk: 'price', max_concurrency: 'cap',
    priority: 'priority', requirements: 'requirements', quorum_k: 'quorum_k', quorum_m: 'quorum_m',
    spot_per_mille: 'spot', name: 'name', verification: 'verification',
  };
  function serverField(err) {
    if (err.field === 'code' || err.field === 'data') return err.field;
    const m = /\$\.(\w+)/.exec(err.message) || /\b(budget|price_per_chunk|max_spend_per_minute)\b/.exec(err.message);
    if (m && SPEC_FIELDS[m[1]]) return SPEC_FIELDS[m[1]];
    if (err.status === 402) return 'budget';
    if (/quorum/.test(err.message)) return 'quorum_m';
    if (/requirement/i.test(err.message)) return 'requirements';
    return null;
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    formError(formErr, '');
    const { errors, spec } = check();
    if (showErrors(f, errors)) return;
    const body = new FormData();
    body.append('code', f.code.input.files[0]);
    body.append('data', f.data.input.files[0]);
    body.append('spec', JSON.stringify(spec));
    submitBtn.disabled = true;
    submitBtn.textContent = 'Uploading…';
    try {
      const created = await api.request('POST', '/api/tasks', body);
      ctx.go(`#/tasks/${created.id}`);
    } catch (err) {
      const name = serverField(err);
      if (name) showErrors(f, { [name]: err.message });
      else formError(formErr, err.message);
    } finally {
      submitBtn.disabled = false;
      submitBtn.textContent = 'Create task';
    }
  });
  f.name.input.focus();
}
