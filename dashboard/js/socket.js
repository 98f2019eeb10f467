// The one live socket (/ws/live): JSON text frames. Views say which topics they want and
// which message types they listen to; the socket subscribes, and after a lost connection
// shows a banner, reconnects with backoff and subscribes again: each topic's snapshot then
// resynchronises the views (and "resync" listeners refetch what came over REST).

import { session } from './api.js';

const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 15000;

export class Live {
  constructor(url, banner) {
    this.url = url;
    this.banner = banner;
    this.ws = null;
    this.wanted = new Map(); // topic -> how many views want it
    this.listeners = new Map(); // message type -> Set of functions
    this.attempt = 0;
    this.timer = null;
    this.stopped = true;
    this.everOpen = false;
    this.onDenied = () => {};
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000, 'signed out');
    this.ws = null;
    this.banner.hide();
  }

  connect() {
    clearTimeout(this.timer);
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.addEventListener('open', () => {
      const again = this.everOpen;
      this.attempt = 0;
      this.everOpen = true;
      if (this.wanted.size) this.send({ type: 'subscribe', topics: [...this.wanted.keys()] });
      if (again) {
        this.banner.show('Reconnected; the views are up to date again.', false, 2500);
        this.emit({ type: 'resync' });
      } else this.banner.hide();
    });
    ws.addEventListener('message', (event) => {
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      this.emit(msg);
    });
    let opened = false;
    ws.addEventListener('open', () => { opened = true; });
    ws.addEventListener('close', async (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      // A policy close (1008) or a refusal before it opened: our sign-in has ended, or a
      // limit was hit (too many open dashboards, too many messages) while still signed in.
      let denied = false;
      if (event.code === 1008 || !opened) {
        try {
          denied = !(await session()).account;
        } catch (_) { /* down: retry below */ }
      }
      if (this.stopped) return;
      if (denied) {
        this.banner.show('Your sign-in has ended; sign in again.', false, 5000);
        this.onDenied();
        return;
      }
      let why = 'the connection to the coordinator was lost';
      if (event.code === 1013) why = 'the dashboard fell behind the live updates';
      else if (event.code === 1008 && event.reason) why = `the coordinator said: ${event.reason}`;
      this.retry(why);
    });
  }

  retry(why) {
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.attempt)
      * (0.75 + Math.random() * 0.5);
    this.attempt += 1;
    const secs = Math.max(1, Math.round(delay / 1000));
    this.banner.show(`Live updates paused: ${why}. Reconnecting in ${secs} s`
      + ` (attempt ${this.attempt})…`, true);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  retryNow() {
    if (!this.ws && !this.stopped) this.connect();
  }

  send(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  emit(msg) {
    for (const fn of this.listeners.get(msg.type) || []) fn(msg);
  }

  // Listen to message types: on({task: fn, chunks: fn}); returns a function that stops.
  on(handlers) {
    for (const [type, fn] of Object.entries(handlers)) {
      if (!this.listeners.has(type)) this.listeners.set(type, new Set());
      this.listeners.get(type).add(fn);
    }
    return () => {
      for (const [type, fn] of Object.entries(handlers)) this.listeners.get(type)?.delete(fn);
    };
  }

  // Want topics (counted per view); returns a function that gives them up.
  want(topics) {
    const fresh = [];
    for (const t of topics) {
      const n = this.wanted.get(t) || 0;
      this.wanted.set(t, n + 1);
      if (n === 0) fresh.push(t);
    }
    if (fresh.length) this.send({ type: 'subscribe', topics: fresh });
    return () => {
      const gone = [];
      for (const t of topics) {
        const n = (this.wanted.get(t) || 1) - 1;
        if (n <= 0) {
          this.wanted.delete(t);
          gone.push(t);
        } else this.wanted.set(t, n);
      }
      if (gone.length) this.send({ type: 'unsubscribe', topics: gone });
    };
  }
}

export function makeBanner(el, text, retry) {
  let timer = null;
  return {
    show(message, canRetry, hideAfterMs) {
      clearTimeout(timer);
      text.textContent = message;
      retry.hidden = !canRetry;
      el.hidden = false;
      el.classList.toggle('ok', !canRetry);
      if (hideAfterMs) timer = setTimeout(() => { el.hidden = true; }, hideAfterMs);
    },
    hide() {
      clearTimeout(timer);
      el.hidden = true;
    },
  };
}
