// Sign-in: a username and password, or an API token. Either starts a browser session (an
// HttpOnly cookie); the token itself is never kept by the page.

import * as api from './api.js';
import { h } from './dom.js';
import { field, formError, showErrors } from './form.js';

export function mountSignIn(root, ctx, signedIn) {
  const name = field('Username', h('input', { name: 'username', autocomplete: 'username', required: true }));
  const password = field('Password', h('input', {
    name: 'password', type: 'password', autocomplete: 'current-password', required: true,
  }));
  const pwError = h('p', { class: 'form-error', role: 'alert', hidden: true });
  const pwForm = h('form', { class: 'card', id: 'signin-password', novalidate: true },
    h('h2', { text: 'Sign in with your password' }), name.el, password.el, pwError,
    h('button', { type: 'submit', text: 'Sign in' }));

  const token = field('API token', h('input', {
    name: 'token', type: 'password', autocomplete: 'off', spellcheck: 'false', required: true,
  }), 'A token from `tn-coordinator user add --token`, or printed by `make run`.');
  const tokError = h('p', { class: 'form-error', role: 'alert', hidden: true });
  const tokForm = h('form', { class: 'card', id: 'signin-token', novalidate: true },
    h('h2', { text: 'Sign in with an API token' }), token.el, tokError,
    h('button', { type: 'submit', text: 'Sign in with token' }));

  async function submit(event, body, fields, errorEl) {
    event.preventDefault();
    formError(errorEl, '');
    const missing = {};
    for (const [key, f] of Object.entries(fields)) {
      if (!f.input.value) missing[key] = 'Fill this in.';
    }
    if (showErrors(fields, missing)) return;
    const button = event.target.querySelector('button');
    button.disabled = true;
    try {
      const info = await api.signIn(body());
      signedIn(info.account);
    } catch (err) {
      if (err.field && fields[err.field]) showErrors(fields, { [err.field]: err.message });
      else formError(errorEl, err.message);
    } finally {
      button.disabled = false;
    }
  }

  const pwFields = { name, password };
  pwForm.addEventListener('submit', (e) => submit(e, () => ({
    name: name.input.value.trim(), password: password.input.value,
  }), pwFields, pwError));
  const tokFields = { token };
  tokForm.addEventListener('submit', (e) => submit(e, () => ({ token: token.input.value.trim() }),
    tokFields, tokError));

  root.append(h('section', { class: 'signin' },
    h('h1', { text: 'Sign in' }),
    h('p', { class: 'muted', text: 'Customers post and watch tasks, workers see their sessions and earnings, admins see the platform.' }),
    h('div', { class: 'two' }, pwForm, tokForm)));
  name.input.focus();
}
