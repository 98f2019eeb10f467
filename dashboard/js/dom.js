// Small DOM and formatting helpers shared by the views. No inline styles anywhere (the page's
// Content-Security-Policy forbids them): looks come from classes in style.css.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (value === true) el.setAttribute(key, '');
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

// ---- numbers, money and time ---------------------------------------------------------------

const INT = new Intl.NumberFormat('en-US');

export function num(n) {
  return INT.format(n);
}

// Money is integer credits in the smallest unit (1234 is 12.34); never a float.
export function money(units) {
  const neg = units < 0;
  const abs = Math.abs(units);
  const whole = Math.trunc(abs / 100);
  const cents = String(abs % 100).padStart(2, '0');
  return `${neg ? '−' : ''}${INT.format(whole)}.${cents}`;
}

// "12.34" -> 1234; null if it is not a non-negative amount with at most two decimals.
export function parseMoney(text) {
  const m = /^\s*(\d{1,13})(?:\.(\d{1,2}))?\s*$/.exec(text);
  if (!m) return null;
  return Number(m[1]) * 100 + Number((m[2] || '').padEnd(2, '0'));
}

export function pct(part, whole) {
  return whole ? Math.floor((part * 1000) / whole) / 10 : 0;
}

export function duration(ms) {
  if (ms === null || ms === undefined) return '—';
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  const hours = Math.floor(m / 60);
  return `${hours} h ${m % 60} min`;
}

export function clock(ms) {
  return ms ? new Date(ms).toLocaleTimeString('en-GB') : '—';
}

export function when(ms) {
  if (!ms) return '—';
  const d = new Date(ms);
  return `${d.toLocaleDateString('en-CA')} ${d.toLocaleTimeString('en-GB')}`;
}

export function stateBadge(state) {
  return h('span', { class: `badge state-${state.replace(/\s+/g, '-')}`, text: state });
}

export function progress(value, max, label) {
  return h('progress', { value: Math.min(value, max || 0), max: max || 1, 'aria-label': label });
}

// A definition list of [term, value] pairs; returns the value elements by term.
export function facts(pairs, cls = 'facts') {
  const out = {};
  const dl = h('dl', { class: cls });
  for (const [term, value, key] of pairs) {
    const dd = h('dd', null, value);
    out[key || term] = dd;
    dl.append(h('div', null, h('dt', { text: term }), dd));
  }
  return { el: dl, dd: out };
}

// Throttle: run fn at most once per `ms` (trailing call kept).
export function throttle(fn, ms) {
  let last = 0;
  let timer = null;
  const run = () => {
    timer = null;
    last = performance.now();
    fn();
  };
  const call = () => {
    if (timer) return;
    const wait = last + ms - performance.now();
    if (wait <= 0) run();
    else timer = setTimeout(run, wait);
  };
  call.cancel = () => {
    if (timer) clearTimeout(timer);
    timer = null;
  };
  return call;
}
