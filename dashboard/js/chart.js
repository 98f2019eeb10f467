// A small line chart on a <canvas>: one or two series over time, with axes labels.

import { h } from './dom.js';

const SERIES_COLORS = ['#1d4ed8', '#b45309'];

export class LineChart {
  constructor({ label, height = 160, format = String }) {
    this.canvas = h('canvas', { class: 'chart', role: 'img', 'aria-label': label });
    this.height = height;
    this.format = format;
    this.series = [];
    this.projection = null;
    this.frame = 0;
    this.observer = new ResizeObserver(() => this.schedule());
    this.observer.observe(this.canvas);
  }

  destroy() {
    this.observer.disconnect();
    cancelAnimationFrame(this.frame);
  }

  // series: [{name, points: [[t, y], ...]}]; projection: [[t0, y0], [t1, y1]] dashed
  set(series, projection = null) {
    this.series = series;
    this.projection = projection;
    this.schedule();
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.draw());
  }

  draw() {
    this.frame = 0;
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(100, this.canvas.clientWidth);
    const hgt = this.height;
    this.canvas.width = Math.round(w * dpr);
    this.canvas.height = Math.round(hgt * dpr);
    this.canvas.style.height = `${hgt}px`;
    const ctx = this.canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, hgt);
    const pts = this.series.flatMap((s) => s.points);
    const proj = this.projection || [];
    const all = [...pts, ...proj];
    ctx.font = '12px system-ui, sans-serif';
    ctx.fillStyle = '#4b5563';
    if (all.length < 2) {
      ctx.fillText('Waiting for data…', 8, hgt / 2);
      return;
    }
    let t0 = Infinity; let t1 = -Infinity; let y1 = 0;
    for (const [t, y] of all) {
      t0 = Math.min(t0, t); t1 = Math.max(t1, t); y1 = Math.max(y1, y);
    }
    if (t1 === t0) t1 = t0 + 1;
    if (y1 === 0) y1 = 1;
    const left = 56; const right = 8; const top = 8; const bottom = 22;
    const X = (t) => left + ((t - t0) / (t1 - t0)) * (w - left - right);
    const Y = (y) => top + (1 - y / y1) * (hgt - top - bottom);
    ctx.strokeStyle = '#d1d5db';
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(left, top); ctx.lineTo(left, hgt - bottom); ctx.lineTo(w - right, hgt - bottom);
    ctx.stroke();
    ctx.textAlign = 'right';
    ctx.fillText(this.format(y1), left - 4, top + 10);
    ctx.fillText(this.format(0), left - 4, hgt - bottom);
    ctx.textAlign = 'left';
    ctx.fillText(new Date(t0).toLocaleTimeString('en-GB'), left, hgt - 6);
    ctx.textAlign = 'right';
    ctx.fillText(new Date(t1).toLocaleTimeString('en-GB'), w - right, hgt - 6);
    this.series.forEach((s, k) => {
      if (s.points.length < 1) return;
      ctx.strokeStyle = SERIES_COLORS[k % SERIES_COLORS.length];
      ctx.lineWidth = 2;
      ctx.beginPath();
      s.points.forEach(([t, y], i) => (i ? ctx.lineTo(X(t), Y(y)) : ctx.moveTo(X(t), Y(y))));
      ctx.stroke();
    });
    if (proj.length === 2) {
      ctx.setLineDash([5, 4]);
      ctx.strokeStyle = '#6b7280';
      ctx.beginPath();
      ctx.moveTo(X(proj[0][0]), Y(proj[0][1]));
      ctx.lineTo(X(proj[1][0]), Y(proj[1][1]));
      ctx.stroke();
      ctx.setLineDash([]);
    }
  }
}

export function chartLegend(names) {
  return h('ul', { class: 'legend' }, names.map((n, k) => h('li', null,
    h('span', { class: `swatch line-${k}`, 'aria-hidden': 'true' }), n)));
}
