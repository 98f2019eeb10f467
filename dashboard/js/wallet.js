// The wallet: balances (live, topic "wallet"), deposit and withdraw, and the transactions
// with their causes, paged.

import * as api from './api.js';
import { facts, h, money, parseMoney, throttle, when } from './dom.js';
import { field, showErrors } from './form.js';

const PAGE_ROWS = 20;
const KINDS = {
  deposit: 'Deposit', withdrawal: 'Withdrawal', withdrawal_hold: 'Withdrawal requested',
  withdrawal_rejected: 'Withdrawal rejected (returned)', fund: 'Task funded', refund: 'Task refund',
  payout: 'Payout for a chunk', initial: 'Starting credit',
};

export function mountWallet(root, ctx) {
  let wallet = null;
  let offset = 0;
  const cards = facts([
    ['Balance', '—', 'balance'], ['In escrow of your tasks', '—', 'escrow'],
    ['Pending withdrawals', '—', 'pending'], ['Earned (ever)', '—', 'earned'],
  ], 'facts big');
  cards.dd.balance.id = 'balance';
  const mode = h('p', { class: 'hint', id: 'wallet-mode' });
  const dep = field('Deposit amount (credits)', h('input', { name: 'deposit', inputmode: 'decimal', placeholder: '25.00' }));
  const wd = field('Withdraw amount (credits)', h('input', { name: 'withdraw', inputmode: 'decimal', placeholder: '10.00' }));
  const depForm = h('form', { class: 'inline', id: 'deposit-form', novalidate: true }, dep.el, h('button', { type: 'submit', text: 'Deposit' }));
  const wdForm = h('form', { class: 'inline', id: 'withdraw-form', novalidate: true }, wd.el, h('button', { type: 'submit', text: 'Withdraw' }));
  const tbody = h('tbody');
  const pageInfo = h('span', { class: 'muted small', 'aria-live': 'polite' });
  const prev = h('button', { type: 'button', class: 'ghost', text: '← Newer', disabled: true });
  const next = h('button', { type: 'button', class: 'ghost', text: 'Older →', disabled: true });
  root.append(h('section', null, h('h1', { text: 'Wallet' }),
    h('div', { class: 'card' }, cards.el, mode),
    h('div', { class: 'cols' }, h('div', { class: 'card' }, h('h2', { text: 'Deposit' }), depForm),
      h('div', { class: 'card' }, h('h2', { text: 'Withdraw' }), wdForm)),
    h('div', { class: 'card' }, h('h2', { text: 'Transactions' }),
      h('div', { class: 'scroll' }, h('table', { id: 'transactions' },
        h('caption', { class: 'sr-only', text: 'Transactions, newest first' }),
        h('thead', null, h('tr', null, ['When', 'What', 'Amount', 'Cause'].map((t) => h('th', { scope: 'col', text: t })))),
        tbody)),
      h('div', { class: 'pager' }, prev, pageInfo, next))));

  async function loadWallet() {
    try {
      wallet = await api.get('/api/wallet');
    } catch (err) {
      api.toast(err.message);
      return;
    }
    showBalances(wallet);
    cards.dd.earned.textContent = money(wallet.earned);
    mode.textContent = wallet.sandbox ? 'Sandbox mode: deposits and withdrawals happen at once (test money).'
      : (wallet.stripe ? 'Deposits go through Stripe Checkout; withdrawals wait for an admin’s approval.'
        : 'Deposits are off on this coordinator; withdrawals wait for an admin’s approval.');
  }

  function showBalances(w) {
    cards.dd.balance.textContent = money(w.balance);
    cards.dd.escrow.textContent = money(w.in_escrow);
    cards.dd.pending.textContent = money(w.pending_withdrawals);
  }

  async function loadPage() {
    let page;
    try {
      page = await api.get(`/api/wallet/transactions?offset=${offset}&limit=${PAGE_ROWS}`);
    } catch (err) {
      api.toast(err.message);
      return;
    }
    tbody.replaceChildren(...page.transactions.map((t) => h('tr', null,
      h('td', { text: when(t.at_ms) }),
      h('td', { text: (KINDS[t.kind] || t.kind) + (t.account === 'pending' ? ' (held)' : '') }),
      h('td', { class: `num ${t.amount < 0 ? 'neg' : 'pos'}`, text: `${t.amount > 0 ? '+' : ''}${money(t.amount)}` }),
      h('td', { class: 'small' }, t.task_id ? h('a', { href: `#/tasks/${t.task_id}`, text: t.task_id }) : '',
        t.chunk !== null && t.chunk !== undefined ? ` chunk ${t.chunk}` : '', t.memo ? ` ${t.memo}` : ''))));
    if (!page.transactions.length) tbody.append(h('tr', null, h('td', { colspan: 4, class: 'muted', text: 'No transactions yet.' })));
    prev.disabled = offset === 0;
    next.disabled = page.next_offset === null || page.next_offset === undefined;
    pageInfo.textContent = page.transactions.length
      ? `${offset + 1}–${offset + page.transactions.length}` : '';
  }
  prev.addEventListener('click', () => { offset = Math.max(0, offset - PAGE_ROWS); loadPage(); });
  next.addEventListener('click', () => { offset += PAGE_ROWS; loadPage(); });

  const refresh = throttle(() => {
    loadWallet();
    if (offset === 0) loadPage();
  }, 1000);

  async function move(kind, f, form) {
    const amount = parseMoney(f.input.value);
    if (!amount) {
      showErrors({ f }, { f: 'An amount above zero, like 12.50.' });
      return;
    }
    const button = form.querySelector('button');
    button.disabled = true;
    try {
      const res = await api.post(`/api/wallet/${kind}`, { amount });
      showErrors({ f }, {});
      f.input.value = '';
      if (res.checkout_url) {
        location.assign(res.checkout_url);
        return;
      }
      api.toast(kind === 'deposit' ? `Deposited ${money(amount)}.`
        : (res.state === 'pending' ? `Withdrawal of ${money(amount)} awaits an admin.` : `Withdrew ${money(amount)}.`), 'ok');
      refresh();
    } catch (err) {
      showErrors({ f }, { f: err.message });
    } finally {
      button.disabled = false;
    }
  }
  depForm.addEventListener('submit', (e) => { e.preventDefault(); move('deposit', dep, depForm); });
  wdForm.addEventListener('submit', (e) => { e.preventDefault(); move('withdraw', wd, wdForm); });

  loadWallet();
  loadPage();
  let lastKey = '';
  const off = ctx.live.on({
    wallet: (w) => {
      showBalances(w);
      const key = `${w.balance}/${w.pending_withdrawals}/${w.in_escrow}`;
      if (lastKey && key !== lastKey) refresh();
      lastKey = key;
    },
    resync: refresh,
  });
  const drop = ctx.live.want(['wallet']);
  return () => {
    off();
    drop();
    refresh.cancel();
  };
}
