// The dashboard's entry point: who is signed in, the navigation, and which view is shown.
// Views are modules with mount(root, ctx) returning an unmount function.

import * as api from './api.js';
import { $, clear, h } from './dom.js';
import { Live, makeBanner } from './socket.js';
import { mountSignIn } from './signin.js';
import { mountTaskList } from './tasks.js';
import { mountNewTask } from './newtask.js';
import { mountTask } from './task.js';
import { mountWallet } from './wallet.js';
import { mountWorker } from './worker.js';
import { mountPlatform } from './platform.js';

const ROUTES = [
  [/^#\/tasks\/([\w-]+)$/, mountTask, ['customer', 'admin']],
  [/^#\/tasks$/, mountTaskList, ['customer', 'admin']],
  [/^#\/new$/, mountNewTask, ['customer', 'admin']],
  [/^#\/wallet$/, mountWallet, ['customer', 'worker', 'admin']],
  [/^#\/worker$/, mountWorker, ['worker', 'admin']],
  [/^#\/platform$/, mountPlatform, ['admin']],
];
const HOME = { customer: '#/tasks', worker: '#/worker', admin: '#/platform' };

const view = $('#view');
const banner = makeBanner($('#banner'), $('#banner-text'), $('#banner-retry'));
const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws/live`;
const live = new Live(wsUrl, banner);
const ctx = { live, account: null, go };
let unmount = null;

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function show(mount, ...args) {
  if (unmount) unmount();
  unmount = null;
  clear(view);
  unmount = mount(view, ctx, ...args) || null;
}

function route() {
  if (!ctx.account) {
    show(mountSignIn, signedIn);
    return;
  }
  const role = ctx.account.role;
  for (const [re, mount, roles] of ROUTES) {
    const m = re.exec(location.hash);
    if (m && roles.includes(role)) {
      markNav();
      show(mount, ...m.slice(1));
      return;
    }
  }
  go(HOME[role] || '#/wallet');
}

function markNav() {
  for (const a of document.querySelectorAll('#nav a')) {
    const here = location.hash === a.getAttribute('href')
      || (a.getAttribute('href') === '#/tasks' && location.hash.startsWith('#/tasks/'));
    if (here) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

function signedIn(account) {
  ctx.account = account;
  $('#who-name').textContent = `${account.name} (${account.role})`;
  $('#who').hidden = false;
  for (const a of document.querySelectorAll('#nav a')) {
    a.hidden = !a.dataset.roles.split(' ').includes(account.role);
  }
  $('#nav').hidden = false;
  live.start();
  route();
}

function signedOut() {
  ctx.account = null;
  live.stop();
  $('#who').hidden = true;
  $('#nav').hidden = true;
  route();
}

async function boot() {
  $('#banner-retry').addEventListener('click', () => live.retryNow());
  $('#signout').addEventListener('click', async () => {
    try {
      await api.signOut();
    } catch (err) {
      api.toast(err.message);
    }
    signedOut();
  });
  api.whenSignedOut(signedOut);
  live.onDenied = signedOut;
  window.addEventListener('hashchange', route);
  let info;
  try {
    info = await api.session();
  } catch (err) {
    clear(view, h('p', { class: 'error', text: `The coordinator cannot be reached: ${err.message}` }));
    return;
  }
  if (info.account) signedIn(info.account);
  else route();
}

window.tn = { live }; // for the browser tests and the curious
boot();
