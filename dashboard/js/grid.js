// The chunk grid: one cell per chunk on a <canvas>, coloured by state, from a compact
// Uint8Array (one byte per chunk). Fast at a million chunks: cells are pixels of an
// offscreen image that is scaled up (small cells) or painted with gaps (big cells); a live
// change repaints only its rows; drawing happens at most once per animation frame; hovering
// only touches a small overlay canvas. When even one pixel per chunk does not fit (a phone
// and millions of chunks), a cell stands for several chunks and shows the most notable
// state among them (failed, then leased, then pending, then done).

import { h, num } from './dom.js';

export const STATES = ['pending', 'leased', 'done', 'failed'];
const COLORS = [[203, 213, 225], [217, 119, 6], [22, 163, 74], [220, 38, 38]];
const RANK = [1, 2, 0, 3]; // which state a shared cell shows: failed > leased > pending > done
const SIZES = [24, 18, 14, 12, 10, 8, 6, 5, 4, 3, 2, 1];
const HEIGHT_MAX = 420; // css px, before cells shrink to one pixel
const ROWS_MAX = 1000; // at one pixel per cell; beyond, cells are shared
const GAP_FROM = 5; // cells at least this big get a one-pixel gap

const LITTLE = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
const PIXEL = COLORS.map(([r, g, b]) => (LITTLE
  ? ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0
  : ((r << 24) | (g << 16) | (b << 8) | 255) >>> 0));

export class ChunkGrid {
  // describe(index, state) -> Promise<string> of details for the hover / keyboard tip
  constructor({ label, describe }) {
    this.describe = describe;
    this.states = new Uint8Array(0);
    this.canvas = h('canvas', { class: 'grid', tabindex: 0, role: 'img', 'aria-label': label });
    this.overlay = h('canvas', { class: 'grid-overlay', 'aria-hidden': 'true' });
    this.tip = h('div', { class: 'tip', hidden: true, 'aria-hidden': 'true' });
    this.live = h('p', { class: 'sr-only', 'aria-live': 'polite' });
    this.wrap = h('div', { class: 'grid-wrap' }, this.canvas, this.overlay, this.tip);
    this.el = h('div', { class: 'grid-box' }, this.wrap, this.live);
    this.off = document.createElement('canvas');
    this.image = null;
    this.pixels = null;
    this.layoutKey = '';
    this.dirtyRows = null; // [first, last] rows of the offscreen image to repaint
    this.frame = 0;
    this.hover = -1;
    this.selected = -1;
    this.tipTimer = 0;
    this.tipIndex = -1;
    this.observer = new ResizeObserver(() => this.relayout());
    this.observer.observe(this.wrap);
    this.bindPointer();
    this.bindKeys();
  }

  destroy() {
    this.observer.disconnect();
    cancelAnimationFrame(this.frame);
    clearTimeout(this.tipTimer);
  }

  // ---- data -------------------------------------------------------------------------------

  setStates(states) {
    this.states = states;
    this.relayout(true);
  }

  // Chunk states offset .. offset + bytes.length changed (bytes: Uint8Array).
  apply(offset, bytes) {
    if (offset + bytes.length > this.states.length) return;
    this.states.set(bytes, offset);
    if (!this.pixels) return;
    const from = Math.floor(offset / this.per);
    const to = Math.floor((offset + bytes.length - 1) / this.per);
    this.paintCells(from, to);
    const r0 = Math.floor(from / this.cols);
    const r1 = Math.floor(to / this.cols);
    this.dirtyRows = this.dirtyRows ? [Math.min(this.dirtyRows[0], r0), Math.max(this.dirtyRows[1], r1)]
      : [r0, r1];
    this.schedule();
  }

  // ---- layout and painting ------------------------------------------------------------

  relayout(force = false) {
    const n = this.states.length;
    const width = Math.max(120, Math.floor(this.wrap.clientWidth));
    let cell = 1;
    for (const s of SIZES) {
      if (Math.ceil(n / Math.floor(width / s)) * s <= HEIGHT_MAX) {
        cell = s;
        break;
      }
    }
    const cols = Math.max(1, Math.floor(width / cell));
    const per = cell === 1 ? Math.max(1, Math.ceil(n / (cols * ROWS_MAX))) : 1;
    const cells = Math.ceil(n / per);
    const rows = Math.max(1, Math.ceil(cells / cols));
    const key = `${n}:${width}:${cell}:${per}`;
    if (key === this.layoutKey && !force) return;
    this.layoutKey = key;
    Object.assign(this, { cell, cols, rows, per, cells, px: cell >= GAP_FROM ? cell : 1 });
    const dpr = window.devicePixelRatio || 1;
    const cssW = cols * cell;
    const cssH = rows * cell;
    for (const c of [this.canvas, this.overlay]) {
      c.width = Math.round(cssW * dpr);
      c.height = Math.round(cssH * dpr);
      c.style.width = `${cssW}px`;
      c.style.height = `${cssH}px`;
    }
    this.off.width = cols * this.px;
    this.off.height = rows * this.px;
    const octx = this.off.getContext('2d');
    this.image = octx.createImageData(this.off.width, this.off.height);
    this.pixels = new Uint32Array(this.image.data.buffer);
    this.paintCells(0, cells - 1);
    this.dirtyRows = [0, rows - 1];
    this.schedule();
  }

  cellState(c) {
    const per = this.per;
    if (per === 1) return this.states[c];
    let best = 2;
    const end = Math.min(this.states.length, (c + 1) * per);
    for (let i = c * per; i < end; i += 1) {
      const s = this.states[i];
      if (RANK[s] > RANK[best]) best = s;
      if (s === 3) break;
    }
    return best;
  }

