// Labelled form fields with their validation message right beside them.

import { h } from './dom.js';

let serial = 0;

// A labelled field: {el, input, error(msg)}. `input` is an element; it gets an id, an
// aria-describedby naming its hint and message, and aria-invalid while it has a message.
export function field(label, input, hint) {
  serial += 1;
  const id = input.id || `f${serial}`;
  input.id = id;
  const hintEl = hint ? h('p', { class: 'hint', id: `${id}-hint`, text: hint }) : null;
  const errEl = h('p', { class: 'field-error', id: `${id}-error`, hidden: true });
  input.setAttribute('aria-describedby', [hintEl ? `${id}-hint` : '', `${id}-error`].join(' ').trim());
  const el = h('div', { class: 'field' }, h('label', { for: id, text: label }), input, hintEl, errEl);
  return {
    el,
    input,
    error(message) {
      errEl.textContent = message || '';
      errEl.hidden = !message;
      if (message) input.setAttribute('aria-invalid', 'true');
      else input.removeAttribute('aria-invalid');
    },
  };
}

// Show messages by field name ({name: message}); clears the others. Focuses the first one.
export function showErrors(fields, messages) {
  let first = null;
  for (const [name, f] of Object.entries(fields)) {
    const msg = messages[name] || '';
    f.error(msg);
    if (msg && !first) first = f.input;
  }
  if (first) first.focus();
  return first !== null;
}

export function formError(el, message) {
  el.textContent = message || '';
  el.hidden = !message;
}