  paintCells(from, to) {
    const { pixels, cols, px } = this;
    const stride = cols * px;
    if (px === 1 && this.per === 1) {
      const states = this.states;
      for (let c = from; c <= to; c += 1) pixels[c] = PIXEL[states[c]] ?? PIXEL[0];
      return;
    }
    const inner = px === 1 ? 1 : px - 1;
    for (let c = from; c <= to; c += 1) {
      const color = PIXEL[this.cellState(c)] ?? PIXEL[0];
      const x0 = (c % cols) * px;
      const y0 = Math.floor(c / cols) * px;
      for (let dy = 0; dy < inner; dy += 1) {
        const row = (y0 + dy) * stride + x0;
        pixels.fill(color, row, row + inner);
      }
    }
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.draw());
  }

  draw() {
    this.frame = 0;
    if (!this.image || !this.dirtyRows) return;
    const [r0, r1] = this.dirtyRows;
    this.dirtyRows = null;
    // copy only the changed rows: offscreen image -> visible canvas (scaled)
    const sy = r0 * this.px;
    const sh = (r1 - r0 + 1) * this.px;
    this.off.getContext('2d').putImageData(this.image, 0, 0, 0, sy, this.off.width, sh);
    const ctx = this.canvas.getContext('2d');
    const k = this.canvas.height / this.off.height;
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, Math.floor(sy * k), this.canvas.width, Math.ceil(sh * k));
    ctx.drawImage(this.off, 0, sy, this.off.width, sh,
      0, Math.floor(sy * k), this.canvas.width, Math.ceil(sh * k));
  }

  // ---- hover, keyboard and details ----------------------------------------------------

  indexAt(x, y) {
    const col = Math.floor(x / this.cell);
    const row = Math.floor(y / this.cell);
    if (col < 0 || col >= this.cols || row < 0) return -1;
    const c = row * this.cols + col;
    return c < this.cells ? c * this.per : -1;
  }

  bindPointer() {
    this.canvas.addEventListener('mousemove', (e) => {
      const i = this.indexAt(e.offsetX, e.offsetY);
      if (i !== this.hover) this.point(i, e.offsetX, e.offsetY);
    });
    this.canvas.addEventListener('mouseleave', () => this.point(-1));
  }

  bindKeys() {
    const moves = {
      ArrowLeft: -1, ArrowRight: 1, ArrowUp: () => -this.cols * this.per,
      ArrowDown: () => this.cols * this.per, PageUp: () => -this.cols * this.per * 10,
      PageDown: () => this.cols * this.per * 10, Home: () => -Infinity, End: () => Infinity,
    };
    this.canvas.addEventListener('keydown', (e) => {
      const move = moves[e.key];
      if (move === undefined || !this.states.length) return;
      e.preventDefault();
      const step = typeof move === 'function' ? move() : move * this.per;
      const start = this.selected < 0 ? 0 : this.selected;
      const i = Math.max(0, Math.min(this.states.length - 1, start + step));
      this.selected = i - (i % this.per);
      const c = this.selected / this.per;
      this.point(this.selected, (c % this.cols) * this.cell, Math.floor(c / this.cols) * this.cell, true);
    });
    this.canvas.addEventListener('blur', () => { if (this.hover === this.selected) this.point(-1); });
  }

  point(i, x = 0, y = 0, announce = false) {
    this.hover = i;
    const o = this.overlay.getContext('2d');
    o.setTransform(1, 0, 0, 1, 0, 0);
    o.clearRect(0, 0, this.overlay.width, this.overlay.height);
    clearTimeout(this.tipTimer);
    if (i < 0) {
      this.tip.hidden = true;
      return;
    }
    const dpr = window.devicePixelRatio || 1;
    const c = i / this.per;
    const cx = (c % this.cols) * this.cell;
    const cy = Math.floor(c / this.cols) * this.cell;
    const size = Math.max(this.cell, 5);
    o.setTransform(dpr, 0, 0, dpr, 0, 0);
    o.lineWidth = 2;
    o.strokeStyle = '#111827';
    o.strokeRect(cx - (size - this.cell) / 2 - 1, cy - (size - this.cell) / 2 - 1, size + 2, size + 2);
    const last = Math.min(this.states.length, i + this.per) - 1;
    const span = this.per > 1 ? `Chunks ${num(i)}–${num(last)}` : `Chunk ${num(i)}`;
    const head = `${span}: ${STATES[this.cellState(c)] || '?'}`;
    this.tip.textContent = head;
    this.tip.hidden = false;
    const wrapW = this.wrap.clientWidth;
    this.tip.style.left = `${Math.min(Math.max(0, x + 12), Math.max(0, wrapW - 240))}px`;
    this.tip.style.top = `${y + 14}px`;
    if (announce) this.live.textContent = head;
    this.tipIndex = i;
    this.tipTimer = setTimeout(async () => {
      const more = await this.describe(i).catch(() => '');
      if (this.tipIndex !== i || this.hover !== i || !more) return;
      this.tip.textContent = `${head} · ${more}`;
      if (announce) this.live.textContent = this.tip.textContent;
    }, 150);
  }
}

export function legend(counts) {
  return h('ul', { class: 'legend' }, STATES.map((s) => h('li', null,
    h('span', { class: `swatch s-${s}`, 'aria-hidden': 'true' }), `${s} `,
    h('strong', { 'data-count': s, text: num(counts[s] || 0) }))));
}

export function decodeBase64(text) {
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i += 1) out[i] = bin.charCodeAt(i);
  return out;
}
